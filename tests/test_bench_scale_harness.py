"""The scale benchmark's harness (`bench/scale`), run at two tiny sizes so a broken harness fails CI. It checks the
fields the benchmark reports (each stage at each size, its growth, peak memory per process and per stage, disk per
row), never a timing: figures come from the real run (docs/benchmarks.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench_run import run_benchmark

# The main job's stages as Dagster names its steps: raw load, features per shard, profile, key check, labels,
# point-in-time set, training.
STAGES = {"raw_events", "customer_features", "raw_profile", "churn_labels", "churn_training_set", "churn_model"}


@pytest.mark.req("JTBD-03.scale-harness")
def test_the_scale_benchmark_runs_two_sizes_and_reports_each_stage_its_growth_memory_and_disk(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    done = run_benchmark("bench/scale/bench_scale.py", "--tiny", "--json", str(out))
    summary = json.loads(out.read_text())
    small, large = summary["sizes"]
    assert (small["raw_rows"], large["raw_rows"]) == (9000, 18000)
    for size in (small, large):
        assert set(size["stages"]) >= STAGES, size["stages"]
        assert all(seconds > 0 for seconds in size["stages"].values())
        assert size["wall_seconds"] >= max(size["stages"].values())  # each step ran inside the run
        assert size["peak_mb"]["dagster run (python)"] > 0
        assert size["peak_mb"]["h2o jvm"] > 0  # the training JVM was seen
        training = size["stage_peak_mb"]["churn_model"]  # which stage sets the peak: memory sampled per stage
        assert 0 < training["python"] <= size["peak_mb"]["dagster run (python)"]
        assert 0 < training["jvm"] <= size["peak_mb"]["h2o jvm"]
        parts = size["parts"]  # the features stage's own breakdown: query, write, placement check
        assert {f"customer_features: seconds_{p}" for p in ("features_query", "write", "placement_check")} <= set(parts)
        features_parts = sum(v for k, v in parts.items() if k.startswith("customer_features"))
        assert features_parts <= size["stages"]["customer_features"]
        assert {"postgres catalog", "postgres shard0", "postgres shard1"} <= set(size["peak_mb"])
        assert size["rows"]["raw_events (catalog)"] == size["raw_rows"]
        shards = [name for name in size["rows"] if name.startswith("entity_features")]
        assert len(shards) == size["servers"] == 2
        assert sum(size["rows"][name] for name in shards) > 0
        assert all(size["bytes_per_row"][name] > 0 for name in size["rows"] if size["rows"][name])
    assert set(summary["growth"]) >= STAGES | {"whole run"}
    assert "growth" in done.stdout  # the table the benchmark prints
