"""Fixtures of the serving tests: their own 2-shard stack and Redis (tests stop a shard and kill Redis), one
H2O JVM per session that trains two tiny GBMs and predicts every entity itself, and a real Granian server.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from filelock import FileLock

from shardctl.java import find_java_home
from shardctl.process import free_port, pid_alive, stop_pid, wait_until
from shardctl.redis_acl import ADMIN_USER
from shardctl.settings import TesseraSettings
from shardctl.stack.binaries import find_redis_server
from shardctl.stack.manager import Stack
from shardctl.stack.redis_server import RedisServer
from shardctl.store import FeatureStore
from shardctl.store.registry import ModelRegistry, ModelVersion
from shardctl.store.writer import FeatureRow
from testkit.serving import PredictionService, create_api_key
from testkit.serving import service_env as launcher_env

FEATURE_SET = "serving_test_v1"
FEATURES = ["spend", "visits", "tier", "tenure"]
N_ENTITIES = 120
VERSION_TTL = 1.0  # the staleness bound the test server runs with
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def entity_features(i: int, bump: float = 0.0) -> dict:
    rng = random.Random(i)
    return {
        "spend": round(rng.uniform(0, 500) + bump, 3),
        "visits": rng.randint(0, 40),
        "tier": ("gold", "silver", "bronze")[rng.randrange(3)],
        "tenure": rng.randint(1, 120),
    }


def entity_id(i: int) -> str:
    return f"cust-{i:04d}"


@dataclass
class TrainedModels:
    """Two MOJOs and H2O's own predictions (p1) for every entity's stored features and for a changed row."""

    paths: list[tuple[str, str]]  # (mojo zip, genmodel jar) per model
    expected: list[dict[str, float]]  # per model: entity id -> H2O predict p1
    bumped: list[dict[str, float]]  # per model: entity id -> p1 after bump_features(i)
    odd: list[list[float]]  # per model: H2O predict p1 of ODD_ROWS (missing values, an unseen level)


BUMP = 400.0

# Rows a client may send that training never saw: H2O scores a missing value and an unseen level as NA.
ODD_ROWS = [
    {"spend": None, "visits": 3, "tier": "gold", "tenure": 12},
    {"spend": 120.5, "visits": None, "tier": "platinum", "tenure": 40},
    {"spend": 410.0, "visits": 7, "tier": None, "tenure": None},
]


@pytest.fixture(scope="session")
def serving_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, TesseraSettings]]:
    root = tmp_path_factory.mktemp("serving_stack")
    stack = Stack(root)
    stack.up(shards=2, base_port=free_port(block=10))
    try:
        settings = TesseraSettings(**json.loads(stack.settings_file.read_text()))
        yield stack, settings
    finally:
        failed = stack.down(purge=True)
        assert not failed, f"servers left running: {failed}"


@pytest.fixture(scope="session")
def own_redis(serving_stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of our own (a test kills it mid-run) with the stack's users, so serving logs in as it does on
    the stack's."""
    secrets = serving_stack[0].layout.secrets
    server = RedisServer(
        free_port(),
        tmp_path_factory.mktemp("serving_redis"),
        find_redis_server(),
        acl_file=secrets.redis_acl_file,
        username=ADMIN_USER,
        password=secrets.redis_password(ADMIN_USER),
    )
    server.start()
    try:
        yield server
    finally:
        assert server.stop(), "redis did not stop"


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> TrainedModels:
    """Two tiny GBMs trained once per test run, their MOJOs and H2O's own predictions.

    Parallel workers share them: the first to take the lock trains (one H2O JVM, shut down straight after) and
    writes the result beside the workers' temp dirs; the others read it. Training is the same every time
    (seeded), so a worker's result never depends on which worker trained.
    """
    shared = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    record = shared / "trained-models.json"
    with FileLock(str(shared / "trained-models.lock")):
        if not record.exists():
            models = train_models(shared / "models")
            record.write_text(json.dumps(dataclasses.asdict(models)))
        return TrainedModels(**json.loads(record.read_text()))


