"""The shard map: which server holds each logical shard, under a monotonically increasing epoch, in the catalog.

Routing is ``entity id -> logical shard -> server``: ``logical_shard = Hash(entity_id) % 256`` never changes,
and each epoch places the 256 logical shards on named servers (``placement``; the first epoch puts logical
shard ``l`` on server ``l % N``, which for a power-of-two N is exactly where ``hash % N`` put every row before
logical shards existed). Servers are registered by name (``tessera_servers``); plans, the CLI and run config
name servers, never DSNs.

Readers and writers cache the current map. A new epoch is announced with ``NOTIFY`` on commit, and a
``ShardMapWatcher`` thread blocked in ``LISTEN`` picks it up (no polling loop); each watcher also records the
epoch it follows in ``tessera_epoch_acks`` (a heartbeat), so a migration knows when every live process has
moved on. Every write carries the epoch it routed with; each server keeps two fences that the writer reads
``FOR SHARE`` in its own transaction: the whole-server fence (``tessera_shard_fence``, ``check_fence``) and the
per-logical-shard fence a cutover raises on the moving logical shards only (``shardctl/store/fence.py``).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import psycopg

from shardctl.credentials import credentials_of, location_only, with_credentials
from shardctl.errors import StoreError
from shardctl.store.connection import connect
from shardctl.store.errors import describe_dsn
from shardctl.store.hashing import TOTAL_LOGICAL_SHARDS, entity_hash
from shardctl.store.notify import NotificationListener

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "tessera_shard_map"
_PUBLISH_LOCK_KEY = 0x7E55E7A1  # advisory lock serializing publishers (any constant unique to Tessera)
SERVER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")

# Idempotent: creates a fresh catalog, and brings a catalog from before logical shards up to date (its servers
# get the names server-0, server-1, ... for their indices; an epoch without placement rows places logical
# shard l on server l % N, which is where its rows already are for a power-of-two N).
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
ALTER TABLE tessera_shard_map ADD COLUMN IF NOT EXISTS server text;
UPDATE tessera_shard_map SET server = 'server-' || shard_index WHERE server IS NULL;
CREATE TABLE IF NOT EXISTS tessera_servers (
    name          text PRIMARY KEY,
    dsn           text NOT NULL CHECK (dsn <> ''),
    registered_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO tessera_servers (name, dsn)
SELECT server, dsn FROM tessera_shard_map WHERE epoch = (SELECT max(epoch) FROM tessera_shard_epochs)
ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS tessera_placement (
    epoch         bigint NOT NULL REFERENCES tessera_shard_epochs (epoch),
    logical_shard integer NOT NULL CHECK (logical_shard >= 0),
    server_index  integer NOT NULL CHECK (server_index >= 0),
    PRIMARY KEY (epoch, logical_shard)
);
CREATE TABLE IF NOT EXISTS tessera_epoch_acks (
    process      text PRIMARY KEY,
    epoch        bigint NOT NULL,
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);
"""


class ShardMapError(StoreError, RuntimeError):
    """The catalog has no usable shard map (not initialized, or inconsistent), or a publish lost a race."""


class StaleShardMapError(StoreError, RuntimeError):
    """A write was routed with an epoch older than the server's fence: refresh the map and route again."""

    def __init__(self, shard: int, write_epoch: int, fence_epoch: int):
        super().__init__(
            f"shard {shard}: write routed with shard-map epoch {write_epoch}, "
            f"but the shard is fenced at epoch {fence_epoch}; refresh the shard map and retry"
        )
        self.shard = shard
        self.write_epoch = write_epoch
        self.fence_epoch = fence_epoch


def server_name(index: int) -> str:
    """The name a server gets when none is given: ``server-<index>``."""
    return f"server-{index}"


def check_server_name(name: str) -> str:
    if not isinstance(name, str) or not SERVER_NAME.match(name):
        raise ShardMapError(f"bad server name {name!r}: use lower-case letters, digits, - and _ (max 63)")
    return name


def initial_placement(server_count: int) -> tuple[int, ...]:
    """Logical shard ``l`` on server ``l % server_count``."""
    return tuple(shard % server_count for shard in range(TOTAL_LOGICAL_SHARDS))


