"""The precomputing scorer rides out a hard kill of a shard's primary: its round fails, it reconnects through the
multi-host DSN to the new primary, resumes from its cursor (committed there with the predictions, synchronously
replicated) and scores the changes written after the failover; nothing scored before it is lost."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from shardctl.control.ha import leader, shard_members
from shardctl.process import free_port, wait_until
from shardctl.settings import TesseraSettings
from shardctl.stack.ha.cluster import HACluster
from shardctl.stack.manager import Stack
from shardctl.store import FeatureStore
from shardctl.store.writer import FeatureRow
from testkit.ha.drill import wait_healthy
from testkit.serving import ScorerProcess, service_env
from tests.serving.conftest import (
    BUMP,
    FEATURE_SET,
    N_ENTITIES,
    T0,
    TrainedModels,
    entity_features,
    entity_id,
    seed_models,
    timedelta,
)
from tests.serving.precomputed import Predictions

FAILOVER_WAIT = 90.0  # the kill, Patroni's failover (< 30 s) and the scorer's reconnect


def _write_bumped(store: FeatureStore, entities: list[str], at: timedelta) -> None:
    rows = [FeatureRow(e, T0 + at, entity_features(int(e.split("-")[1]), BUMP)) for e in entities]
    store.write(FEATURE_SET, rows)  # an open store's writer retries a batch on the new primary


def _following(scorer: ScorerProcess) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{scorer.port}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.req("JTBD-02.scorer-failover")
def test_the_scorer_follows_the_new_primary_after_a_hard_kill(
    ha_stack: Stack, cluster: HACluster, trained: TrainedModels, tmp_path: Path
) -> None:
    settings = TesseraSettings(**json.loads(ha_stack.settings_file.read_text()))
    model = seed_models(settings, trained)[0]
    predictions = Predictions(settings.shard_dsns(), listen=False)
    scorer = ScorerProcess(service_env(ha_stack.settings_file, None), free_port(), tmp_path / "scorer.log")
    member = None
    store = FeatureStore.open(settings)  # open before the kill: opening needs a primary
    try:
        scorer.wait_ready("/readyz", timeout=120)
        assert predictions.wait_current(model, [entity_id(i) for i in range(N_ENTITIES)])
        before = [entity_id(i) for i in range(0, 10)]
        _write_bumped(store, before, timedelta(days=1))
        assert predictions.wait_current(model, before)

        old = leader(shard_members(0, cluster.api_urls(0)))
        assert old is not None
        member = cluster.member(old.name)
        member.kill()  # SIGKILL to the primary's Patroni and Postgres
        after = [entity_id(i) for i in range(10, 20)]
        _write_bumped(store, after, timedelta(days=1))  # lands on the new primary
        new = leader(shard_members(0, cluster.api_urls(0)))
        assert new is not None, "no leader after the kill"
        assert new.name != old.name, "no failover happened"

        assert predictions.wait_current(model, after, timeout=FAILOVER_WAIT), scorer.log_tail(3000)
        assert predictions.wait_current(model, before, timeout=5), "predictions scored before the kill were lost"
        assert wait_until(lambda: _following(scorer), 30), scorer.log_tail(3000)
        log = scorer.log.read_text()
        after_kill = log[log.index("reconnecting") :]
        assert "resuming from the saved cursor" in after_kill, after_kill[-3000:]
        assert "catching up" not in after_kill, after_kill[-3000:]
        assert "following again" in after_kill, after_kill[-3000:]
        assert log.count("change log round failed") <= 12, "a failing server is logged once, then every 10 s"
    finally:
        store.close()
        scorer.stop()
        predictions.close()
        if member is not None:
            cluster.start_member(member)
        wait_healthy(cluster, 0)
