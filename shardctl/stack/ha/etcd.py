"""One local etcd server: the consensus store Patroni keeps each shard's leader key in.

Run in the foreground of its own session so the PID we hold is etcd's, and stopped by that PID. A single
member is enough on one machine: it decides nothing itself, it only holds the leases Patroni races for.
With v3 authentication on (``enable_auth``), only the stack reaches it: ``root`` (the stack itself: set-up,
``forget_scope``) and ``patroni``, allowed to read and write the Patroni namespace only. Passwords travel in
request bodies to etcd's JSON gateway, never on a command line.
"""

from __future__ import annotations

import base64
import json
import shutil
import signal
import urllib.error
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


class EtcdAuthError(LocalStackError, RuntimeError):
    """etcd refused a step of its authentication set-up; the message names the step, never a password."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _prefix_range(prefix: str) -> tuple[str, str]:
    """``key`` and ``range_end`` (base64) of every key under ``prefix``."""
    raw = prefix.encode()
    return _b64(raw), _b64(raw[:-1] + bytes([raw[-1] + 1]))


def post(etcd_url: str, path: str, body: dict, token: str | None = None) -> tuple[int, dict]:
    """POST to etcd's v3 JSON gateway; (HTTP status, answer). The body may hold a password: never logged."""
    headers = {"Content-Type": "application/json", **({"Authorization": token} if token else {})}
    request = urllib.request.Request(f"{etcd_url}{path}", data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {}


def authenticate(etcd_url: str, user: str, password: str) -> str | None:
    """A token for ``user``; None while etcd's authentication is not enabled."""
    status, answer = post(etcd_url, "/v3/auth/authenticate", {"name": user, "password": password})
    if status == 200 and answer.get("token"):
        return str(answer["token"])
    if "not enabled" in str(answer.get("error", answer.get("message", ""))):
        return None
    raise EtcdAuthError(f"etcd refused {user}'s login (HTTP {status}: {answer.get('message', '')})")


def enable_auth(etcd_url: str, root_password: str, patroni_password: str, namespace: str = "/tessera/") -> None:
    """Turn on etcd's v3 authentication (idempotent): ``root``, and ``patroni`` with read-write on
    ``namespace`` only. After this every request needs a token; anonymous ones are refused."""
    if authenticate(etcd_url, "root", root_password) is not None:
        return  # already on (a restarted stack): the users are in etcd's data
    key, range_end = _prefix_range(namespace)
    steps = [
        ("/v3/auth/role/add", {"name": "root"}),
        ("/v3/auth/user/add", {"name": "root", "password": root_password}),
        ("/v3/auth/user/grant", {"user": "root", "role": "root"}),
        ("/v3/auth/role/add", {"name": "patroni"}),
        (
            "/v3/auth/role/grant",
            {"name": "patroni", "perm": {"permType": "READWRITE", "key": key, "range_end": range_end}},
        ),
        ("/v3/auth/user/add", {"name": "patroni", "password": patroni_password}),
        ("/v3/auth/user/grant", {"user": "patroni", "role": "patroni"}),
        ("/v3/auth/enable", {}),
    ]
    for path, body in steps:
        status, answer = post(etcd_url, path, body)
        if status != 200 and "already exists" not in str(answer.get("message", "")):
            raise EtcdAuthError(f"etcd refused {path} (HTTP {status}: {answer.get('message', '')})")


def forget_scope(etcd_url: str, scope: str, namespace: str = "/tessera/", root_password: str | None = None) -> None:
    """Delete a Patroni cluster's keys (leader, members, initialize, config) from etcd, through its v3 JSON
    gateway, as ``root`` when a password is given: a cluster created later under the same scope then
    bootstraps instead of waiting to join the old one. Harmless when the keys are gone already."""
    token = authenticate(etcd_url, "root", root_password) if root_password is not None else None
    key, range_end = _prefix_range(f"{namespace}{scope}/")
    status, answer = post(etcd_url, "/v3/kv/deleterange", {"key": key, "range_end": range_end}, token)
    if status != 200:
        raise OSError(f"etcd refused to forget {scope} (HTTP {status}: {answer.get('message', '')})")
