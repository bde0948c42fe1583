"""The migration engine: moves logical shards between named servers, phase by phase, recorded in the journal.

Phases (``journal.PHASES``): ``planned`` (the plan stored) -> ``provisioned`` (every server reachable, logical
replication possible, schema applied) -> ``copying`` (per (source, target) pair a row-filtered publication, a
slot and a subscription) -> ``synced`` (initial copy done) -> ``verified`` (VDiff-like report clean) ->
``cut_over`` (fence, drain, final check, new epoch published) -> ``cleaned`` (after every live process follows
the new epoch: links torn down, moved rows deleted from the sources). Every phase is idempotent and the journal
only moves forward, so ``resume`` after a kill at any point re-runs the first unfinished phase; the copy phase
can never run again once the new placement is published (``prepare_target`` would empty the new owner).
Design: docs/architecture/process.md ("Online resharding"), docs/architecture/resharding.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from shardctl.control.migration import cleanup, replication
from shardctl.control.migration.disk import DeclaredCapacity, DiskSpaceSource, TargetDisk, check_targets, refusal
from shardctl.control.migration.estimate import estimate_moves
from shardctl.control.migration.final_check import FinalCheck
from shardctl.control.migration.journal import ABORTABLE, PHASES, Journal, JournalError, MigrationRecord
from shardctl.control.migration.plan import Move, PlanError, apply_moves, plan_moves
from shardctl.control.migration.table import MovedTable, check_layout
from shardctl.control.migration.verify import verify
from shardctl.errors import ControlError, first_line
from shardctl.store.fence import fence_epochs, raise_fence
from shardctl.store.schema import apply_schema
from shardctl.store.shardmap import ShardMap, ShardMapError, ShardMapStore, ShardMapWatcher

log = logging.getLogger(__name__)


class MigrationError(ControlError, RuntimeError):
    """A migration cannot start or continue; the message says why and what to do (one line)."""


class FinalCheckError(MigrationError):
    """The cutover's final check (``final_check.py``) found moved logical shards that differ between source and
    target: the cutover stops (no retry can fix a copy that lost rows)."""


@contextmanager
def _servers_reachable(action: str) -> Iterator[None]:
    """A server that cannot be reached, or whose primary is gone (a failover still in progress), stops ``action``
    with a message that says so; the journal keeps the phase, so the same command runs again later."""
    try:
        yield
    except psycopg.OperationalError as exc:
        said = first_line(exc)
        raise MigrationError(
            f"{action} stopped: a server of this migration has no writable primary or cannot be reached (a failover "
            f"in progress?); run it again once `shardctl ha status` shows every shard healthy ({said})"
        ) from exc


@dataclass(frozen=True)
class CutoverPolicy:
    """Bounds of the cutover and the cleanup (why these values: docs/architecture/process.md)."""

    lock_wait_s: float = 2.0  # raising the fence waits this long for in-flight writes, else gives up
    drain_s: float = 5.0  # the fence is lowered (old placement as a new epoch) if the drain takes longer
    attempts: int = 5  # cutover attempts before the run stops (resume tries again)
    retry_pause_s: float = 2.0
    grace_s: float = 60.0  # cleanup waits this long at most for live processes to follow the new epoch
    heartbeat_within_s: float = 3 * ShardMapWatcher.HEARTBEAT_S + 1  # a process beating within this is live
    settle_s: float = 2.0  # after the acknowledgements: reads routed just before them finish
    copy_timeout_s: float = 3600.0


@dataclass(frozen=True)
class ProgressEvent:
    """What the engine is doing, for progress bars and logs: ``done`` of ``total`` units (rows, links)."""

    phase: str
    message: str
    done: int = 0
    total: int | None = None
    unit: str = ""


@dataclass
class PlanReport:
    """The moves from the current placement to ``to_servers``, and what they weigh."""

    from_epoch: int
    servers_before: list[str]
    to_servers: list[str]
    moves: list[Move]
    placement_after: list[str]  # logical shard -> server name, once the moves are done
    pairs: list[dict[str, Any]] = field(default_factory=list)  # source, target, logical_shards, rows, bytes
    disk: list[TargetDisk] = field(default_factory=list)  # per receiving target: needed, free, fits (disk.py)

    @property
    def rows(self) -> int:
        return sum(p["rows"] for p in self.pairs)

    @property
    def bytes(self) -> int:
        return sum(p["bytes"] for p in self.pairs)

    def to_json(self) -> dict[str, Any]:
        return {
            "from_epoch": self.from_epoch,
            "servers_before": self.servers_before,
            "to_servers": self.to_servers,
            "moves": [[m.logical_shard, m.source, m.target] for m in self.moves],
            "placement_after": self.placement_after,
            "pairs": self.pairs,
            "logical_shards_moved": len(self.moves),
            "rows": self.rows,
            "bytes": self.bytes,
            "disk": [verdict.to_json() for verdict in self.disk],
        }


class MigrationEngine:
    """Plans and runs migrations against the catalog at ``catalog_dsn``; servers are names from its registry."""

    def __init__(
        self,
        catalog_dsn: str,
        *,
        on_progress: Callable[[ProgressEvent], None] | None = None,
        policy: CutoverPolicy | None = None,
        table: MovedTable | None = None,
        disk: DiskSpaceSource | None = None,
    ):
        self.maps = ShardMapStore(catalog_dsn)
        self.journal = Journal(catalog_dsn)
        self.on_progress = on_progress or (lambda event: None)
        self.policy = policy or CutoverPolicy()
        self.table = table or MovedTable()
        # Where the targets' free space comes from: the capacities declared in the catalog unless the caller knows
        # better (the CLI adds the local stack's filesystems: shardctl/stack/disk.py).
        self.disk = disk or DeclaredCapacity(self.maps)
        self.maps.ensure_schema()
        self.journal.ensure_schema()

    # --- planning -------------------------------------------------------------------------------------------------

    def plan(self, to_servers: Sequence[str]) -> PlanReport:
        """The moves, their rows and bytes (counted on the sources) and each receiving target's disk; no side
        effect. ``MigrationError`` when a target lacks the disk for its copy (``disk.py``), so `begin` (and
        `shardctl migrate run`) never starts a copy that would fill a server."""
        current = self.maps.current()
        registry = self.maps.registered_servers()
        targets = _checked_servers(to_servers, registry)
        try:
            moves = plan_moves(current.placement_by_name(), targets)
        except PlanError as exc:
            raise MigrationError(str(exc)) from None
        involved = {m.source for m in moves} | {m.target for m in moves}
        self._require_reachable({name: registry[name] for name in sorted(involved)})
        estimates = estimate_moves(moves, registry, table=self.table)
        pairs = [
            {
                "source": e.source,
                "target": e.target,
                "logical_shards": list(e.logical_shards),
                "rows": e.rows,
                "bytes": e.bytes,
            }
            for e in estimates
        ]
        after = apply_moves(current.placement_by_name(), moves)
        placement_after = [after[shard] for shard in range(len(after))]
        disk = self._check_disk(pairs, registry)
        return PlanReport(current.epoch, list(current.servers), list(targets), moves, placement_after, pairs, disk)

    def _check_disk(self, pairs: Sequence[Mapping[str, Any]], registry: Mapping[str, str]) -> list[TargetDisk]:
        """Each receiving target's verdict; ``MigrationError`` naming every target that lacks the space."""
        incoming: dict[str, int] = {}
        for pair in pairs:
            incoming[pair["target"]] = incoming.get(pair["target"], 0) + pair["bytes"]
        measured, max_wal = {}, {}
        for name in sorted(incoming):
            try:
                measured[name] = self.disk.measure(name, registry[name])
                with psycopg.connect(registry[name], connect_timeout=5) as conn:
                    max_wal[name] = conn.execute("SELECT pg_size_bytes(current_setting('max_wal_size'))").fetchone()[0]
            except psycopg.OperationalError as exc:
                raise MigrationError(f"server {name} is unreachable: {first_line(exc)}") from None
        verdicts = check_targets(incoming, measured, max_wal=max_wal)
        refused = refusal(verdicts)
        if refused is not None:
            raise MigrationError(refused)
        return verdicts

    def begin(self, to_servers: Sequence[str]) -> MigrationRecord:
        """Plan and record a migration in phase ``planned``; ``MigrationError`` if one is running already."""
        running = self.journal.running()
        if running is not None:
            raise MigrationError(
                f"migration {running.id} is already running (phase {running.phase}): "
                "`shardctl migrate resume` or `shardctl migrate abort` it first"
            )
        report = self.plan(to_servers)
        if not report.moves:
            raise MigrationError(
                f"nothing to move: the placement is already balanced on {', '.join(report.to_servers)}"
            )
        try:
            return self.journal.begin(report.to_json())
        except JournalError as exc:
            raise MigrationError(str(exc)) from None

    # --- running --------------------------------------------------------------------------------------------------

    def run(self, migration_id: int) -> MigrationRecord:
        """Every remaining phase of the migration, in order."""
        record = self._record(migration_id)
        for phase in PHASES[PHASES.index(record.phase) + 1 :]:
            self.run_phase(migration_id, phase)
        return self._record(migration_id, running_only=False)

    def resume(self) -> MigrationRecord:
        """The running migration's remaining phases (after a kill, a failed phase, or a stopped run)."""
        running = self.journal.running()
        if running is None:
            raise MigrationError("no migration is running: start one with `shardctl migrate run --to-servers ...`")
        with _servers_reachable("resume"):
            return self.run(running.id)

    def run_phase(self, migration_id: int, phase: str) -> dict[str, Any]:
        """Run ``phase`` if it is the next one (a finished phase is a no-op); returns its detail."""
        if phase not in PHASES[1:]:
            raise MigrationError(f"unknown phase {phase!r}: one of {', '.join(PHASES[1:])}")
        record = self._record(migration_id)
        have, want = PHASES.index(record.phase), PHASES.index(phase)
        if want <= have:
            return {"skipped": f"{phase} is already done"}
        if want != have + 1:
            raise MigrationError(f"migration {migration_id} is at {record.phase}; run {PHASES[have + 1]} first")
        step = getattr(self, f"_{phase}")
        self.on_progress(ProgressEvent(phase, f"{phase}: starting"))
        detail = step(record)
        self.journal.finish_phase(migration_id, phase, detail)
        self.on_progress(ProgressEvent(phase, f"{phase}: done"))
        return detail

    def abort(self) -> MigrationRecord:
        """Before cutover: tear every link down and delete the copied rows from the targets; the placement (and
        so all traffic) never changed. After cutover moving back is another migration."""
        running = self.journal.running()
        if running is None:
            raise MigrationError("no migration is running")
        if running.phase not in ABORTABLE:
            raise MigrationError(
                f"migration {running.id} is past cutover ({running.phase}): moving back is a new migration; "
                "`shardctl migrate resume` finishes this one"
            )
        with _servers_reachable("abort"):
            self._release_fences(running)  # a cutover killed after raising the fence, before publishing
            errors = []
            for link in self._links(running):
                report = replication.teardown(link, purge_target=True)
                errors += report.errors
            if errors:
                raise MigrationError(f"abort incomplete (run it again once the servers are back): {'; '.join(errors)}")
            self.journal.abort(running.id)
            return self._record(running.id, running_only=False)

    def status(self) -> dict[str, Any]:
        """The running (or last) migration: phase, rows copied, lag, ETA. JSON-able."""
        record = self.journal.running() or self.journal.latest()
        if record is None:
            return {"migration": None, "epoch": self.maps.current().epoch}
        plan = record.plan
        events = self.journal.events(record.id)
        out: dict[str, Any] = {
            "migration": record.id,
            "state": record.state,
            "phase": record.phase,
            "next_phase": PHASES[PHASES.index(record.phase) + 1] if record.phase != PHASES[-1] else None,
            "to_servers": plan["to_servers"],
            "logical_shards_moved": plan["logical_shards_moved"],
            "rows_planned": plan["rows"],
            "bytes_planned": plan["bytes"],
            "epoch": self.maps.current().epoch,
            "events": [{"phase": p, "at": at.isoformat(), "detail": d} for p, at, d in events],
        }
        copying = PHASES.index("copying") <= PHASES.index(record.phase) < PHASES.index("cleaned")
        if record.state == "running" and copying:
            links = []
            copied = 0
            for pair, link in zip(plan["pairs"], self._links(record), strict=True):
                try:
                    state = replication.progress(link)
                except psycopg.OperationalError as exc:
                    links.append({"link": link.name, "error": first_line(exc)})
                    continue
                rows = pair["rows"] if state.synced else state.copying_rows
                copied += rows
                links.append(
                    {
                        "link": link.name,
                        "source": pair["source"],
                        "target": pair["target"],
                        "synced": state.synced,
                        "rows_copied": rows,
                        "lag_bytes": state.lag_bytes,
                        "slot_wal_status": state.slot_wal_status,
                        "enabled": state.enabled,
                        "errors": state.errors,
                    }
                )
            out["links"] = links
            out["rows_copied"] = copied
            out["lag_bytes"] = max((x.get("lag_bytes") or 0 for x in links), default=0)
            started = next((at for p, at, _ in events if p == "copying"), None)
            out["eta_s"] = _eta(copied, plan["rows"], started)
        return out

    # --- phases ---------------------------------------------------------------------------------------------------

    def _provisioned(self, record: MigrationRecord) -> dict[str, Any]:
        registry = self.maps.registered_servers()
        names = sorted({p["source"] for p in record.plan["pairs"]} | {p["target"] for p in record.plan["pairs"]})
        dsns = {name: _dsn(registry, name) for name in names}
        self._require_reachable(dsns)
        applied = {}
        for name, dsn in dsns.items():
            applied[name] = apply_schema(dsn)
            with psycopg.connect(dsn, connect_timeout=5) as conn:
                check_layout(conn, self.table)
                wal_level = conn.execute("SHOW wal_level").fetchone()[0]
            if wal_level != "logical" and any(p["source"] == name for p in record.plan["pairs"]):
                raise MigrationError(f"server {name} has wal_level={wal_level}: set wal_level = logical and restart it")
        return {"schema_applied": applied}

    def _copying(self, record: MigrationRecord) -> dict[str, Any]:
        """Set up the first link of each source; the others of the same source start once it is synced (``_synced``).

        Why one at a time per source: a table-sync slot is named ``pg_<subscription oid>_sync_<table oid>_<system
        id>`` after the target, and servers cloned from one template (the local stack's) share the system id and
        OID counters, so two targets copying from one source at once can ask it for the same slot name. The first
        links of different sources start together (``replication.start_all``: one target's subscriptions in one
        transaction, so its launcher starts every copy at once)."""
        first: dict[str, replication.Link] = {}
        for link in self._links(record):
            first.setdefault(link.source_dsn, link)
        replication.start_all(list(first.values()))
        started = [link.name for link in first.values()]
        for name in started:
            self.on_progress(ProgressEvent("copying", f"link {name} set up"))
        return {"links_started": started}

    def _synced(self, record: MigrationRecord) -> dict[str, Any]:
        pairs = record.plan["pairs"]
        total = sum(p["rows"] for p in pairs)
        finished = 0
        for pair, link in zip(pairs, self._links(record), strict=True):

            def report(
                state: replication.Progress, base: int = finished, rows: int = pair["rows"], name: str = link.name
            ) -> None:
                done = base + (rows if state.synced else min(rows, state.copying_rows))
                self.on_progress(ProgressEvent("copy", f"copying {name}", done, total, "rows"))

            try:
                replication.start(link)  # a no-op for a link set up already (each step looks first)
                replication.wait_synced(link, timeout=self.policy.copy_timeout_s, on_progress=report)
            except replication.ReplicationError as exc:
                raise MigrationError(f"{exc}; `shardctl migrate abort` then run again") from None
            finished += pair["rows"]
        self.on_progress(ProgressEvent("copy", "copied", total, total, "rows"))
        return {"rows": total}

    def _verified(self, record: MigrationRecord) -> dict[str, Any]:
        pairs = record.plan["pairs"]
        total = sum(p["rows"] for p in pairs)
        done = 0
        summaries = {}
        for pair, link in zip(pairs, self._links(record), strict=True):
            self.on_progress(ProgressEvent("verify", f"verifying {link.name}", done, total, "rows"))
            report = verify(
                link.source_dsn,
                link.target_dsn,
                link.logical_shards,
                table=self.table,
                catch_up=lambda link=link: replication.wait_caught_up(link),
            )
            summaries[link.name] = report.summary()
            if not report.clean:
                raise MigrationError(
                    f"verification of {pair['source']} -> {pair['target']} is not clean: {report.summary()}; "
                    "`shardctl migrate resume` verifies again, `shardctl migrate abort` gives up"
                )
            done += pair["rows"]
            self.on_progress(ProgressEvent("verify", f"verified {link.name}", done, total, "rows"))
        return {"reports": summaries}

    def _cut_over(self, record: MigrationRecord) -> dict[str, Any]:
        target = self._target_placement(record)
        if self.maps.current().placement_by_name() != target:  # a resumed migration published already: no need
            _vacuum_targets(self._links(record), self.table)
        for attempt in range(1, self.policy.attempts + 1):
            current = self.maps.current()
            if current.placement_by_name() == target:
                return {"epoch": current.epoch, "note": "already published"}
            current = self._release_fences(record) or current
            outcome = self._try_cutover(record, current, target)
            if outcome is not None:
                return {**outcome, "attempt": attempt}
            time.sleep(self.policy.retry_pause_s)
        raise MigrationError(
            f"cutover gave up after {self.policy.attempts} attempts (writes held the fence or the drain took "
            f"over {self.policy.drain_s:.0f} s each time); traffic stays on the old placement: resume later"
        )

    def _try_cutover(self, record: MigrationRecord, current: ShardMap, target: Mapping[int, str]) -> dict | None:
        """One cutover attempt: fence, drain, final check, publish. ``None`` if it gave up (the fence was then
        lowered by publishing the old placement as a new epoch, so writers never saw an error)."""
        new_epoch = current.epoch + 1
        links = self._links(record)
        by_source: dict[str, list[int]] = {}
        for link in links:
            by_source.setdefault(link.source_dsn, []).extend(link.logical_shards)
        check = FinalCheck(links, self.table)
        try:
            check.prepare()  # before the fence: counts in snapshots held open (final_check.py)
            started = time.monotonic()
            for dsn, shards in by_source.items():
                raise_fence(dsn, shards, new_epoch, lock_timeout_s=self.policy.lock_wait_s)
            fenced = time.monotonic()
            for link in links:
                replication.wait_caught_up(link, timeout=max(0.1, self.policy.drain_s - (time.monotonic() - fenced)))
            drained = time.monotonic()
            result = check.run()
            checked = time.monotonic()
            for link, differing in result.mismatches.items():
                if differing:
                    raise FinalCheckError(
                        f"final check of {link.name} failed: the copies differ on logical shards {differing}"
                    )
            published = self.maps.publish_placement(
                target, expected_epoch=current.epoch, note=f"migration {record.id}: cutover"
            )
        except BaseException as exc:
            if not isinstance(exc, psycopg.errors.LockNotAvailable | replication.ReplicationError | MigrationError):
                self._release_fences(record)  # never leave writers held at a fence no epoch will reach
                raise
            log.warning("cutover attempt gave up (%s); lowering the fence", first_line(exc))
            self.on_progress(ProgressEvent("cut_over", f"attempt gave up: {first_line(exc)}"))
            self._release_fences(record)
            if isinstance(exc, FinalCheckError):
                raise
            return None
        finally:
            check.close()
        done = time.monotonic()
        return {
            "epoch": published.epoch,
            "fence_held_ms": round((done - started) * 1000, 1),
            "drain_ms": round((drained - fenced) * 1000, 1),
            "final_check_ms": round((checked - drained) * 1000, 1),
            "final_check": result.method,
            "keys_compared": result.keys_compared,
        }

    def _cleaned(self, record: MigrationRecord) -> dict[str, Any]:
        epoch = self.maps.current().epoch
        waited_from = time.monotonic()
        late: list[str] = []
        while True:
            late = self.maps.unacknowledged(epoch, heartbeat_within_s=self.policy.heartbeat_within_s)
            if not late or time.monotonic() - waited_from > self.policy.grace_s:
                break
            self.on_progress(ProgressEvent("cleaned", f"waiting for {len(late)} process(es) to follow epoch {epoch}"))
            time.sleep(0.5)
        time.sleep(self.policy.settle_s)
        errors = []
        for link in self._links(record):
            errors += replication.teardown(link).errors
        if errors:
            raise MigrationError(f"teardown incomplete (resume once the servers are back): {'; '.join(errors)}")
        deleted = {}
        by_source: dict[str, list[int]] = {}
        for pair in record.plan["pairs"]:
            by_source.setdefault(pair["source"], []).extend(pair["logical_shards"])
        registry = self.maps.registered_servers()
        for source, shards in sorted(by_source.items()):
            self.on_progress(ProgressEvent("cleaned", f"deleting moved rows on {source}"))
            report = cleanup.delete_moved_rows(_dsn(registry, source), shards, table=self.table)
            deleted[source] = report.deleted_rows
        return {"epoch": epoch, "deleted_rows": deleted, "unacknowledged_at_grace": late}

    # --- helpers --------------------------------------------------------------------------------------------------

    def _record(self, migration_id: int, *, running_only: bool = True) -> MigrationRecord:
        record = self.journal.get(migration_id)
        if record is None:
            raise MigrationError(f"no migration {migration_id}")
        if running_only and record.state != "running":
            raise MigrationError(f"migration {migration_id} is {record.state}")
        return record

    def _links(self, record: MigrationRecord) -> list[replication.Link]:
        registry = self.maps.registered_servers()
        return [
            replication.Link(
                replication.link_name(record.id, i),
                _dsn(registry, pair["source"]),
                _dsn(registry, pair["target"]),
                tuple(pair["logical_shards"]),
                self.table,
            )
            for i, pair in enumerate(record.plan["pairs"])
        ]

    @staticmethod
    def _target_placement(record: MigrationRecord) -> dict[int, str]:
        return dict(enumerate(record.plan["placement_after"]))

    def _release_fences(self, record: MigrationRecord) -> ShardMap | None:
        """If a source's fence on the moving logical shards is ahead of the published epoch (a cutover stopped
        between raising it and publishing), publish the current placement again until the epoch reaches it, so
        writers held at the fence go on. Returns the new map, or None when nothing was needed."""
        current = self.maps.current()
        highest = 0
        for link in self._links(record):
            try:
                highest = max([highest, *fence_epochs(link.source_dsn, link.logical_shards).values()])
            except psycopg.OperationalError:
                continue
        published = None
        while current.epoch < highest:
            try:
                current = published = self.maps.publish_placement(
                    current.placement_by_name(),
                    expected_epoch=current.epoch,
                    note=f"migration {record.id}: fence lowered",
                )
            except ShardMapError:
                current = self.maps.current()
        return published

    def _require_reachable(self, dsns: Mapping[str, str]) -> None:
        for name, dsn in dsns.items():
            try:
                with psycopg.connect(dsn, connect_timeout=3) as conn:
                    conn.execute("SELECT 1")
            except psycopg.OperationalError as exc:
                raise MigrationError(f"server {name} is unreachable: {first_line(exc)}") from None


