"""The shard map: which DSN holds shard *i*, under a monotonically increasing epoch, kept in the catalog.

Readers and writers cache the current map. A new epoch is announced with ``NOTIFY`` on commit, and a
``ShardMapWatcher`` thread blocked in ``LISTEN`` picks it up (no polling loop), so a future online migration
can switch traffic by publishing a map. Every write carries the epoch it routed with; each shard keeps a
*fence* (``tessera_shard_fence.min_epoch``, see ``shardctl/store/schema.py``) that the writer reads ``FOR SHARE``
inside its own transaction, so a write routed on an older map than the fence raises ``StaleShardMapError``
and is retried once on the refreshed map. Raising a fence waits for in-flight writes on that shard to commit,
which is exactly the hook a migration needs before it copies a shard's rows away.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psycopg

from shardctl.credentials import credentials_of, location_only, with_credentials
from shardctl.store.hashing import shard_for
from shardctl.store.notify import NotificationListener

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "tessera_shard_map"
_PUBLISH_LOCK_KEY = 0x7E55E7A1  # advisory lock serializing publishers (any constant unique to Tessera)

CATALOG_DDL = """
CREATE TABLE IF NOT EXISTS tessera_shard_epochs (
    epoch        bigint PRIMARY KEY CHECK (epoch >= 1),
    total_shards integer NOT NULL CHECK (total_shards >= 1),
    published_at timestamptz NOT NULL DEFAULT now(),
    note         text NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS tessera_shard_map (
    epoch       bigint NOT NULL REFERENCES tessera_shard_epochs (epoch),
    shard_index integer NOT NULL CHECK (shard_index >= 0),
    dsn         text NOT NULL CHECK (dsn <> ''),
    PRIMARY KEY (epoch, shard_index)
);
"""


class ShardMapError(RuntimeError):
    """The catalog has no usable shard map (not initialized, or inconsistent)."""


class StaleShardMapError(RuntimeError):
    """A write was routed with an epoch older than the shard's fence: refresh the map and route again."""

    def __init__(self, shard: int, write_epoch: int, fence_epoch: int):
        super().__init__(
            f"shard {shard}: write routed with shard-map epoch {write_epoch}, "
            f"but the shard is fenced at epoch {fence_epoch}; refresh the shard map and retry"
        )
        self.shard = shard
        self.write_epoch = write_epoch
        self.fence_epoch = fence_epoch


@dataclass(frozen=True)
class ShardMap:
    """One epoch of the topology: ``dsns[i]`` is shard *i* (a libpq DSN, possibly multi-host)."""

    epoch: int
    dsns: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.epoch < 1:
            raise ValueError(f"epoch must be >= 1, got {self.epoch}")
        if not self.dsns:
            raise ValueError("a shard map needs at least one shard")
        if any(not isinstance(d, str) or not d.strip() for d in self.dsns):
            raise ValueError("every shard DSN must be a non-empty string")

    @property
    def total_shards(self) -> int:
        return len(self.dsns)

    def shard_for(self, entity_id: str) -> int:
        return shard_for(entity_id, self.total_shards)

    def dsn_for(self, entity_id: str) -> str:
        return self.dsns[self.shard_for(entity_id)]


class ShardMapStore:
    """The shard map in the catalog database: read the current epoch, publish a new one."""

    def __init__(self, catalog_dsn: str, *, connect_timeout: float = 5.0):
        if not catalog_dsn:
            raise ShardMapError("no catalog DSN: set TESSERA_CATALOG_DSN or run `shardctl stack up`")
        self.catalog_dsn = catalog_dsn
        self.connect_timeout = connect_timeout

    def _connect(self, **kwargs) -> psycopg.Connection:
        return psycopg.connect(self.catalog_dsn, connect_timeout=max(1, int(self.connect_timeout)), **kwargs)

    def ensure_schema(self) -> None:
        """Create the catalog tables if missing (idempotent)."""
        with self._connect() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PUBLISH_LOCK_KEY,))
            conn.execute(CATALOG_DDL)

    def current(self) -> ShardMap:
        """The newest epoch's map; ``ShardMapError`` if none was published."""
        with self._connect() as conn:
            found = _read_current(conn)
        if found is None:
            raise ShardMapError("the catalog has no shard map: run `shardctl stack up` or publish one")
        return self._as_caller(found)

    def _as_caller(self, shard_map: ShardMap) -> ShardMap:
        """The map holds locations only; connect to every shard as this store connects to the catalog (each
        part's own role, ``shardctl/credentials.py``)."""
        caller = credentials_of(self.catalog_dsn)
        return ShardMap(shard_map.epoch, tuple(with_credentials(d, caller) for d in shard_map.dsns))

    def publish(self, dsns: Sequence[str], *, note: str = "", fence_shards: bool = False) -> ShardMap:
        """Store ``dsns`` as the next epoch and NOTIFY listeners on commit.

        With ``fence_shards``, every shard of the previous and the new map then gets its fence raised to the
        new epoch (``raise_fence``), so writes still routed on an older map are refused from then on.
        """
        candidate = ShardMap(1, tuple(location_only(d) for d in dsns))  # validates before touching the catalog
        with self._connect() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PUBLISH_LOCK_KEY,))
            previous = _read_current(conn)
            epoch = (previous.epoch if previous else 0) + 1
            _insert_map(conn, epoch, candidate.dsns, note)
            conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, str(epoch)))
        published = self._as_caller(ShardMap(epoch, candidate.dsns))
        if fence_shards:
            previous = self._as_caller(previous) if previous else None
            targets = dict.fromkeys((*(previous.dsns if previous else ()), *published.dsns))
            for dsn in targets:
                raise_fence(dsn, epoch)
        return published

    def initialize_from_settings(self, settings) -> ShardMap:  # settings: TesseraSettings
        """Publish the settings' shards as epoch 1 if the catalog has no map yet; else return the current map.

        The catalog is the source of truth once a map exists: settings only seed it.
        """
        return self.initialize(settings.shard_dsns())

    def initialize(self, dsns: Sequence[str]) -> ShardMap:
        """Publish ``dsns`` as epoch 1 unless the catalog already has a map (idempotent, safe to race)."""
        dsns = tuple(location_only(d) for d in dsns)
        if not dsns:
            raise ShardMapError(
                "no shards to initialize the shard map with: set TESSERA_SHARDS or run `shardctl stack up`"
            )
        candidate = ShardMap(1, dsns)
        self.ensure_schema()
        with self._connect() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PUBLISH_LOCK_KEY,))
            existing = _read_current(conn)
            if existing is not None:
                if existing.dsns != dsns:
                    log.warning(
                        "catalog shard map (epoch %s) differs from the settings; using the catalog", existing.epoch
                    )
                return self._as_caller(existing)
            _insert_map(conn, 1, candidate.dsns, "initialized from settings")
            conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, "1"))
        return self._as_caller(candidate)

    def watch(self, on_change: Callable[[ShardMap], None] | None = None) -> ShardMapWatcher:
        """A started watcher holding the current map, updated on every published epoch."""
        return ShardMapWatcher(self, on_change).start()


