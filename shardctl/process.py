"""Process and port helpers: every server the stack starts is tracked and stopped by its PID."""

from __future__ import annotations

import contextlib
import os
import random
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
    except (FileNotFoundError, ProcessLookupError):  # gone before the open, or between the open and the read
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


def wait_until(
    predicate: Callable[[], bool],
    timeout: float,
    interval: float = 0.1,
    expected: tuple[type[BaseException], ...] = (OSError,),
) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass.

    An exception of an ``expected`` type (default ``OSError``: a refused connection, a process already reaped)
    counts as "not yet"; any other propagates at once, so a bug in the predicate is not mistaken for a timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(*expected):
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


def ephemeral_port_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux default 32768-60999)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port(block: int = 1, low: int = 10000, high: int = 65000) -> int:
    """The first of ``block`` consecutive ports that are free now, chosen at random outside the kernel's
    ephemeral range: a port handed out by ``bind(0)`` or picked inside that range can be taken by any outgoing
    connection (a client socket of another test) between our check and the server's own bind."""
    eph_low, eph_high = ephemeral_port_range()
    candidates = [port for port in range(low, high - block, block) if port + block - 1 < eph_low or port > eph_high]
    rng = random.SystemRandom()
    for _ in range(500):
        port = rng.choice(candidates)
        if all(port_bindable(p) for p in range(port, port + block)):
            return port
    raise RuntimeError(f"no {block} consecutive free ports in {low}-{high} outside {eph_low}-{eph_high}")


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


COORDINATION_NICENESS = -5


def favour_coordination(pid: int) -> bool:
    """Give a coordination process of the local HA stack (etcd, Patroni and the Postgres it starts) the CPU
    before other work on a shared machine. Why: Patroni reads etcd with a timeout of about a second (the
    local stack's ttl is 8 s), and two cores busy with training, tests or load generators can make etcd miss
    it, which Patroni takes for a lost DCS: a spurious demotion. Only root may raise a priority; for anyone
    else this is a no-op (False)."""
    if os.geteuid() != 0:
        return False
    try:
        os.setpriority(os.PRIO_PROCESS, pid, COORDINATION_NICENESS)
    except OSError:
        return False
    return True


def log_tail(log_file: Path, lines: int = 20) -> str:
    """The last lines of a server's log, for start-failure messages."""
    try:
        return "\n".join(log_file.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
