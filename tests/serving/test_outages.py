"""Defined behaviour under failures: Redis killed mid-run -> uncached 200s; a shard stopped -> 503 for its
entities only. These run last in the serving session (they break the stack's Redis and a shard)."""

from __future__ import annotations

import time

import pytest

from shardctl.process import pid_alive
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
    assert not pid_alive(pid)
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
    assert service.metric("tessera_redis_errors_total") > errors_before
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
