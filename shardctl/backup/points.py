"""Consistent restore points: one named point (``pg_create_restore_point``) on the catalog and on every server at
once, under the write fence the resharding cutover uses, so no write is in on one server and out on another.

How: on every server, lock all rows of the logical-shard fence ``FOR UPDATE`` (a writer locks the rows it writes
``FOR SHARE`` until it commits, so the lock waits for exactly the writes in flight and holds new ones back), and on
the catalog hold the shard map's publish lock (no epoch is published meanwhile). Under both, name the point on
each server, record it in the catalog (``tessera_restore_points``), then name it on the catalog; release. A
fence above the current epoch means a cutover is between its fence and its publish: the attempt gives up and
tries again, as it does when in-flight writes hold the fence past ``point_lock_timeout_s``. The fence is held
for a few milliseconds; writers see latency, never an error.

Each point is also kept in the repository (``points/<name>.json``): the catalog itself is what a restore
brings back, so the list of points to restore to cannot live only there.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import psycopg

from shardctl.backup.archiving import CATALOG_STANZA
from shardctl.backup.pgbackrest import Repository
from shardctl.backup.settings import BackupSettings
from shardctl.backup.target import BackupTarget
from shardctl.errors import BackupError, first_line
from shardctl.store.connection import connect
from shardctl.store.fence import FENCE_TABLE
from shardctl.store.shardmap import ShardMapStore

POINTS_TABLE = "tessera_restore_points"
POINTS_DDL = f"""
CREATE TABLE IF NOT EXISTS {POINTS_TABLE} (
    name          text PRIMARY KEY,
    taken_at      timestamptz NOT NULL DEFAULT now(),
    epoch         bigint NOT NULL,
    lsns          jsonb NOT NULL,
    fence_held_ms double precision NOT NULL
)"""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class RestorePointError(BackupError, ValueError):
    """A restore point that cannot be taken or found; the message says why."""


@dataclass(frozen=True)
class RestorePoint:
    """A consistent point: its name, when it was taken, the shard map epoch its data matches, and the LSN of the
    point on each server (stanza name -> LSN, the catalog's under ``catalog``)."""

    name: str
    taken_at: datetime
    epoch: int
    lsns: dict[str, str]
    fence_held_ms: float
    subscribed: tuple[str, ...] = ()  # servers with a migration's subscriptions at the point (a restore drops them)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "taken_at": self.taken_at.isoformat()}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> RestorePoint:
        raw = json.loads(text)
        return cls(
            raw["name"],
            datetime.fromisoformat(raw["taken_at"]),
            raw["epoch"],
            raw["lsns"],
            raw["fence_held_ms"],
            tuple(raw.get("subscribed", ())),  # a restore reads the point from this file: keep every field
        )


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise RestorePointError(
            f"bad restore point name {name!r}: 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def default_name(now: datetime | None = None) -> str:
    return f"tessera-{(now or datetime.now(UTC)).strftime('%Y%m%dT%H%M%S%fZ')}"


def take_point(target: BackupTarget, name: str | None = None, settings: BackupSettings | None = None) -> RestorePoint:
    """Take a consistent point on every server of ``target``, wait until its WAL is archived, record it."""
    settings = settings or BackupSettings()
    name = check_name(name or default_name())
    if (target.repo.points_dir / f"{name}.json").exists():
        raise RestorePointError(f"a restore point named {name} exists already: choose another name")
    for stanza in target.stanzas:  # a point before any base backup could never be restored to
        if not target.repo.backups(stanza.name):
            raise RestorePointError(f"no base backup of {stanza.name} yet: run `shardctl backup create` first")
    with connect(target.catalog_dsn, connect_timeout=5, autocommit=True) as conn:
        conn.execute(POINTS_DDL)
    last = "no attempt"
    for attempt in range(settings.point_attempts):
        try:
            point = _try_point(target, name, settings)
        except psycopg.errors.LockNotAvailable:
            point, last = None, f"in-flight writes held the fence over {settings.point_lock_timeout_s} s"
        if point is not None:
            break
        last = last if last != "no attempt" else "a resharding cutover was between its fence and its new epoch"
        time.sleep(0.2 * (attempt + 1))
    else:
        raise RestorePointError(f"could not take restore point {name} in {settings.point_attempts} attempts: {last}")
    wait_archived(target, settings.archive_wait_s)
    target.repo.points_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (target.repo.points_dir / f"{name}.json").write_text(point.to_json())
    return point


def _try_point(target: BackupTarget, name: str, settings: BackupSettings) -> RestorePoint | None:
    """One attempt under the fence; None if a cutover is mid-way (``LockNotAvailable`` if writes held it)."""
    timeout = f"{int(settings.point_lock_timeout_s * 1000)}ms"
    with contextlib.ExitStack() as held:
        catalog = held.enter_context(connect(target.catalog_dsn, connect_timeout=5))
        catalog.execute("SELECT set_config('lock_timeout', %s, true)", (timeout,))
        ShardMapStore(target.catalog_dsn).hold_publishing(catalog)
        epoch = catalog.execute("SELECT max(epoch) FROM tessera_shard_epochs").fetchone()[0]  # type: ignore[index]
        servers = {}
        started = time.monotonic()
        for stanza in target.server_stanzas:
            conn = held.enter_context(connect(target.dsns[stanza.name], connect_timeout=5))
            conn.execute("SELECT set_config('lock_timeout', %s, true)", (timeout,))
            fences = [row[0] for row in conn.execute(f"SELECT min_epoch FROM {FENCE_TABLE} FOR UPDATE").fetchall()]
            if fences and max(fences) > epoch:
                return None
            servers[stanza.name] = conn
        lsns = {
            stanza: conn.execute("SELECT pg_create_restore_point(%s)::text", (name,)).fetchone()[0]  # type: ignore[index]
            for stanza, conn in servers.items()
        }
        held_ms = round((time.monotonic() - started) * 1000, 1)
        subscribed = tuple(
            stanza
            for stanza, conn in servers.items()
            if conn.execute("SELECT count(*) FROM pg_subscription").fetchone()[0]  # type: ignore[index]
        )
        with connect(target.catalog_dsn, connect_timeout=5, autocommit=True) as record:
            taken_at = record.execute(
                f"INSERT INTO {POINTS_TABLE} (name, epoch, lsns, fence_held_ms) VALUES (%s, %s, %s, %s) "
                "RETURNING taken_at",
                (name, epoch, json.dumps(lsns), held_ms),
            ).fetchone()[0]  # type: ignore[index]
        lsns[CATALOG_STANZA] = catalog.execute("SELECT pg_create_restore_point(%s)::text", (name,)).fetchone()[0]  # type: ignore[index]
    return RestorePoint(name, taken_at, epoch, {CATALOG_STANZA: lsns.pop(CATALOG_STANZA), **lsns}, held_ms, subscribed)


def wait_archived(target: BackupTarget, timeout_s: float) -> None:
    """Switch every server to a new WAL segment and wait until the finished one is archived: a point is only
    worth something once the WAL that reaches it is in the repository."""
    wanted = {}
    for stanza, dsn in target.dsns.items():
        with connect(dsn, connect_timeout=5, autocommit=True) as conn:
            wanted[stanza] = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]  # type: ignore[index]
    deadline = time.monotonic() + timeout_s
    while wanted:
        for stanza in list(wanted):
            with connect(target.dsns[stanza], connect_timeout=5, autocommit=True) as conn:
                archived, failed = conn.execute(
                    "SELECT last_archived_wal, last_failed_wal FROM pg_stat_archiver"
                ).fetchone()  # type: ignore[misc]
            if archived is not None and archived[8:] >= wanted[stanza][8:]:
                del wanted[stanza]
        if not wanted:
            return
        if time.monotonic() > deadline:
            stanza = sorted(wanted)[0]
            raise BackupError(
                f"the WAL of {stanza} up to segment {wanted[stanza]} is not archived after {timeout_s:.0f} s "
                f"(last failed: {failed or 'none'}; see the server's log and {target.repo.log_dir})"
            )
        time.sleep(0.1)


def list_points(repo: Repository) -> list[RestorePoint]:
    """Every point recorded in the repository, oldest first."""
    if not repo.points_dir.is_dir():
        return []
    found = []
    for path in repo.points_dir.glob("*.json"):
        try:
            found.append(RestorePoint.from_json(path.read_text()))
        except (ValueError, KeyError) as exc:
            raise BackupError(f"restore point file {path} is damaged: {first_line(exc)}") from exc
    return sorted(found, key=lambda p: p.taken_at)


def resolve(repo: Repository, name: str | None = None, at: datetime | None = None) -> tuple[RestorePoint, str]:
    """The point to restore to, by name or as the newest taken at or before ``at``, and a line saying which."""
    points = list_points(repo)
    if name is not None:
        for point in points:
            if point.name == name:
                return point, f"restore point {name} (taken {point.taken_at.isoformat()}, epoch {point.epoch})"
        known = ", ".join(p.name for p in points[-5:]) or "none yet: `shardctl backup create` takes one"
        raise RestorePointError(f"no restore point named {name} in {repo.root} (newest: {known})")
    assert at is not None
    before = [p for p in points if p.taken_at <= at]
    if not before:
        oldest = points[0].taken_at.isoformat() if points else "none taken yet"
        raise RestorePointError(f"no consistent restore point at or before {at.isoformat()} (oldest: {oldest})")
    point = before[-1]
    return point, (
        f"{at.isoformat()} resolves to restore point {point.name} taken {point.taken_at.isoformat()} (epoch "
        f"{point.epoch}), the newest consistent point at or before it: writes after it are not restored"
    )