@dataclass(frozen=True)
class ShardMap:
    """One epoch of the topology: server ``i`` is named ``servers[i]`` and reached at ``dsns[i]`` (a libpq DSN,
    possibly multi-host); ``placement[l]`` is the index of the server holding logical shard ``l``."""

    epoch: int
    dsns: tuple[str, ...]
    servers: tuple[str, ...] = ()
    placement: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.epoch < 1:
            raise ValueError(f"epoch must be >= 1, got {self.epoch}")
        if not self.dsns:
            raise ValueError("a shard map needs at least one server")
        if any(not isinstance(d, str) or not d.strip() for d in self.dsns):
            raise ValueError("every server DSN must be a non-empty string")
        if not self.servers:
            object.__setattr__(self, "servers", tuple(server_name(i) for i in range(len(self.dsns))))
        if not self.placement:
            object.__setattr__(self, "placement", initial_placement(len(self.dsns)))
        if len(self.servers) != len(self.dsns) or len(set(self.servers)) != len(self.servers):
            raise ValueError(f"servers {self.servers} must be unique and one per DSN")
        if len(self.placement) != TOTAL_LOGICAL_SHARDS or not all(0 <= i < len(self.dsns) for i in self.placement):
            raise ValueError(f"a placement names a server index for each of the {TOTAL_LOGICAL_SHARDS} logical shards")

    @property
    def server_count(self) -> int:
        return len(self.dsns)

    @property
    def total_shards(self) -> int:
        """Deprecated name of ``server_count`` (it counted servers before logical shards existed)."""
        return len(self.dsns)

    @staticmethod
    def logical_shard_for(entity_id: str) -> int:
        return entity_hash(entity_id) % TOTAL_LOGICAL_SHARDS

    def server_index_for(self, entity_id: str) -> int:
        return self.placement[entity_hash(entity_id) % TOTAL_LOGICAL_SHARDS]

    shard_for = server_index_for  # the name from before logical shards; callers move to server_index_for

    def dsn_for(self, entity_id: str) -> str:
        return self.dsns[self.server_index_for(entity_id)]

    def placement_by_name(self) -> dict[int, str]:
        return {shard: self.servers[index] for shard, index in enumerate(self.placement)}

    def logical_shards_on(self, name: str) -> list[int]:
        index = self.servers.index(name) if name in self.servers else -1
        return [shard for shard, held in enumerate(self.placement) if held == index]

    def logical_shards_of(self, index: int) -> list[int]:
        return [shard for shard, held in enumerate(self.placement) if held == index]

    def dsn_of(self, name: str) -> str:
        return self.dsns[self.servers.index(name)]


