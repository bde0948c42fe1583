"""The prediction API against a real Granian server, real shards, real Redis and a real MOJO."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from shardctl.store import FeatureStore
from shardctl.store.registry import ModelRegistry
from shardctl.store.writer import FeatureRow
from tests.serving.conftest import (
    BUMP,
    FEATURE_SET,
    N_ENTITIES,
    T0,
    VERSION_TTL,
    entity_features,
    entity_id,
    timedelta,
    wait_for,
)

ALL_IDS = [entity_id(i) for i in range(N_ENTITIES)]


@pytest.mark.req("PLAT.rest-predictions")
@pytest.mark.req("JTBD-02.threadpool")
def test_predictions_equal_h2o_predict(service, trained, models):
    """Batch and single answers are the MOJO's, equal to H2O's own predict for the same rows (1e-6)."""
    response = service.client.post("/v1/predictions", json={"entity_ids": ALL_IDS})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == models[0].key
    expected = trained.expected[0]
    assert [item["entity_id"] for item in body["items"]] == ALL_IDS
    for item in body["items"]:
        assert item["status"] == 200
        assert item["prediction"]["score"] == pytest.approx(expected[item["entity_id"]], abs=1e-6)
    single = service.client.post("/v1/predictions", json={"entity_id": ALL_IDS[3]})
    assert single.status_code == 200, single.text
    one = single.json()
    assert one["score"] == pytest.approx(expected[ALL_IDS[3]], abs=1e-6)
    assert one["model_version"] == models[0].version
    assert one["features_event_ts"].startswith("2026-01-01")
    assert one["feature_age_seconds"] >= 0


@pytest.mark.req("PLAT.rest-predictions")
@pytest.mark.req("JTBD-02.errors")
def test_the_fast_path_answers_as_the_litestar_route_does(service, models):
    """A single prediction with a small Content-Length is answered in front of Litestar (serving.fast_path); the
    same body sent chunked (no Content-Length) takes the Litestar route. Same status, headers and body; and an
    error the fast path met is rendered by the route from the outcome it handed over, with no second read."""
    headers = {"content-type": "application/json"}
    body = json.dumps({"entity_id": ALL_IDS[12]}).encode()
    service.client.post("/v1/predictions", content=body, headers=headers).raise_for_status()  # now cached
    fast = service.client.post("/v1/predictions", content=body, headers=headers)
    routed = service.client.post("/v1/predictions", content=iter([body]), headers=headers)
    assert "content-length" not in routed.request.headers
    assert fast.status_code == routed.status_code == 200, (fast.text, routed.text)
    for response in (fast, routed):
        assert response.headers["content-type"] == "application/json"
        assert int(response.headers["content-length"]) == len(response.content)
    answers = [r.json() for r in (fast, routed)]
    for answer in answers:
        assert answer.pop("feature_age_seconds") >= 0
    assert answers[0] == answers[1]
    assert answers[0]["cached"] is True

    reads = service.metric("tessera_feature_read_seconds_count")
    missing = service.client.post("/v1/predictions", content=b'{"entity_id": "nobody-fast"}', headers=headers)
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert "nobody-fast" in missing.json()["detail"]
    assert service.metric("tessera_feature_read_seconds_count") == reads + 1


@pytest.mark.req("JTBD-02.cache")
def test_second_call_is_a_cache_hit(service, models):
    entity = ALL_IDS[10]
    first = service.client.post("/v1/predictions", json={"entity_id": entity}).json()
    second = service.client.post("/v1/predictions", json={"entity_id": entity}).json()
    assert second["cached"] is True
    assert second["score"] == first["score"]
    assert service.metric("tessera_cache_lookups_total") > 0


@pytest.mark.req("JTBD-02.cache")
def test_a_hot_entity_is_answered_from_memory(service, models):
    """The worker's memory tier answers repeats with no Redis round trip (how long it may: test_invalidation)."""
    entity = ALL_IDS[11]
    first = service.client.post("/v1/predictions", json={"entity_id": entity}).json()
    memory_before = service.metric("tessera_cache_lookups_total", tier="memory")
    redis_before = service.metric("tessera_cache_lookups_total", tier="redis")
    for _ in range(5):
        again = service.client.post("/v1/predictions", json={"entity_id": entity}).json()
        assert again["cached"] is True
        assert again["score"] == first["score"]
    assert service.metric("tessera_cache_lookups_total", tier="memory") == memory_before + 5
    assert service.metric("tessera_cache_lookups_total", tier="redis") == redis_before


@pytest.mark.req("JTBD-02.cache")
def test_concurrent_misses_score_once(service, serving_stack, trained, models):
    """Stampede control: 24 concurrent requests for an uncached entity score it once.

    "Concurrent" means within the staleness bound: a request arriving after the cached answer has expired
    reads the shard and scores again, by design. On a machine so loaded that the 24 answers spread over more
    than the bound, the attempt proves nothing and is repeated with a new entity."""
    _, settings = serving_stack
    for attempt in range(3):
        entity = f"stampede-{attempt}"
        with FeatureStore.open(settings, prepare_topology=False) as store:
            store.write(FEATURE_SET, [FeatureRow(entity, T0, entity_features(5))])
        before = service.metric("tessera_scored_rows_total")
        released: list[float] = []  # when the 24 threads, each with its client ready, are let go at once
        barrier = threading.Barrier(24, action=lambda released=released: released.append(time.monotonic()))

        def call(_: int, entity: str = entity, barrier: threading.Barrier = barrier) -> httpx.Response:
            with httpx.Client(base_url=service.url, timeout=10) as client:
                barrier.wait()
                return client.post("/v1/predictions", json={"entity_id": entity})

        with ThreadPoolExecutor(24) as pool:
            responses = list(pool.map(call, range(24)))
        elapsed = time.monotonic() - released[0]  # from release to the last answer (client set-up excluded)
        assert {r.status_code for r in responses} == {200}
        for r in responses:
            assert r.json()["score"] == pytest.approx(trained.expected[0][entity_id(5)], abs=1e-6)
        if elapsed < VERSION_TTL:
            assert service.metric("tessera_scored_rows_total") - before == 1
            return
    pytest.fail(f"24 requests never answered within the {VERSION_TTL} s staleness bound (machine overloaded)")


