"""Copy a set of logical shards from one server to another and keep them in sync, with Postgres' own
logical replication: a row-filtered publication and a slot on the source, a subscription on the target.

Every step is ``ensure_*``: it looks at the servers first and only creates what is missing, so re-running
``start`` after the process was killed at any point continues where it stopped and never creates a second
copy of anything. The copy itself runs inside the servers (the subscription's table-sync and apply
workers), not in this process: killing the migrating process does not interrupt it. Names are derived from
the link, never random, which is what lets a resumed run (or ``teardown`` after a partial failure) find
what an earlier one created. Design: docs/architecture/resharding.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from shardctl.control.migration import table as table_sql
from shardctl.control.migration.table import SHARD_COLUMN, MovedTable, check_layout, identifier
from shardctl.errors import ControlError, first_line
from shardctl.store.changes import MARK_LOGGED_SQL

NAME_PREFIX = "tessera_mv_"


class ReplicationError(ControlError, RuntimeError):
    """A link cannot be set up or does not progress (conflicting objects, disabled subscription, timeout)."""


@dataclass(frozen=True)
class Link:
    """Logical shards replicated from ``source_dsn`` to ``target_dsn``.

    ``name`` is the publication's, the subscription's and the slot's: one name finds all three.
    """

    name: str
    source_dsn: str
    target_dsn: str
    logical_shards: tuple[int, ...]
    table: MovedTable = field(default_factory=MovedTable)

    def __post_init__(self) -> None:
        identifier(self.name)
        if not self.name.startswith(NAME_PREFIX):
            raise ValueError(f"link name {self.name!r} must start with {NAME_PREFIX!r}")
        shards = self.logical_shards
        if not shards or list(shards) != sorted(set(shards)) or shards[0] < 0:
            raise ValueError(f"logical shards must be non-empty, sorted, distinct and >= 0: {shards}")

    @property
    def shard_list(self) -> str:
        """The shards as stored in the publication's comment (how a resumed run recognises its own)."""
        return ",".join(map(str, self.logical_shards))


def link_name(migration_id: int, pair: int) -> str:
    """The name of a migration's ``pair``-th (source, target) link."""
    return identifier(f"{NAME_PREFIX}{migration_id}_{pair}")


def _connect(dsn: str) -> psycopg.Connection:
    return psycopg.connect(dsn, autocommit=True, connect_timeout=5)


# --- setting up -----------------------------------------------------------------------------------------


def ensure_publication(link: Link) -> bool:
    """On the source: a publication of the link's logical shards (INSERT, UPDATE, DELETE; never TRUNCATE,
    which would empty the target's whole table). True if created now."""
    with _connect(link.source_dsn) as conn:
        check_layout(conn, link.table)
        row = conn.execute(
            "SELECT obj_description(oid, 'pg_publication') FROM pg_publication WHERE pubname = %s", (link.name,)
        ).fetchone()
        if row is not None:
            if row[0] != link.shard_list:
                raise ReplicationError(
                    f"publication {link.name} on the source covers logical shards {row[0]!r}, not {link.shard_list!r}"
                    ": tear the old link down first"
                )
            return False
        shard_filter = sql.SQL(", ").join(sql.Literal(s) for s in link.logical_shards)
        with conn.transaction():
            conn.execute(
                sql.SQL(
                    "CREATE PUBLICATION {pub} FOR TABLE {table} WHERE ({column} IN ({shards})) "
                    "WITH (publish = 'insert, update, delete')"
                ).format(
                    pub=sql.Identifier(link.name),
                    table=link.table.ident,
                    column=sql.Identifier(SHARD_COLUMN),
                    shards=shard_filter,
                )
            )
            conn.execute(
                sql.SQL("COMMENT ON PUBLICATION {} IS {}").format(
                    sql.Identifier(link.name), sql.Literal(link.shard_list)
                )
            )
    return True


