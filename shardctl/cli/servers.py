"""`shardctl servers`: the catalog's server registry. Servers are names; DSNs are given once, to `servers add`,
and never printed with their credentials (``describe_dsn``: host:port/db)."""

from __future__ import annotations

import json

import click

from shardctl.cli.options import catalog_dsn, json_option


@click.group()
def servers() -> None:
    """The servers the catalog knows, by name (placed or not)."""


@servers.command("list")
@json_option
def servers_list(as_json: bool) -> None:
    """Each registered server: where it is (host:port/db), how many logical shards it holds, reachable or not."""
    import psycopg

    from shardctl.store.errors import describe_dsn
    from shardctl.store.shardmap import ShardMapStore

    maps = ShardMapStore(catalog_dsn())
    maps.ensure_schema()
    current = maps.current()
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
            }
        )
    if as_json:
        click.echo(json.dumps({"epoch": current.epoch, "servers": rows}, indent=2))
        return
    click.echo(f"epoch {current.epoch}")
    click.echo(f"{'name':<16} {'logical shards':>14}  {'reachable':<9} server")
    for r in rows:
        click.echo(f"{r['name']:<16} {r['logical_shards']:>14}  {'yes' if r['reachable'] else 'NO':<9} {r['server']}")


@servers.command("add")
@click.argument("name")
@click.option("--dsn", required=True, help="libpq DSN of the server (may be multi-host: a Patroni cluster).")
@click.option("--replace", is_flag=True, help="Point an existing name at a new DSN.")
def servers_add(name: str, dsn: str, replace: bool) -> None:
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
    ShardMapStore(catalog_dsn()).register_server(name, dsn, replace=replace)
    click.echo(f"server {name} registered at {describe_dsn(dsn)}")
