"""`shardctl restore`: the catalog and every server brought back to one consistent restore point, as a new stack
(its own data dir, ports, Redis and backup repository), never over a running one unless forced.

Each server is restored by pgBackRest from its newest base backup that ends before the point, then replays the
archived WAL up to the point's name and is promoted. The restored catalog's shard map names the servers at their
new places with the epochs and placement unchanged: the data is exactly what that epoch's placement says. A
migration's subscriptions in the restored servers (the point lists the servers that had any) are dropped before
any could connect (logical replication is off on those until then): they would point at the original stack. That
migration, before its cutover at the point, is then aborted in the restored stack (its copies on the targets
deleted; the placement never changed), so every row is on the server the placement names, once; past its cutover,
`shardctl migrate resume` there finishes its cleanup. The restored stack archives into its own repository from its
first start; the servers restore side by side. An HA shard (a Patroni cluster) comes back as one plain server
restored from its stanza, which holds whichever member was primary when each backup ran."""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psycopg

from shardctl.backup import archiving
from shardctl.backup.archiving import CATALOG_STANZA
from shardctl.backup.base import ServerBackup, base_for, inventory
from shardctl.backup.points import RestorePoint
from shardctl.backup.settings import BackupSettings
from shardctl.backup.target import BackupTarget
from shardctl.control.migration.engine import MigrationEngine
from shardctl.control.migration.journal import ABORTABLE
from shardctl.credentials import DbCredentials, with_credentials
from shardctl.errors import BackupError
from shardctl.process import wait_until
from shardctl.stack import lifecycle
from shardctl.stack.layout import StackLayout
from shardctl.stack.postgres import PostgresServer
from shardctl.stack.users import chown_tree
from shardctl.store.connection import connect
from shardctl.store.shardmap import ShardMapStore

RESTORE_CONF = "tessera-restore.conf"  # logical replication off until the restored subscriptions are dropped


@dataclass(frozen=True)
class RestoreReport:
    point: RestorePoint
    data_dir: Path
    ports: dict[str, int]  # stanza -> port
    bases: dict[str, str]  # stanza -> label of the backup it started from
    seconds: float
    migration: str | None = None  # what became of a migration in flight at the point


def restore(
    source: BackupTarget,
    point: RestorePoint,
    into: Path,
    *,
    force: bool = False,
    settings: BackupSettings | None = None,
    credentials: DbCredentials | None = None,
) -> RestoreReport:
    """Restore ``source``'s servers to ``point`` as a new stack in ``into``; all or nothing (a failure stops
    every server it started)."""
    settings = settings or BackupSettings()
    started = time.monotonic()
    bases = _bases(source, point)
    layout = StackLayout(
        into,
        postgres_bin_dir=source.state.postgres["bin_dir"],
        run_as_user=source.state.user,
        java_home=source.state.java_home,
    )
    _make_room(source, layout, force)
    names = [s for s in point.lsns if s != CATALOG_STANZA]
    state = layout.plan(len(names), max(source.layout.ports(source.state)) + 1)
    state.server_ids = [int(name.rsplit("-", 1)[1]) for name in names]
    layout.save_state(state)
    _share_secrets(source.layout, layout)
    stanzas = [CATALOG_STANZA, *names]
    servers = layout.postgres_servers(state)
    repo = archiving.repository_for(state.pg_root, state.user, servers[0], BackupSettings(repo_path=None))

    def forget() -> None:
        lifecycle.forget(layout, state)
        shutil.rmtree(repo.root, ignore_errors=True)

    with lifecycle.all_or_nothing(layout, state, set(), "restore", forget):
        repo.write_config([archiving.stanza_of(n, s) for n, s in zip(stanzas, servers, strict=True)], settings)
        dsns = {stanza: with_credentials(s.dsn(), credentials) for stanza, s in zip(stanzas, servers, strict=True)}

        def bring_back(stanza: str, server: PostgresServer) -> None:
            _restore_server(source, stanza, server, bases[stanza], point, settings)
            archiving.configure(server, repo, stanza, settings)
            _recover(server, dsns[stanza], point, settings.restore_timeout_s)
            repo.create_stanza(stanza)  # its archiving works from now on
            if stanza in point.subscribed:  # logical replication back on once the subscriptions are gone
                _drop_subscriptions(dsns[stanza])
                (server.data_dir / RESTORE_CONF).unlink()
                server.stop()
                server.start()

        with ThreadPoolExecutor(max_workers=len(servers)) as pool:  # the servers restore and replay side by side
            list(pool.map(bring_back, stanzas, servers))
        ShardMapStore(dsns[CATALOG_STANZA]).relocate_servers({n: servers[i + 1].dsn() for i, n in enumerate(names)})
        migration = _settle_migration(dsns[CATALOG_STANZA])
        state.redis_pid = layout.redis_server(state).start()
        layout.save_state(state)
        layout.write_settings(state)
    return RestoreReport(
        point,
        layout.data_dir,
        {stanza: server.port for stanza, server in zip(stanzas, servers, strict=True)},
        {stanza: base.label for stanza, base in bases.items()},
        round(time.monotonic() - started, 2),
        migration,
    )


def _share_secrets(source: StackLayout, layout: StackLayout) -> None:
    """The restored servers keep the source's roles and their passwords (``pg_authid`` comes back with the data),
    so the new stack logs in with a copy of the source's secrets: 0600 files in a 0700 folder, as `stack up` makes
    them."""
    shutil.copytree(source.secrets.dir, layout.secrets.dir, dirs_exist_ok=True)
    layout.secrets.dir.chmod(0o700)
    layout.secrets.ensure()


