"""Catalog change notifications (PostgreSQL LISTEN/NOTIFY), so processes learn of a new shard map or a
newly promoted model within a second without polling tables in a loop."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)


class NotificationListener:
    """Calls ``callback(payload)`` for every NOTIFY on ``channel``, from a daemon thread.

    The connection is re-opened after errors (e.g. the catalog restarted); ``on_reconnect`` runs after each
    re-connection so the owner can re-read state it may have missed while disconnected.
    """

    def __init__(
        self,
        dsn: str,
        channel: str,
        callback: Callable[[str], None],
        on_reconnect: Callable[[], None] | None = None,
        retry_seconds: float = 1.0,
    ):
        self._dsn = dsn
        self._channel = channel
        self._callback = callback
        self._on_reconnect = on_reconnect
        self._retry_seconds = retry_seconds
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._connected = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"listen-{channel}", daemon=True)

    def start(self, timeout: float = 10.0) -> NotificationListener:
        """Start listening; returns once LISTEN is in effect (or after ``timeout``)."""
        self._thread.start()
        self._ready.wait(timeout)
        return self

    @property
    def connected(self) -> bool:
        """Whether LISTEN is in effect now (False while the catalog is unreachable and the thread retries)."""
        return self._connected.is_set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def __enter__(self) -> NotificationListener:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        first = True
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                    if not first and self._on_reconnect:
                        self._on_reconnect()
                    first = False
                    self._ready.set()
                    self._connected.set()
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            self._dispatch(note.payload)
            except psycopg.Error as exc:
                self._connected.clear()
                log.warning("listener on %s lost its connection (%s); retrying", self._channel, exc)
                self._stop.wait(self._retry_seconds)

    def _dispatch(self, payload: str) -> None:
        try:
            self._callback(payload)
        except Exception:  # a bad callback must not kill the listener
            log.exception("notification callback for %s failed", self._channel)
