"""``ShardMapWatcher``: a process's current shard map, kept up to date by the catalog's NOTIFYs, and its heartbeat
telling the catalog which epoch the process follows (a migration cleans up only once every live process moved)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Protocol

import psycopg

from shardctl.store.notify import NotificationListener
from shardctl.store.shardmap.value import ShardMap, ShardMapError

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "tessera_shard_map"  # publishers NOTIFY the new epoch here on commit; watchers LISTEN


class MapSource(Protocol):
    """What a watcher needs of the catalog (``ShardMapStore``): the map, and where to record its heartbeat."""

    catalog_dsn: str

    def current(self) -> ShardMap: ...

    def acknowledge(self, process: str, epoch: int) -> None: ...

    def forget(self, process: str) -> None: ...


class ShardMapWatcher:
    """Holds the current shard map and follows the catalog's NOTIFYs (``shardctl/store/notify.py``'s listener
    thread blocks in ``LISTEN``: no polling loop). Each notification, and each reconnection (a notification
    may have been missed meanwhile), re-reads the map; listeners hear of every newer epoch."""

    HEARTBEAT_S = 3.0

    def __init__(self, store: MapSource, on_change: Callable[[ShardMap], None] | None = None, *, role: str = ""):
        self.store = store
        self._listeners: list[Callable[[ShardMap], None]] = [on_change] if on_change else []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._listener: NotificationListener | None = None
        self._current = store.current()
        self.process = f"{role or 'process'}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._stop_beating = threading.Event()
        self._beating: threading.Thread | None = None

    @property
    def current(self) -> ShardMap:
        with self._lock:
            return self._current

    def refresh(self) -> ShardMap:
        """Re-read the catalog now (the writer calls this after a stale-epoch refusal)."""
        self._update(self.store.current())
        return self.current

    def _refresh_quietly(self, _payload: str = "") -> None:
        try:
            self.refresh()
        except (psycopg.Error, ShardMapError) as exc:
            log.warning("could not re-read the shard map (%s); keeping epoch %s", exc, self.current.epoch)

    def wait_for_epoch(self, epoch: int, timeout: float) -> ShardMap:
        """Block until the map reaches ``epoch`` (a NOTIFY, or a re-read every 0.5 s) or ``timeout`` passes;
        returns the current map either way."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if self.current.epoch >= epoch or left <= 0:
                return self.current
            with self._changed:
                self._changed.wait(min(0.5, left))
            if self.current.epoch < epoch:
                self._refresh_quietly()

    def _update(self, latest: ShardMap) -> None:
        with self._lock:
            if latest.epoch <= self._current.epoch:
                return
            self._current = latest
            self._changed.notify_all()
        log.info("shard map epoch %s (%s servers)", latest.epoch, latest.server_count)
        self._acknowledge()
        for listener in list(self._listeners):
            try:
                listener(latest)
            except Exception:
                log.exception("shard map listener failed")

    def start(self) -> ShardMapWatcher:
        if self._listener is None:
            self._listener = NotificationListener(
                self.store.catalog_dsn, NOTIFY_CHANNEL, self._refresh_quietly, on_reconnect=self._refresh_quietly
            ).start()
            self._refresh_quietly()  # an epoch published between reading the map and LISTEN taking effect
            self._stop_beating.clear()
            self._beating = threading.Thread(target=self._heartbeat, name="shard-map-heartbeat", daemon=True)
            self._beating.start()
        return self

    def _acknowledge(self) -> None:
        if self._beating is None:
            return  # a watcher that was never started follows nothing on its own
        try:
            self.store.acknowledge(self.process, self.current.epoch)
        except psycopg.Error as exc:
            log.warning("could not record epoch %s in the catalog (%s)", self.current.epoch, exc)

    def _heartbeat(self) -> None:
        """Tell the catalog which epoch this process follows, every few seconds (migrations wait for it)."""
        while not self._stop_beating.is_set():
            self._acknowledge()
            self._stop_beating.wait(self.HEARTBEAT_S)

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
        if self._beating is not None:
            self._stop_beating.set()
            self._beating.join(5)
            self._beating = None
            try:
                self.store.forget(self.process)
            except psycopg.Error as exc:
                log.warning("could not remove %s from the epoch acknowledgements (%s)", self.process, exc)

    def __enter__(self) -> ShardMapWatcher:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
