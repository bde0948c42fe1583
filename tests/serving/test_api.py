"""The prediction API against a real Granian server, real shards, real Redis and a real MOJO."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

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


@pytest.fixture(autouse=True)
def first_model_served(service, serving_stack, models):
    """Each test here starts from the first model, promoted and served: tests of other files that share this
    service (its lifecycle, a catalog outage) promote the other one, and the parallel run orders files freely."""
    _, settings = serving_stack
    registry = ModelRegistry(settings.catalog_dsn)
    current = registry.current(settings.model_name)
    if current is None or current.version != models[0].version:
        registry.promote(settings.model_name, models[0].version, note="test_api starts from the first model")

    def served() -> bool:
        return service.client.get("/v1/models/current").json().get("version") == models[0].version

    assert wait_for(served, timeout=30), "the service never served the first model again"


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
            with httpx.Client(base_url=service.url, timeout=10, headers=service.auth_headers) as client:
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


@dataclass(frozen=True)
class Answer:
    """One hammer request: when it was sent and answered (monotonic), its status, and the model that answered."""

    sent: float
    answered: float
    status: int
    body: dict


@pytest.mark.req("JTBD-02.hot-swap")
def test_promotion_hot_swaps_with_no_failed_request(service, serving_stack, trained, models):
    """Requests keep flowing while v2 is promoted: every one answered 200 with the scores of the model it names,
    answers from v1 and from v2 both seen, requests in flight across the swap; then v2's scores (H2O's predict
    of model 2)."""
    _, settings = serving_stack
    batch = ALL_IDS[30:40]
    stop = threading.Event()
    answers: list[Answer] = []  # every thread's, in order of arrival
    answers_lock = threading.Lock()

    def hammer() -> int:
        with httpx.Client(base_url=service.url, timeout=10, headers=service.auth_headers) as client:
            sent = 0
            while not stop.is_set():
                at = time.monotonic()
                response = client.post("/v1/predictions", json={"entity_ids": batch})
                answer = Answer(at, time.monotonic(), response.status_code, response.json())
                with answers_lock:
                    answers.append(answer)
                sent += 1
            return sent

    def answered_by(key: str, since: float = 0.0) -> int:
        with answers_lock:
            return sum(1 for a in answers if a.body.get("model") == key and a.sent >= since)

    with ThreadPoolExecutor(3) as pool:
        threads = [pool.submit(hammer) for _ in range(3)]
        try:
            assert wait_for(lambda: answered_by(models[0].key) >= 3, timeout=20), "no answer from v1 before the swap"
            swap_started = time.monotonic()
            ModelRegistry(settings.catalog_dsn).promote(settings.model_name, models[1].version)
            assert wait_for(
                lambda: service.client.get("/v1/models/current").json()["version"] == models[1].version, timeout=20
            )
            swap_done = time.monotonic()
            # Traffic goes on past the swap: requests sent after it are answered by v2.
            assert wait_for(lambda: answered_by(models[1].key, since=swap_done) >= 3, timeout=20), "no answer from v2"
        finally:
            stop.set()
            sent = [t.result(timeout=30) for t in threads]  # a thread's exception fails the test here
    assert all(n > 0 for n in sent), sent
    assert len(answers) == sum(sent)
    assert [a for a in answers if a.status != 200] == []
    index = {models[0].key: 0, models[1].key: 1}
    for answer in answers:
        expected = trained.expected[index[answer.body["model"]]]
        assert [item["status"] for item in answer.body["items"]] == [200] * len(batch), answer.body
        for item in answer.body["items"]:
            assert item["prediction"]["score"] == pytest.approx(expected[item["entity_id"]], abs=1e-6)
    assert {a.body["model"] for a in answers} == set(index)  # both versions answered the hammer
    assert any(a.sent <= swap_started and a.answered >= swap_started for a in answers), "nothing in flight at the swap"
    assert any(swap_started <= a.sent <= swap_done for a in answers), "no request sent during the swap"
    body = service.client.post("/v1/predictions", json={"entity_ids": batch}).json()
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
