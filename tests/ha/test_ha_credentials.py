"""Passwords on the HA stack (the group's shared one): every member asks for SCRAM passwords (replication
included), etcd answers only the stack's users, Patroni's REST API refuses an unsafe call without its
credentials and `shardctl ha switchover` passes them, and no password shows in Patroni's logs, `ha status
--json` or the settings."""

from __future__ import annotations

import base64

import psycopg
import pytest
from click.testing import CliRunner

from shardctl.cli import main
from shardctl.control.etcd import authenticate, post
from shardctl.control.ha import _request, leader, shard_members
from shardctl.stack.ha.cluster import HACluster
from shardctl.stack.manager import Stack
from shardctl.stack.postgres import REPLICATION_USER, SUPERUSER
from testkit.ha.drill import wait_healthy


@pytest.mark.req("PLAT.stack-passwords")
def test_every_member_refuses_a_login_without_a_password_replication_included(cluster: HACluster) -> None:
    for member in cluster.all_members():
        port = member.plan.pg_port
        for user, extra in ((SUPERUSER, "dbname=postgres"), (REPLICATION_USER, "replication=true")):
            with pytest.raises(psycopg.OperationalError, match="password"):
                psycopg.connect(
                    f"host=127.0.0.1 port={port} user={user} {extra} passfile=/nonexistent connect_timeout=5"
                )
        passfile = cluster.secrets.pgpass(SUPERUSER)
        with psycopg.connect(
            f"host=127.0.0.1 port={port} dbname=postgres user={SUPERUSER} passfile={passfile}"
        ) as conn:
            methods = {m for (m,) in conn.execute("SELECT auth_method FROM pg_hba_file_rules")}
        assert methods == {"scram-sha-256"}, f"{member.name}: {methods}"


@pytest.mark.req("PLAT.ha-auth")
def test_etcd_answers_only_the_stacks_users_and_patroni_only_in_its_namespace(cluster: HACluster) -> None:
    url = cluster.etcd.url

    def key(name: bytes) -> dict[str, str]:
        return {"key": base64.b64encode(name).decode()}

    status, answer = post(url, "/v3/kv/range", {**key(b"\0"), "range_end": base64.b64encode(b"\0").decode()})
    assert status != 200, answer
    assert "user name is empty" in str(answer)
    token = authenticate(url, "patroni", cluster.secrets.etcd_password("patroni"))
    assert token is not None
    status, answer = post(url, "/v3/kv/range", key(b"/elsewhere/"), token)
    assert status != 200, answer
    assert "permission denied" in str(answer)
    status, answer = post(url, "/v3/kv/range", key(b"/tessera/shard0/leader"), token)
    assert status == 200, answer
    assert answer.get("kvs"), answer


@pytest.mark.req("PLAT.ha-auth")
def test_patroni_refuses_an_unauthenticated_switchover_and_the_cli_passes_its_credentials(
    ha_stack: Stack, cluster: HACluster
) -> None:
    before = leader(shard_members(0, cluster.api_urls(0)))
    assert before is not None
    for path, body in (("switchover", {"leader": before.name}), ("restart", {}), ("reinitialize", {"force": True})):
        status, _ = _request("POST", f"{before.api_url}/{path}", body)
        assert status == 401, f"POST /{path} without credentials answered {status}"
    status, _ = _request("POST", f"{before.api_url}/switchover", {"leader": before.name}, auth=("patroni", "wrong"))
    assert status == 401
    assert leader(shard_members(0, cluster.api_urls(0))).name == before.name  # nothing happened

    done = CliRunner().invoke(main, ["ha", "switchover", "0", "--data-dir", str(ha_stack.data_dir)])
    assert done.exit_code == 0, done.output
    after = wait_healthy(cluster, 0)
    assert leader(after).name != before.name

    status = CliRunner().invoke(main, ["ha", "status", "--json", "--data-dir", str(ha_stack.data_dir)])
    passwords = cluster.secrets.all_passwords()
    places = {"ha status --json": status.output, "settings.json": ha_stack.settings_file.read_text()}
    for member in cluster.all_members():
        for name in ("patroni.log", "patroni.out"):
            log = member.plan.root / name
            places[str(log)] = log.read_text(errors="replace") if log.exists() else ""
    for where, text in places.items():
        assert not [p for p in passwords if p in text], f"a password is in {where}"
