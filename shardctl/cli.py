"""`shardctl`: the control plane's command line. Errors are one clear line and a non-zero exit."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import click

from shardctl import models_cli

if TYPE_CHECKING:
    from shardctl.stack.ha.cluster import HACluster
    from shardctl.stack.manager import Stack

# Each command imports what it needs when it runs: `shardctl --help` must not pay for pydantic, psycopg,
# sqlglot, Patroni's cluster code and the stack manager (1.7 s together; the help answers in ~0.1 s).


def _expected_errors() -> tuple[type[BaseException], ...]:
    """The control plane's known failures (imported only once a command has failed)."""
    import psycopg

    from shardctl.control.ha import HAError
    from shardctl.control.migration.cleanup import CleanupError
    from shardctl.control.migration.engine import MigrationError
    from shardctl.control.migration.journal import JournalError
    from shardctl.control.migration.replication import ReplicationError
    from shardctl.control.migration.table import LayoutError
    from shardctl.control.roles import RoleSetupError
    from shardctl.java import JavaUnavailableError
    from shardctl.stack.binaries import MissingBinaryError
    from shardctl.stack.ha.etcd import EtcdStartError
    from shardctl.stack.manager import StackError
    from shardctl.stack.postgres import PostgresStartError
    from shardctl.stack.redis_server import RedisStartError
    from shardctl.store.registry import ModelNotFoundError
    from shardctl.store.schema import SchemaError
    from shardctl.store.shardmap import ShardMapError

    return (
        RoleSetupError,
        StackError,
        JavaUnavailableError,
        MissingBinaryError,
        PostgresStartError,
        RedisStartError,
        EtcdStartError,
        HAError,
        MigrationError,
        JournalError,
        ReplicationError,
        CleanupError,
        LayoutError,
        ValueError,  # PromotionError (a refused or lost promotion, nothing to roll back) among them
        OSError,
        ShardMapError,
        SchemaError,
        ModelNotFoundError,
        psycopg.Error,  # unreachable server, a role without the grant: the server's first line says which
    )


class _Group(click.Group):
    """Turns the control plane's known failures into a message and exit code 1, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.ClickException:
            raise
        except Exception as exc:
            if isinstance(exc, _expected_errors()):
                raise click.ClickException(_message(exc)) from exc
            raise


def _message(exc: Exception) -> str:
    """The error's message; a database error's first line only (its DETAIL and HINT lines follow it)."""
    import psycopg

    text = str(exc).strip()
    return text.splitlines()[0] if isinstance(exc, psycopg.Error) and text else text


@click.group(cls=_Group)
def main() -> None:
    """Tessera's sharded feature store and its control plane."""


@main.group(cls=_Group)
def stack() -> None:
    """The local stack: catalog and shard Postgres servers, Redis, Java for H2O."""


def _stack(data_dir: str | None) -> Stack:
    from shardctl.java import JavaSettings
    from shardctl.settings import StoreSettings
    from shardctl.stack.ha.settings import HASettings
    from shardctl.stack.manager import Stack
    from shardctl.stack.settings import StackSettings

    knobs = StackSettings()
    root = Path(data_dir) if data_dir else StoreSettings().data_dir
    return Stack(
        root,
        postgres_bin_dir=knobs.postgres_bin_dir,
        run_as_user=knobs.run_as_user,
        ha_settings=HASettings(),
        java_home=JavaSettings().java_home,
    )


data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where servers keep their data (default: $TESSERA_DATA_DIR or ./.tessera).",
)


@stack.command("up")
@data_dir_option
@click.option(
    "--servers",
    type=click.IntRange(1, 64),
    default=None,
    help="Servers to run (default 2); on a running stack, adds the missing ones (empty: `shardctl migrate run "
    "--add-server NAME` moves logical shards onto them).",
)
@click.option("--shards", type=click.IntRange(1, 64), default=None, hidden=True, help="Deprecated: --servers.")
@click.option("--base-port", type=click.IntRange(1024, 65000), default=None, help="First port to try.")
@click.option("--ha", is_flag=True, help="Each server a Patroni cluster (primary + replicas) with etcd.")
@click.option("--replicas", type=click.IntRange(1, 4), default=None, help="Replicas per server in HA mode (default 1).")
def stack_up(
    data_dir: str | None, servers: int | None, shards: int | None, base_port: int | None, ha: bool, replicas: int | None
) -> None:
    """Start every server that is not running (harmless when all are), then print their status."""
    from shardctl.stack.settings import StackSettings

    if shards is not None:
        if servers is not None and servers != shards:
            raise click.UsageError("--shards is the deprecated name of --servers: give one of them")
        click.echo("shardctl: --shards is deprecated, use --servers", err=True)
        servers = shards
    the_stack = _stack(data_dir)
    knobs = StackSettings()
    if servers is None and "servers" in knobs.model_fields_set:  # TESSERA_STACK__SERVERS, when set, as the default
        servers = knobs.servers
    elif servers is None and knobs.shards is not None:  # the deprecated TESSERA_STACK__SHARDS
        servers = knobs.shards
    before = the_stack.load_state()
    had = set(the_stack.server_names(before)) if before is not None else None
    state = the_stack.up(servers=servers, base_port=base_port or knobs.base_port, ha=ha, replicas=replicas)
    _print_status(the_stack, as_json=False)
    for name in [n for n in the_stack.server_names(state) if had is not None and n not in had]:
        click.echo(f"{name} added, empty: `shardctl migrate run --add-server {name}` moves logical shards onto it")