def _checked_servers(to_servers: Sequence[str], registry: Mapping[str, str]) -> list[str]:
    names = [s.strip() for s in to_servers if s.strip()]
    if not names:
        raise MigrationError("name at least one target server")
    unknown = [s for s in names if s not in registry]
    if unknown:
        known = ", ".join(sorted(registry)) or "none"
        raise MigrationError(
            f"unknown server {', '.join(unknown)} (registered: {known}); add it with `shardctl servers add`"
        )
    if len(set(names)) != len(names):
        raise MigrationError(f"a server is named twice in {', '.join(names)}")
    return names


def _dsn(registry: Mapping[str, str], name: str) -> str:
    try:
        return registry[name]
    except KeyError:
        raise MigrationError(f"server {name} is no longer registered: register it again to continue") from None


def _eta(done: int, total: int, started: datetime | None) -> float | None:
    """Seconds left at the rate since ``started`` (None before any progress)."""
    if started is None or done <= 0 or total <= done:
        return 0.0 if total and done >= total else None
    elapsed = (datetime.now(UTC) - started).total_seconds()
    return round(elapsed * (total - done) / done, 1) if elapsed > 0 else None


def _vacuum_targets(links: Sequence[replication.Link], table: MovedTable) -> None:
    """VACUUM the moved table on each target before the fence goes up: the copy left its pages unmarked in the
    visibility map, so the final check's counts (before the fence where the change log serves, under it
    otherwise) would read every copied row's heap tuple (at 1.66M rows moved, most of a second); once vacuumed,
    they read the index only."""
    for target in sorted({link.target_dsn for link in links}):
        with psycopg.connect(target, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(table.ident))