def ensure_slot(link: Link) -> bool:
    """On the source: the link's logical slot, created before the subscription so that a kill between the
    two leaves a named slot that the next run adopts (or ``teardown`` drops). True if created now.

    A slot missing while the subscription exists was lost (a failover before PG 17's failover slots, or
    ``max_slot_wal_keep_size``): a new slot would start at the current WAL position and silently skip
    every change made in between, so this refuses; the way on is ``teardown(purge_target=True)`` and a
    fresh copy. On PG 17+ the slot is created with ``failover`` so standbys that sync slots keep it."""
    with _connect(link.source_dsn) as conn:
        if _slot(conn, link.name) is not None:
            return False
        with _connect(link.target_dsn) as target:
            if _subscription(target, link.name) is not None:
                raise ReplicationError(
                    f"link {link.name}: the source lost its slot while the subscription exists (failover?): "
                    "changes may be missing; tear the link down with purge_target=True and copy again"
                )
        create = (
            "SELECT pg_create_logical_replication_slot(%s, 'pgoutput', failover => true)"
            if conn.info.server_version >= 170000
            else "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')"
        )
        try:
            conn.execute(create, (link.name,))
        except psycopg.errors.DuplicateObject:
            return False  # a concurrent run made it: the same slot either way
    return True


def prepare_target(link: Link) -> int:
    """On the target, before its subscription exists: remove rows of the moving logical shards left by an
    aborted earlier attempt, so the initial copy cannot hit a duplicate key. Returns the rows removed.

    The target does not own these logical shards yet, so nothing it serves is touched. Only before
    cutover: afterwards the target owns these rows, and the migration journal never runs the copy phase
    again for a migration past ``cut_over``."""
    with _connect(link.target_dsn) as conn:
        check_layout(conn, link.table)
        if _subscription(conn, link.name) is not None:
            return 0
        return _delete_copies(conn, link)


def _delete_copies(conn: psycopg.Connection, link: Link) -> int:
    """Delete the target's copies of the link's logical shards, which it does not own yet. The change log's row
    trigger stays off: no reader follows these rows on the target, and logging each (~0.2 ms) made an abort of a
    100k-row copy take minutes."""
    with conn.transaction():
        conn.execute(MARK_LOGGED_SQL)
        return conn.execute(
            sql.SQL("DELETE FROM {} WHERE {} = ANY(%s)").format(link.table.ident, sql.Identifier(SHARD_COLUMN)),
            (list(link.logical_shards),),
        ).rowcount


def ensure_subscription(link: Link) -> bool:
    """On the target: the subscription that copies the link's rows and then applies its changes.

    ``create_slot = false`` adopts the slot ``ensure_slot`` made; ``disable_on_error`` stops an apply error
    (a conflicting row) from looping, and ``progress`` reports it. True if created now."""
    return bool(ensure_subscriptions([link]))


def ensure_subscriptions(links: Sequence[Link]) -> list[str]:
    """On their one target: the links' subscriptions (as ``ensure_subscription``), every missing one created in
    one transaction. Returns the names created now.

    Why one transaction: a PostgreSQL 15 target's launcher starts apply workers at most once per
    ``wal_retrieve_retry_interval`` (5 s by default) after it started one, so subscriptions committed one after
    another each waited up to 5 s for their copy to begin (measured: the second link of a 2 -> 3 migration idled
    6.3 s). Committed together, one pass of the launcher starts them all. (CREATE SUBSCRIPTION may run in a
    transaction block because it creates no slot.)"""
    targets = {link.target_dsn for link in links}
    if len(targets) != 1:
        raise ValueError(f"ensure_subscriptions takes links to one target, not {len(targets)}")
    created = []
    with _connect(links[0].target_dsn) as conn, conn.transaction():
        for link in links:
            found = _subscription(conn, link.name)
            if found is not None:
                if not found["enabled"]:
                    raise ReplicationError(
                        f"subscription {link.name} on the target is disabled (an apply error or an abort): "
                        "see the target's log, then tear the link down and start again"
                    )
                continue
            conn.execute(
                sql.SQL(
                    "CREATE SUBSCRIPTION {sub} CONNECTION {conninfo} PUBLICATION {pub} "
                    "WITH (create_slot = false, slot_name = {slot}, copy_data = true, disable_on_error = true)"
                ).format(
                    sub=sql.Identifier(link.name),
                    conninfo=sql.Literal(subscriber_conninfo(link.source_dsn)),
                    pub=sql.Identifier(link.name),
                    slot=sql.Literal(link.name),
                )
            )
            created.append(link.name)
    return created


