"""Invalidation by event: a feature write reaches the service's memory tier and Redis through the shards' change
logs, so a hot entity is answered from cache until its features change, then at once from the new ones; with
the change stream cut, answers fall back to the time bound. Event-driven: the tests wait for the service's own
metrics (change applied, stream live or not), never for a latency."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest

from shardctl.process import free_port
from shardctl.store import FeatureStore
from shardctl.store.changes import CHANGE_TABLE, LOG_FUNCTION, change_log_ddl
from shardctl.store.schema import FEATURE_TABLE
from shardctl.store.writer import FeatureRow
from testkit.serving import PredictionService
from tests.serving.conftest import (
    BUMP,
    FEATURE_SET,
    N_ENTITIES,
    T0,
    VERSION_TTL,
    entity_features,
    entity_id,
    service_env,
    timedelta,
    wait_for,
)


def _moving_entity(trained, start: int) -> int:
    """An entity at or below ``start`` whose bumped features really move both models' scores (a stale answer
    cannot pass for a fresh one); test_api's write takes the first from 40 up, these come from the top down."""
    return next(
        i
        for i in range(start, 40, -1)
        if all(abs(trained.bumped[n][entity_id(i)] - trained.expected[n][entity_id(i)]) > 0.05 for n in (0, 1))
    )


def _bump(settings, i: int, days: int, bump: float = BUMP) -> None:
    with FeatureStore.open(settings, prepare_topology=False) as store:
        store.write(FEATURE_SET, [FeatureRow(entity_id(i), T0 + timedelta(days=days), entity_features(i, bump))])


def _served(models, answer: dict) -> int:
    """Which of the session's models answered (test_api's promotion test may leave the second one promoted)."""
    return [m.version for m in models].index(answer["model_version"])


def _predict(service: PredictionService, i: int) -> dict:
    response = service.client.post("/v1/predictions", json={"entity_id": entity_id(i)})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def hour_bound_service(serving_stack, own_redis, models, api_key, tmp_path_factory) -> Iterator[PredictionService]:
    """A service whose time bound is an hour: only the change stream can explain a fresh answer."""
    _, settings = serving_stack
    port = free_port()
    env = service_env(settings, own_redis.url, port, TESSERA_SERVING__FEATURE_VERSION_TTL_SECONDS="3600")
    svc = PredictionService(env, port, tmp_path_factory.mktemp("svc-hour") / "serving.log", api_key=api_key)
    try:
        svc.wait_ready("/readyz")
        assert wait_for(lambda: svc.metric("tessera_change_stream_live") == 1, timeout=30)
        yield svc
    finally:
        svc.stop()


@pytest.mark.req("JTBD-02.invalidation-events")
def test_a_write_reaches_the_cache_by_event(hour_bound_service, serving_stack, trained, models):
    """A hot entity costs no shard read while its features stand still; once the service has applied the
    change of a write, the next answer is computed from the new features (the bound is an hour)."""
    _, settings = serving_stack
    svc = hour_bound_service
    i = _moving_entity(trained, N_ENTITIES - 1)
    before = _predict(svc, i)
    n = _served(models, before)
    assert before["score"] == pytest.approx(trained.expected[n][entity_id(i)], abs=1e-6)
    misses = svc.metric("tessera_cache_lookups_total", result="miss")
    for _ in range(5):
        assert _predict(svc, i)["cached"] is True
    assert svc.metric("tessera_cache_lookups_total", result="miss") == misses  # no shard read
    applied = svc.metric("tessera_invalidated_entities_total")
    try:
        _bump(settings, i, days=2)
        assert wait_for(lambda: svc.metric("tessera_invalidated_entities_total") > applied, timeout=30)
        after = _predict(svc, i)
        assert after["cached"] is False
        assert after["feature_version"] > before["feature_version"]
        assert after["score"] == pytest.approx(trained.bumped[n][entity_id(i)], abs=1e-6)
        assert _predict(svc, i)["cached"] is True  # and cached again
    finally:
        _bump(settings, i, days=20, bump=0.0)  # the original values again (a newer event), for later tests


def _shard_dsns(settings) -> list[str]:
    """The shards as the control plane: cutting the stream renames a table, which no part's role may do."""
    return list(settings.shard_dsns())


def _cut_change_log(dsns: list[str]) -> None:
    """The log becomes unreadable for the service, and writes are no longer logged: a lost stream."""
    for dsn in dsns:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"ALTER TABLE {CHANGE_TABLE} RENAME TO {CHANGE_TABLE}_cut")
            conn.execute(
                f"CREATE OR REPLACE FUNCTION {LOG_FUNCTION}(p_feature_set text, p_entity_ids text[]) RETURNS void "
                "LANGUAGE plpgsql AS $$ BEGIN END $$"
            )


def _restore_change_log(dsns: list[str]) -> None:
    ddl = change_log_ddl(FEATURE_TABLE)
    start = ddl.index(f"CREATE FUNCTION {LOG_FUNCTION}")
    function = ddl[start : ddl.index("$$;", start) + 2].replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION")
    for dsn in dsns:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"ALTER TABLE IF EXISTS {CHANGE_TABLE}_cut RENAME TO {CHANGE_TABLE}")
            conn.execute(function)


@pytest.mark.req("JTBD-02.invalidation-events")
def test_with_the_stream_cut_answers_are_never_staler_than_the_bound(service, serving_stack, trained, models):
    """Cached while the stream was live (full TTL), then the log becomes unreadable and the write is never
    logged: once the service reports the stream down, an answer given a bound after the write is fresh."""
    _, settings = serving_stack
    dsns = _shard_dsns(settings)
    assert wait_for(lambda: service.metric("tessera_change_stream_live") == 1, timeout=30)
    i = _moving_entity(trained, N_ENTITIES - 20)
    before = _predict(service, i)
    n = _served(models, before)
    assert before["score"] == pytest.approx(trained.expected[n][entity_id(i)], abs=1e-6)
    assert _predict(service, i)["cached"] is True
    try:
        _cut_change_log(dsns)
        assert wait_for(lambda: service.metric("tessera_change_stream_live") == 0, timeout=30)
        _bump(settings, i, days=3)
        time.sleep(VERSION_TTL + 0.1)  # a lower bound on waiting, not a latency: a slow machine only waits more
        after = _predict(service, i)
        assert after["feature_version"] > before["feature_version"]
        assert after["score"] == pytest.approx(trained.bumped[n][entity_id(i)], abs=1e-6)
    finally:
        _restore_change_log(dsns)
        _bump(settings, i, days=30, bump=0.0)
    assert wait_for(lambda: service.metric("tessera_change_stream_live") == 1, timeout=30)