@stack.command("remove-server")
@data_dir_option
@click.argument("name")
def stack_remove_server(data_dir: str | None, name: str) -> None:
    """Stop and delete server NAME (e.g. server-2) once no logical shard is placed on it (move them away
    with `shardctl migrate` first; refused otherwise)."""
    _stack(data_dir).remove_server(name)
    click.echo(f"{name} removed")


@stack.command("status")
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def stack_status(data_dir: str | None, as_json: bool) -> None:
    """Show each server's port, PID and health; exit 1 if any is unhealthy or the stack is not up."""
    healthy = _print_status(_stack(data_dir), as_json)
    sys.exit(0 if healthy else 1)


@stack.command("down")
@data_dir_option
@click.option("--purge", is_flag=True, help="Also delete the servers' data.")
def stack_down(data_dir: str | None, purge: bool) -> None:
    """Stop every server the stack started, by PID."""
    failed = _stack(data_dir).down(purge=purge)
    if failed:
        raise click.ClickException(f"could not stop: {', '.join(failed)}")
    click.echo("stack stopped" + (" and purged" if purge else ""))


@main.group(cls=_Group)
def ha() -> None:
    """High availability of the shards: Patroni clusters with etcd (`shardctl stack up --ha`)."""


def _ha_cluster(data_dir: str | None) -> HACluster:
    from shardctl.stack.manager import StackError

    the_stack = _stack(data_dir)
    state = the_stack.load_state()
    if state is None:
        raise StackError(f"no stack in {the_stack.data_dir}: run `shardctl stack up --ha`")
    cluster = the_stack.ha_cluster(state)
    if cluster is None:
        raise StackError(f"the stack in {the_stack.data_dir} runs without HA: start one with `shardctl stack up --ha`")
    return cluster


@ha.command("status")
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def ha_status(data_dir: str | None, as_json: bool) -> None:
    """Each shard's state (healthy, degraded, down), what commits do now, and its members' role, state,
    timeline and lag. Exit 1 unless every shard is healthy (a primary without its sync replica is degraded)."""
    from shardctl.stack.ha.health import HEALTHY, shard_health, to_json

    cluster = _ha_cluster(data_dir)
    shards = [shard_health(cluster, shard) for shard in range(cluster.shard_count())]
    if as_json:
        click.echo(to_json(shards))
    else:
        for s in shards:
            why = f" ({s.reason})" if s.reason else ""
            click.echo(f"shard {s.shard}: {s.state}{why}; commits: {s.commits}")
        click.echo(f"{'shard':>5} {'member':<12} {'role':<13} {'state':<10} {'port':>6} {'tl':>4} {'lag':>10}")
        for r in [m for s in shards for m in s.members]:
            lag = "-" if r.lag is None else str(r.lag)
            click.echo(
                f"{r.shard:>5} {r.name:<12} {r.role:<13} {r.state:<10} {r.port:>6} {r.timeline or '-':>4} {lag:>10}"
            )
    sys.exit(0 if all(s.state == HEALTHY for s in shards) else 1)


force_option = click.option("--force", is_flag=True, help="Do not ask for confirmation.")


def _heal_member(data_dir: str | None, member: str, force: bool, question: str, action: str) -> None:
    """Confirm (unless --force), run `shardctl.stack.ha.heal.<action>` on MEMBER, print how it came back."""
    from shardctl.stack.ha import heal

    cluster = _ha_cluster(data_dir)
    cluster.member(member)  # an unknown member fails here, before any question
    if not force:
        click.confirm(question, abort=True)
    result = getattr(heal, action)(cluster, member)
    click.echo(f"{result.member}: {result.action}; {result.role} {result.state} after {result.seconds:.1f}s")


@ha.command("restart")
@data_dir_option
@click.argument("member")
@force_option
def ha_restart(data_dir: str | None, member: str, force: bool) -> None:
    """Bring MEMBER (e.g. shard0-m1) back: restart its Postgres through Patroni, or start a dead, hung or
    half-started member again; waits until it runs (a replica streams)."""
    _heal_member(data_dir, member, force, f"Restart {member}?", "restart")


@ha.command("reinit")
@data_dir_option
@click.argument("member")
@force_option
def ha_reinit(data_dir: str | None, member: str, force: bool) -> None:
    """Clone replica MEMBER again from its shard's primary (its data directory is replaced)."""
    _heal_member(data_dir, member, force, f"Replace {member}'s data with a fresh clone of its primary?", "reinit")