def subscriber_conninfo(source_dsn: str) -> str:
    """The source's DSN as the target's server process uses it: without a ``passfile``, a path on the client's
    machine that the server process may not read; the server finds the password in its own passfile
    (``PGPASSFILE`` of the server: the local stack's ``tessera_server.pgpass``) or in a ``password`` the DSN
    carries (Kubernetes: the control plane's password from its Secret)."""
    params = {k: v for k, v in conninfo_to_dict(source_dsn).items() if k != "passfile"}
    return make_conninfo("", **params)


def start(link: Link) -> None:
    """Every set-up step, in order; safe to call again at any time before cutover (that is how a migration
    resumes)."""
    start_all([link])


def start_all(links: Sequence[Link]) -> None:
    """``start`` for several links at once: every source-side step and target clean-up first, then each target's
    subscriptions in one transaction (``ensure_subscriptions``), so that their copies begin together."""
    by_target: dict[str, list[Link]] = {}
    for link in links:
        ensure_publication(link)
        ensure_slot(link)
        prepare_target(link)
        by_target.setdefault(link.target_dsn, []).append(link)
    for group in by_target.values():
        ensure_subscriptions(group)


# --- following ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """Where a link stands. Row counts are only filled in when asked for (they scan the moving shards)."""

    exists: bool
    enabled: bool
    table_states: dict[str, str]  # table -> pg_subscription_rel state: i(nit), d(ata copy), f, s(ync), r(eady)
    copying_rows: int  # rows the in-flight initial COPY has written on the target
    lag_bytes: int | None  # source WAL not yet confirmed by the target (None: no slot)
    slot_wal_status: str | None  # reserved / extended / unreserved / lost
    last_message_age_s: float | None
    errors: int  # apply + sync errors counted by the target since the subscription was created
    source_reachable: bool = True
    source_rows: dict[int, int] = field(default_factory=dict)
    target_rows: dict[int, int] = field(default_factory=dict)

    @property
    def synced(self) -> bool:
        return self.exists and bool(self.table_states) and all(s == "r" for s in self.table_states.values())

    @property
    def rows_copied(self) -> int:
        return sum(self.target_rows.values()) if self.target_rows else self.copying_rows


def progress(link: Link, *, count_rows: bool = False) -> Progress:
    """The link's state on both servers (a source that is down shows as no slot and no lag)."""
    with _connect(link.target_dsn) as target:
        sub = _subscription(target, link.name)
        states: dict[str, str] = {}
        copying, age, errors = 0, None, 0
        if sub is not None:
            states = dict(
                target.execute(
                    "SELECT srrelid::regclass::text, srsubstate::text FROM pg_subscription_rel WHERE srsubid = %s",
                    (sub["oid"],),
                ).fetchall()
            )
            copying = target.execute(
                "SELECT coalesce(sum(tuples_processed), 0) FROM pg_stat_progress_copy WHERE relid = to_regclass(%s)",
                (link.table.name,),
            ).fetchone()[0]
            age = target.execute(
                "SELECT extract(epoch FROM now() - max(last_msg_receipt_time)) FROM pg_stat_subscription "
                "WHERE subid = %s",
                (sub["oid"],),
            ).fetchone()[0]
            errors = target.execute(
                "SELECT coalesce(apply_error_count + sync_error_count, 0) FROM pg_stat_subscription_stats "
                "WHERE subid = %s",
                (sub["oid"],),
            ).fetchone()
            errors = errors[0] if errors else 0
        target_rows = table_sql.count_rows(target, link.table, link.logical_shards) if count_rows else {}
    lag, wal_status, source_rows, reachable = None, None, {}, True
    try:
        with _connect(link.source_dsn) as source:
            slot = _slot(source, link.name)
            if slot is not None:
                lag, wal_status = slot["lag_bytes"], slot["wal_status"]
            source_rows = table_sql.count_rows(source, link.table, link.logical_shards) if count_rows else {}
    except psycopg.OperationalError:
        reachable = False  # down or failing over: the caller waits, it does not conclude the slot is gone
    return Progress(
        exists=sub is not None,
        enabled=bool(sub and sub["enabled"]),
        table_states=states,
        copying_rows=int(copying),
        lag_bytes=lag,
        slot_wal_status=wal_status,
        last_message_age_s=float(age) if age is not None else None,
        errors=int(errors),
        source_rows=source_rows,
        target_rows=target_rows,
        source_reachable=reachable,
    )