def _bases(source: BackupTarget, point: RestorePoint) -> dict[str, ServerBackup]:
    """For each server of the point, the backup its recovery starts from; ``BackupError`` if one has none."""
    backups, _ = inventory(source)
    bases = {}
    for stanza in point.lsns:
        if stanza not in backups:
            raise BackupError(f"restore point {point.name} names {stanza}, which this stack does not back up")
        base = base_for(point, stanza, backups[stanza])
        if base is None:
            raise BackupError(
                f"no base backup of {stanza} ends before restore point {point.name} (expired by the retention "
                f"policy?): it cannot be restored to; `shardctl backup list` shows the points that can"
            )
        bases[stanza] = base
    return bases


def _make_room(source: BackupTarget, layout: StackLayout, force: bool) -> None:
    """Refuse to restore over a stack or files unless ``force`` (then stop and delete them), and always refuse
    to delete the stack whose repository the restore reads."""
    if layout.data_dir == source.layout.data_dir and source.repo.root == archiving.default_root(source.state.pg_root):
        raise BackupError(
            f"cannot restore over {layout.data_dir}: its backup repository lives with it; restore into another "
            f"directory (--into DIR)"
        )
    if layout.load_state() is not None:
        if not force:
            raise BackupError(
                f"{layout.data_dir} holds a stack: restore into another directory (--into DIR), or pass --force "
                f"to stop it and delete its data first"
            )
        failed = lifecycle.down(layout, purge=True)
        if failed:
            raise BackupError(f"could not stop {', '.join(failed)} of the stack in {layout.data_dir}")
    elif layout.data_dir.exists() and any(layout.data_dir.iterdir()):
        if not force:
            raise BackupError(f"{layout.data_dir} is not empty: restore into a new directory, or pass --force")
        shutil.rmtree(layout.data_dir)


def _restore_server(
    source: BackupTarget,
    stanza: str,
    server: PostgresServer,
    base: ServerBackup,
    point: RestorePoint,
    settings: BackupSettings,
) -> None:
    """pgBackRest restores ``base`` into the new server's folder and sets recovery to stop at the point; the
    server then listens on its own port and socket, with logical replication off until subscriptions are gone."""
    server.data_dir.mkdir(mode=0o700, parents=True)
    chown_tree(server.data_dir, server.user)
    source.repo.run(
        stanza,
        "restore",
        f"--pg1-path={server.data_dir}",
        f"--set={base.label}",
        "--type=name",
        f"--target={point.name}",
        "--target-action=promote",
        f"--recovery-option=restore_command={source.repo.archive_get_command(stanza, server.data_dir)}",
        timeout=settings.restore_timeout_s,
    )
    server.socket_dir.mkdir(exist_ok=True)
    for stale in server.socket_dir.glob(".s.PGSQL.*"):
        stale.unlink()
    if stanza in point.subscribed:
        (server.data_dir / RESTORE_CONF).write_text("max_logical_replication_workers = 0\n")
    with open(server.data_dir / "postgresql.conf", "a") as conf:
        # An HA shard's primary comes back as one plain server: Patroni's settings named its replica as the
        # synchronous standby (every commit would wait for it) and its member's own folder for pg_hba.conf.
        conf.write(
            f"\n# restored from {stanza} at point {point.name}\nport = {server.port}\n"
            f"unix_socket_directories = '{server.socket_dir}'\nsynchronous_standby_names = ''\n"
            f"hba_file = '{server.data_dir / 'pg_hba.conf'}'\nident_file = '{server.data_dir / 'pg_ident.conf'}'\n"
            f"include_if_exists = '{RESTORE_CONF}'\n"
        )
    chown_tree(server.data_dir, server.user)
    server.data_dir.chmod(0o700)


def _recover(server: PostgresServer, dsn: str, point: RestorePoint, timeout_s: float) -> None:
    """Start the server and wait until it has replayed to the point and been promoted."""
    server.start(timeout=timeout_s)

    def promoted() -> bool:
        if server.pid() is None:
            raise BackupError(f"{server.name} stopped during recovery to {point.name}:\n{server.log_tail()}")
        with connect(dsn, connect_timeout=5, autocommit=True) as conn:
            return not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]  # type: ignore[index]

    if not wait_until(promoted, timeout_s, expected=(OSError, psycopg.OperationalError)):
        raise BackupError(f"{server.name} did not reach {point.name} in {timeout_s:.0f} s:\n{server.log_tail()}")


def _settle_migration(catalog_dsn: str) -> str | None:
    """A migration the restored catalog's journal says was running at the point: aborted before its cutover (its
    links are gone with the dropped subscriptions; its copies on the targets would be rows no placement names),
    left for `shardctl migrate resume` after it. A line saying which, or None."""
    engine = MigrationEngine(catalog_dsn)
    running = engine.journal.running()
    if running is None:
        return None
    if running.phase in ABORTABLE:
        engine.abort()
        return (
            f"migration {running.id} was at {running.phase} at the point: aborted in the restored stack (the "
            f"placement never changed; its copies on the target are deleted); run it again there to move the shards"
        )
    return (
        f"migration {running.id} was past its cutover ({running.phase}) at the point: `shardctl migrate resume` in "
        f"the restored stack finishes its cleanup"
    )


def _drop_subscriptions(dsn: str) -> None:
    """Drop the subscriptions a migration in flight at the point left (never connecting: their slots are the
    original stack's)."""
    with connect(dsn, connect_timeout=5, autocommit=True) as conn:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT subname FROM pg_subscription WHERE subdbid = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())"
            ).fetchall()
        ]
        for name in names:
            conn.execute(f'ALTER SUBSCRIPTION "{name}" DISABLE')
            conn.execute(f'ALTER SUBSCRIPTION "{name}" SET (slot_name = NONE)')
            conn.execute(f'DROP SUBSCRIPTION "{name}"')
