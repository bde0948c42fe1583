"""`shardctl stack`: the local stack (catalog and shard Postgres servers, Redis, Java for H2O): up, status,
remove-server, down. ``open_stack`` is also how `shardctl ha` finds the stack's clusters."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import click

from shardctl.cli.options import data_dir_option, json_option, read_settings

if TYPE_CHECKING:
    from shardctl.stack.manager import Stack


@click.group()
def stack() -> None:
    """The local stack: catalog and shard Postgres servers, Redis, Java for H2O."""


def open_stack(data_dir: str | None) -> Stack:
    """The stack in ``data_dir`` (default: the settings' data dir), with the stack's, HA's and Java's settings."""
    from shardctl.java import JavaSettings
    from shardctl.settings import StoreSettings
    from shardctl.stack.ha.settings import HASettings
    from shardctl.stack.manager import Stack
    from shardctl.stack.settings import StackSettings

    knobs = read_settings(StackSettings)
    root = Path(data_dir) if data_dir else read_settings(StoreSettings).data_dir
    return Stack(
        root,
        postgres_bin_dir=knobs.postgres_bin_dir,
        run_as_user=knobs.run_as_user,
        ha_settings=read_settings(HASettings),
        java_home=read_settings(JavaSettings).java_home,
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
@click.option(
    "--tls",
    is_flag=True,
    help="A new stack's servers take TLS only (a local CA signs their certificate) and every DSN written verifies "
    "them (sslmode=verify-full).",
)
@click.option(
    "--scorer/--no-scorer",
    default=None,
    help="Start the precomputing scorer (python -m serving.scorer) beside the servers (default: on, or "
    "TESSERA_STACK__SCORER); `down` stops it.",
)
def stack_up(
    data_dir: str | None,
    servers: int | None,
    shards: int | None,
    base_port: int | None,
    ha: bool,
    replicas: int | None,
    tls: bool,
    scorer: bool | None,
) -> None:
    """Start every server that is not running (harmless when all are), then print their status."""
    from shardctl.stack.settings import StackSettings

    if shards is not None:
        if servers is not None and servers != shards:
            raise click.UsageError("--shards is the deprecated name of --servers: give one of them")
        click.echo("shardctl: --shards is deprecated, use --servers", err=True)
        servers = shards
    the_stack = open_stack(data_dir)
    knobs = read_settings(StackSettings)
    if servers is None and "servers" in knobs.model_fields_set:  # TESSERA_STACK__SERVERS, when set, as the default
        servers = knobs.servers
    elif servers is None and knobs.shards is not None:  # the deprecated TESSERA_STACK__SHARDS
        servers = knobs.shards
    before = the_stack.load_state()
    had = set(the_stack.server_names(before)) if before is not None else None
    state = the_stack.up(servers=servers, base_port=base_port or knobs.base_port, ha=ha, replicas=replicas, tls=tls)
    if knobs.scorer if scorer is None else scorer:
        state = the_stack.start_scorer()
    _print_status(the_stack, as_json=False)
    for name in [n for n in the_stack.server_names(state) if had is not None and n not in had]:
        click.echo(f"{name} added, empty: `shardctl migrate run --add-server {name}` moves logical shards onto it")


@stack.command("remove-server")
@data_dir_option
@click.argument("name")
def stack_remove_server(data_dir: str | None, name: str) -> None:
    """Stop and delete server NAME (e.g. server-2) once no logical shard is placed on it (move them away
    with `shardctl migrate` first; refused otherwise)."""
    open_stack(data_dir).remove_server(name)
    click.echo(f"{name} removed")


@stack.command("status")
@data_dir_option
@json_option
def stack_status(data_dir: str | None, as_json: bool) -> None:
    """Show each server's port, PID and health; exit 1 if any is unhealthy or the stack is not up."""
    healthy = _print_status(open_stack(data_dir), as_json)
    sys.exit(0 if healthy else 1)


@stack.command("down")
@data_dir_option
@click.option("--purge", is_flag=True, help="Also delete the servers' data.")
def stack_down(data_dir: str | None, purge: bool) -> None:
    """Stop every server the stack started, by PID."""
    failed = open_stack(data_dir).down(purge=purge)
    if failed:
        raise click.ClickException(f"could not stop: {', '.join(failed)}")
    click.echo("stack stopped" + (" and purged" if purge else ""))


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
