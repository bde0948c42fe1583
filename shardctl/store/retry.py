"""Writes that survive a failover: reconnect to the shard's current primary and run the work again.

A shard's DSN names every member with ``target_session_attrs=read-write``, so a fresh connection lands
on whichever member is primary now. When a write fails because its connection died (the primary was
killed, or demoted by a switchover), we reconnect and run the whole transaction again until it commits
or a deadline passes. That is safe only for idempotent work (upserts keyed by the entity): a commit
whose acknowledgement was lost may have happened, and running it again must change nothing. Callers see
a failover as latency, not as an error.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict

from shardctl.errors import StoreError

T = TypeVar("T")

# SQLSTATEs that mean "this server is not (or no longer) the primary you can write to".
_FAILOVER_STATES = {
    "25006",  # read_only_sql_transaction: connected to a member that was demoted
    "57P01",  # admin_shutdown: the server is stopping (switchover, fast shutdown)
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now: starting up or in recovery
}


class FailoverTimeout(StoreError, RuntimeError):
    """No primary accepted the work before the deadline; the message carries the last error."""


def is_failover_error(exc: BaseException, conn: psycopg.Connection[Any] | None = None) -> bool:
    """True if ``exc`` means the primary went away (retry elsewhere), not that the work itself is wrong."""
    if not isinstance(exc, psycopg.Error):
        return False
    if conn is not None and (conn.closed or conn.broken):
        return True
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate is None:
        return isinstance(exc, psycopg.OperationalError)  # no server answer at all: the connection failed
    return sqlstate in _FAILOVER_STATES or sqlstate.startswith("08")


def is_multi_host(dsn: str) -> bool:
    """True if ``dsn`` names several servers (an HA shard): only then can another primary take over."""
    try:
        return "," in (conninfo_to_dict(dsn).get("host") or "")
    except psycopg.ProgrammingError:
        return False


def failover_in(exc: BaseException) -> bool:
    """True if ``exc`` (or a shard failure it carries, as the feature writer's errors do) is a failover."""
    causes: list[BaseException] = [exc]
    failures = getattr(exc, "failures", None)
    if isinstance(failures, dict):
        causes += list(failures.values())
    for cause in list(causes):
        inner = getattr(cause, "cause", None) or cause.__cause__
        if isinstance(inner, BaseException):
            causes.append(inner)
    return any(is_failover_error(c) for c in causes)


class PrimaryConnection:
    """One connection to a shard's current primary, replaced transparently after a failover."""

    def __init__(self, dsn: str, deadline: float = 30.0, retry_interval: float = 0.1):
        self.dsn = dsn
        self.deadline = deadline
        self.retry_interval = retry_interval
        self._conn: psycopg.Connection[Any] | None = None
        self.reconnects = 0

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(self.dsn, autocommit=True)
        return self._conn

    def _discard(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None
            self.reconnects += 1

    def run(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run ``work`` in one transaction on the primary; after a failover, reconnect and run it again.

        ``work`` must be idempotent. Errors that are not about the primary going away propagate at once.
        """
        started = time.monotonic()
        while True:
            conn = None
            try:
                conn = self._connection()
                with conn.transaction():
                    return work(conn)
            except psycopg.Error as exc:
                if not is_failover_error(exc, conn):
                    raise
                self._discard()
                if time.monotonic() - started > self.deadline:
                    raise FailoverTimeout(f"no primary took the write within {self.deadline:.0f}s: {exc}") from exc
                time.sleep(self.retry_interval)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> PrimaryConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
