"""Starting and stopping the local stack's servers: `up` starts whatever of a state is not running (all or
nothing: a failed or interrupted start stops what it started), `down` stops every server by PID. Growing or
shrinking the set of servers is ``topology``'s job, which starts added servers through ``bring_up`` here."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg

from shardctl.backup import archiving
from shardctl.backup.archiving import CATALOG_STANZA
from shardctl.backup.pgbackrest import Repository, Stanza
from shardctl.backup.settings import BackupSettings
from shardctl.control.roles import ensure_roles, own_database
from shardctl.process import pid_alive
from shardctl.stack import scorer_process
from shardctl.stack.ha.cluster import HACluster
from shardctl.stack.ha.config import MemberPlan
from shardctl.stack.layout import (
    DAGSTER_DATABASE,
    StackError,
    StackLayout,
    StackState,
    refuse_stack_without_passwords,
)
from shardctl.stack.postgres import DATABASE, SUPERUSER, PostgresServer, enable_ssl, make_template
from shardctl.stack.secrets import StackSecrets
from shardctl.store import prepare as prepare_feature_store
from shardctl.store.grants import PART_ROLES, grant_catalog_privileges
from shardctl.store.hashing import install_sql_functions
from shardctl.store.schema import apply_schema
from shardctl.store.shardmap import ShardMapError, ShardMapStore


def refuse_unsupported_up(
    layout: StackLayout, state: StackState | None, servers: int | None, ha: bool, replicas: int | None, tls: bool
) -> None:
    """`up` on a running stack never changes its kind (HA or not, replicas per server, TLS or not) and never drops
    servers: ``StackError`` saying what to do instead."""
    if state is None:
        return
    refuse_stack_without_passwords(layout, state)
    if tls and not state.tls:
        raise StackError(f"the stack in {layout.data_dir} runs without TLS; run `shardctl stack down --purge` first")
    if (ha or replicas is not None) and state.ha is None:
        raise StackError(f"the stack in {layout.data_dir} runs without HA; run `shardctl stack down --purge` first")
    if state.ha and replicas is not None and replicas != state.ha["replicas"]:
        raise StackError(
            f"the stack in {layout.data_dir} runs {state.ha['replicas']} replicas per server; "
            f"run `shardctl stack down --purge` first to change that"
        )
    count = layout.shard_count(state)
    if servers is not None and servers < count:
        raise StackError(
            f"the stack in {layout.data_dir} already has {count} servers; a stack never "
            f"drops servers on `up`: move their logical shards away (`shardctl migrate`), then "
            f"`shardctl stack remove-server NAME`"
        )


def start(layout: StackLayout, state: StackState, *, fresh: bool) -> StackState:
    """Start whatever of ``state`` is not running (harmless when everything already is). A ``fresh`` state (a
    new stack's) that fails to start is forgotten, so the next `up` plans afresh."""
    if fresh:
        layout.secrets.ensure()
    with all_or_nothing(
        layout, state, set(running_pids(layout, state)), "stack up", lambda: fresh and forget(layout, state)
    ):
        bring_up(layout, state)
    return state


def plan(layout: StackLayout, shards: int, base_port: int, ha: bool = False, replicas: int | None = None) -> StackState:
    """Lay out a new stack and save it without starting anything; a later `up` starts it. Fault-injection
    runs use the gap to start the proxies their members will talk through."""
    if layout.load_state() is not None:
        raise StackError(f"a stack is already laid out in {layout.data_dir}")
    state = layout.plan(shards, base_port, ha, replicas)
    layout.secrets.ensure()
    layout.save_state(state)
    return state


@contextlib.contextmanager
def all_or_nothing(
    layout: StackLayout, state: StackState, running_before: set[int], what: str, undo: Callable[[], object]
) -> Iterator[None]:
    """Run the body; if it fails (Ctrl-C too: an interrupted `up` must not leave servers behind), stop every
    server of ``state`` it started and, if all stopped, ``undo()`` what it recorded."""
    try:
        yield
    except BaseException as exc:
        left = stop_started(layout, state, running_before)
        if not left:
            undo()
        stopped = "stopped every server it had started" if not left else f"could not stop {', '.join(left)}"
        if isinstance(exc, Exception):
            raise StackError(f"{what} failed ({exc}); {stopped}") from exc
        raise


def bring_up(layout: StackLayout, state: StackState, added: tuple[str, ...] = ()) -> None:
    """Start every server of ``state`` (idempotent), record it in the state and settings files, and make the
    catalog know every server (``added`` names servers new to a running stack: they get their DSN even if a
    removed server used the name before)."""
    layout.save_state(state)
    secrets = layout.secrets
    template = Path(state.pg_root) / "template"
    make_template(layout.binaries(state), template, state.user, secrets.pg_password(SUPERUSER))
    tls = layout.tls(state)
    if tls is not None:  # in the template, so every server copied from it takes TLS only
        tls.ensure(state.user)
        enable_ssl(template, tls.cert_file, tls.key_file, state.user)
    passwords = part_passwords(secrets)
    for server in layout.postgres_servers(state):
        if not server.initialized():
            server.init_from(template)
    cluster = layout.ha_cluster(state)
    ha_shards = archiving.ha_stanzas(cluster, layout.server_names(state)) if cluster is not None else []
    repo = archiving.prepare(_archived(layout, state), state.pg_root, state.user, state.postgres, ha_shards=ha_shards)
    for server in layout.postgres_servers(state):
        server.start()
        server.ensure_database(DATABASE)
        ensure_roles(server.dsn("postgres"), passwords)
        with psycopg.connect(server.dsn()) as conn:
            install_sql_functions(conn)
    if repo is not None:
        archiving.start(repo, [name for name, _ in _archived(layout, state)])
    catalog = layout.postgres_servers(state)[0]
    catalog.ensure_database(DAGSTER_DATABASE)
    own_database(catalog.dsn("postgres"), DAGSTER_DATABASE)  # Dagster's storage is the pipeline's
    if cluster is not None:
        _ha_up(cluster, passwords, _member_archiving(repo, ha_shards))
        if repo is not None:
            archiving.start(repo, [stanza.name for stanza in ha_shards])
    redis_server = layout.redis_server(state)
    state.redis_pid = redis_server.start()
    layout.save_state(state)
    layout.write_settings(state)
    entries = layout.shard_entries(state)
    maps = ShardMapStore(layout.catalog_dsn(state))
    maps.ensure_schema()
    try:
        maps.current()  # once a map exists the catalog is the truth: the stack only adds servers to it
    except ShardMapError:
        prepare_feature_store(layout.catalog_dsn(state), [e["dsn"] for e in entries])
    else:  # a stack made before a part's role existed (the scorer's): its catalog grants, now
        with psycopg.connect(layout.catalog_dsn(state), autocommit=True, connect_timeout=5) as conn:
            grant_catalog_privileges(conn)
    for entry in entries:  # servers added to a running stack: schema, then known to the catalog (unplaced)
        apply_schema(entry["dsn"])
        # A name the stack used before (a removed server's) gets the new server's DSN.
        maps.register_server(entry["name"], entry["dsn"], replace=entry["name"] in added)


def start_scorer(layout: StackLayout, state: StackState) -> StackState:
    """Start the stack's scorer unless it runs already (its PID and probe port go into the state)."""
    if pid_alive(state.scorer_pid):
        return state
    pid, port = scorer_process.start(layout.settings_file, layout.data_dir / "scorer.log")
    state.scorer_pid, state.scorer_port = pid, port
    layout.save_state(state)
    return state


def stop_scorer(layout: StackLayout, state: StackState) -> bool:
    """Stop the stack's scorer by PID (True when none runs any more)."""
    if not scorer_process.stop(state.scorer_pid):
        return False
    if state.scorer_pid is not None:
        state.scorer_pid = state.scorer_port = None
        layout.save_state(state)
    return True


def part_passwords(secrets: StackSecrets) -> dict[str, str | None]:
    """Each part role's password, as `ensure_roles` sets it (a SCRAM verifier made on the client)."""
    if not all(secrets.pgpass(role).exists() for role in PART_ROLES):
        secrets.ensure()  # a role added since the stack was made (the scorer's) gets its password now
    return {role: secrets.pg_password(role) for role in PART_ROLES}


def _archived(layout: StackLayout, state: StackState) -> list[tuple[str, PostgresServer]]:
    """The plain servers whose WAL is archived into the stack's backup repository (``shardctl.backup``), by
    stanza: the catalog, and the shard servers of a plain stack (an HA shard's members: ``_member_archiving``)."""
    names = [CATALOG_STANZA, *([] if state.ha else layout.server_names(state))]
    return list(zip(names, layout.postgres_servers(state), strict=True))


def _member_archiving(
    repo: Repository | None, ha_shards: list[Stanza]
) -> Callable[[MemberPlan], dict[str, str]] | None:
    """Each HA member's archive parameters: it pushes into its shard's stanza (None: the stack cannot archive)."""
    if repo is None:
        return None
    settings = BackupSettings()
    return lambda plan: archiving.member_parameters(repo, ha_shards[plan.shard].name, plan.data_dir, settings)


def _ha_up(
    cluster: HACluster,
    passwords: dict[str, str | None],
    parameters: Callable[[MemberPlan], dict[str, str]] | None = None,
) -> None:
    cluster.up(parameters=parameters)
    for shard in range(cluster.shard_count()):
        cluster.ensure_database(shard, DATABASE)
        ensure_roles(cluster.shard_dsn(shard, "postgres"), passwords)  # on the primary; replicas replay them
        with psycopg.connect(cluster.shard_dsn(shard)) as conn:
            install_sql_functions(conn)


def stop_started(layout: StackLayout, state: StackState, running_before: set[int]) -> list[str]:
    """Stop, newest first, every server of ``state`` that was not running before; returns those left running."""

    def started(pid: int | None) -> bool:
        return pid_alive(pid) and pid not in running_before

    left = []
    redis_server = layout.redis_server(state)
    if started(redis_server.pid) and not redis_server.stop():
        left.append("redis")
    cluster = layout.ha_cluster(state)
    if cluster is not None:
        for member in cluster.all_members():  # Patroni first: it would restart a Postgres stopped under it
            if (started(member.patroni_pid()) or started(member.postgres_pid())) and not member.stop():
                left.append(member.name)
        if started(cluster.etcd.pid) and not cluster.etcd.stop():
            left.append("etcd")
    for server in reversed(layout.postgres_servers(state)):
        if started(server.pid()) and not server.stop():
            left.append(server.name)
    return left


def forget(layout: StackLayout, state: StackState) -> None:
    """Remove what a failed first `up` created, so the next `up` plans afresh."""
    shutil.rmtree(state.pg_root, ignore_errors=True)
    shutil.rmtree(layout.secrets.dir, ignore_errors=True)
    shutil.rmtree(archiving.default_root(state.pg_root), ignore_errors=True)
    layout.state_file.unlink(missing_ok=True)
    layout.settings_file.unlink(missing_ok=True)


def down(layout: StackLayout, purge: bool = False) -> list[str]:
    """Stop every server by PID; with ``purge`` also delete their data. Returns what failed to stop."""
    state = layout.load_state()
    if state is None:
        return []
    failed = []
    if not stop_scorer(layout, state):  # first: it connects to every server
        failed.append("scorer")
    cluster = layout.ha_cluster(state)
    if cluster is not None:
        failed += cluster.down()
    failed += [s.name for s in layout.postgres_servers(state) if not s.stop()]
    if not layout.redis_server(state).stop():
        failed.append("redis")
    else:
        state.redis_pid = None
        layout.save_state(state)
    if purge and not failed:
        shutil.rmtree(state.pg_root, ignore_errors=True)
        shutil.rmtree(archiving.default_root(state.pg_root), ignore_errors=True)  # the backups kept beside it
        shutil.rmtree(layout.data_dir, ignore_errors=True)
    return failed


def running_pids(layout: StackLayout, state: StackState) -> list[int]:
    """Running PIDs in start order: Postgres servers, then etcd and Patroni members, then Redis."""
    pids = [p for s in layout.postgres_servers(state) if (p := s.pid())]
    cluster = layout.ha_cluster(state)
    if cluster is not None:
        pids += cluster.pids()
    if pid_alive(state.redis_pid):
        pids.append(state.redis_pid)  # type: ignore[arg-type]
    if pid_alive(state.scorer_pid):
        pids.append(state.scorer_pid)  # type: ignore[arg-type]
    return pids