@pytest.mark.req("JTBD-02.cache")
def test_feature_write_changes_the_answer_within_the_bound(service, serving_stack, trained, models):
    _, settings = serving_stack
    # An entity whose new features really move the score, so a stale answer cannot pass.
    i = next(
        i
        for i in range(40, N_ENTITIES)
        if abs(trained.bumped[0][entity_id(i)] - trained.expected[0][entity_id(i)]) > 0.05
    )
    before = service.client.post("/v1/predictions", json={"entity_id": entity_id(i)}).json()
    assert before["score"] == pytest.approx(trained.expected[0][entity_id(i)], abs=1e-6)
    with FeatureStore.open(settings, prepare_topology=False) as store:
        store.write(FEATURE_SET, [FeatureRow(entity_id(i), T0 + timedelta(days=1), entity_features(i, BUMP))])
    written = time.monotonic()

    def changed():
        got = service.client.post("/v1/predictions", json={"entity_id": entity_id(i)}).json()
        return got["feature_version"] > before["feature_version"] and got

    assert wait_for(changed, timeout=VERSION_TTL + 5)
    assert time.monotonic() - written <= VERSION_TTL + 1.0  # the documented staleness bound (+ request time)
    after = service.client.post("/v1/predictions", json={"entity_id": entity_id(i)}).json()
    assert after["score"] == pytest.approx(trained.bumped[0][entity_id(i)], abs=1e-6)
    assert after["score"] != pytest.approx(before["score"], abs=1e-3)


@pytest.mark.req("JTBD-02.hot-swap")
def test_promotion_hot_swaps_with_no_failed_request(service, serving_stack, trained, models):
    """Requests keep flowing while v2 is promoted: all 200, then v2's scores (H2O's predict of model 2)."""
    _, settings = serving_stack
    stop = threading.Event()
    statuses: list[int] = []

    def hammer():
        with httpx.Client(base_url=service.url, timeout=10) as client:
            n = 0
            while not stop.is_set():
                statuses.append(client.post("/v1/predictions", json={"entity_ids": ALL_IDS[30:40]}).status_code)
                n += 1

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        ModelRegistry(settings.catalog_dsn).promote(settings.model_name, models[1].version)
        assert wait_for(
            lambda: service.client.get("/v1/models/current").json()["version"] == models[1].version, timeout=20
        )
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert statuses
    assert set(statuses) == {200}
    body = service.client.post("/v1/predictions", json={"entity_ids": ALL_IDS[30:40]}).json()
    assert body["model"] == models[1].key
    for item in body["items"]:
        assert item["prediction"]["score"] == pytest.approx(trained.expected[1][item["entity_id"]], abs=1e-6)


@pytest.mark.req("JTBD-02.metrics")
def test_health_readiness_and_prometheus_metrics(service, models):
    assert service.client.get("/healthz").json() == {"status": "ok"}
    ready = service.client.get("/readyz").json()
    assert ready["status"] == "ready"
    assert ready["model"].startswith("churn:")
    service.client.post("/v1/predictions", json={"entity_id": ALL_IDS[0]})
    text = service.client.get("/metrics").text
    for name in (
        "tessera_serving_request_duration_seconds_bucket",
        "tessera_cache_lookups_total",
        "tessera_scoring_seconds_bucket",
        "tessera_feature_read_seconds_bucket",
        "tessera_scored_rows_total",
        "tessera_redis_errors_total",
        "tessera_model_version",
    ):
        assert name in text, name
    assert service.metric("tessera_scoring_seconds_count") >= 1


@pytest.mark.req("JTBD-02.metrics")
def test_request_metrics_count_each_answer_under_its_route_and_status(service, models):
    def count(status: str) -> float:
        return service.metric("tessera_serving_requests_total", path="/v1/predictions", status_code=status)

    before = {status: count(status) for status in ("200", "404", "422")}
    latency_before = service.metric("tessera_serving_request_duration_seconds_count", path="/v1/predictions")
    assert service.client.post("/v1/predictions", json={"entity_id": ALL_IDS[1]}).status_code == 200
    assert service.client.post("/v1/predictions", json={"entity_id": "nobody-here"}).status_code == 404
    assert service.client.post("/v1/predictions", json={"entity_ids": []}).status_code == 422
    assert service.client.post("/v1/predictions", content=b"{not json").status_code == 422
    assert {status: count(status) - before[status] for status in before} == {"200": 1, "404": 1, "422": 2}
    latency_after = service.metric("tessera_serving_request_duration_seconds_count", path="/v1/predictions")
    assert latency_after == latency_before + 4
    assert service.metric("tessera_serving_requests_total", path="/metrics") == 0  # scrapes are not counted
