"""One local etcd server: the consensus store Patroni keeps each shard's leader key in.

Run in the foreground of its own session so the PID we hold is etcd's, and stopped by that PID. A single
member is enough on one machine: it decides nothing itself, it only holds the leases Patroni races for.
With v3 authentication on (``shardctl.control.etcd.enable_auth``), only the stack reaches it: ``root`` (the
stack itself: set-up, ``forget_scope``) and ``patroni``, allowed to read and write the Patroni namespace only.
"""

from __future__ import annotations

import json
import shutil
import signal
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from shardctl.errors import LocalStackError
from shardctl.process import favour_coordination, log_tail, pid_alive, spawn_in_own_session, stop_pid, wait_until
from shardctl.stack.binaries import MissingBinaryError


class EtcdStartError(LocalStackError, RuntimeError):
    """etcd did not come up; the message carries the tail of its log."""


def find_etcd() -> str:
    """The ``etcd`` server binary (bootstrap installs Debian's ``etcd-server`` when it is missing)."""
    path = shutil.which("etcd") or ("/usr/bin/etcd" if Path("/usr/bin/etcd").exists() else None)
    if not path:
        raise MissingBinaryError("no etcd found: run scripts/bootstrap.sh (it installs Debian's etcd-server)")
    return path


@dataclass
class EtcdServer:
    client_port: int
    peer_port: int
    dir: Path
    binary: str
    pid: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def log_file(self) -> Path:
        return self.dir / "etcd.log"

    def start(self, timeout: float = 30.0) -> int:
        """Start etcd (or keep the running one) and wait until it reports healthy; returns its PID."""
        if pid_alive(self.pid) and self.healthy():
            return self.pid  # type: ignore[return-value]
        self.dir.mkdir(parents=True, exist_ok=True)
        peer = f"http://127.0.0.1:{self.peer_port}"
        argv = [
            self.binary,
            "--name",
            "tessera",
            "--data-dir",
            str(self.dir / "data"),
            "--listen-client-urls",
            self.url,
            "--advertise-client-urls",
            self.url,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"tessera={peer}",
            "--initial-cluster-state",
            "new",
            # Loopback: fast heartbeats keep lease keep-alives prompt.
            "--heartbeat-interval",
            "100",
            "--election-timeout",
            "1000",
        ]
        self.pid = spawn_in_own_session(argv, self.log_file)
        favour_coordination(self.pid)
        if not wait_until(self.healthy, timeout, interval=0.2):
            self.stop()
            raise EtcdStartError(f"etcd on port {self.client_port} did not start:\n{log_tail(self.log_file)}")
        return self.pid

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return json.loads(response.read()).get("health") in ("true", True)
        except (OSError, ValueError):
            return False

    def stop(self, timeout: float = 10.0) -> bool:
        if self.pid is None:
            return True
        stopped = stop_pid(self.pid, signal.SIGTERM, timeout)
        if stopped:
            self.pid = None
        return stopped
