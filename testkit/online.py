"""A stack's store served for a migration under load: served entities written, one tiny H2O model promoted in the
registry and the real prediction service (Granian, started by ``testkit.serving``), for the online-migration tests
and the resharding benchmark to send ``testkit.traffic`` at."""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from shardctl.java import find_java_home
from shardctl.process import free_port, pid_alive, stop_pid, wait_until
from shardctl.settings import TesseraSettings
from shardctl.stack.manager import Stack
from shardctl.store import FeatureStore
from shardctl.store.registry import ModelRegistry
from shardctl.store.shardmap import ShardMapStore
from shardctl.store.writer import FeatureRow
from testkit.serving import PredictionService, create_api_key, service_env
from testkit.traffic import T0

SERVED_SET = "online_serving_v1"
FEATURES = ["spend", "visits"]
SERVED_ENTITIES = 400


def served_id(i: int) -> str:
    return f"served-{i:05d}"


def served_features(i: int) -> dict[str, float]:
    rng = random.Random(i)
    return {"spend": round(rng.uniform(0, 500), 2), "visits": float(rng.randint(0, 40))}


def train_tiny_model(out: Path) -> tuple[str, str]:
    """A 5-tree GBM on the served entities' features; the JVM is shut down (by PID if need be) before returning."""
    import h2o
    import pandas as pd
    from h2o.estimators import H2OGradientBoostingEstimator

    os.environ["JAVA_HOME"] = str(find_java_home())
    h2o.init(port=free_port(block=2), nthreads=1, max_mem_size="512M", verbose=False)
    jvm_pid = h2o.connection().local_server._process.pid
    try:
        frame = pd.DataFrame([served_features(i) for i in range(SERVED_ENTITIES)])
        frame["churn"] = ["yes" if s < 200 else "no" for s in frame["spend"]]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gbm = H2OGradientBoostingEstimator(ntrees=5, max_depth=3, min_rows=2, seed=42)
            gbm.train(x=FEATURES, y="churn", training_frame=h2o.H2OFrame(frame, column_types={"churn": "enum"}))
            mojo = gbm.download_mojo(str(out), get_genmodel_jar=True)
        return mojo, str(out / "h2o-genmodel.jar")
    finally:
        h2o.cluster().shutdown()
        if not wait_until(lambda: not pid_alive(jvm_pid), 30):
            stop_pid(jvm_pid, timeout=20)


@dataclass
class OnlineEnv:
    stack: Stack
    settings: TesseraSettings
    service: PredictionService

    @property
    def catalog_dsn(self) -> str:
        assert self.settings.catalog_dsn
        return self.settings.catalog_dsn

    def servers(self) -> dict[str, str]:
        return ShardMapStore(self.catalog_dsn).registered_servers()

    def placement(self) -> dict[int, str]:
        return ShardMapStore(self.catalog_dsn).current().placement_by_name()


@contextmanager
def online_env(stack: Stack, settings: TesseraSettings, models_dir: Path, log_dir: Path) -> Iterator[OnlineEnv]:
    """Serve the stack's store: served entities written, the tiny model registered and promoted, the service
    running (stopped by PID at the end)."""
    with FeatureStore.open(settings) as store:
        store.write(SERVED_SET, [FeatureRow(served_id(i), T0, served_features(i)) for i in range(SERVED_ENTITIES)])
    mojo, jar = train_tiny_model(models_dir)
    registry = ModelRegistry(settings.catalog_dsn or "")
    version = registry.register(
        settings.model_name,
        algorithm="gbm",
        feature_set=SERVED_SET,
        features=FEATURES,
        metrics={"auc": 0.9},
        artifact_path=mojo,
        genmodel_jar=jar,
    )
    registry.promote(settings.model_name, version.version)
    port = free_port()
    env = service_env(
        stack.settings_file,
        port,
        TESSERA_CATALOG_DSN=settings.catalog_dsn or "",
        TESSERA_REDIS_URL=settings.redis_url,
        TESSERA_SERVING__WORKERS="1",
        # Cached features older than a second are read again: the service keeps reading the moving shards.
        TESSERA_SERVING__FEATURE_VERSION_TTL_SECONDS="1.0",
    )
    api_key = create_api_key(settings.catalog_dsn or "", "migration-traffic")
    with PredictionService(env, port, log_dir / "serving.log", api_key=api_key) as service:
        service.wait_ready("/readyz")
        yield OnlineEnv(stack, settings, service)
