"""`shardctl`'s error rule: an expected failure (a ``ShardctlError``) is one line on stderr and exit 1, anything
else keeps its traceback; and no failing command prints a password planted in the DSNs it was given."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from shardctl.cli import main
from shardctl.cli.options import ShardctlGroup
from shardctl.errors import ShardctlError
from shardctl.process import free_port

SECRET = "planted-secret-XYZ"


def _ensure_handled(result: Result, args: list[str]) -> None:
    """Exit 1 through click (a ``SystemExit``), not an exception that escaped the command."""
    assert isinstance(result.exception, SystemExit), (args, result.output, result.exception)
    assert result.exit_code == 1, (args, result.output)
    assert "Traceback" not in result.output


@pytest.mark.req("PLAT.cli-errors")
def test_an_expected_error_is_one_line_and_a_bug_keeps_its_traceback_in_a_file_it_names() -> None:
    @click.group(cls=ShardctlGroup)
    def root() -> None:
        """A root group as `shardctl`'s."""

    @root.command("expected")
    def expected() -> None:
        raise ShardctlError("server-9 is unreachable")

    @root.command("bug")
    def bug() -> None:
        raise ValueError("a bug, not an expected failure")

    said = CliRunner().invoke(root, ["expected"])
    _ensure_handled(said, ["expected"])
    assert said.output == "Error: server-9 is unreachable\n"
    crashed = CliRunner().invoke(root, ["bug"])
    assert crashed.exit_code == 70, crashed.output  # EX_SOFTWARE: not an expected failure's 1
    [line] = crashed.output.splitlines()
    assert line.startswith("Error: unexpected ValueError: a bug, not an expected failure (a bug, or a case")
    saved = Path(line.rsplit("the traceback is in ", 1)[1].rstrip(")"))
    try:
        assert saved.stat().st_mode & 0o777 == 0o600
        kept = saved.read_text()
        assert kept.startswith("Traceback")
        assert 'raise ValueError("a bug, not an expected failure")' in kept
    finally:
        saved.unlink()


def _planted_settings(tmp_path: Path, catalog_dsn: str) -> Path:
    """A stack's settings file whose catalog and server DSNs all carry the planted password."""
    port = free_port()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    servers = [
        {"index": i, "dsn": f"host=127.0.0.1 port={port} dbname=tessera user=tessera password={SECRET}"}
        for i in range(2)
    ]
    (data_dir / "settings.json").write_text(json.dumps({"catalog_dsn": catalog_dsn, "servers": servers}))
    return data_dir


def _closed_port_dsns() -> dict[str, str]:
    port = free_port()
    return {
        "key=value": f"host=127.0.0.1 port={port} dbname=tessera user=tessera password={SECRET} connect_timeout=2",
        "URL": f"postgresql://tessera:{SECRET}@127.0.0.1:{port}/tessera?connect_timeout=2",
        "unparsable": f"host=127.0.0.1 port={port} password={SECRET} sslmode",
    }


COMMANDS = [
    ["shards", "show"],
    ["shards", "prepare"],
    ["roles", "ensure"],
    ["servers", "list", "--json"],
    ["servers", "disk", "server-0", "--capacity", "1TB"],
    ["migrate", "plan", "--add-server", "server-9"],
    ["migrate", "status"],
    ["migrate", "resume"],
    ["migrate", "abort", "--force"],
    ["models", "list"],
    ["models", "show", "1"],
    ["models", "promote", "1"],
    ["models", "rollback"],
    ["keys", "list", "--json"],
    ["keys", "create", "k1"],
    ["keys", "revoke", "k1", "--force"],
]


