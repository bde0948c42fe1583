"""Fixtures for the pipeline tests: small raw data, one real H2O JVM for the module, and the graph run once."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest

from orchestration.defs.resources import raw_data_resource, tessera_resource
from orchestration.h2o_runtime import LocalH2O, start_local_h2o
from orchestration.resources import TesseraResource
from orchestration.run_graph import QUIET_LOGGERS
from orchestration.settings import PipelineSettings

DAYS = 10
ROWS_PER_DAY = 1000  # 10k raw rows
ENTITIES = 1500
HORIZON_DAYS = 2  # 10 days give as-of dates on days 2, 4, 6, 8 (1-based); the last validates
SMALL_GBM = {
    "ops": {
        "churn_labels": {"config": {"horizon_days": HORIZON_DAYS, "every_days": 2, "warmup_days": 2}},
        "churn_model": {"config": {"ntrees": 20, "max_depth": 4}},
    }
}
QUIET = {"loggers": QUIET_LOGGERS}


@pytest.fixture(scope="session")
def pipeline_env(local_stack) -> dict[str, str]:
    """Small-scale pipeline settings for the Dagster processes a test spawns (the UI's code location reads them
    when it loads); in-process runs get the same scale as run config (``small_data``)."""
    return {"TESSERA_PIPELINE__ROWS_PER_DAY": str(ROWS_PER_DAY), "TESSERA_PIPELINE__ENTITIES": str(ENTITIES)}


@pytest.fixture(scope="session")
def small_data(pipeline_env) -> dict:
    """Run config for the daily job: the raw data source at the tests' scale, and quiet logs."""
    source = raw_data_resource(PipelineSettings(), rows_per_day=ROWS_PER_DAY, entities=ENTITIES)
    return dg.RunConfig(resources={"raw_data": source}, loggers=QUIET_LOGGERS).to_config_dict()


@pytest.fixture(scope="session")
def h2o_server(tmp_path_factory: pytest.TempPathFactory, pipeline_env) -> Iterator[LocalH2O]:
    """One H2O JVM (1 GB, 2 threads) for the session, on a free port, stopped by PID at the end; its URL is in
    the environment, as a deployment gives it (the code location binds it as ``dg.EnvVar``)."""
    server = start_local_h2o(Path(tmp_path_factory.mktemp("h2o")), max_mem="1G", nthreads=2)
    os.environ["TESSERA_H2O__URL"] = server.url
    try:
        yield server
    finally:
        os.environ.pop("TESSERA_H2O__URL", None)
        assert server.stop(), f"H2O pid {server.pid} did not stop"


@pytest.fixture(scope="session")
def defs(pipeline_env, h2o_server):
    """The code location, built once the stack's settings and the H2O cluster's URL exist (its resources take
    them when it loads)."""
    from orchestration.definitions import defs

    return defs()


@pytest.fixture(scope="session")
def tessera(settings, pipeline_env) -> TesseraResource:
    """The pipeline's view of the stack, as the code location binds it, for calling asset helpers directly."""
    return tessera_resource(settings, PipelineSettings())


@pytest.fixture(scope="session")
def days(pipeline_env):
    start = PipelineSettings().start_date
    return [start + timedelta(days=i) for i in range(DAYS)]


@pytest.fixture(scope="session")
def graph(defs, days, settings, h2o_server, small_data):
    """Materialize every day's partitions and then the model job, once for the session."""
    from orchestration.run_graph import run_days, run_model, summarize

    instance = dg.DagsterInstance.ephemeral()
    daily = run_days(defs, days, instance, small_data)
    model = run_model(defs, instance, {**SMALL_GBM, **QUIET})
    return {"instance": instance, "daily": daily, "model": model, "summary": summarize(settings)}
