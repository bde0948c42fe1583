"""The store, serving and resharding benchmarks at scale (`bench/store/bench_store_scale.py`,
`bench/serving/bench_zipf_scale.py`, `bench/migrate/bench_reshard_scale.py`; issue 23 items 3, 4 and 5), run tiny
so a broken harness fails CI. They check the fields each benchmark reports, never a timing: the figures come from
the real runs (docs/benchmarks.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench_run import run_benchmark


@pytest.mark.req("JTBD-03.scale-harness")
def test_the_store_scale_benchmark_reports_rates_reads_bloat_and_each_layout(tmp_path: Path) -> None:
    out = tmp_path / "store.json"
    args = ("--rows", "8000", "--chunk", "2000", "--passes", "2", "--read-iterations", "50", "--json", str(out))
    done = run_benchmark("bench/store/bench_store_scale.py", *args)
    figures = json.loads(out.read_text())
    assert figures["load"]["writer_rows_s"] > 0
    assert figures["baselines"]["raw_copy_rows_s"] > 0
    assert figures["baselines"]["db_merge_rows_s"] > 0
    assert {"single", "batch100"} == set(figures["reads"])
    passes = figures["passes"]
    assert len(passes["pass_seconds"]) == 2
    assert passes["before"]["live_tuples"] == passes["after"]["live_tuples"] == 8000  # every row once, on 4 servers
    assert passes["after"]["updates"] >= 2 * 8000  # both passes changed every row
    layouts = figures["layouts"]
    assert len(layouts) == 3
    assert all(layout["bytes_per_row"] > 0 for layout in layouts.values())
    assert "ratios" in done.stdout


@pytest.mark.req("JTBD-03.scale-harness")
def test_the_zipf_scale_benchmark_reports_latency_and_where_each_answer_came_from(tmp_path: Path) -> None:
    out = tmp_path / "zipf.json"
    args = ("--entities", "3000", "--runs", "1", "--step-seconds", "2", "--rates", "20,40", "--json", str(out))
    run_benchmark("bench/serving/bench_zipf_scale.py", *args)
    figures = json.loads(out.read_text())
    fill = figures["redis_after_fill"]
    assert fill["keys"] >= 3000
    assert fill["bytes_per_entity"] > 0
    assert fill["policy"]
    (run,) = figures["runs"]
    assert [step["rate"] for step in run["steps"]] == [20, 40]
    for step in run["steps"]:
        assert step["errors"] == 0
        assert step["completed"] > 0
        shares = step["memory_share"] + step["redis_share"] + step["miss_share"]
        assert shares == pytest.approx(1.0)  # every answer counted once, by the service's own counters
    assert 0 < figures["zipf_share_of_memory_tier_head"] <= 1


@pytest.mark.req("JTBD-03.scale-harness")
def test_the_resharding_scale_benchmark_migrates_under_traffic_and_reports_rates_pauses_and_its_audit(
    tmp_path: Path,
) -> None:
    out = tmp_path / "reshard.json"
    run_benchmark("bench/migrate/bench_reshard_scale.py", "--rows", "6000", "--chunk", "2000", "--json", str(out))
    figures = json.loads(out.read_text())  # the benchmark exits non-zero unless traffic and audit were clean
    assert figures["moved_rows"] > 0
    assert figures["raw_copy_rows"] == figures["moved_rows"]
    assert set(figures["phase_seconds"]) == {"provisioned", "copying", "synced", "verified", "cut_over", "cleaned"}
    assert figures["cutover_write_pause_ms"] is not None
    assert figures["client_p99_during_cleanup"]["requests"] > 0
    assert figures["audit_rows"] >= 6000
    assert figures["audit_problems"] == {}
