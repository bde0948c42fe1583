"""Process and port helpers: every server the stack starts is tracked and stopped by its PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def pid_alive(pid: int | None) -> bool:
    """True if a process with this PID exists and is not a zombie."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _reap(pid: int) -> None:
    """Collect our own exited child, if it is one, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def stop_pid(pid: int, first_signal: int = signal.SIGTERM, timeout: float = 30.0) -> bool:
    """Ask a process to stop, escalate to SIGKILL after ``timeout``; True once it is gone."""
    if not pid_alive(pid):
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, first_signal)
    if wait_until(lambda: (_reap(pid), not pid_alive(pid))[1], timeout):
        return True
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return wait_until(lambda: (_reap(pid), not pid_alive(pid))[1], 10.0)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            if predicate():
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True if something accepts TCP connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def port_bindable(port: int, host: str = "127.0.0.1") -> bool:
    """True if we could bind host:port right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def allocate_ports(base: int, count: int, taken: set[int] | None = None) -> list[int]:
    """``count`` free ports at or above ``base``, skipping any in use or already taken."""
    taken = set(taken or ())
    ports: list[int] = []
    port = base
    while len(ports) < count:
        if port > 65535:
            raise RuntimeError(f"no free ports above {base}")
        if port not in taken and port_bindable(port):
            ports.append(port)
            taken.add(port)
        port += 1
    return ports


def free_port() -> int:
    """An ephemeral port the kernel says is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_in_own_session(argv: list[str], log_file: Path | None = None) -> int:
    """Start a server in the foreground of its own session, so the PID we keep is the server's own and it
    outlives the command that started it; its output goes to ``log_file`` (or nowhere)."""
    if log_file is None:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
        return proc.pid
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True
        )
    return proc.pid


def log_tail(log_file: Path, lines: int = 20) -> str:
    """The last lines of a server's log, for start-failure messages."""
    try:
        return "\n".join(log_file.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