@pytest.mark.req("PLAT.cli-errors")
@pytest.mark.parametrize("form", ["key=value", "URL", "unparsable"])
def test_no_failing_command_prints_a_password_of_its_dsns(
    form: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Every command that reads the catalog, against a catalog that is down (or a DSN libpq cannot parse), with
    a password in every DSN of the stack's settings and in the control plane's credentials: exit 1, one line
    naming host:port/db at most, and the password nowhere in stdout, stderr or the logs."""
    for name in ("TESSERA_CATALOG_DSN", "TESSERA_SERVERS", "TESSERA_SHARDS", "TESSERA_SETTINGS_FILE"):
        monkeypatch.delenv(name, raising=False)
    data_dir = _planted_settings(tmp_path, _closed_port_dsns()[form])
    env = {"TESSERA_DATA_DIR": str(data_dir)}
    caplog.set_level(logging.DEBUG)
    for args in COMMANDS:
        result = CliRunner(env=env).invoke(main, args)
        _ensure_handled(result, args)
        assert SECRET not in result.output, (args, result.output)
        lines = result.output.strip().splitlines()
        assert lines[-1].startswith("Error: "), (args, result.output)
        if form == "unparsable":
            assert "cannot parse a DSN" in lines[-1], (args, result.output)
    with_credentials = {**env, "TESSERA_CONTROL__DB_USER": "tessera", "TESSERA_CONTROL__DB_PASSWORD": SECRET}
    for args in COMMANDS:
        result = CliRunner(env=with_credentials).invoke(main, args)
        _ensure_handled(result, args)
        assert SECRET not in result.output, (args, result.output)
    for args in (["stack", "status", "--data-dir", str(data_dir)], ["ha", "status", "--data-dir", str(data_dir)]):
        result = CliRunner(env=env).invoke(main, args)  # no stack runs there: "no stack in ..."
        _ensure_handled(result, args)
        assert "no stack in" in result.output, (args, result.output)
        assert SECRET not in result.output, (args, result.output)
    added = CliRunner(env=env).invoke(main, ["servers", "add", "server-9", "--dsn", _closed_port_dsns()["URL"]])
    _ensure_handled(added, ["servers", "add"])
    assert "server server-9 is unreachable" in added.output
    assert SECRET not in added.output
    assert SECRET not in caplog.text


@pytest.mark.req("PLAT.cli-errors")
def test_settings_that_do_not_validate_are_one_line_without_their_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server entry with a bad index: the field and the rule, never the value (a DSN with its password)."""
    monkeypatch.delenv("TESSERA_SETTINGS_FILE", raising=False)
    bad = json.dumps([{"index": "zero", "dsn": f"host=127.0.0.1 password={SECRET}"}])
    env = {"TESSERA_DATA_DIR": str(tmp_path), "TESSERA_SERVERS": bad, "TESSERA_CATALOG_DSN": "host=127.0.0.1"}
    for args in (["shards", "show"], ["stack", "status"], ["models", "list"]):
        result = CliRunner(env=env).invoke(main, args)
        _ensure_handled(result, args)
        assert "bad StoreSettings: servers.0.index" in result.output, result.output
        assert SECRET not in result.output


@pytest.mark.req("PLAT.cli-errors")
def test_the_installed_command_prints_the_error_on_stderr(tmp_path: Path) -> None:
    """The console script's process: the message on stderr, nothing on stdout, exit 1, no password."""
    data_dir = _planted_settings(tmp_path, _closed_port_dsns()["key=value"])
    done = subprocess.run(
        [sys.executable, "-m", "shardctl.cli", "shards", "show"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "TESSERA_DATA_DIR": str(data_dir)},
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done
    assert done.stdout == ""
    assert done.stderr.startswith("Error: cannot connect to 127.0.0.1:"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert SECRET not in done.stderr


@pytest.mark.req("PLAT.etcd-auth-k8s")
def test_roles_etcd_names_what_is_missing_and_gives_up_on_an_etcd_that_never_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without its settings: the variables to set. Against a closed port: the wait, then one line, no password."""
    for name in ("TESSERA_CONTROL__ETCD_URL", "TESSERA_CONTROL__ETCD_ROOT_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    unset = CliRunner(env={"TESSERA_CONTROL__ETCD_PATRONI_PASSWORD": SECRET}).invoke(main, ["roles", "etcd"])
    _ensure_handled(unset, ["roles", "etcd"])
    assert "set TESSERA_CONTROL__ETCD_URL, TESSERA_CONTROL__ETCD_ROOT_PASSWORD (" in unset.output, unset.output
    env = {
        "TESSERA_CONTROL__ETCD_URL": f"http://127.0.0.1:{free_port()}",
        "TESSERA_CONTROL__ETCD_ROOT_PASSWORD": SECRET,
        "TESSERA_CONTROL__ETCD_PATRONI_PASSWORD": SECRET,
    }
    closed = CliRunner(env=env).invoke(main, ["roles", "etcd", "--wait", "1"])
    _ensure_handled(closed, ["roles", "etcd"])
    assert closed.output.startswith("waiting for etcd: etcd at http://127.0.0.1:"), closed.output
    assert closed.output.splitlines()[-1].endswith("gave up after 1 s"), closed.output
    assert SECRET not in closed.output
