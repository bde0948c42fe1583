"""A history of writes with their outcomes, and the checks a nemesis run must pass (Jepsen's way, small).

The writer inserts rows 1, 2, 3, ... of one run, one at a time, each under a client-side deadline (a
paused server would otherwise hold the client forever). Each write ends:

- ``ok``: the commit returned; it must survive (recorded with the primary's port and timeline);
- ``fail``: it certainly did not happen (no connection, or a read-only server refused it);
- ``info``: anything after the statement was sent (timeout, connection lost): it may or may not exist.

`check` then asks of the final state: every ``ok`` row present, no ``fail`` row present, and one primary at
a time (each timeline acknowledged by one server, timelines never going back in acknowledgement order,
every acknowledged timeline on the final primary's history).
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg

from shardctl.errors import first_line
from testkit.ha.drill import PROBE_TABLE

OK, FAIL, INFO = "ok", "fail", "info"
_READ_ONLY = "25006"


@dataclass(frozen=True)
class Op:
    n: int
    invoked: float  # time.monotonic()
    completed: float
    outcome: str  # ok | fail | info
    port: int | None = None  # the server that acknowledged it
    timeline: int | None = None
    error: str = ""


def _cut(conn: psycopg.Connection[Any]) -> None:
    """Shut the connection's socket down from another thread: a client-side timeout that works even when the
    server is stopped (its kernel still acknowledges TCP, so no socket option notices)."""
    with contextlib.suppress(OSError, ValueError, psycopg.Error):
        sock = socket.socket(fileno=conn.pgconn.socket)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.detach()


class HistoryWriter:
    """Writes numbered rows in a thread until stopped, recording every outcome."""

    SQL = (
        f"INSERT INTO {PROBE_TABLE} (run, n) VALUES (%s, %s) ON CONFLICT (run, n) DO NOTHING"
        " RETURNING ('x' || substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8))::bit(32)::int"
    )

    def __init__(self, dsn: str, op_timeout: float = 3.0, interval: float = 0.01):
        self.dsn = dsn
        self.op_timeout = op_timeout
        self.interval = interval
        self.run_id = uuid.uuid4().hex[:12]
        self.ops: list[Op] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"history-{self.run_id}", daemon=True)

    def _one(self, conn: psycopg.Connection[Any] | None, n: int) -> tuple[Op, psycopg.Connection[Any] | None]:
        invoked = time.monotonic()
        if conn is None:
            try:
                conn = psycopg.connect(self.dsn, autocommit=True)
            except psycopg.Error as exc:
                return Op(n, invoked, time.monotonic(), FAIL, error=first_line(f"connect: {exc}")), None
        timer = threading.Timer(self.op_timeout, _cut, (conn,))
        timer.start()
        try:
            row = conn.execute(self.SQL, (self.run_id, n)).fetchone()
        except psycopg.Error as exc:
            outcome = FAIL if getattr(exc, "sqlstate", None) == _READ_ONLY else INFO
            with contextlib.suppress(psycopg.Error):
                conn.close()
            return Op(n, invoked, time.monotonic(), outcome, error=first_line(str(exc))), None
        finally:
            timer.cancel()
        timeline = row[0] if row else None
        return Op(n, invoked, time.monotonic(), OK, conn.info.port, timeline), conn

    def _loop(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        for n in itertools.count(1):
            if self._stop.is_set():
                break
            op, conn = self._one(conn, n)
            self.ops.append(op)
            time.sleep(self.interval if op.outcome == OK else 0.1)
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def start(self) -> HistoryWriter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.op_timeout + 30)

    def acked(self) -> list[Op]:
        return [op for op in list(self.ops) if op.outcome == OK]


@dataclass
class Verdict:
    ok: int
    failed: int
    indeterminate: int
    indeterminate_present: int
    lost: list[int] = field(default_factory=list)  # acknowledged, absent
    failed_present: list[int] = field(default_factory=list)  # certainly failed, yet present
    split_brain: list[str] = field(default_factory=list)  # signs of two primaries acknowledging

    @property
    def passed(self) -> bool:
        return not (self.lost or self.failed_present or self.split_brain)


def check(ops: list[Op], present: set[int], final_timelines: set[int]) -> Verdict:
    """Judge a history against the rows on the final primary and its timeline history (its timeline and
    every ancestor). Pure: tested on made-up histories as well as real ones."""
    by = {k: [op for op in ops if op.outcome == k] for k in (OK, FAIL, INFO)}
    split = []
    servers: dict[int | None, set[int | None]] = {}
    for op in by[OK]:
        servers.setdefault(op.timeline, set()).add(op.port)
    split += [f"timeline {tl} acknowledged by ports {sorted(p)}" for tl, p in servers.items() if len(p) > 1]
    ordered = sorted(by[OK], key=lambda op: op.completed)
    for a, b in itertools.pairwise(ordered):
        if (b.timeline or 0) < (a.timeline or 0):
            split.append(f"row {b.n} acknowledged on timeline {b.timeline} after row {a.n} on {a.timeline}")
    off = sorted({op.timeline for op in by[OK]} - final_timelines, key=lambda t: t or 0)
    split += [f"timeline {tl} acknowledged writes but is not on the final primary's history" for tl in off]
    return Verdict(
        ok=len(by[OK]),
        failed=len(by[FAIL]),
        indeterminate=len(by[INFO]),
        indeterminate_present=sum(op.n in present for op in by[INFO]),
        lost=sorted(op.n for op in by[OK] if op.n not in present),
        failed_present=sorted(op.n for op in by[FAIL] if op.n in present),
        split_brain=split,
    )


def timeline_history(conn: psycopg.Connection[Any]) -> set[int]:
    """The primary's current timeline and every ancestor (from its timeline history file)."""
    current = conn.execute(
        "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int"
    ).fetchone()[0]
    timelines = {current}
    if current > 1:
        text = conn.execute("SELECT pg_read_file(%s)", (f"pg_wal/{current:08X}.history",)).fetchone()[0]
        timelines |= {int(line.split()[0]) for line in text.splitlines() if line.strip() and line[0].isdigit()}
    return timelines
