"""`shardctl migrate` (online resharding: plan, run, resume, status, abort). Progress bars go to stderr and are
off with ``--json`` (machine output on stdout); failures are ``ShardctlError``s the root group prints as one
line (``shardctl/cli/options.py``)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from shardctl.cli.options import catalog_dsn, force_option, json_option, read_settings

if TYPE_CHECKING:
    from shardctl.control.migration.disk import DiskSpaceSource
    from shardctl.control.migration.engine import MigrationEngine, ProgressEvent


@click.group()
def migrate() -> None:
    """Online resharding: move logical shards between servers (plan, run, resume, status, abort)."""


def target_options(command):
    """The target, one of three ways (documented in README, "Resharding")."""
    for option in reversed(
        [
            click.option("--to-servers", default=None, help="Exactly these servers, comma-separated (e.g. a,b,c)."),
            click.option("--add-server", default=None, help="The current servers plus this one."),
            click.option("--remove-server", default=None, help="The current servers minus this one."),
        ]
    ):
        command = option(command)
    return command


def resolve_target(current_servers: list[str], to: str | None, add: str | None, remove: str | None) -> list[str]:
    """The target server list from exactly one of ``--to-servers``, ``--add-server``, ``--remove-server``."""
    given = [x for x in (to, add, remove) if x is not None]
    if len(given) != 1:
        raise click.UsageError("give exactly one of --to-servers, --add-server, --remove-server")
    if to is not None:
        return [s.strip() for s in to.split(",") if s.strip()]
    if add is not None:
        if add in current_servers:
            raise click.UsageError(f"server {add} already holds logical shards")
        return [*current_servers, add]
    if remove not in current_servers:
        raise click.UsageError(f"server {remove} holds no logical shards (placed: {', '.join(current_servers)})")
    return [s for s in current_servers if s != remove]


def _placed_servers(engine: MigrationEngine) -> list[str]:
    current = engine.maps.current()
    return [name for name in current.servers if current.logical_shards_on(name)]


def disk_source(catalog: str) -> DiskSpaceSource:
    """Where the targets' free space comes from: the filesystems of the local stack's servers (the settings' data
    dir) and the capacities declared in the catalog, the tighter of the two where both know a server."""
    from shardctl.control.migration.disk import DeclaredCapacity, Tightest
    from shardctl.settings import StoreSettings
    from shardctl.stack.disk import StackDiskSpace
    from shardctl.stack.layout import StackLayout
    from shardctl.store.shardmap import ShardMapStore

    layout = StackLayout(read_settings(StoreSettings).data_dir)
    return Tightest(StackDiskSpace(layout), DeclaredCapacity(ShardMapStore(catalog)))


def _new_engine(**kwargs: Any) -> MigrationEngine:
    from shardctl.control.migration.engine import MigrationEngine

    catalog = catalog_dsn()
    return MigrationEngine(catalog, disk=disk_source(catalog), **kwargs)


@migrate.command("plan")
@target_options
@json_option
def migrate_plan(to_servers: str | None, add_server: str | None, remove_server: str | None, as_json: bool) -> None:
    """Which logical shards would move from where to where, the rows and bytes that would move, and the disk each
    target needs for its copy (refused, exit 1, when a target lacks it)."""
    from shardctl.control.migration.disk import describe, format_bytes

    engine = _new_engine()
    report = engine.plan(resolve_target(_placed_servers(engine), to_servers, add_server, remove_server))
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
        return
    click.echo(
        f"epoch {report.from_epoch}: {', '.join(report.servers_before)} -> {', '.join(report.to_servers)}: "
        f"{len(report.moves)} of 256 logical shards move, {report.rows:,} rows, {format_bytes(report.bytes)}"
    )
    for pair in report.pairs:
        shards = pair["logical_shards"]
        listed = ", ".join(map(str, shards[:12])) + (", ..." if len(shards) > 12 else "")
        click.echo(
            f"  {pair['source']} -> {pair['target']}: {len(shards)} logical shards ({listed}), "
            f"{pair['rows']:,} rows, {format_bytes(pair['bytes'])}"
        )
    for verdict in report.disk:
        click.echo(f"  disk of {verdict.server}: {describe(verdict)}")


class _Bars:
    """Rich progress bars with ETA on stderr for the copy and the verification; other events as log lines."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("{task.description:<10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rows  ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self.tasks: dict[str, Any] = {}

    def __call__(self, event: ProgressEvent) -> None:
        if event.unit == "rows" and event.total is not None:
            task = self.tasks.get(event.phase)
            if task is None:
                task = self.tasks[event.phase] = self.progress.add_task(event.phase, total=max(1, event.total))
            self.progress.update(task, completed=min(event.done, max(1, event.total)))
        else:
            self.progress.console.print(f"[dim]{event.message}[/dim]")

    def __enter__(self) -> _Bars:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


def _engine(as_json: bool) -> tuple[MigrationEngine, _Bars | None]:
    bars = None if as_json else _Bars()
    return _new_engine(on_progress=bars), bars


def _finish(engine: MigrationEngine, migration_id: int, as_json: bool, bars: _Bars | None) -> None:
    if bars is None:
        record = engine.run(migration_id)
    else:
        with bars:
            record = engine.run(migration_id)
    status = engine.status()
    if as_json:
        click.echo(json.dumps(status, indent=2, default=str))
        return
    events = {e["phase"]: e["detail"] for e in status.get("events", [])}
    cut = events.get("cut_over", {})
    deleted = events.get("cleaned", {}).get("deleted_rows", {})
    click.echo(
        f"migration {record.id} {record.state}: epoch {cut.get('epoch')} published "
        f"(fence held {cut.get('fence_held_ms', '-')} ms), {sum(deleted.values()):,} moved rows"
        " removed from the sources"
    )


@migrate.command("run")
@target_options
@json_option
def migrate_run(to_servers: str | None, add_server: str | None, remove_server: str | None, as_json: bool) -> None:
    """Plan and run a migration to the target: provision, copy, verify, cut over, clean up. Killed at any point,
    `shardctl migrate resume` continues it."""
    engine, bars = _engine(as_json)
    record = engine.begin(resolve_target(_placed_servers(engine), to_servers, add_server, remove_server))
    if not as_json:
        from shardctl.control.migration.disk import TargetDisk, describe

        plan = record.plan
        click.echo(
            f"migration {record.id}: {plan['logical_shards_moved']} logical shards, {plan['rows']:,} rows "
            f"to {', '.join(plan['to_servers'])}",
            err=True,
        )
        for verdict in map(TargetDisk.from_json, plan["disk"]):
            click.echo(f"  disk of {verdict.server}: {describe(verdict)}", err=True)
    _finish(engine, record.id, as_json, bars)


@migrate.command("resume")
@json_option
def migrate_resume(as_json: bool) -> None:
    """Continue the running migration from its first unfinished phase."""
    from shardctl.control.migration.engine import MigrationError

    engine, bars = _engine(as_json)
    running = engine.journal.running()
    if running is None:
        raise MigrationError("no migration is running: start one with `shardctl migrate run --to-servers ...`")
    _finish(engine, running.id, as_json, bars)


@migrate.command("status")
@json_option
def migrate_status(as_json: bool) -> None:
    """Phase, rows copied, replication lag and ETA of the running migration (else the last one)."""
    from shardctl.control.migration.engine import MigrationEngine

    status = MigrationEngine(catalog_dsn()).status()
    if as_json:
        click.echo(json.dumps(status, indent=2, default=str))
        return
    if status["migration"] is None:
        click.echo(f"no migration yet; epoch {status['epoch']}")
        return
    click.echo(
        f"migration {status['migration']} {status['state']}: phase {status['phase']}"
        + (f", next {status['next_phase']}" if status["state"] == "running" and status["next_phase"] else "")
        + f"; {status['logical_shards_moved']} logical shards, {status['rows_planned']:,} rows to "
        f"{', '.join(status['to_servers'])}; epoch {status['epoch']}"
    )
    if "rows_copied" in status:
        eta = status.get("eta_s")
        click.echo(
            f"  copied {status['rows_copied']:,} of {status['rows_planned']:,} rows, lag {status['lag_bytes']:,} bytes"
            + (f", ETA {eta:.0f} s" if eta is not None else "")
        )
        for link in status["links"]:
            if "error" in link:
                click.echo(f"  {link['link']}: {link['error']}")
            else:
                click.echo(
                    f"  {link['link']} {link['source']} -> {link['target']}: "
                    f"{'synced' if link['synced'] else 'copying'}, lag {link['lag_bytes']} bytes, "
                    f"errors {link['errors']}" + ("" if link["enabled"] else ", DISABLED")
                )


@migrate.command("abort")
@force_option
@json_option
def migrate_abort(force: bool, as_json: bool) -> None:
    """Before cutover: drop the copy (subscriptions, slots, publications, copied rows); traffic never moved."""
    from shardctl.control.migration.engine import MigrationEngine, MigrationError

    engine = MigrationEngine(catalog_dsn())
    running = engine.journal.running()
    if running is None:
        raise MigrationError("no migration is running")
    if not force:
        click.confirm(f"Abort migration {running.id} (phase {running.phase}) and drop its copy?", abort=True)
    record = engine.abort()
    if as_json:
        click.echo(json.dumps({"migration": record.id, "state": record.state, "phase": record.phase}))
    else:
        click.echo(f"migration {record.id} aborted at {record.phase}; the placement is unchanged")
