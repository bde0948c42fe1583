"""The store-at-scale benchmark (`bench/store/bench_store_scale.py`, issue 23 item 3), run tiny so a broken harness
fails CI. It checks the fields the benchmark reports, never a timing: the figures come from the real runs
(docs/benchmarks.md)."""

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
