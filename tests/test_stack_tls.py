"""TLS between the parts and PostgreSQL: `shardctl stack up --tls` starts servers that take TLS only, writes DSNs
that verify them (``sslmode=verify-full``), and those parameters survive every step a DSN goes through (a part's
credentials, the catalog's shard map, Dagster's storage); a client with a wrong CA or a wrong host name is
refused with a clear one-line error that names no DSN and no password."""

from __future__ import annotations

import json
import os
import pwd
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from orchestration.instance import dagster_env
from shardctl.cli import main
from shardctl.credentials import DbCredentials, location_only, with_credentials
from shardctl.settings import TesseraSettings
from shardctl.stack.certificates import new_authority, write_certificate
from shardctl.stack.manager import Stack
from shardctl.stack.postgres import hostssl_only
from shardctl.stack.secrets import StackSecrets
from shardctl.store import FeatureStore
from shardctl.store.connection import connect
from shardctl.store.errors import ServerUnreachableError
from shardctl.store.grants import SERVING_ROLE, WRITER_ROLE
from shardctl.store.shardmap import ShardMapStore
from shardctl.store.writer import FeatureRow
from tests.conftest import _random_base_port

SECRET = "tls-test-password-8f3a"
TLS_KEYS = ("sslmode", "sslrootcert", "sslcert", "sslkey")


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, TesseraSettings]]:
    """One catalog and one server, TLS only."""
    stack = Stack(tmp_path_factory.mktemp("tls_stack"))
    stack.up(servers=1, base_port=_random_base_port(), tls=True)
    try:
        yield stack, TesseraSettings(**json.loads(stack.settings_file.read_text()))
    finally:
        failed = stack.down(purge=True)
        assert not failed, f"servers left running: {failed}"


@pytest.mark.req("PLAT.tls-postgres")
def test_tls_parameters_survive_credentials_and_the_shard_map_location() -> None:
    """No server: a part's credentials replace user and password and keep every TLS parameter; the catalog's
    location keeps them too and drops the passwords (the role's and the client key's)."""
    given = (
        "host=db.example port=5432 dbname=tessera user=someone password=old sslmode=verify-full "
        "sslrootcert=/etc/tessera/ca.crt sslcert=/etc/tessera/client.crt sslkey=/etc/tessera/client.key "
        "sslpassword=client-key-secret"
    )
    as_serving = conninfo_to_dict(with_credentials(given, DbCredentials(SERVING_ROLE, SECRET)))
    located = conninfo_to_dict(location_only(given))
    for params in (as_serving, located):
        assert {k: params[k] for k in TLS_KEYS} == {k: conninfo_to_dict(given)[k] for k in TLS_KEYS}
    assert as_serving["user"] == SERVING_ROLE
    assert as_serving["password"] == SECRET
    assert as_serving["sslpassword"] == "client-key-secret"  # the caller's own client key, kept
    assert "user" not in located
    assert "password" not in located
    assert "sslpassword" not in located  # no secret in the catalog
    assert hostssl_only("# host comment\nlocal all all trust\nhost all all 127.0.0.1/32 trust\n") == (
        "# host comment\nlocal all all trust\nhostssl all all 127.0.0.1/32 trust\n"
    )


@pytest.mark.req("PLAT.tls-postgres")
def test_a_tls_stack_takes_verify_full_connections_only(tls_stack) -> None:
    """Every DSN the stack writes verifies the server against the stack's CA; those connections are encrypted,
    one that does not encrypt is refused, and the private keys are 0600 and the server user's."""
    stack, settings = tls_stack
    state = stack.load_state()
    ca = str(stack.layout.tls(state).ca_file)
    for dsn in (settings.catalog_dsn, settings.dagster_dsn, *settings.shard_dsns()):
        params = conninfo_to_dict(dsn)
        assert (params["sslmode"], params["sslrootcert"]) == ("verify-full", ca)
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)
    plain = make_conninfo(settings.catalog_dsn, sslmode="disable")
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(plain, connect_timeout=5).close()

    tls_dir = stack.layout.tls(state).root
    assert sorted(p.name for p in tls_dir.iterdir()) == ["ca.crt", "server.crt", "server.key"]  # no CA key kept
    owner = pwd.getpwnam(state.user).pw_uid if state.user else os.geteuid()
    for key in (tls_dir / "server.key", *(s.data_dir / "server.key" for s in stack.postgres_servers(state))):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
        assert key.stat().st_uid == owner, key


def _stack_role(stack: Stack, role: str) -> DbCredentials:
    """``role`` logging in with the stack's passfile for it (every role of the stack has a password)."""
    return DbCredentials(role, passfile=str(StackSecrets.of(stack.data_dir).pgpass(role)))