class ShardMapStore:
    """The shard map in the catalog database: read the current epoch, publish a new one, register servers."""

    def __init__(self, catalog_dsn: str, *, connect_timeout: float = 5.0):
        if not catalog_dsn:
            raise ShardMapError("no catalog DSN: set TESSERA_CATALOG_DSN or run `shardctl stack up`")
        self.catalog_dsn = catalog_dsn
        self.connect_timeout = connect_timeout

    def _connect(self, **kwargs) -> psycopg.Connection:
        return connect(self.catalog_dsn, connect_timeout=max(1, int(self.connect_timeout)), **kwargs)

    def ensure_schema(self) -> None:
        """Create the catalog tables if missing and bring an older catalog up to date (idempotent)."""
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
        return ShardMap(
            shard_map.epoch,
            tuple(with_credentials(d, caller) for d in shard_map.dsns),
            shard_map.servers,
            shard_map.placement,
        )

    # --- servers -----------------------------------------------------------------------------------------------

    def register_server(self, name: str, dsn: str, *, replace: bool = False) -> None:
        """Make server ``name`` known at ``dsn`` (idempotent). A different DSN for a known name is an error
        unless ``replace``; replacing the DSN of a placed server publishes a new epoch with the same placement,
        so readers and writers reconnect."""
        check_server_name(name)
        if not isinstance(dsn, str) or not dsn.strip():
            raise ShardMapError(f"server {name}: the DSN must be a non-empty string")
        dsn = location_only(dsn)  # the catalog holds where a server is; each part brings its own credentials
        self.ensure_schema()
        with self._connect() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PUBLISH_LOCK_KEY,))
            row = conn.execute("SELECT dsn FROM tessera_servers WHERE name = %s", (name,)).fetchone()
            if row is not None and row[0] == dsn:
                return
            if row is not None and not replace:
                raise ShardMapError(f"server {name} is already registered with another DSN (use replace)")
            conn.execute(
                "INSERT INTO tessera_servers (name, dsn) VALUES (%s, %s) "
                "ON CONFLICT (name) DO UPDATE SET dsn = excluded.dsn, registered_at = now()",
                (name, dsn),
            )
            current = _read_current(conn)
            if row is not None and current is not None and name in current.servers:
                dsns = tuple(dsn if s == name else d for s, d in zip(current.servers, current.dsns, strict=True))
                _insert_map(
                    conn,
                    ShardMap(current.epoch + 1, dsns, current.servers, current.placement),
                    f"server {name}: new DSN",
                )

    def registered_servers(self) -> dict[str, str]:
        """Every known server, placed or not: name -> DSN (with this store's credentials)."""
        caller = credentials_of(self.catalog_dsn)
        with self._connect() as conn:
            try:
                rows = conn.execute("SELECT name, dsn FROM tessera_servers ORDER BY name").fetchall()
            except psycopg.errors.UndefinedTable:
                return {}
        return {name: with_credentials(dsn, caller) for name, dsn in rows}

    # --- publishing ----------------------------------------------------------------------------------------------

    def publish_placement(self, placement: Mapping[int, str], *, expected_epoch: int, note: str = "") -> ShardMap:
        """Publish ``placement`` (logical shard -> server name) as the next epoch, if the current epoch is
        still ``expected_epoch`` (compare-and-set: ``ShardMapError`` naming the current epoch otherwise).
        Every named server must be registered. NOTIFYs listeners on commit."""
        if sorted(placement) != list(range(TOTAL_LOGICAL_SHARDS)):
            raise ShardMapError(f"a placement must name a server for each logical shard 0..{TOTAL_LOGICAL_SHARDS - 1}")
        with self._connect() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PUBLISH_LOCK_KEY,))
            current = _read_current(conn)
            have = current.epoch if current else 0
            if have != expected_epoch:
                raise ShardMapError(
                    f"the shard map is at epoch {have}, not {expected_epoch}: another publisher moved it; re-plan"
                )
            registry = dict(conn.execute("SELECT name, dsn FROM tessera_servers").fetchall())
            unknown = sorted(set(placement.values()) - set(registry))
            if unknown:
                raise ShardMapError(f"unknown server(s) {', '.join(unknown)}: register them first")
            used = set(placement.values())
            kept = [s for s in (current.servers if current else ()) if s in used]
            servers = tuple(kept + sorted(used - set(kept)))
            index = {name: i for i, name in enumerate(servers)}
            published = ShardMap(
                have + 1,
                tuple(registry[s] for s in servers),
                servers,
                tuple(index[placement[shard]] for shard in range(TOTAL_LOGICAL_SHARDS)),
            )
            _insert_map(conn, published, note)
        return self._as_caller(published)

    def publish(self, dsns: Sequence[str], *, note: str = "", fence_shards: bool = False) -> ShardMap:
        """Store ``dsns`` as the servers of the next epoch and NOTIFY listeners on commit.

        The same servers as now keep their placement; another server list gets the initial placement
        (``l % N``). With ``fence_shards``, every server of the previous and the new map then gets its fence
        raised to the new epoch (``raise_server_fence``), so writes still routed on an older map are refused.
        """
        dsns = tuple(location_only(d) for d in dsns)
        ShardMap(1, dsns)  # validates the DSNs before touching the catalog
        self.ensure_schema()
        with self._connect() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PUBLISH_LOCK_KEY,))
            previous = _read_current(conn)
            epoch = (previous.epoch if previous else 0) + 1
            servers = _names_for(conn, dsns)
            if previous is not None and previous.servers == servers and previous.dsns == tuple(dsns):
                published = ShardMap(epoch, previous.dsns, previous.servers, previous.placement)
            else:
                published = ShardMap(epoch, tuple(dsns), servers)
            _insert_map(conn, published, note)
        published = self._as_caller(published)
        if fence_shards:
            previous = self._as_caller(previous) if previous else None
            targets = dict.fromkeys((*(previous.dsns if previous else ()), *published.dsns))
            for dsn in targets:
                raise_server_fence(dsn, epoch)
        return published

    def initialize_from_settings(self, settings) -> ShardMap:  # settings: TesseraSettings
        """Publish the settings' servers as epoch 1 if the catalog has no map yet; else return the current map.

        The catalog is the source of truth once a map exists: settings only seed it.
        """
        return self.initialize(settings.shard_dsns())

    def initialize(self, dsns: Sequence[str]) -> ShardMap:
        """Publish ``dsns`` as epoch 1 unless the catalog already has a map (idempotent, safe to race)."""
        dsns = tuple(location_only(d) for d in dsns)
        if not dsns:
            raise ShardMapError(
                "no servers to initialize the shard map with: set TESSERA_SERVERS or run `shardctl stack up`"
            )
        ShardMap(1, dsns)
        self.ensure_schema()
        with self._connect() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PUBLISH_LOCK_KEY,))
            existing = _read_current(conn)
            if existing is not None:
                if existing.dsns != dsns:
                    log.info(
                        "catalog shard map (epoch %s) differs from the settings; using the catalog", existing.epoch
                    )
                return self._as_caller(existing)
            candidate = ShardMap(1, dsns, _names_for(conn, dsns))
            _insert_map(conn, candidate, "initialized from settings")
        return self._as_caller(candidate)

    # --- epoch acknowledgements ----------------------------------------------------------------------------------

    def acknowledge(self, process: str, epoch: int) -> None:
        """Record that ``process`` follows ``epoch`` now (its heartbeat)."""
        with self._connect(autocommit=True) as conn:
            conn.execute(
                "INSERT INTO tessera_epoch_acks (process, epoch) VALUES (%s, %s) ON CONFLICT (process) DO UPDATE "
                "SET epoch = excluded.epoch, heartbeat_at = now()",
                (process, epoch),
            )

    def forget(self, process: str) -> None:
        """A process that stops following the map leaves the acknowledgements."""
        with self._connect(autocommit=True) as conn:
            conn.execute("DELETE FROM tessera_epoch_acks WHERE process = %s", (process,))

    def acknowledgements(self, *, heartbeat_within_s: float) -> dict[str, int]:
        """Live processes (a heartbeat within the window) and the epoch each follows."""
        with self._connect() as conn:
            return dict(
                conn.execute(
                    "SELECT process, epoch FROM tessera_epoch_acks "
                    "WHERE heartbeat_at > now() - make_interval(secs => %s) ORDER BY process",
                    (heartbeat_within_s,),
                ).fetchall()
            )

    def unacknowledged(self, epoch: int, *, heartbeat_within_s: float) -> list[str]:
        """Live processes not yet on ``epoch``."""
        return [p for p, e in self.acknowledgements(heartbeat_within_s=heartbeat_within_s).items() if e < epoch]

    def watch(self, on_change: Callable[[ShardMap], None] | None = None, *, role: str = "") -> ShardMapWatcher:
        """A started watcher holding the current map, updated on every published epoch."""
        return ShardMapWatcher(self, on_change, role=role).start()


