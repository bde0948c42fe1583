"""The resharding-at-scale benchmark (`bench/migrate/bench_reshard_scale.py`, issue 23 item 4), run tiny so a broken
harness fails CI. It checks the fields the benchmark reports and that traffic and audit were clean, never a timing:
the figures come from the real runs (docs/benchmarks.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench_run import run_benchmark


@pytest.mark.req("JTBD-03.scale-harness")
def test_the_resharding_scale_benchmark_migrates_under_traffic_and_reports_rates_pauses_and_its_audit(
    tmp_path: Path,
) -> None:
    out = tmp_path / "reshard.json"
    run_benchmark("bench/migrate/bench_reshard_scale.py", "--rows", "6000", "--chunk", "2000", "--json", str(out))
    figures = json.loads(out.read_text())  # the benchmark exits non-zero unless traffic and audit were clean
    assert figures["moved_rows"] > 0
    # The raw copy runs under the writer (new entities only add rows), between the plan and the migration.
    assert figures["plan"]["rows"] <= figures["raw_copy_rows"] <= figures["moved_rows"]
    assert set(figures["phase_seconds"]) == {"provisioned", "copying", "synced", "verified", "cut_over", "cleaned"}
    assert figures["cutover_write_pause_ms"] is not None
    assert figures["client_p99_during_cleanup"]["requests"] > 0
    assert figures["audit_rows"] >= 6000
    assert figures["audit_problems"] == {}