def wait_synced(link: Link, timeout: float = 600.0, on_progress: Callable[[Progress], None] | None = None) -> None:
    """Block until the initial copy is done (every table ready); raise if the link breaks or time runs out."""
    _wait(link, lambda p: p.synced, timeout, on_progress, "initial copy")


def wait_caught_up(link: Link, timeout: float = 60.0) -> str:
    """Block until the target has confirmed every change the source had made when this was called.

    Returns that source LSN. This is the drain step of a cutover (after the fence), and the barrier
    ``verify`` uses before reading the target."""
    with _connect(link.source_dsn) as source:
        lsn = source.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
        deadline = time.monotonic() + timeout
        while True:
            row = source.execute(
                "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
                (lsn, link.name),
            ).fetchone()
            if row is None:
                raise ReplicationError(f"slot {link.name} is gone from the source (failover or teardown?)")
            if row[0]:
                return lsn
            if time.monotonic() > deadline:
                raise ReplicationError(f"link {link.name}: the target did not confirm LSN {lsn} in {timeout:.0f} s")
            time.sleep(0.05)


def _wait(
    link: Link,
    done: Callable[[Progress], bool],
    timeout: float,
    on_progress: Callable[[Progress], None] | None,
    what: str,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        state = progress(link)
        if on_progress is not None:
            on_progress(state)
        if done(state):
            return
        if not state.exists:
            raise ReplicationError(f"link {link.name}: no subscription on the target: run start() first")
        if not state.enabled:
            raise ReplicationError(f"link {link.name}: the subscription was disabled after an error ({what})")
        if state.source_reachable and (state.lag_bytes is None or state.slot_wal_status == "lost"):
            raise ReplicationError(
                f"link {link.name}: the source's slot is gone or lost its WAL (failover, max_slot_wal_keep_size): "
                "tear the link down with purge_target=True and copy again"
            )
        if time.monotonic() > deadline:
            raise ReplicationError(f"link {link.name}: {what} not done in {timeout:.0f} s ({state.table_states})")
        time.sleep(0.2)


# --- tearing down ---------------------------------------------------------------------------------------


@dataclass
class TeardownReport:
    """What ``teardown`` dropped, and what it could not reach (re-run it once that server is back)."""

    dropped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.errors


def teardown(link: Link, *, purge_target: bool = False, timeout: float = 30.0) -> TeardownReport:
    """Drop the subscription, the slots (the link's and the table-sync ones) and the publication, each on
    its own server and each only if present, so it finishes what a partial set-up or an earlier teardown
    left. Order: disable the subscription (its workers let go of the slots), drop the slots on the source,
    then the subscription without touching the source, then the publication. With ``purge_target`` (an
    abort before cutover) the copied rows are deleted from the target as well.
    """
    report = TeardownReport()
    sub_oid = None
    try:
        with _connect(link.target_dsn) as target:
            found = _subscription(target, link.name)
            if found is not None:
                sub_oid = found["oid"]
                target.execute(sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(sql.Identifier(link.name)))
    except psycopg.OperationalError as exc:
        report.errors.append(f"target unreachable, subscription left: {first_line(exc)}")
    try:
        with _connect(link.source_dsn) as source:
            slots = [link.name]
            if sub_oid is not None:
                slots += [
                    r[0]
                    for r in source.execute(
                        "SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE %s",
                        (f"pg\\_{sub_oid}\\_sync\\_%",),
                    ).fetchall()
                ]
            for slot in slots:
                if _drop_slot(source, slot, timeout):
                    report.dropped.append(f"slot {slot}")
            if source.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (link.name,)).fetchone():
                source.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(link.name)))
                report.dropped.append(f"publication {link.name}")
    except psycopg.OperationalError as exc:
        report.errors.append(f"source unreachable, slot and publication left: {first_line(exc)}")
    if sub_oid is None and not purge_target:
        return report
    try:
        with _connect(link.target_dsn) as target:
            if _subscription(target, link.name) is not None:
                ident = sql.Identifier(link.name)
                target.execute(sql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)").format(ident))
                target.execute(sql.SQL("DROP SUBSCRIPTION {}").format(ident))
                report.dropped.append(f"subscription {link.name}")
            if purge_target:
                deleted = _delete_copies(target, link)
                report.dropped.append(f"{deleted} copied rows on the target")
    except psycopg.OperationalError as exc:
        report.errors.append(f"target unreachable, subscription left: {first_line(exc)}")
    return report


