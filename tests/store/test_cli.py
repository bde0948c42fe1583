"""`shardctl shards ...` against the session stack, and its clear errors."""

from __future__ import annotations

import json

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
    assert "password" not in shown.output


def test_shards_show_without_a_reachable_catalog_is_a_message_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, settings: TesseraSettings
) -> None:
    monkeypatch.setenv("TESSERA_CATALOG_DSN", "host=127.0.0.1 port=1 dbname=nope user=nobody connect_timeout=1")
    result = CliRunner().invoke(main, ["shards", "show"])
    assert result.exit_code == 1
    assert "Error:" in result.output
    assert "Traceback" not in result.output
