"""``ShardMapStore``: the shard map in the catalog database. Reads the newest epoch, publishes the next one
(compare-and-set, under an advisory lock that serializes publishers, with a NOTIFY on commit), registers and
unregisters servers by name (with the disk declared for each, which a migration's plan checks), and keeps the
epoch acknowledgements migrations wait on."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import psycopg

from shardctl.credentials import credentials_of, location_only, with_credentials
from shardctl.store.connection import connect
from shardctl.store.hashing import TOTAL_LOGICAL_SHARDS
from shardctl.store.shardmap.value import ShardMap, ShardMapError, check_server_name, server_name
from shardctl.store.shardmap.watcher import NOTIFY_CHANNEL, ShardMapWatcher

log = logging.getLogger(__name__)

_PUBLISH_LOCK_KEY = 0x7E55E7A1  # advisory lock serializing publishers (any constant unique to Tessera)

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
ALTER TABLE tessera_servers ADD COLUMN IF NOT EXISTS disk_capacity_bytes bigint CHECK (disk_capacity_bytes > 0);
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

    def register_server(
        self, name: str, dsn: str, *, replace: bool = False, disk_capacity_bytes: int | None = None
    ) -> None:
        """Make server ``name`` known at ``dsn`` (idempotent). A different DSN for a known name is an error
        unless ``replace``; replacing the DSN of a placed server publishes a new epoch with the same placement,
        so readers and writers reconnect. ``disk_capacity_bytes``, when given, is declared as its disk
        (``set_disk_capacity``); not given, a known server keeps the one it has."""
        check_server_name(name)
        if not isinstance(dsn, str) or not dsn.strip():
            raise ShardMapError(f"server {name}: the DSN must be a non-empty string")
        _check_capacity(name, disk_capacity_bytes)
        dsn = location_only(dsn)  # the catalog holds where a server is; each part brings its own credentials
        self.ensure_schema()
        with self._connect() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PUBLISH_LOCK_KEY,))
            row = conn.execute("SELECT dsn FROM tessera_servers WHERE name = %s", (name,)).fetchone()
            if row is not None and row[0] != dsn and not replace:
                raise ShardMapError(f"server {name} is already registered with another DSN (use replace)")
            if row is None or row[0] != dsn:
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
            if disk_capacity_bytes is not None:
                _declare_capacity(conn, name, disk_capacity_bytes)

    def relocate_servers(self, dsns: Mapping[str, str]) -> None:
        """The same servers at new locations (a restored stack's): every epoch's and the registry's DSN of each
        named server rewritten in place, so the epochs and placement stay exactly those the data was written
        under. Only for a catalog no live process follows (a restore, before anything connects)."""
        with self._connect() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PUBLISH_LOCK_KEY,))
            for name, dsn in dsns.items():
                location = location_only(dsn)
                conn.execute("UPDATE tessera_servers SET dsn = %s WHERE name = %s", (location, name))
                conn.execute("UPDATE tessera_shard_map SET dsn = %s WHERE server = %s", (location, name))

    def hold_publishing(self, conn: psycopg.Connection) -> None:
        """Inside ``conn``'s transaction on the catalog: no epoch is published until it ends (a consistent
        restore point holds it while it names the epoch its data matches)."""
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PUBLISH_LOCK_KEY,))

    def registered_servers(self) -> dict[str, str]:
        """Every known server, placed or not: name -> DSN (with this store's credentials)."""
        caller = credentials_of(self.catalog_dsn)
        with self._connect() as conn:
            try:
                rows = conn.execute("SELECT name, dsn FROM tessera_servers ORDER BY name").fetchall()
            except psycopg.errors.UndefinedTable:
                return {}
        return {name: with_credentials(dsn, caller) for name, dsn in rows}

    def set_disk_capacity(self, name: str, capacity_bytes: int | None) -> None:
        """Declare the disk of server ``name`` (bytes; ``None`` forgets it): a migration's plan checks that each
        target has room for its copy (``shardctl/control/migration/disk.py``). ``ShardMapError`` for a server
        that is not registered."""
        check_server_name(name)
        _check_capacity(name, capacity_bytes)
        self.ensure_schema()
        with self._connect() as conn:
            updated = _declare_capacity(conn, name, capacity_bytes)
        if not updated:
            raise ShardMapError(f"unknown server {name}: register it first with `shardctl servers add`")

    def disk_capacities(self) -> dict[str, int | None]:
        """Every registered server's declared disk in bytes (None: not declared)."""
        with self._connect() as conn:
            try:
                rows = conn.execute("SELECT name, disk_capacity_bytes FROM tessera_servers ORDER BY name").fetchall()
            except psycopg.errors.UndefinedTable:
                return {}
            except psycopg.errors.UndefinedColumn:  # a catalog from before the column: nothing declared
                return dict.fromkeys(self.registered_servers())
        return dict(rows)

    def unregister_server(self, name: str) -> bool:
        """Forget server ``name``, so `servers list` and plans no longer offer it; returns whether it was known.

        Refused (``ShardMapError``) while the current epoch places a logical shard on it: its rows would have
        nowhere to be read from. Under the publishers' lock, so no publish can place logical shards on it
        between the check and the delete."""
        check_server_name(name)
        self.ensure_schema()
        with self._connect() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PUBLISH_LOCK_KEY,))
            current = _read_current(conn)
            held = current.logical_shards_on(name) if current is not None else []
            if current is not None and held:
                raise ShardMapError(
                    f"server {name} holds {len(held)} logical shards in epoch {current.epoch}: move them away "
                    f"first (`shardctl migrate run --remove-server {name}`)"
                )
            return conn.execute("DELETE FROM tessera_servers WHERE name = %s", (name,)).rowcount > 0

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

    def publish(self, dsns: Sequence[str], *, note: str = "") -> ShardMap:
        """Store ``dsns`` as the servers of the next epoch and NOTIFY listeners on commit.

        The same servers as now keep their placement; another server list gets the initial placement
        (``l % N``).
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
        return self._as_caller(published)

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


def _check_capacity(name: str, capacity_bytes: int | None) -> None:
    if capacity_bytes is not None and (isinstance(capacity_bytes, bool) or not isinstance(capacity_bytes, int)):
        raise ShardMapError(f"server {name}: a disk capacity is a whole number of bytes")
    if capacity_bytes is not None and capacity_bytes < 1:
        raise ShardMapError(f"server {name}: a disk capacity must be at least 1 byte")


def _declare_capacity(conn: psycopg.Connection, name: str, capacity_bytes: int | None) -> bool:
    """Set (or with None forget) server ``name``'s declared disk; whether it is registered."""
    cur = conn.execute("UPDATE tessera_servers SET disk_capacity_bytes = %s WHERE name = %s", (capacity_bytes, name))
    return cur.rowcount > 0


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
