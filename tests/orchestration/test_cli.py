"""`python -m orchestration`: bad input is a one-line message and exit 1, never a traceback."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from click.testing import CliRunner

from orchestration.__main__ import main


def test_run_without_a_stack_says_how_to_start_one(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TESSERA_DATA_DIR", str(tmp_path / "no-stack"))
    monkeypatch.delenv("TESSERA_DAGSTER_DSN", raising=False)
    result = CliRunner().invoke(main, ["run", "--days", "2"])
    assert result.exit_code == 1
    assert "run `shardctl stack up` first" in result.output
    assert "Traceback" not in result.output


def test_run_past_yesterday_is_refused_before_anything_runs(settings, monkeypatch) -> None:
    result = CliRunner().invoke(main, ["run", "--days", "4000"])
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    # Relative to today, so the test means the same on any date: 6 days from 5 days ago include today.
    start = datetime.now(UTC).date() - timedelta(days=5)
    monkeypatch.setenv("TESSERA_PIPELINE__START_DATE", start.isoformat())
    result = CliRunner().invoke(main, ["run", "--days", "6"])
    assert result.exit_code == 1
    assert "reach past yesterday" in result.output


def test_run_with_too_few_days_for_an_out_of_time_split_says_so_before_anything_runs(settings) -> None:
    result = CliRunner().invoke(main, ["run", "--days", "2"])
    assert result.exit_code == 1
    assert "2 days are too few for an out-of-time split with a 1-day horizon: need at least 3" in result.output
    assert "materializing" not in result.output


def test_run_options_are_run_config_and_leave_the_environment_alone(settings, monkeypatch) -> None:
    for name in ("TESSERA_PIPELINE__ROWS_PER_DAY", "TESSERA_PIPELINE__ENTITIES"):
        monkeypatch.delenv(name, raising=False)
    before = dict(os.environ)
    result = CliRunner().invoke(main, ["run", "--days", "2", "--rows-per-day", "5", "--entities", "9"])
    assert result.exit_code == 1  # too few days: refused before anything runs
    changed = {k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k)}
    assert not {k for k in changed if k.startswith("TESSERA_PIPELINE__")}, changed
