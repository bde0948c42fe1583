"""`shardctl servers`: the catalog's server registry. Servers are names; DSNs are given once, to `servers add`,
and never printed with their credentials (``describe_dsn``: host:port/db). Each server's disk can be declared
(`servers add --disk-capacity`, `servers disk`): `shardctl migrate plan` checks the targets' room against it."""

from __future__ import annotations

import json

import click

from shardctl.cli.options import catalog_dsn, json_option


class DiskSize(click.ParamType):
    """A disk size: ``500GB``, ``40GiB``, ``50Gi``, ``1.5TB`` or plain bytes (``shardctl.control.migration.disk``)."""

    name = "size"

    def convert(self, value, param, ctx) -> int:
        if isinstance(value, int):
            return value
        from shardctl.control.migration.disk import DiskSizeError, parse_size

        try:
            return parse_size(value)
        except DiskSizeError as exc:
            self.fail(str(exc), param, ctx)


@click.group()
def servers() -> None:
    """The servers the catalog knows, by name (placed or not)."""


@servers.command("list")
@json_option
def servers_list(as_json: bool) -> None:
    """Each registered server: where it is (host:port/db), how many logical shards it holds, reachable or not."""
    import psycopg

    from shardctl.control.migration.disk import format_bytes
    from shardctl.store.errors import describe_dsn
    from shardctl.store.shardmap import ShardMapStore

    maps = ShardMapStore(catalog_dsn())
    maps.ensure_schema()
    current = maps.current()
    declared = maps.disk_capacities()
    rows = []
    for name, dsn in maps.registered_servers().items():
        try:
            with psycopg.connect(dsn, connect_timeout=2):
                reachable = True
        except psycopg.OperationalError:
            reachable = False
        rows.append(
            {
                "name": name,
                "server": describe_dsn(dsn),
                "logical_shards": len(current.logical_shards_on(name)),
                "reachable": reachable,
                "disk_capacity_bytes": declared.get(name),
            }
        )
    if as_json:
        click.echo(json.dumps({"epoch": current.epoch, "servers": rows}, indent=2))
        return
    click.echo(f"epoch {current.epoch}")
    click.echo(f"{'name':<16} {'logical shards':>14}  {'reachable':<9} {'disk':>9}  server")
    for r in rows:
        disk = "-" if r["disk_capacity_bytes"] is None else format_bytes(r["disk_capacity_bytes"])
        answers = "yes" if r["reachable"] else "NO"
        click.echo(f"{r['name']:<16} {r['logical_shards']:>14}  {answers:<9} {disk:>9}  {r['server']}")


@servers.command("add")
@click.argument("name")
@click.option("--dsn", required=True, help="libpq DSN of the server (may be multi-host: a Patroni cluster).")
@click.option("--replace", is_flag=True, help="Point an existing name at a new DSN.")
@click.option(
    "--disk-capacity",
    type=DiskSize(),
    default=None,
    help="The disk its data lives on (e.g. 500GB, 40GiB, 50Gi): migrate plan checks a copy onto it fits.",
)
def servers_add(name: str, dsn: str, replace: bool, disk_capacity: int | None) -> None:
    """Register server NAME at DSN (it must be reachable). Placing logical shards on it is `shardctl migrate`'s
    job: `shardctl migrate run --add-server NAME`."""
    import psycopg

    from shardctl.control.migration.engine import MigrationError
    from shardctl.errors import first_line
    from shardctl.store.errors import describe_dsn
    from shardctl.store.shardmap import ShardMapStore, check_server_name

    check_server_name(name)
    try:
        with psycopg.connect(dsn, connect_timeout=3):
            pass
    except psycopg.OperationalError as exc:
        raise MigrationError(f"server {name} is unreachable: {first_line(exc)}") from None
    ShardMapStore(catalog_dsn()).register_server(name, dsn, replace=replace, disk_capacity_bytes=disk_capacity)
    declared = f", {_declared(disk_capacity)}" if disk_capacity is not None else ""
    click.echo(f"server {name} registered at {describe_dsn(dsn)}{declared}")


@servers.command("disk")
@click.argument("name")
@click.option("--capacity", type=DiskSize(), default=None, help="Its disk's size (e.g. 500GB, 40GiB, 50Gi).")
@click.option("--clear", is_flag=True, help="Forget the declared size (plans then measure or report it unknown).")
def servers_disk(name: str, capacity: int | None, clear: bool) -> None:
    """Declare the disk server NAME's data lives on, e.g. after growing its volume: `shardctl migrate plan`
    refuses a plan whose copy would not fit on a target (free = the capacity less what the server holds)."""
    from shardctl.store.shardmap import ShardMapStore

    if (capacity is not None) == clear:
        raise click.UsageError("give exactly one of --capacity SIZE, --clear")
    ShardMapStore(catalog_dsn()).set_disk_capacity(name, capacity)
    click.echo(f"server {name}: {_declared(capacity) if capacity is not None else 'no disk capacity declared'}")


def _declared(capacity: int) -> str:
    from shardctl.control.migration.disk import format_bytes

    return f"disk capacity {format_bytes(capacity)} declared"
