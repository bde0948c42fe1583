"""A local H2O JVM that we start and stop by PID (never port 54321: other tools on the machine may use it).

We launch ``java -jar h2o.jar`` ourselves rather than through ``h2o.init`` so the process is ours: its own
session, its PID known, its logs under our data dir, and a SIGTERM to that PID stops it.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import h2o
import requests

from shardctl.java import find_java_home
from shardctl.process import free_port, stop_pid

H2O_JAR = Path(h2o.__file__).parent / "backend" / "bin" / "h2o.jar"


class H2OStartError(RuntimeError):
    """The JVM did not come up; the message carries the tail of its output."""


@dataclass(frozen=True)
class LocalH2O:
    pid: int
    url: str
    log_dir: Path

    def stop(self, timeout: float = 20.0) -> bool:
        return stop_pid(self.pid, timeout=timeout)


def cluster_up(url: str) -> bool:
    try:
        return requests.get(f"{url}/3/Cloud", timeout=2).json().get("cloud_healthy", False)
    except (requests.RequestException, ValueError):
        return False


def start_local_h2o(
    log_dir: Path, *, max_mem: str, nthreads: int = 2, java_home: str | None = None, timeout: float = 60.0
) -> LocalH2O:
    """Start a one-node cluster on loopback and wait until it answers."""
    java = find_java_home(java_home) / "bin" / "java"
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port(block=2)  # REST on port, internal on port + 1
    argv = [
        str(java),
        f"-Xmx{max_mem}",
        "-jar",
        str(H2O_JAR),
        "-name",
        f"tessera-{os.getpid()}-{port}",
        "-ip",
        "127.0.0.1",
        "-port",
        str(port),
        "-nthreads",
        str(nthreads),
        "-log_dir",
        str(log_dir),
        "-ice_root",
        str(log_dir),
    ]
    out = open(log_dir / "stdout.log", "ab")  # noqa: SIM115 - the JVM owns it for its lifetime
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    out.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if cluster_up(url):
            return LocalH2O(proc.pid, url, log_dir)
        time.sleep(0.3)
    stop_pid(proc.pid, timeout=5)
    tail = (log_dir / "stdout.log").read_text(errors="replace").splitlines()[-15:]
    raise H2OStartError(f"H2O did not start on {url} within {timeout:.0f} s:\n" + "\n".join(tail))


def connect(url: str) -> None:
    """Point the h2o client at ``url`` (quietly)."""
    h2o.connect(url=url, verbose=False)
    h2o.no_progress()
