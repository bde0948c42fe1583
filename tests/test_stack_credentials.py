"""Passwords on every server of the local stack (the session's): Postgres asks every role for a SCRAM password
over TCP and its Unix socket, Redis admits named users only and keeps serving to its prefix, the passwords sit
in private files and nowhere else (settings, status, logs), and a stack made before passwords is refused."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import psycopg
import pytest
import redis
from click.testing import CliRunner

from shardctl.cli import main
from shardctl.redis_acl import ADMIN_USER, SCORER_USER, SERVING_PREFIX, SERVING_USER
from shardctl.stack.layout import NO_PASSWORDS
from shardctl.stack.manager import Stack
from shardctl.stack.postgres import SUPERUSER


def _no_password(conninfo: str) -> str:
    """``conninfo`` with no password from anywhere (a passfile that does not exist beats PGPASSFILE/~/.pgpass)."""
    return f"{conninfo} passfile=/nonexistent connect_timeout=5"


@pytest.mark.req("PLAT.stack-passwords")
def test_every_server_refuses_the_superuser_without_a_password_over_tcp_and_its_socket(local_stack: Stack) -> None:
    state = local_stack.load_state()
    assert state is not None
    for server in local_stack.postgres_servers(state):
        for host in ("127.0.0.1", str(server.socket_dir)):
            with pytest.raises(psycopg.OperationalError, match="password"):
                psycopg.connect(_no_password(f"host={host} port={server.port} dbname=postgres user={SUPERUSER}"))
        with psycopg.connect(server.dsn()) as conn:  # with its passfile: in, and pg_hba trusts no one
            methods = {m for (m,) in conn.execute("SELECT auth_method FROM pg_hba_file_rules")}
        assert methods == {"scram-sha-256"}, f"{server.name}: {methods}"


@pytest.mark.req("PLAT.stack-passwords")
def test_the_secrets_are_private_and_no_password_is_in_settings_status_or_a_log(local_stack: Stack) -> None:
    secrets = local_stack.layout.secrets
    assert stat.S_IMODE(secrets.dir.stat().st_mode) == 0o700
    files = [p for p in secrets.dir.iterdir()]
    assert len(files) >= 12
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files), {p.name: oct(p.stat().st_mode) for p in files}
    passwords = secrets.all_passwords()
    assert len(passwords) == len(set(passwords)) >= 10  # each role, user and API its own
    state = local_stack.load_state()
    assert state is not None
    status = CliRunner().invoke(main, ["stack", "status", "--json", "--data-dir", str(local_stack.data_dir)])
    assert status.exit_code == 0, status.output
    logs = [s.log_file for s in local_stack.postgres_servers(state)] + [local_stack.redis_server(state).log_file]
    places = {"settings.json": local_stack.settings_file.read_text(), "stack status --json": status.output}
    places.update({str(log): log.read_text(errors="replace") for log in logs})
    for where, text in places.items():
        assert not [p for p in passwords if p in text], f"a password is in {where}"
    written = json.loads(local_stack.settings_file.read_text())
    assert written["serving"]["db_passfile"] == str(secrets.pgpass("tessera_serving"))
    assert "password=" not in local_stack.settings_file.read_text()


@pytest.mark.req("PLAT.redis-acl")
def test_redis_refuses_a_client_without_a_password_and_keeps_serving_to_its_prefix(settings, local_stack) -> None:
    secrets = local_stack.layout.secrets
    anonymous = redis.Redis.from_url(settings.redis_url, socket_timeout=5)
    with pytest.raises(redis.AuthenticationError):
        anonymous.set(f"{SERVING_PREFIX}x", "1")
    serving = redis.Redis.from_url(
        settings.redis_url, username=SERVING_USER, password=secrets.redis_password(SERVING_USER), socket_timeout=5
    )
    serving.set(f"{SERVING_PREFIX}probe", "1", px=10_000)
    assert serving.get(f"{SERVING_PREFIX}probe") == b"1"
    assert serving.eval("return redis.call('GET', KEYS[1])", 1, f"{SERVING_PREFIX}probe") == b"1"
    refused = [
        lambda: serving.set("other:probe", "1"),
        lambda: serving.get("other:probe"),
        lambda: serving.eval("return redis.call('GET', ARGV[1])", 0, "other:probe"),
        lambda: serving.keys("*"),
        lambda: serving.flushall(),
        lambda: serving.config_get("*"),
        lambda: serving.publish("other", "x"),
    ]
    for call in refused:
        with pytest.raises(redis.ResponseError, match=r"(?i)noperm|no permissions|can.t access"):
            call()
    admin = redis.Redis.from_url(settings.redis_url, username=ADMIN_USER, password=secrets.redis_password(ADMIN_USER))
    assert admin.get(f"{SERVING_PREFIX}probe") == b"1"
    assert "off" in admin.acl_getuser("default")["flags"]


@pytest.mark.req("PLAT.redis-acl")
def test_the_scorer_may_write_cache_entries_and_nothing_else(settings, local_stack) -> None:
    """The scorer fills serving's cache as its own user: prediction and version entries and its marker, through
    scripts; never serving's other keys (rate limits), anything outside the prefix, or an admin command."""
    written = json.loads(local_stack.settings_file.read_text())["scorer"]
    assert written["redis_username"] == SCORER_USER
    password = Path(written["redis_password_file"]).read_text().strip()
    scorer = redis.Redis.from_url(settings.redis_url, username=SCORER_USER, password=password, socket_timeout=5)
    for kind in ("fv", "pred", "scorer"):
        scorer.set(f"{SERVING_PREFIX}{kind}:probe", "1", px=10_000)
        assert scorer.eval("return redis.call('GET', KEYS[1])", 1, f"{SERVING_PREFIX}{kind}:probe") == b"1"
    refused = [
        lambda: scorer.set(f"{SERVING_PREFIX}rl:probe", "1"),
        lambda: scorer.get("other:probe"),
        lambda: scorer.keys("*"),
        lambda: scorer.flushdb(),
        lambda: scorer.publish(f"{SERVING_PREFIX}x", "x"),
    ]
    for call in refused:
        with pytest.raises(redis.ResponseError, match=r"(?i)noperm|no permissions|can.t access"):
            call()


@pytest.mark.req("PLAT.stack-passwords")
def test_a_stack_made_before_passwords_is_told_what_to_do(local_stack: Stack, tmp_path: Path) -> None:
    old = tmp_path / "old-stack"
    old.mkdir()
    shutil.copy(local_stack.state_file, old / local_stack.state_file.name)  # a state, and no secrets folder
    for args in (["stack", "status"], ["stack", "up"]):
        result = CliRunner().invoke(main, [*args, "--data-dir", str(old)])
        assert result.exit_code == 1, result.output
        assert result.output == f"Error: {NO_PASSWORDS}\n"