def train_models(out: Path) -> TrainedModels:
    """One H2O JVM: train two GBMs, export MOJOs, predict every row, shut the JVM down (by PID if it lingers)."""
    import h2o
    import pandas as pd

    os.environ["JAVA_HOME"] = str(find_java_home())
    out.mkdir(parents=True)
    h2o.init(port=free_port(block=2), nthreads=1, max_mem_size="1G", verbose=False)
    jvm_pid = h2o.connection().local_server._process.pid
    try:
        rows = [entity_features(i) for i in range(N_ENTITIES)]
        frame = pd.DataFrame(rows)
        frame["churn"] = [
            "yes" if (r["spend"] < 200) ^ (random.Random(i * 7).random() < 0.15) else "no" for i, r in enumerate(rows)
        ]
        train = h2o.H2OFrame(frame, column_types={"tier": "enum", "churn": "enum"})
        score_frame = h2o.H2OFrame(pd.DataFrame(rows), column_types={"tier": "enum"})
        bumped_rows = [entity_features(i, BUMP) for i in range(N_ENTITIES)]
        bumped_frame = h2o.H2OFrame(pd.DataFrame(bumped_rows), column_types={"tier": "enum"})
        from h2o.estimators import H2OGradientBoostingEstimator

        odd_frame = h2o.H2OFrame(
            pd.DataFrame(ODD_ROWS),
            column_types={"spend": "real", "visits": "real", "tier": "enum", "tenure": "real"},
        )
        paths, expected, bumped, odd = [], [], [], []
        for n, (ntrees, depth) in enumerate(((10, 3), (30, 5))):
            gbm = H2OGradientBoostingEstimator(ntrees=ntrees, max_depth=depth, min_rows=2, seed=42)
            gbm.train(x=FEATURES, y="churn", training_frame=train)
            target = out / f"m{n}"
            target.mkdir()
            mojo = gbm.download_mojo(str(target), get_genmodel_jar=True)
            paths.append((mojo, str(target / "h2o-genmodel.jar")))
            for source, sink in ((score_frame, expected), (bumped_frame, bumped)):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # single-thread pandas conversion notice
                    p1 = gbm.predict(source).as_data_frame(use_multi_thread=False)["yes"].tolist()
                sink.append({entity_id(i): float(p) for i, p in enumerate(p1)})
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # H2O warns about the unseen level it scores as NA
                odd.append(gbm.predict(odd_frame).as_data_frame(use_multi_thread=False)["yes"].tolist())
        return TrainedModels(paths, expected, bumped, odd)
    finally:
        h2o.cluster().shutdown()
        # A loaded machine can take longer than the wait to finish the JVM's own shutdown: then stop it by PID.
        if not wait_until(lambda: not pid_alive(jvm_pid), 30):
            stop_pid(jvm_pid, timeout=20)
        assert not pid_alive(jvm_pid), f"H2O JVM {jvm_pid} still running"


@pytest.fixture(scope="session")
def models(serving_stack, trained: TrainedModels) -> list[ModelVersion]:
    """Features of every entity written through the FeatureWriter; both models registered, the first promoted."""
    _, settings = serving_stack
    return seed_models(settings, trained)


def seed_models(settings: TesseraSettings, trained: TrainedModels) -> list[ModelVersion]:
    """Write every entity's features and register the trained models on ``settings``' stack, the first promoted."""
    with FeatureStore.open(settings) as store:
        store.write(FEATURE_SET, [FeatureRow(entity_id(i), T0, entity_features(i)) for i in range(N_ENTITIES)])
    registry = ModelRegistry(settings.catalog_dsn)
    versions = [
        registry.register(
            settings.model_name,
            algorithm="gbm",
            feature_set=FEATURE_SET,
            features=FEATURES,
            metrics={"auc": 0.5 + n / 10},
            artifact_path=mojo,
            genmodel_jar=jar,
        )
        for n, (mojo, jar) in enumerate(trained.paths)
    ]
    registry.promote(settings.model_name, versions[0].version)
    return versions


def service_env(settings: TesseraSettings, redis_url: str, port: int, **extra: str) -> dict[str, str]:
    """The tests' service: their stack and Redis, one worker, a short staleness bound (``VERSION_TTL``)."""
    defaults = {
        "TESSERA_CATALOG_DSN": settings.catalog_dsn or "",
        "TESSERA_REDIS_URL": redis_url,
        "TESSERA_SERVING__WORKERS": "1",
        "TESSERA_SERVING__MAX_BATCH": "150",
        "TESSERA_SERVING__FEATURE_VERSION_TTL_SECONDS": str(VERSION_TTL),
        "TESSERA_SERVING__RETRY_AFTER_SECONDS": "7",
    }
    return launcher_env(Path(settings.data_dir) / "settings.json", port, **(defaults | extra))  # extra wins


@pytest.fixture(scope="session")
def api_key(serving_stack) -> str:
    """The tests' API key: every scope, a rate limit no test reaches (tests of the limits make their own)."""
    _, settings = serving_stack
    return create_api_key(settings.catalog_dsn or "", "serving-tests")


@pytest.fixture(scope="session")
def service(serving_stack, own_redis, models, api_key, tmp_path_factory) -> Iterator[PredictionService]:
    _stack, settings = serving_stack
    port = free_port()
    log = tmp_path_factory.mktemp("svc") / "serving.log"
    with PredictionService(service_env(settings, own_redis.url, port), port, log, api_key=api_key) as svc:
        svc.wait_ready("/readyz")
        yield svc


def wait_for(predicate, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


__all__ = ["BUMP", "FEATURE_SET", "T0", "VERSION_TTL", "entity_features", "entity_id", "timedelta"]
