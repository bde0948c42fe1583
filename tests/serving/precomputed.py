"""What the tests know of precomputed predictions: which entities have a current one (for exactly their stored
features, by one model version), and a wait that wakes at each batch the scorer commits."""

from __future__ import annotations

import threading
import time

import psycopg

from shardctl.store.predictions import PREDICTION_TABLE, WRITTEN_CHANNEL
from shardctl.store.registry import ModelVersion
from tests.serving.conftest import FEATURE_SET

WAIT = 60.0
POLL_S = 0.2

_CURRENT_SQL = f"""SELECT f.entity_id FROM entity_features f JOIN {PREDICTION_TABLE} p
  ON p.logical_shard = f.logical_shard AND p.entity_id = f.entity_id AND p.feature_set = f.feature_set
 AND p.model_name = %s AND p.model_version = %s AND p.feature_version = f.version
 AND p.feature_digest = md5(f.features::text)::uuid
 WHERE f.feature_set = %s AND f.entity_id = ANY(%s)"""


class Predictions:
    """Which entities have a current precomputed prediction (for exactly their stored features, by one model
    version), and a wait that wakes at every batch the scorer commits on any server."""

    def __init__(self, dsns: list[str], *, listen: bool = True):
        """``listen=False``: no LISTEN (a server that may fail over: a standby refuses it, and a failover breaks
        it); every wait re-checks the table every ``POLL_S`` instead."""
        self.dsns = dsns
        self.written = threading.Condition()
        self.batches = 0
        self._stop = threading.Event()
        self._listens = listen
        self._threads = [threading.Thread(target=self._listen, args=(dsn,), daemon=True) for dsn in dsns]
        if listen:
            self._listening = threading.Barrier(len(dsns) + 1)
            for thread in self._threads:
                thread.start()
            self._listening.wait(timeout=30)

    def _listen(self, dsn: str) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"LISTEN {WRITTEN_CHANNEL}")
            self._listening.wait(timeout=30)
            try:
                while not self._stop.is_set():
                    for _ in conn.notifies(timeout=0.2):
                        with self.written:
                            self.batches += 1
                            self.written.notify_all()
            except psycopg.OperationalError:
                if not self._stop.is_set():  # the last test stops the stack: a waiter after it would hang
                    raise

    def current(self, model: ModelVersion, entities: list[str]) -> set[str]:
        found: set[str] = set()
        for dsn in self.dsns:
            with psycopg.connect(dsn) as conn:
                rows = conn.execute(_CURRENT_SQL, (model.model_name, model.version, FEATURE_SET, entities)).fetchall()
                found |= {r[0] for r in rows}
        return found

    def wait_current(self, model: ModelVersion, entities: list[str], timeout: float = WAIT) -> bool:
        """Block until every entity has a current prediction of ``model``, re-checking at each batch."""
        deadline = time.monotonic() + timeout
        while True:
            with self.written:
                seen = self.batches
            try:
                if set(entities) <= self.current(model, entities):
                    return True
            except psycopg.OperationalError:
                if self._listens:  # else a server failing over: not yet
                    raise
            if not self.wait_batch(seen, deadline - time.monotonic()):
                return set(entities) <= self.current(model, entities)

    def wait_batch(self, after: int, timeout: float = WAIT) -> bool:
        if not self._listens:
            time.sleep(min(POLL_S, max(0.0, timeout)))
            return timeout > 0
        with self.written:
            return self.written.wait_for(lambda: self.batches > after, timeout=timeout)

    def close(self) -> None:
        self._stop.set()
        if self._listens:
            for thread in self._threads:
                thread.join(timeout=5)
