"""The serving benchmark's harness, run at a tiny scale so a broken harness fails CI. It asserts the harness runs
end to end and reports every field docs/benchmarks.md quotes, never a timing (figures come from the real run)."""

from __future__ import annotations

import json

import pytest

from tests.bench_run import run_benchmark

SCENARIOS = {"100% hits", "0% hits", "Zipf(1.1)", "uniform"}
STEP_FIELDS = {"rate", "achieved", "completed", "errors", "p50_ms", "p99_ms", "p999_ms", "max_ms", "server_cpu_us"}


@pytest.mark.req("JTBD-02.bench-harness")
@pytest.mark.req("JTBD-02.precomputed-figures")
@pytest.mark.req("JTBD-02.load-1000rps")
@pytest.mark.req("JTBD-02.p99-50ms")
def test_the_serving_benchmark_harness_runs_and_reports_its_fields(tmp_path):
    out = tmp_path / "summary.json"
    done = run_benchmark("bench/serving/bench_serving.py", "--tiny", "--json", str(out))
    summary = json.loads(out.read_text())
    assert summary["data"] == "synthetic"
    assert summary["model"]
    assert len(summary["runs"]) == 1
    run = summary["runs"][0]
    assert set(run["hello"]) == {"hello"}
    for app in ("tessera", "fastapi_inprocess", "fastapi_ondemand"):
        assert set(run[app]) == (SCENARIOS if app != "fastapi_ondemand" else {"Zipf(1.1)", "uniform"})
        for scenario in run[app].values():
            assert {"best_50ms", "best_20ms", "steps"} <= set(scenario)
            assert scenario["steps"]
            for step in scenario["steps"]:
                assert set(step) >= STEP_FIELDS
                assert step["completed"] > 0  # the generator sent requests and got answers
            if scenario["best_50ms"]:
                assert STEP_FIELDS | {"holds_50ms"} <= set(scenario["sustained"])
    assert set(summary["fastapi_h2o_rest"]) == {"0% hits"}
    invalidation = run["invalidation"]
    assert invalidation["samples"] == 2
    assert invalidation["background_rows_per_second"] > 0  # the writer's steady rate ran beside the samples
    for measure in ("redis_entry_replaced_ms", "new_answer_ms", "precomputed_ms"):
        assert invalidation[measure] is None or {"p50", "p99", "max", "n"} <= set(invalidation[measure])
    assert {"rows", "seconds", "rows_per_second", "model_version"} <= set(summary["rescore"])
    assert summary["rescore"]["rows"] > 0
    assert summary["rescore_large"]["rows"] == 4000  # --tiny's large pass: copies written up to it
    assert summary["scorer_catch_up"]["seconds"] > 0
    # The table the docs quote is printed with every app, the calibration and the comparison lines.
    lines = (
        "highest offered rate holding p99 < 50 ms",
        "calibration:",
        "Tessera",
        "invalidation, run 1",
        "re-scoring",
        "fastapi_ondemand",
    )
    for line in lines:
        assert line in done.stdout