def _read_current(conn: psycopg.Connection) -> ShardMap | None:
    rows = conn.execute(
        """SELECT m.epoch, m.shard_index, m.dsn, e.total_shards
             FROM tessera_shard_map m JOIN tessera_shard_epochs e USING (epoch)
            WHERE m.epoch = (SELECT max(epoch) FROM tessera_shard_epochs)
            ORDER BY m.shard_index"""
    ).fetchall()
    if not rows:
        return None
    epoch, total = rows[0][0], rows[0][3]
    if [r[1] for r in rows] != list(range(total)):
        raise ShardMapError(f"shard map epoch {epoch} is inconsistent: indices {[r[1] for r in rows]}, total {total}")
    return ShardMap(epoch, tuple(r[2] for r in rows))


def _insert_map(conn: psycopg.Connection, epoch: int, dsns: Sequence[str], note: str) -> None:
    conn.execute(
        "INSERT INTO tessera_shard_epochs (epoch, total_shards, note) VALUES (%s, %s, %s)", (epoch, len(dsns), note)
    )
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO tessera_shard_map (epoch, shard_index, dsn) VALUES (%s, %s, %s)",
            [(epoch, i, dsn) for i, dsn in enumerate(dsns)],
        )


FENCE_READ_SQL = "SELECT min_epoch FROM tessera_shard_fence WHERE singleton FOR SHARE"


def check_fence(conn: psycopg.Connection, shard: int, write_epoch: int) -> None:
    """Inside the write's transaction: refuse the write if the shard is fenced beyond its epoch.

    ``FOR SHARE`` keeps the fence row from changing until this transaction ends, so ``raise_fence`` waits
    for every write that already passed the check.
    """
    row = conn.execute(FENCE_READ_SQL).fetchone()
    fence_epoch = row[0] if row else 0
    if write_epoch < fence_epoch:
        raise StaleShardMapError(shard, write_epoch, fence_epoch)


def raise_fence(dsn: str, epoch: int, *, connect_timeout: int = 5) -> int:
    """Refuse, from now on, writes routed with an epoch below ``epoch`` on this shard; returns the fence.

    Waits for in-flight writes on the shard to commit (they hold the fence row ``FOR SHARE``).
    Never lowers a fence.
    """
    with psycopg.connect(dsn, connect_timeout=connect_timeout) as conn:
        row = conn.execute(
            "UPDATE tessera_shard_fence SET min_epoch = greatest(min_epoch, %s), changed_at = now() "
            "WHERE singleton RETURNING min_epoch",
            (epoch,),
        ).fetchone()
    if row is None:
        raise ShardMapError(
            f"shard {dsn!r} has no fence row: apply the schema first (shardctl.store.schema.apply_schema)"
        )
    return row[0]


class ShardMapWatcher:
    """Holds the current shard map and follows the catalog's NOTIFYs (``shardctl/store/notify.py``'s listener
    thread blocks in ``LISTEN``: no polling loop). Each notification, and each reconnection (a notification
    may have been missed meanwhile), re-reads the map; listeners hear of every newer epoch."""

    def __init__(self, store: ShardMapStore, on_change: Callable[[ShardMap], None] | None = None):
        self.store = store
        self._listeners: list[Callable[[ShardMap], None]] = [on_change] if on_change else []
        self._lock = threading.Lock()
        self._listener: NotificationListener | None = None
        self._current = store.current()

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

    def _update(self, latest: ShardMap) -> None:
        with self._lock:
            if latest.epoch <= self._current.epoch:
                return
            self._current = latest
        log.info("shard map epoch %s (%s shards)", latest.epoch, latest.total_shards)
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
        return self

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.stop()
            self._listener = None

    def __enter__(self) -> ShardMapWatcher:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
