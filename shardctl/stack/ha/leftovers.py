"""What a killed member leaves behind, found and cleared before it starts again.

A SIGKILLed Patroni leaves its children running: its Postgres (in a session of its own, Patroni calls
``setsid`` for it), a ``pg_basebackup`` or ``pg_rewind`` it was running (in Patroni's session). Any of them,
alive or stopped, would hold the data directory against the new start. A clone killed half-way leaves a data
directory without ``global/pg_control`` (pg_basebackup writes it last): Patroni refuses it ("system ID is
invalid; consider doing reinitialize"), yet it holds no database, so it is removed and cloned again. A
``postmaster.pid`` whose PID now belongs to another process would make Postgres refuse to start.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from pathlib import Path

from shardctl.process import pid_alive, stop_pid


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def process_state(pid: int) -> str | None:
    """The kernel's one-letter state of ``pid`` (R, S, T for stopped, Z, ...), None if it is gone."""
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def session_processes(sessions: set[int]) -> list[int]:
    """Every live process whose session ID is one of ``sessions`` (orphans keep their session)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields and fields[0] != "Z" and int(fields[3]) in sessions:
            found.append(int(entry.name))
    return found


def processes_naming(path: Path) -> list[int]:
    """Every live process whose command line names ``path`` (a postmaster's -D, pg_basebackup's -D)."""
    marker = str(path).encode()
    return [
        int(e.name)
        for e in Path("/proc").iterdir()
        if e.name.isdigit() and marker in _cmdline(int(e.name)) and pid_alive(int(e.name))
    ]


def postmaster_pid(data_dir: Path) -> int | None:
    """The PID recorded in ``postmaster.pid``, whether or not it runs."""
    try:
        return int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None


def _parents() -> dict[int, int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields and fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    return parents


def member_processes(data_dir: Path, recorded: list[int | None]) -> list[int]:
    """The processes that belong to one member: the session of its recorded Patroni (pg_basebackup and
    pg_rewind run there), whatever names its data directory (the postmaster), and their descendants
    (backends, walsenders: each calls setsid, so sessions do not find them). Never our own process."""
    sessions = {pid for pid in recorded if pid}
    pids = set(session_processes(sessions)) | set(processes_naming(data_dir))
    parents = _parents()
    grown = True
    while grown:
        children = {pid for pid, parent in parents.items() if parent in pids} - pids
        pids |= children
        grown = bool(children)
    pids.discard(os.getpid())
    return sorted(pids)


def clear(data_dir: Path, recorded: list[int | None], timeout: float = 20.0) -> list[int]:
    """Stop what a dead Patroni left behind (stopped processes are continued first, so they can exit
    cleanly); returns the PIDs that were found."""
    pids = member_processes(data_dir, recorded)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    # The postmaster first, with a fast shutdown: its backends follow it.
    postmaster = postmaster_pid(data_dir)
    if postmaster in pids:
        stop_pid(postmaster, signal.SIGINT, timeout)
    for pid in pids:
        stop_pid(pid, signal.SIGTERM, timeout)
    return pids


def remove_stale_pid_file(data_dir: Path) -> bool:
    """Remove ``postmaster.pid`` if no postmaster of this data directory runs under its PID."""
    pid = postmaster_pid(data_dir)
    if pid is None or (pid_alive(pid) and str(data_dir).encode() in _cmdline(pid)):
        return False
    (data_dir / "postmaster.pid").unlink(missing_ok=True)
    return True


def interrupted_clone(data_dir: Path) -> bool:
    """True if ``data_dir`` has files but no ``global/pg_control``: a clone or initdb that did not finish."""
    try:
        has_files = any(data_dir.iterdir())
    except OSError:
        return False
    return has_files and not (data_dir / "global" / "pg_control").exists()


def remove_data_dir(data_dir: Path) -> None:
    """Delete a member's data directory so Patroni clones it afresh (replicas only: callers check)."""
    shutil.rmtree(data_dir, ignore_errors=True)
