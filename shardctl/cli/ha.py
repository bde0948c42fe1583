"""`shardctl ha`: the local stack's Patroni clusters (`shardctl stack up --ha`): status, restart, reinit,
switchover."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from shardctl.cli.options import data_dir_option, force_option, json_option
from shardctl.cli.stack import open_stack

if TYPE_CHECKING:
    from shardctl.stack.ha.cluster import HACluster


@click.group()
def ha() -> None:
    """High availability of the shards: Patroni clusters with etcd (`shardctl stack up --ha`)."""


def _ha_cluster(data_dir: str | None) -> HACluster:
    from shardctl.stack.layout import refuse_stack_without_passwords
    from shardctl.stack.manager import StackError

    the_stack = open_stack(data_dir)
    state = the_stack.load_state()
    if state is None:
        raise StackError(f"no stack in {the_stack.data_dir}: run `shardctl stack up --ha`")
    refuse_stack_without_passwords(the_stack.layout, state)
    cluster = the_stack.ha_cluster(state)
    if cluster is None:
        raise StackError(f"the stack in {the_stack.data_dir} runs without HA: start one with `shardctl stack up --ha`")
    return cluster


@ha.command("status")
@data_dir_option
@json_option
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
    click.echo(switchover(shard, cluster.api_urls(shard), candidate, auth=cluster.api_auth))
