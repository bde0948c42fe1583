"""`shardctl shards ...` against the session stack, and its clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from shardctl.cli import main
from shardctl.settings import TesseraSettings


@pytest.mark.req("JTBD-03.shard-map")
def test_shards_show_and_prepare_report_the_catalog_map(settings: TesseraSettings) -> None:
    runner = CliRunner()
    prepared = runner.invoke(main, ["shards", "prepare"])
    assert prepared.exit_code == 0, prepared.output
    shown = runner.invoke(main, ["shards", "show", "--json"])
    assert shown.exit_code == 0, shown.output
    payload = json.loads(shown.output)
    assert payload["epoch"] >= 1
    assert [s["index"] for s in payload["shards"]] == [0, 1]
    assert [s["name"] for s in payload["shards"]] == ["server-0", "server-1"]
    assert sum(s["logical_shards"] for s in payload["shards"]) == 256
    assert "password" not in shown.output


def test_shards_show_without_a_reachable_catalog_is_a_message_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, settings: TesseraSettings
) -> None:
    monkeypatch.setenv("TESSERA_CATALOG_DSN", "host=127.0.0.1 port=1 dbname=nope user=nobody connect_timeout=1")
    result = CliRunner().invoke(main, ["shards", "show"])
    assert result.exit_code == 1
    assert "Error:" in result.output
    assert "Traceback" not in result.output


def test_help_loads_no_command_s_dependencies() -> None:
    """`shardctl --help` stays fast (~0.2 s, was 2.2 s) because no command's modules load for it: this checks
    what is imported rather than timing it (timings belong in bench/)."""
    heavy = ["pydantic", "psycopg", "sqlglot", "patroni", "redis", "shardctl.settings", "shardctl.stack"]
    probe = (
        "import sys\nfrom shardctl.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {heavy!r} or m in {heavy!r}))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert "Usage:" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "[]"
