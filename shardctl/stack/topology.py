"""Changing the set of the local stack's servers: `up --servers N` on a running stack adds empty servers (known to
the catalog, placed nowhere) and `stack remove-server` removes an empty one. Neither moves a logical shard: only
`shardctl migrate` does, so an added server stays empty until a migration moves logical shards onto it, and a
server is removed only once a migration has moved every logical shard (and row) away."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import psycopg

from shardctl.control.etcd import forget_scope
from shardctl.control.migration.journal import Journal
from shardctl.process import allocate_ports
from shardctl.stack import lifecycle
from shardctl.stack.layout import StackError, StackLayout, StackState
from shardctl.store.shardmap import ShardMapStore, server_name


def add_servers(layout: StackLayout, count: int) -> StackState:
    """Add ``count`` empty servers to the running stack (with HA, Patroni clusters like the others): start
    them, apply the schema, record them in the state and settings files and register them in the catalog.
    The placement does not change. All or nothing: a failure stops and forgets the new servers."""
    before = layout.load_state()
    if before is None:
        raise StackError(f"no stack in {layout.data_dir}: run `shardctl stack up` first")
    if before.ha is not None and before.ha.get("proxies"):
        raise StackError("a fault-injection stack (proxied members) cannot grow: start a new one")
    state = before.copy()  # to grow
    taken = set(layout.ports(state))
    near = min(taken)  # beside the stack's own ports, which its `up` found free
    if state.ha is None:
        ids = layout.server_ids(state)
        ports = allocate_ports(near, count, taken)
        state.server_ids = ids + [max(ids, default=-1) + 1 + i for i in range(count)]
        state.shard_ports = [*state.shard_ports, *ports]
    else:
        per_server = state.ha["replicas"] + 1
        ports = iter(allocate_ports(near, 2 * per_server * count, taken))
        state.ha["members"] += [[[next(ports), next(ports)] for _ in range(per_server)] for _ in range(count)]
    added = layout.server_names(state)[-count:]

    def forget_added() -> None:
        with contextlib.suppress(OSError):  # etcd gone too: its keys do not matter then
            _drop_data(layout, state, added)
        layout.save_state(before)
        layout.write_settings(before)

    running_before = set(lifecycle.running_pids(layout, before))
    with lifecycle.all_or_nothing(layout, state, running_before, f"adding {', '.join(added)}", forget_added):
        lifecycle.bring_up(layout, state, tuple(added))
    return state


def remove_server(layout: StackLayout, name: str) -> StackState:
    """Stop and delete server ``name`` (e.g. ``server-2``) and forget it in the catalog's server registry and
    in the state and settings files.

    Refused, with what to do, while the catalog places any logical shard on it, while it still holds
    rows, or while a migration runs: removing a server never loses a row. An HA stack removes its last
    server only (its Patroni clusters are numbered by position)."""
    state = layout.load_state()
    if state is None:
        raise StackError(f"no stack in {layout.data_dir}")
    names = layout.server_names(state)
    if name not in names:
        raise StackError(f"no server {name!r} in the stack in {layout.data_dir}; it has {', '.join(names)}")
    if len(names) == 1:
        raise StackError(f"{name} is the stack's only server; `shardctl stack down --purge` removes the stack")
    if state.ha is not None and name != names[-1]:
        raise StackError(f"an HA stack removes its last server only ({names[-1]}), not {name}")
    _check_removable(layout, state, name)
    # The catalog forgets it first: it refuses, under the publishers' lock, a server a placement still uses.
    ShardMapStore(layout.catalog_dsn(state)).unregister_server(name)
    position = names.index(name)
    _stop_server(layout, state, name, position)
    before = state.copy()
    if state.ha is None:
        state.server_ids = [n for n in layout.server_ids(state) if server_name(n) != name]
        del state.shard_ports[position]
    else:
        del state.ha["members"][position]
    layout.save_state(state)
    layout.write_settings(state)
    _drop_data(layout, before, [name])
    return state


def _stop_server(layout: StackLayout, state: StackState, name: str, position: int) -> None:
    """Stop server ``name`` (a plain Postgres, or every member of its Patroni cluster); ``StackError`` if any
    of it keeps running (the removal stops there, before anything is forgotten)."""
    if state.ha is None:
        server = layout.postgres_servers(state)[1 + position]
        if not server.stop():
            raise StackError(f"could not stop {name} (pid {server.pid()})")
        return
    cluster = layout.ha_cluster(state)
    assert cluster is not None
    failed = [m.name for m in cluster.members(position) if not m.stop()]
    if failed:
        raise StackError(f"could not stop {', '.join(failed)}")


def _check_removable(layout: StackLayout, state: StackState, name: str) -> None:
    """Refuse, saying what to do first, to remove a server while a migration runs, while the placement puts a
    logical shard on it, or while it still holds rows."""
    catalog = layout.catalog_dsn(state)
    journal = Journal(catalog)
    journal.ensure_schema()
    running = journal.running()
    if running is not None:
        raise StackError(
            f"migration {running.id} is running (phase {running.phase}): let it finish or "
            f"`shardctl migrate abort` before removing {name}"
        )
    placed = ShardMapStore(catalog).current().logical_shards_on(name)
    if placed:
        raise StackError(
            f"{name} holds {len(placed)} logical shards: move them to the other servers first "
            f"(`shardctl migrate run --remove-server {name}`), then remove it"
        )
    dsn = {e["name"]: e["dsn"] for e in layout.shard_entries(state)}[name]
    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            left = conn.execute("SELECT count(*) FROM entity_features").fetchone()[0]  # type: ignore[index]
    except psycopg.Error as exc:
        raise StackError(f"cannot check that {name} is empty ({exc}); bring it up first") from exc
    if left:
        raise StackError(
            f"{name} holds no logical shard but still has {left} rows (a migration's cleanup did not "
            f"finish?): run `shardctl migrate resume` first"
        )


def _drop_data(layout: StackLayout, state: StackState, names: list[str]) -> None:
    """Delete the data of servers ``names`` of ``state`` (stopped), and with HA their clusters' keys in etcd,
    so a server added later under the same number starts afresh."""
    ids = dict(zip(layout.server_names(state), layout.server_ids(state), strict=True))
    for name in names:
        number = ids[name]
        if state.ha is None:
            shutil.rmtree(Path(state.pg_root) / f"shard{number}", ignore_errors=True)
            (Path(state.pg_root) / f"shard{number}.log").unlink(missing_ok=True)
        else:
            shutil.rmtree(Path(state.ha["root"]) / f"shard{number}", ignore_errors=True)
            cluster = layout.ha_cluster(state)
            assert cluster is not None
            forget_scope(cluster.etcd.url, f"shard{number}", root_password=cluster.secrets.etcd_password("root"))
