"""The model registry on the real catalog: versions, promotion rule, and promotion notifications."""

from __future__ import annotations

import queue
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from shardctl.store.notify import NotificationListener
from shardctl.store.registry import PROMOTION_CHANNEL, ModelNotFoundError, ModelRegistry


@pytest.fixture
def registry(settings) -> ModelRegistry:
    reg = ModelRegistry(settings.catalog_dsn)
    reg.ensure_schema()
    reg.ensure_schema()  # idempotent
    return reg


def _register(reg: ModelRegistry, name: str, auc: float):
    return reg.register(
        name,
        algorithm="gbm",
        feature_set="customer_v1",
        features=["txn_count_7d", "amount_sum_30d"],
        metrics={"auc": auc, "logloss": 0.4},
        artifact_path=f"/models/{name}/{auc}.zip",
        genmodel_jar="/models/h2o-genmodel.jar",
    )


@pytest.mark.req("PLAT.model-registry")
def test_versions_are_numbered_and_the_promoted_one_is_current(registry: ModelRegistry) -> None:
    name = f"churn-{uuid.uuid4().hex[:8]}"
    assert registry.current(name) is None
    v1 = _register(registry, name, 0.80)
    v2 = _register(registry, name, 0.75)
    v3 = _register(registry, name, 0.85)
    assert [v1.version, v2.version, v3.version] == [1, 2, 3]
    registry.promote(name, 1, replaces=None)
    assert registry.current(name).version == 1
    registry.promote(name, 3, replaces=1)
    current = registry.current(name)
    assert current.version == 3
    assert current.key == f"{name}:3"
    assert current.features == ["txn_count_7d", "amount_sum_30d"]
    assert [v.version for v in registry.versions(name)] == [1, 2, 3]


@pytest.mark.req("PLAT.model-registry")
def test_concurrent_trainers_get_one_number_each_and_their_artifacts_sit_under_it(registry: ModelRegistry) -> None:
    """The number, the artifacts' place and the row are decided together: 4 concurrent trainers, 4 versions,
    each recorded with the paths its own publish step chose for that number."""
    name = f"churn-{uuid.uuid4().hex[:8]}"
    published: list[int] = []

    def publish(version: int) -> tuple[str, str]:
        published.append(version)
        return f"/models/{name}/{version}/model.zip", f"/models/{name}/{version}/h2o-genmodel.jar"

    def train(_: int):
        return registry.register_published(
            name, publish, algorithm="gbm", feature_set="customer_v1", features=["f"], metrics={"auc": 0.7}
        )

    with ThreadPoolExecutor(4) as pool:
        versions = list(pool.map(train, range(4)))
    assert sorted(v.version for v in versions) == sorted(published) == [1, 2, 3, 4]
    for v in versions:
        assert v.artifact_path == f"/models/{name}/{v.version}/model.zip"
        assert v.genmodel_jar == f"/models/{name}/{v.version}/h2o-genmodel.jar"


@pytest.mark.req("PLAT.model-registry")
def test_a_failed_publish_records_nothing(registry: ModelRegistry) -> None:
    name = f"churn-{uuid.uuid4().hex[:8]}"

    def publish(version: int) -> tuple[str, str]:
        raise OSError(f"disk full while publishing version {version}")

    with pytest.raises(OSError, match="publishing version 1"):
        registry.register_published(
            name, publish, algorithm="gbm", feature_set="customer_v1", features=["f"], metrics={"auc": 0.7}
        )
    assert registry.versions(name) == []
    assert _register(registry, name, 0.8).version == 1


@pytest.mark.req("PLAT.model-registry")
def test_unknown_version_is_a_clear_error(registry: ModelRegistry) -> None:
    with pytest.raises(ModelNotFoundError, match="has no version 99"):
        registry.promote("no-such-model", 99)


@pytest.mark.req("PLAT.model-registry")
def test_promotion_is_announced_to_listeners_within_a_second(registry: ModelRegistry, settings) -> None:
    name = f"churn-{uuid.uuid4().hex[:8]}"
    v1 = _register(registry, name, 0.9)
    received: queue.Queue[str] = queue.Queue()
    with NotificationListener(settings.catalog_dsn, PROMOTION_CHANNEL, received.put):
        registry.promote(name, v1.version)
        assert received.get(timeout=1.0) == f"{name}:1"
