"""Defined behaviour under failures: Redis killed mid-run -> uncached 200s; a shard stopped -> 503 for its
entities only. Each restores what it broke before it ends: the stack and its Redis are shared by every serving test
on the same worker, and xdist may run any of them afterwards."""

from __future__ import annotations

import time

import pytest

from shardctl.process import pid_alive, wait_until
from shardctl.store import FeatureStore
from shardctl.store.writer import FeatureRow
from tests.serving.conftest import FEATURE_SET, N_ENTITIES, T0, VERSION_TTL, entity_features, entity_id

IDS = [entity_id(i) for i in range(N_ENTITIES)]


@pytest.mark.req("JTBD-02.cache")
def test_redis_killed_mid_run_keeps_answering_uncached(service, own_redis, serving_stack):
    _, settings = serving_stack
    warm = service.client.post("/v1/predictions", json={"entity_ids": IDS[:20]})
    assert warm.status_code == 200
    assert service.client.post("/v1/predictions", json={"entity_id": IDS[0]}).json()["cached"] is True
    errors_before = service.metric("tessera_redis_errors_total")
    pid = own_redis.pid
    assert own_redis.stop()
    try:
        assert not pid_alive(pid)
        _answers_without_redis(service, settings)
    finally:
        own_redis.start()
    assert service.metric("tessera_redis_errors_total") > errors_before


def _predict(service, entity: str) -> dict:
    answer = service.client.post("/v1/predictions", json={"entity_id": entity})
    return answer.json() if answer.status_code == 200 else {}


def _answers_without_redis(service, settings) -> None:
    # The worker's memory tier may still answer entities it holds; an entity it never saw is computed.
    assert service.client.post("/v1/predictions", json={"entity_id": IDS[0]}).status_code == 200
    time.sleep(VERSION_TTL + 0.2)
    for n in range(3):
        fresh = f"redis-down-{n}"
        with FeatureStore.open(settings, prepare_topology=False) as store:
            store.write(FEATURE_SET, [FeatureRow(fresh, T0, entity_features(n))])
        single = service.client.post("/v1/predictions", json={"entity_id": fresh})
        assert single.status_code == 200, single.text
        assert single.json()["cached"] is False
        batch = service.client.post("/v1/predictions", json={"entity_ids": IDS[:20]})
        assert batch.status_code == 200
        assert {item["status"] for item in batch.json()["items"]} == {200}
        time.sleep(VERSION_TTL + 0.2)  # past the memory tier and the Redis back-off: Redis is tried (and fails) again
    assert service.client.get("/readyz").status_code == 200


@pytest.mark.req("JTBD-02.errors")
def test_stopped_shard_is_503_for_its_entities_only(service, serving_stack):
    stack, settings = serving_stack
    with FeatureStore.open(settings, prepare_topology=False) as store:
        shard_of = {e: store.shard_map.shard_for(e) for e in IDS}
    down = 1
    on_down = [e for e in IDS if shard_of[e] == down]
    on_up = [e for e in IDS if shard_of[e] != down]
    assert on_down
    assert on_up
    shard_server = stack.postgres_servers(stack.load_state())[1 + down]
    assert shard_server.stop()
    try:
        _answers_around_a_stopped_shard(service, down, on_down, on_up)
    finally:
        shard_server.start()
    # The shard back: its entities are served again without a restart of the service.
    assert wait_until(lambda: "score" in _predict(service, on_down[1]), 30, interval=0.5)


def _answers_around_a_stopped_shard(service, down: int, on_down: list[str], on_up: list[str]) -> None:
    time.sleep(VERSION_TTL + 0.2)  # cached feature versions expire: the shard must be read again
    single = service.client.post("/v1/predictions", json={"entity_id": on_down[0]})
    assert single.status_code == 503
    assert single.headers["content-type"] == "application/problem+json"
    assert single.headers["retry-after"] == "7"
    assert f"shard {down}" in single.json()["detail"]
    assert service.client.post("/v1/predictions", json={"entity_id": on_up[0]}).status_code == 200
    batch = service.client.post("/v1/predictions", json={"entity_ids": on_down[:10] + on_up[:10]}).json()
    statuses = {item["entity_id"]: item["status"] for item in batch["items"]}
    assert {statuses[e] for e in on_down[:10]} == {503}
    assert {statuses[e] for e in on_up[:10]} == {200}
    assert all(item["retry_after_seconds"] == 7 for item in batch["items"] if item["status"] == 503)
    assert service.metric("tessera_shard_errors_total") > 0
