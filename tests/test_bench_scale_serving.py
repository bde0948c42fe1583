"""The Zipf-at-scale serving benchmark (`bench/serving/bench_zipf_scale.py`, issue 23 item 5), run tiny so a broken
harness fails CI. It checks the fields the benchmark reports, never a timing: the figures come from the real runs
(docs/benchmarks.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench_run import run_benchmark


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