def leftovers(link: Link) -> dict[str, list[str]]:
    """Replication objects of this link still on either server (empty lists once torn down)."""
    with _connect(link.source_dsn) as source:
        slots = [
            r[0]
            for r in source.execute(
                "SELECT slot_name FROM pg_replication_slots "
                "WHERE slot_name = %s OR slot_name LIKE 'pg\\_%%\\_sync\\_%%'",
                (link.name,),
            ).fetchall()
        ]
        pubs = [r[0] for r in source.execute("SELECT pubname FROM pg_publication WHERE pubname = %s", (link.name,))]
    with _connect(link.target_dsn) as target:
        subs = [r[0] for r in target.execute("SELECT subname FROM pg_subscription WHERE subname = %s", (link.name,))]
    return {"slots": slots, "publications": pubs, "subscriptions": subs}


# --- catalog look-ups -----------------------------------------------------------------------------------


def _slot(conn: psycopg.Connection, name: str) -> dict | None:
    row = conn.execute(
        """SELECT active_pid, wal_status,
                  pg_wal_lsn_diff(pg_current_wal_lsn(), coalesce(confirmed_flush_lsn, restart_lsn))::bigint
             FROM pg_replication_slots WHERE slot_name = %s""",
        (name,),
    ).fetchone()
    if row is None:
        return None
    return {"active_pid": row[0], "wal_status": row[1], "lag_bytes": row[2]}


def _subscription(conn: psycopg.Connection, name: str) -> dict | None:
    row = conn.execute(
        "SELECT oid, subenabled FROM pg_subscription WHERE subname = %s AND subdbid = "
        "(SELECT oid FROM pg_database WHERE datname = current_database())",
        (name,),
    ).fetchone()
    return None if row is None else {"oid": row[0], "enabled": row[1]}


def _drop_slot(conn: psycopg.Connection, slot: str, timeout: float) -> bool:
    """Drop ``slot`` if present; a walsender still holding it (the subscription was just disabled) is
    waited for, then terminated. True if it was dropped now."""
    deadline = time.monotonic() + timeout
    while True:
        found = _slot(conn, slot)
        if found is None:
            return False
        if found["active_pid"] is None:
            try:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                return True
            except psycopg.errors.UndefinedObject:
                return False
            except psycopg.errors.ObjectInUse:
                pass
        elif time.monotonic() > deadline - timeout / 2:
            conn.execute("SELECT pg_terminate_backend(%s)", (found["active_pid"],))
        if time.monotonic() > deadline:
            raise ReplicationError(f"slot {slot} still in use after {timeout:.0f} s")
        time.sleep(0.1)