@ha.command("switchover")
@data_dir_option
@click.argument("shard", type=click.IntRange(0, None))
@click.option("--candidate", default=None, help="Member to promote (default: Patroni picks a sync replica).")
def ha_switchover(data_dir: str | None, shard: int, candidate: str | None) -> None:
    """Planned switchover of SHARD's primary through Patroni's REST API."""
    from shardctl.control.ha import switchover

    cluster = _ha_cluster(data_dir)
    cluster.check_shard(shard)
    click.echo(switchover(shard, cluster.api_urls(shard), candidate))


@main.group(cls=_Group)
def shards() -> None:
    """The shard map in the catalog: epochs and shard DSNs."""


def catalog_dsn() -> str:
    """The catalog, connected to as the control plane (``TESSERA_CONTROL__DB_*``; unset: as the DSN says)."""
    from shardctl.control.settings import ControlSettings
    from shardctl.credentials import with_credentials
    from shardctl.settings import StoreSettings
    from shardctl.store.shardmap import ShardMapError

    dsn = StoreSettings().catalog_dsn
    if not dsn:
        raise ShardMapError("no catalog DSN: set TESSERA_CATALOG_DSN or run `shardctl stack up`")
    return with_credentials(dsn, ControlSettings().db_credentials())


@shards.command("show")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def shards_show(as_json: bool) -> None:
    """Print the current epoch and its servers: name, logical shards held, host:port/db (never passwords)."""
    from shardctl.store.errors import describe_dsn
    from shardctl.store.shardmap import ShardMapStore

    current = ShardMapStore(catalog_dsn()).current()
    listed = [
        {"index": i, "name": name, "server": describe_dsn(dsn), "logical_shards": len(current.logical_shards_of(i))}
        for i, (name, dsn) in enumerate(zip(current.servers, current.dsns, strict=True))
    ]
    if as_json:
        click.echo(json.dumps({"epoch": current.epoch, "shards": listed}, indent=2))
        return
    click.echo(f"epoch {current.epoch}, {current.server_count} servers, 256 logical shards")
    for row in listed:
        click.echo(f"  {row['name']} (index {row['index']}): {row['logical_shards']} logical shards, {row['server']}")


@shards.command("prepare")
def shards_prepare() -> None:
    """Create what is missing (catalog tables, epoch 1 from the settings, schema on every shard); idempotent."""
    from shardctl.settings import StoreSettings
    from shardctl.store import prepare

    settings = StoreSettings()
    current = prepare(catalog_dsn(), settings=settings)
    click.echo(f"ready: epoch {current.epoch}, {current.server_count} servers, schema applied")


@main.group(cls=_Group)
def roles() -> None:
    """Each part's own database role (serving, writer, pipeline) and its grants."""


@roles.command("ensure")
def roles_ensure() -> None:
    """Create the part roles on the catalog and every shard, then grant them their tables; idempotent.

    Runs as the control plane (``TESSERA_CONTROL__DB_*``, a superuser); passwords from
    ``TESSERA_CONTROL__{SERVING,WRITER,PIPELINE}_PASSWORD`` (unset: the role gets none)."""
    from shardctl.control.roles import ensure_roles
    from shardctl.control.settings import ControlSettings
    from shardctl.credentials import with_credentials
    from shardctl.settings import StoreSettings
    from shardctl.store import prepare

    control = ControlSettings()
    settings = StoreSettings()
    catalog = catalog_dsn()
    shard_dsns = [with_credentials(dsn, control.db_credentials()) for dsn in settings.shard_dsns()]
    for dsn in (catalog, *shard_dsns):
        ensure_roles(dsn, control.role_passwords())
    current = prepare(catalog, settings=settings)
    click.echo(f"roles ready on the catalog and {current.server_count} servers (epoch {current.epoch}), grants applied")


def _print_status(the_stack: Stack, as_json: bool) -> bool:
    rows = the_stack.status()
    if as_json:
        click.echo(json.dumps([asdict(r) for r in rows], indent=2))
    elif not rows:
        click.echo(f"no stack in {the_stack.data_dir}: run `shardctl stack up`")
    else:
        click.echo(f"{'name':<10} {'kind':<8} {'port':>6} {'pid':>8}  {'health':<9} {'logical':>7}  detail")
        for r in rows:
            placed = "-" if r.logical_shards is None else str(r.logical_shards)
            click.echo(
                f"{r.name:<10} {r.kind:<8} {r.port or '-':>6} {r.pid or '-':>8}  "
                f"{'healthy' if r.healthy else 'DOWN':<9} {placed:>7}  {r.detail}"
            )
    return bool(rows) and all(r.healthy for r in rows)


# Command groups kept in their own modules (each imports only click until a command runs).
from shardctl.migrate_cli import migrate, servers  # noqa: E402

main.add_command(servers)
main.add_command(migrate)
main.add_command(models_cli.models)  # `shardctl models ...`: the model lifecycle, in its own module

if __name__ == "__main__":
    main()