def _names_for(conn: psycopg.Connection, dsns: Sequence[str]) -> tuple[str, ...]:
    """Server names for ``dsns``: the registered name of the same DSN, else the first free ``server-<i>``;
    new names are registered."""
    by_dsn = {dsn: name for name, dsn in conn.execute("SELECT name, dsn FROM tessera_servers ORDER BY name")}
    taken = set(by_dsn.values())
    names: list[str] = []
    for i, dsn in enumerate(dsns):
        name = by_dsn.get(dsn)
        if name is None or name in names:
            name = server_name(i)
            k = i
            while name in taken or name in names:
                k += 1
                name = server_name(k)
            conn.execute("INSERT INTO tessera_servers (name, dsn) VALUES (%s, %s)", (name, dsn))
            taken.add(name)
        names.append(name)
    return tuple(names)


def _read_current(conn: psycopg.Connection) -> ShardMap | None:
    rows = conn.execute(
        """SELECT m.epoch, m.shard_index, m.dsn, coalesce(m.server, 'server-' || m.shard_index), e.total_shards
             FROM tessera_shard_map m JOIN tessera_shard_epochs e USING (epoch)
            WHERE m.epoch = (SELECT max(epoch) FROM tessera_shard_epochs)
            ORDER BY m.shard_index"""
    ).fetchall()
    if not rows:
        return None
    epoch, total = rows[0][0], rows[0][4]
    if [r[1] for r in rows] != list(range(total)):
        raise ShardMapError(f"shard map epoch {epoch} is inconsistent: indices {[r[1] for r in rows]}, total {total}")
    placed = conn.execute(
        "SELECT logical_shard, server_index FROM tessera_placement WHERE epoch = %s ORDER BY logical_shard", (epoch,)
    ).fetchall()
    if placed and [r[0] for r in placed] != list(range(TOTAL_LOGICAL_SHARDS)):
        raise ShardMapError(f"shard map epoch {epoch} places {len(placed)} logical shards, not {TOTAL_LOGICAL_SHARDS}")
    placement = tuple(r[1] for r in placed) if placed else ()
    return ShardMap(epoch, tuple(r[2] for r in rows), tuple(r[3] for r in rows), placement)


