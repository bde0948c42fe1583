"""`shardctl shards` (the shard map in the catalog) and `shardctl roles` (each part's database role)."""

from __future__ import annotations

import json

import click

from shardctl.cli.options import catalog_dsn, json_option, read_settings


@click.group()
def shards() -> None:
    """The shard map in the catalog: epochs and shard DSNs."""


@shards.command("show")
@json_option
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

    current = prepare(catalog_dsn(), settings=read_settings(StoreSettings))
    click.echo(f"ready: epoch {current.epoch}, {current.server_count} servers, schema applied")


@click.group()
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

    control = read_settings(ControlSettings)
    settings = read_settings(StoreSettings)
    catalog = catalog_dsn()
    shard_dsns = [with_credentials(dsn, control.db_credentials()) for dsn in settings.shard_dsns()]
    for dsn in (catalog, *shard_dsns):
        ensure_roles(dsn, control.role_passwords())
    current = prepare(catalog, settings=settings)
    click.echo(f"roles ready on the catalog and {current.server_count} servers (epoch {current.epoch}), grants applied")


@roles.command("etcd")
@click.option(
    "--wait",
    "wait_seconds",
    type=click.FloatRange(0, 3600),
    default=300.0,
    show_default=True,
    help="Seconds to keep trying while etcd is unreachable or has no quorum yet.",
)
def roles_etcd(wait_seconds: float) -> None:
    """Turn on a deployment's etcd authentication (Kubernetes): users root and patroni, patroni limited to
    Patroni's namespace, anonymous requests refused; idempotent.

    Reads ``TESSERA_CONTROL__ETCD_URL``, ``TESSERA_CONTROL__ETCD_ROOT_PASSWORD``,
    ``TESSERA_CONTROL__ETCD_PATRONI_PASSWORD`` and ``TESSERA_CONTROL__PATRONI_NAMESPACE`` (default ``/service/``).
    The local stack turns its own etcd's on at `stack up --ha`."""
    from shardctl.control.etcd import enable_auth_when_up
    from shardctl.control.settings import ControlSettings
    from shardctl.errors import SettingsError

    control = read_settings(ControlSettings)
    url, root, patroni = control.etcd_url, control.etcd_root_password, control.etcd_patroni_password
    if url is None or root is None or patroni is None:
        given = {"ETCD_URL": url, "ETCD_ROOT_PASSWORD": root, "ETCD_PATRONI_PASSWORD": patroni}
        missing = ", ".join(f"TESSERA_CONTROL__{name}" for name, value in given.items() if value is None)
        raise SettingsError(f"set {missing} (on Kubernetes: the tessera-etcd-auth Job's env)")
    enable_auth_when_up(
        url,
        root.get_secret_value(),
        patroni.get_secret_value(),
        control.patroni_namespace,
        wait_seconds,
        on_retry=lambda why: click.echo(f"waiting for etcd: {why}", err=True),
    )
    click.echo(f"etcd authentication on: root, and patroni on {control.patroni_namespace} only")