@pytest.mark.req("PLAT.tls-postgres")
def test_tls_parameters_reach_every_part_through_the_shard_map(tls_stack) -> None:
    """The catalog's shard map hands each part verify-full DSNs with its own role; the writer's connections to
    the shard are encrypted; Dagster's storage gets the same TLS through libpq's variables."""
    stack, settings = tls_stack
    ca = str(stack.layout.tls(stack.load_state()).ca_file)
    as_serving = ShardMapStore(with_credentials(settings.catalog_dsn, _stack_role(stack, SERVING_ROLE))).current()
    for dsn in as_serving.dsns:
        params = conninfo_to_dict(dsn)
        assert (params["sslmode"], params["sslrootcert"], params["user"]) == ("verify-full", ca, SERVING_ROLE)

    with FeatureStore.open(settings, credentials=_stack_role(stack, WRITER_ROLE)) as store:
        store.write("tls_v1", [FeatureRow("c1", datetime(2026, 1, 1, tzinfo=UTC), {"x": 1.0})])
        assert list(store.get_features(["c1"], "tls_v1").records) == ["c1"]
        with psycopg.connect(settings.shard_dsns()[0]) as conn:
            rows = conn.execute(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.usename = %s",
                (WRITER_ROLE,),
            ).fetchall()
    assert rows, "the writer holds no connection to the shard"
    assert all(ssl for (ssl,) in rows), rows

    env = dagster_env(settings)
    assert (env["PGSSLMODE"], env["PGSSLROOTCERT"]) == ("verify-full", ca)


@pytest.mark.req("PLAT.tls-postgres")
def test_a_wrong_ca_or_host_name_is_refused_with_a_clear_error(tls_stack, tmp_path: Path) -> None:
    """A CA that did not sign the server's certificate, or a host name the certificate does not carry: the
    connection is refused, and the error (the store's, and `shardctl`'s one line) says why without the DSN or
    its password."""
    _, settings = tls_stack
    other_ca = write_certificate(tmp_path / "other-ca.crt", new_authority("not the stack's CA").pem)
    wrong_ca = make_conninfo(settings.catalog_dsn, sslrootcert=str(other_ca), password=SECRET)
    wrong_host = make_conninfo(settings.catalog_dsn, host="db.example.invalid", hostaddr="127.0.0.1", password=SECRET)
    for dsn, why in ((wrong_ca, "certificate verify failed"), (wrong_host, "does not match host name")):
        with pytest.raises(ServerUnreachableError) as refused:
            connect(dsn, connect_timeout=5).close()
        said = str(refused.value)
        assert why in said, said
        assert SECRET not in said, said
        assert "sslrootcert" not in said, said
        assert len(said.splitlines()) == 1, said

    env = {"TESSERA_CATALOG_DSN": wrong_ca, "TESSERA_SETTINGS_FILE": str(tmp_path / "none.json")}
    result = CliRunner(env=env).invoke(main, ["shards", "show"])
    assert result.exit_code == 1, result.output
    assert result.output.strip().startswith("Error: ")
    assert len(result.output.strip().splitlines()) == 1
    assert "certificate verify failed" in result.output
    assert SECRET not in result.output


@pytest.mark.req("PLAT.tls-postgres")
def test_tls_is_chosen_when_a_stack_is_new(tmp_path: Path) -> None:
    """`up --tls` on a stack laid out without TLS is refused (one line, exit 1), nothing started."""
    Stack(tmp_path / "s").plan(shards=1, base_port=_random_base_port())
    result = CliRunner().invoke(main, ["stack", "up", "--data-dir", str(tmp_path / "s"), "--tls"])
    assert result.exit_code == 1, result.output
    assert "runs without TLS" in result.output
    assert Stack(tmp_path / "s").pids() == []


@pytest.mark.req("PLAT.tls-postgres")
def test_an_ha_tls_stack_replicates_over_tls_and_takes_verify_full_only(tmp_path: Path) -> None:
    """With `--ha`, every member takes TLS only with the stack's certificate: the shard's multi-host DSN verifies
    it, the replica streams from the primary over TLS, and a client that does not encrypt is refused."""
    stack = Stack(tmp_path / "ha")
    try:
        state = stack.up(servers=1, base_port=_random_base_port(), ha=True, replicas=1, tls=True)
        ca = str(stack.layout.tls(state).ca_file)
        settings = TesseraSettings(**json.loads(stack.settings_file.read_text()))
        (shard,) = settings.shard_dsns()
        assert (conninfo_to_dict(shard)["sslmode"], conninfo_to_dict(shard)["sslrootcert"]) == ("verify-full", ca)
        with psycopg.connect(shard) as conn:
            assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)
            streaming = conn.execute(
                "SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) WHERE r.state = 'streaming'"
            ).fetchall()
        assert streaming == [(True,)]
        with pytest.raises(psycopg.OperationalError, match="no encryption"):
            psycopg.connect(make_conninfo(shard, sslmode="disable"), connect_timeout=5).close()
    finally:
        failed = stack.down(purge=True)
        assert not failed, f"servers left running: {failed}"