def _insert_map(conn: psycopg.Connection, shard_map: ShardMap, note: str) -> None:
    """Insert ``shard_map`` as its epoch and NOTIFY on commit."""
    epoch = shard_map.epoch
    conn.execute(
        "INSERT INTO tessera_shard_epochs (epoch, total_shards, note) VALUES (%s, %s, %s)",
        (epoch, shard_map.server_count, note),
    )
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO tessera_shard_map (epoch, shard_index, dsn, server) VALUES (%s, %s, %s, %s)",
            [
                (epoch, i, dsn, name)
                for i, (dsn, name) in enumerate(zip(shard_map.dsns, shard_map.servers, strict=True))
            ],
        )
        cur.executemany(
            "INSERT INTO tessera_placement (epoch, logical_shard, server_index) VALUES (%s, %s, %s)",
            list(((epoch, shard, index) for shard, index in enumerate(shard_map.placement))),
        )
    conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, str(epoch)))


FENCE_READ_SQL = "SELECT min_epoch FROM tessera_shard_fence WHERE singleton FOR SHARE"


def check_fence(conn: psycopg.Connection, shard: int, write_epoch: int) -> None:
    """Inside the write's transaction: refuse the write if the shard is fenced beyond its epoch.

    ``FOR SHARE`` keeps the fence row from changing until this transaction ends, so ``raise_server_fence`` waits
    for every write that already passed the check.
    """
    row = conn.execute(FENCE_READ_SQL).fetchone()
    fence_epoch = row[0] if row else 0
    if write_epoch < fence_epoch:
        raise StaleShardMapError(shard, write_epoch, fence_epoch)


def raise_server_fence(dsn: str, epoch: int, *, connect_timeout: int = 5) -> int:
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
            f"shard {describe_dsn(dsn)} has no fence row: apply the schema first (shardctl.store.schema.apply_schema)"
        )
    return row[0]


class ShardMapWatcher:
    """Holds the current shard map and follows the catalog's NOTIFYs (``shardctl/store/notify.py``'s listener
    thread blocks in ``LISTEN``: no polling loop). Each notification, and each reconnection (a notification
    may have been missed meanwhile), re-reads the map; listeners hear of every newer epoch."""

    HEARTBEAT_S = 3.0

    def __init__(self, store: ShardMapStore, on_change: Callable[[ShardMap], None] | None = None, *, role: str = ""):
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
