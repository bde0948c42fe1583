"""The precomputing scorer against real servers: a stack of its own (2 servers, Redis), the serving tests' two
trained MOJOs, ``python -m serving.scorer`` and ``python -m serving`` as an operator starts them.

Waits are event-driven: the scorer announces each committed batch on its server (``WRITTEN_CHANNEL``), and a
waiter re-checks the predictions table at each announcement, never on a timer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest
import redis

from serving.cache import PredictionCache, ScorerEpoch
from serving.freshness import now_ms
from shardctl.process import free_port, pid_alive, wait_until
from shardctl.redis_acl import ADMIN_USER
from shardctl.settings import TesseraSettings
from shardctl.stack.manager import Stack
from shardctl.store import FeatureStore
from shardctl.store.hashing import logical_shard_for
from shardctl.store.predictions import CURSOR_TABLE, PREDICTION_TABLE
from shardctl.store.registry import ModelRegistry, ModelVersion
from shardctl.store.writer import FeatureRow
from testkit.serving import REPO, PredictionService, ScorerProcess, create_api_key
from testkit.serving import service_env as launcher_env
from tests.serving.conftest import (
    BUMP,
    FEATURE_SET,
    N_ENTITIES,
    T0,
    VERSION_TTL,
    TrainedModels,
    entity_features,
    entity_id,
    seed_models,
    service_env,
    timedelta,
    wait_for,
)
from tests.serving.precomputed import WAIT, Predictions

TOLERANCE = 1e-6
# Which entities each test changes or asks for, so no test finds another's answers in the caches.
WRITE_THEN_SERVE = range(0, 5)
TAGGED_OLDER = range(10, 18)
KILLED_MID_BATCH = range(20, 80)
PROMOTION_TRAFFIC = range(100, 120)
AFTER_RESCORE = range(90, 100)
FILLED_CACHE = range(80, 90)


@dataclass
class ScorerStack:
    stack: Stack
    settings: TesseraSettings
    models: list[ModelVersion]
    trained: TrainedModels
    service: PredictionService
    predictions: Predictions
    logs: Path
    scorer: ScorerProcess | None = None
    started: list[ScorerProcess] = field(default_factory=list)

    def scorer_env(self, **extra: str) -> dict[str, str]:
        return launcher_env(self.stack.settings_file, None, **extra)

    def start_scorer(self, name: str = "scorer", module: str = "serving.scorer", **extra: str) -> ScorerProcess:
        port = free_port()
        scorer = ScorerProcess(self.scorer_env(**extra), port, self.logs / f"{name}.log", module)
        self.started.append(scorer)
        scorer.wait_ready("/readyz")
        self.scorer = scorer
        return scorer

    def expected(self, model: ModelVersion, entity: str, bumped: bool = False) -> float:
        n = next(i for i, m in enumerate(self.models) if m.version == model.version)
        return (self.trained.bumped if bumped else self.trained.expected)[n][entity]

    def predict(self, entities: list[str]) -> dict:
        response = self.service.client.post("/v1/predictions", json={"entity_ids": entities})
        assert response.status_code == 200, response.text
        return response.json()

    def redis_admin(self) -> redis.Redis:
        secrets = self.stack.layout.secrets
        url = self.settings.redis_url or ""
        return redis.Redis.from_url(url, username=ADMIN_USER, password=secrets.redis_password(ADMIN_USER))

    def cached_version(self, entity: str) -> int | None:
        """The feature version serving's cache holds for ``entity`` (None: no entry)."""
        with self.redis_admin() as admin:
            raw = admin.get(PredictionCache.version_key(FEATURE_SET, entity))
        return int(raw.split(b":")[0]) if raw else None

    def forget_cached(self, entities: list[str]) -> None:
        """Drop the entities' entries from serving's cache (as an eviction would): their next answer reads the
        shard."""
        with self.redis_admin() as admin:
            admin.delete(*(PredictionCache.version_key(FEATURE_SET, e) for e in entities))

    def write_bumped(self, entities: list[str], at: timedelta) -> None:
        with FeatureStore.open(self.settings) as store:
            rows = [FeatureRow(e, T0 + at, entity_features(int(e.split("-")[1]), BUMP)) for e in entities]
            store.write(FEATURE_SET, rows)


@pytest.fixture(scope="module")
def scorer_stack(tmp_path_factory: pytest.TempPathFactory, trained: TrainedModels) -> Iterator[ScorerStack]:
    """Its own stack (the tests promote, kill the scorer and rewrite features), features of every entity, both
    models registered and the first promoted, then a scorer and a prediction service."""
    root = tmp_path_factory.mktemp("scorer_stack")
    logs = tmp_path_factory.mktemp("scorer_logs")
    stack = Stack(root)
    stack.up(shards=2, base_port=free_port(block=10))
    handle = None
    try:
        settings = TesseraSettings(**json.loads(stack.settings_file.read_text()))
        models = seed_models(settings, trained)
        predictions = Predictions(settings.shard_dsns())
        port = free_port()
        env = service_env(settings, settings.redis_url or "", port, TESSERA_SERVING__SCORER_BEHIND_SECONDS="3")
        api_key = create_api_key(settings.catalog_dsn or "", "scorer-tests")
        with PredictionService(env, port, logs / "serving.log", api_key=api_key) as service:
            service.wait_ready("/readyz")
            handle = ScorerStack(stack, settings, models, trained, service, predictions, logs)
            handle.start_scorer()
            yield handle
    finally:
        if handle is not None:
            for scorer in handle.started:
                scorer.stop()
            handle.predictions.close()
        failed = stack.down(purge=True)
        assert not failed, f"servers left running: {failed}"


def test_the_scorer_catches_up_every_entity_of_a_new_server(scorer_stack: ScorerStack) -> None:
    """Started with no cursor, the scorer scores every stored entity once, with the promoted model."""
    model = scorer_stack.models[0]
    every = [entity_id(i) for i in range(N_ENTITIES)]
    assert scorer_stack.predictions.wait_current(model, every)
    assert "catching up (no saved cursor)" in scorer_stack.scorer.log_tail(20_000)


@pytest.mark.req("JTBD-02.precomputed-on-change")
@pytest.mark.req("JTBD-02.precomputed-cache")
def test_a_feature_write_is_followed_by_a_served_prediction_of_the_new_features(scorer_stack: ScorerStack) -> None:
    model = scorer_stack.models[0]
    entities = [entity_id(i) for i in WRITE_THEN_SERVE]
    assert scorer_stack.predictions.wait_current(model, [entity_id(i) for i in range(N_ENTITIES)])
    scored_before = scorer_stack.service.metric("tessera_scored_rows_total")
    hits_before = scorer_stack.service.metric("tessera_cache_lookups_total", result="hit", tier="redis")
    precomputed_before = scorer_stack.service.metric("tessera_precomputed_rows_total")
    assert scorer_stack.scorer is not None
    cache_writes_before = scorer_stack.scorer.metric("tessera_scorer_cache_writes_total")
    scorer_stack.write_bumped(entities, timedelta(days=1))
    # Event-driven: woken by each batch the scorer commits, until all five are current for their new features.
    assert scorer_stack.predictions.wait_current(model, entities)
    # The scorer puts each prediction into serving's cache too, right after the commit (again from a fresh read
    # when serving's consumer marked the change before the scorer's write landed).
    scorer = scorer_stack.scorer
    assert wait_for(
        lambda: scorer.metric("tessera_scorer_cache_writes_total") - cache_writes_before >= len(entities), timeout=WAIT
    )
    body = scorer_stack.predict(entities)
    for item in body["items"]:
        prediction = item["prediction"]
        assert prediction["model_version"] == model.version
        assert prediction["feature_version"] == 2  # computed from the write above
        assert prediction["score"] == pytest.approx(
            scorer_stack.expected(model, item["entity_id"], bumped=True), abs=TOLERANCE
        )
    # Looked up, never scored: each answer was the scorer's prediction, found in Redis, or read from the table
    # with the features when serving's consumer marked the change after the scorer's entry landed (under load the
    # consumer can lag the scorer: its marker then sends that one request to the shard).
    hits = scorer_stack.service.metric("tessera_cache_lookups_total", result="hit", tier="redis") - hits_before
    from_table = scorer_stack.service.metric("tessera_precomputed_rows_total") - precomputed_before
    assert hits + from_table == len(entities), (hits, from_table)
    assert scorer_stack.service.metric("tessera_scored_rows_total") == scored_before
    # Each worker reads the scorer's cursor about once a second: "absent" until it has read the first one saved.
    ready: dict = {}

    def scorer_known() -> bool:
        ready.update(scorer_stack.service.client.get("/readyz").json())
        return ready["scorer"] != "absent"

    wait_until(scorer_known, 10)
    assert ready["scorer"] == "current", ready


@pytest.mark.req("JTBD-02.precomputed-tagged")
def test_a_prediction_tagged_with_other_features_or_another_model_is_never_served(scorer_stack: ScorerStack) -> None:
    """Rows planted in the predictions table with a wrong tag (an older feature version, another digest of the
    features, another model version) are never answered; the same plant correctly tagged is (so the read does
    look at the table). Each case asks for entities nobody asked for before, their entries dropped from serving's
    cache (the scorer put the real predictions there): the answer comes from the table."""
    model = scorer_stack.models[0]
    fake = 0.123456
    entities = [entity_id(i) for i in TAGGED_OLDER]
    assert scorer_stack.predictions.wait_current(model, [entity_id(i) for i in range(N_ENTITIES)])
    scorer_stack.write_bumped(entities, timedelta(days=2))  # feature version 2; the scorer writes its prediction
    assert scorer_stack.predictions.wait_current(model, entities)
    plants = {
        "an older feature version": "feature_version = feature_version - 1",
        "another digest of the features": "feature_digest = md5('other features')::uuid",
        "another model version": f"model_version = {scorer_stack.models[1].version}",
    }
    pairs = [entities[i : i + 2] for i in range(0, len(entities), 2)]
    for (what, change), pair in zip(plants.items(), pairs, strict=False):
        _plant(pair, scorer_stack, f"score = {fake}, {change}")
        scorer_stack.forget_cached(pair)
        for item in scorer_stack.predict(pair)["items"]:
            score = item["prediction"]["score"]
            assert score != pytest.approx(fake), f"served a prediction tagged with {what}"
            assert score == pytest.approx(scorer_stack.expected(model, item["entity_id"], bumped=True), abs=TOLERANCE)
    # The control: the same plant with every tag right is what the service answers.
    control = pairs[len(plants)]
    _plant(control, scorer_stack, f"score = {fake}")
    scorer_stack.forget_cached(control)
    assert [item["prediction"]["score"] for item in scorer_stack.predict(control)["items"]] == [pytest.approx(fake)] * 2


def _plant(entities: list[str], scorer_stack: ScorerStack, assignments: str) -> None:
    for dsn in scorer_stack.settings.shard_dsns():
        with psycopg.connect(dsn) as conn:
            conn.execute(f"UPDATE {PREDICTION_TABLE} SET {assignments} WHERE entity_id = ANY(%s)", (entities,))


@pytest.mark.req("JTBD-02.precomputed-cache")
def test_the_scorer_refills_servings_cache_and_vouches_for_it_only_while_it_keeps_up(scorer_stack: ScorerStack) -> None:
    """Redis loses its data: the scorer notices at its next round and copies every current prediction back. A worker
    that follows no change log (``invalidation=time``, started after that copy) answers those entities from Redis
    long past its own staleness bound, because the scorer's marker says every change is reflected; once the scorer
    stops and its marker ages past the bound, the same worker reads the shard instead."""
    model = scorer_stack.models[0]
    entities = [entity_id(i) for i in FILLED_CACHE]
    first, rest = entities[:5], entities[5:]
    assert scorer_stack.predictions.wait_current(model, entities)
    marker = PredictionCache.scorer_key(FEATURE_SET)
    with scorer_stack.redis_admin() as admin:
        assert admin.exists(marker)
        admin.flushdb()
        assert wait_for(lambda: bool(admin.exists(marker)), timeout=WAIT), "the scorer did not start a new epoch"
    assert all(scorer_stack.cached_version(e) == 1 for e in entities)

    port = free_port()
    env = service_env(
        scorer_stack.settings, scorer_stack.settings.redis_url or "", port, TESSERA_SERVING__INVALIDATION="time"
    )
    api_key = create_api_key(scorer_stack.settings.catalog_dsn or "", "scorer-tests-time")
    with PredictionService(env, port, scorer_stack.logs / "serving-time.log", api_key=api_key) as late:
        late.wait_ready("/readyz")
        with scorer_stack.redis_admin() as admin:
            read_ms = int(admin.get(PredictionCache.version_key(FEATURE_SET, first[0])).split(b":")[1])
        # Past the worker's own bound for an entry read then: only the scorer's epoch can vouch for it now.
        assert wait_until(lambda: now_ms() - read_ms > VERSION_TTL * 1000 + 200, 10)

        def answer(batch: list[str]) -> tuple[list[dict], float, float]:
            hits = late.metric("tessera_cache_lookups_total", result="hit", tier="redis")
            table = late.metric("tessera_precomputed_rows_total")
            response = late.client.post("/v1/predictions", json={"entity_ids": batch})
            assert response.status_code == 200, response.text
            items = response.json()["items"]
            for item in items:
                assert item["prediction"]["score"] == pytest.approx(
                    scorer_stack.expected(model, item["entity_id"]), abs=TOLERANCE
                )
            return (
                items,
                late.metric("tessera_cache_lookups_total", result="hit", tier="redis") - hits,
                late.metric("tessera_precomputed_rows_total") - table,
            )

        items, redis_hits, from_table = answer(first)
        assert all(item["prediction"]["cached"] for item in items), items
        assert (redis_hits, from_table) == (len(first), 0)
        assert scorer_stack.scorer is not None
        scorer_stack.scorer.stop()
        with scorer_stack.redis_admin() as admin:
            epoch = ScorerEpoch.decode(admin.get(marker))
        assert epoch is not None
        assert wait_until(lambda: now_ms() - epoch.caught_up_ms > VERSION_TTL * 1000 + 200, 10)
        items, redis_hits, from_table = answer(rest)
        assert not any(item["prediction"]["cached"] for item in items), items
        assert (redis_hits, from_table) == (0, len(rest))
    scorer_stack.start_scorer("scorer-after-refill")


@pytest.mark.req("JTBD-02.scorer-resumes")
def test_a_scorer_killed_mid_batch_loses_nothing_and_resumes_from_its_cursor(scorer_stack: ScorerStack) -> None:
    model = scorer_stack.models[0]
    entities = [entity_id(i) for i in KILLED_MID_BATCH]
    assert scorer_stack.predictions.wait_current(model, entities)
    assert scorer_stack.scorer is not None
    scorer_stack.scorer.stop()
    # A scorer whose batches of 10 take a while (each scoring call repeated in the JVM), so the kill lands inside
    # the round: some batches committed, the rest not, the cursor not saved.
    slow = scorer_stack.start_scorer(
        "slow-scorer",
        "tests.serving.slow_scorer",
        TESSERA_SCORER__BATCH_SIZE="10",
        SLOW_SCORING_REPEAT="3000",
    )
    after = scorer_stack.predictions.batches
    scorer_stack.write_bumped(entities, timedelta(days=3))
    assert scorer_stack.predictions.wait_batch(after)
    os.kill(slow.pid, signal.SIGKILL)
    slow.proc.wait(timeout=10)
    done = scorer_stack.predictions.current(model, entities)
    assert 0 < len(done) < len(entities), f"the kill did not land mid-round ({len(done)} of {len(entities)} done)"

    # The scorer is down: the service answers every entity from its new features (scored on demand), and says so.
    body = scorer_stack.predict(entities)
    for item in body["items"]:
        assert item["prediction"]["score"] == pytest.approx(
            scorer_stack.expected(model, item["entity_id"], bumped=True), abs=TOLERANCE
        )
    assert wait_for(lambda: scorer_stack.service.client.get("/readyz").json().get("scorer") in ("behind", "down"))
    ready = scorer_stack.service.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["scorer_lag_seconds"] > 3, ready.text
    # The gauge is set at each read of the lag (about once a second): it follows.
    assert wait_for(lambda: scorer_stack.service.metric("tessera_scorer_lag_seconds") > 3)

    # Restarted, it resumes from the saved cursor (no catch-up) and scores what the killed one had not.
    restarted = scorer_stack.start_scorer("scorer-restarted")
    assert scorer_stack.predictions.wait_current(model, entities)
    log = restarted.log_tail(20_000)
    assert "resuming from the saved cursor" in log, log
    assert "catching up" not in log, log
    assert restarted.metric("tessera_scorer_scored_rows_total", reason="change") >= len(entities) - len(done)
    assert wait_for(lambda: scorer_stack.service.client.get("/readyz").json().get("scorer") == "current")


@pytest.mark.req("JTBD-02.precomputed-promotion")
def test_a_promotion_mid_traffic_never_serves_the_old_model_afterwards(scorer_stack: ScorerStack) -> None:
    old, new = scorer_stack.models
    registry = ModelRegistry(scorer_stack.settings.catalog_dsn)
    assert registry.current(scorer_stack.settings.model_name).version == old.version
    assert scorer_stack.predictions.wait_current(old, [entity_id(i) for i in PROMOTION_TRAFFIC])
    batch = [entity_id(i) for i in PROMOTION_TRAFFIC]
    answers: list[tuple[float, float, str | None, dict[str, float], int]] = []
    stop = threading.Event()

    def client() -> None:
        service = scorer_stack.service
        with httpx.Client(base_url=service.url, timeout=10, headers=service.auth_headers) as h:
            while not stop.is_set():
                sent = time.monotonic()
                response = h.post("/v1/predictions", json={"entity_ids": batch})
                body = response.json() if response.status_code == 200 else {}
                scores = {i["entity_id"]: i["prediction"]["score"] for i in body.get("items", [])}
                answers.append((sent, time.monotonic(), body.get("model"), scores, response.status_code))

    threads = [threading.Thread(target=client) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        assert wait_for(lambda: sum(1 for a in answers if a[2] == old.key) >= 20, timeout=WAIT)
        registry.promote(scorer_stack.settings.model_name, new.version, replaces=old.version, note="scorer test")
        assert wait_for(lambda: sum(1 for a in answers if a[2] == new.key) >= 30, timeout=WAIT)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert all(status == 200 for *_, status in answers)
    switched = min(received for _, received, key, _, _ in answers if key == new.key)
    after = [key for sent, _, key, _, _ in answers if sent > switched]
    assert after, "no request was sent after the switch"
    assert set(after) == {new.key}, "a request sent after the switch was answered by the old model"
    for _, _, key, scores, _ in answers:  # each answer computed by the model it names
        model = new if key == new.key else old
        for entity, score in scores.items():
            assert score == pytest.approx(scorer_stack.expected(model, entity), abs=TOLERANCE)

    # The job's pass: every entity re-scored with the new model; then misses are lookups again.
    rescored = _rescore_through_dagster(scorer_stack)
    assert rescored["model_version"] == new.version
    assert rescored["rows"] > 0
    assert rescored["rows_per_second"] > 0
    assert scorer_stack.predictions.wait_current(new, [entity_id(i) for i in range(N_ENTITIES)], timeout=5)
    scored_before = scorer_stack.service.metric("tessera_scored_rows_total")
    entities = [entity_id(i) for i in AFTER_RESCORE]
    body = scorer_stack.predict(entities)
    assert {item["prediction"]["model"] for item in body["items"]} == {new.key}
    assert scorer_stack.service.metric("tessera_scored_rows_total") == scored_before
    assert _rescore(scorer_stack)["rows"] == 0  # nothing left: a re-run continues where a stopped one ended


def _rescore_through_dagster(scorer_stack: ScorerStack) -> dict:
    """The `rescore_predictions` job's asset, materialized as the sensor's run would: the pass runs through Dagster
    Pipes, its progress lands in the run's log and its figures in the materialization's metadata."""
    import dagster as dg

    from orchestration.defs.predictions import precomputed_predictions
    from orchestration.resources import ScorerResource

    instance = dg.DagsterInstance.ephemeral()
    resources = {
        "scorer": ScorerResource(settings_file=str(scorer_stack.stack.settings_file)),
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
    }
    result = dg.materialize([precomputed_predictions], resources=resources, instance=instance)
    assert result.success
    [materialization] = result.asset_materializations_for_node("precomputed_predictions")
    messages = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any("re-scored" in m and "rows/s" in m for m in messages), messages
    return {key: value.value for key, value in materialization.metadata.items()}


def _rescore(scorer_stack: ScorerStack) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "serving.scorer", "rescore"],
        cwd=REPO,
        env=scorer_stack.scorer_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_cursor_is_kept_per_scorer_on_every_server(scorer_stack: ScorerStack) -> None:
    for dsn in scorer_stack.settings.shard_dsns():
        with psycopg.connect(dsn) as conn:
            rows = conn.execute(f"SELECT scorer, now() - caught_up_at < interval '30 s' FROM {CURSOR_TABLE}").fetchall()
        assert rows == [("scorer", True)]


@pytest.mark.req("JTBD-02.scorer-resharding")
def test_a_new_shard_map_epoch_makes_the_scorer_catch_up_its_placement(scorer_stack: ScorerStack) -> None:
    """What a resharding cutover leaves: entities on a server with no prediction there (the migration copies
    features, not predictions) and predictions of logical shards now placed elsewhere. A new epoch (here the same
    placement, published again) makes the scorer delete the misplaced rows and score what its servers lack."""
    from shardctl.store.hashing import TOTAL_LOGICAL_SHARDS
    from shardctl.store.shardmap import ShardMapStore

    model = ModelRegistry(scorer_stack.settings.catalog_dsn).current(scorer_stack.settings.model_name)
    entities = [entity_id(i) for i in AFTER_RESCORE]
    assert scorer_stack.predictions.wait_current(model, entities)
    maps = ShardMapStore(scorer_stack.settings.catalog_dsn)
    current = maps.current()
    dsns = scorer_stack.settings.shard_dsns()
    elsewhere = next(shard for shard in range(TOTAL_LOGICAL_SHARDS) if current.placement[shard] != 0)
    for dsn in dsns:
        with psycopg.connect(dsn) as conn:
            conn.execute(f"DELETE FROM {PREDICTION_TABLE} WHERE entity_id = ANY(%s)", (entities,))
    with psycopg.connect(dsns[0]) as conn:  # a prediction of a logical shard server 0 does not hold
        conn.execute(
            f"INSERT INTO {PREDICTION_TABLE} (logical_shard, entity_id, feature_set, model_name, model_version, "
            "feature_version, feature_digest, score) VALUES (%s, 'ghost', %s, %s, %s, 1, md5('x')::uuid, 0.5)",
            (elsewhere, FEATURE_SET, model.model_name, model.version),
        )
    assert scorer_stack.predictions.current(model, entities) == set()
    placement = {shard: current.servers[current.placement[shard]] for shard in range(TOTAL_LOGICAL_SHARDS)}
    maps.publish_placement(placement, expected_epoch=current.epoch, note="scorer test: same placement")
    assert scorer_stack.predictions.wait_current(model, entities)
    with psycopg.connect(dsns[0]) as conn:
        ghosts = conn.execute(f"SELECT count(*) FROM {PREDICTION_TABLE} WHERE entity_id = 'ghost'").fetchone()[0]
    assert ghosts == 0
    assert f"moved from epoch {current.epoch} to {current.epoch + 1}" in scorer_stack.scorer.log_tail(20_000)


@pytest.mark.req("JTBD-02.scorer-resharding")
def test_after_a_real_migration_the_scorer_scores_the_moved_entities_on_their_new_server(
    scorer_stack: ScorerStack,
) -> None:
    """2 -> 1 servers with the migration engine (copy, catch-up, cutover, cleanup) while the scorer and the service
    run: the moved entities' features arrive without predictions, and the scorer, seeing the new epoch, scores
    every one on the server that now holds it; the service answers them with the promoted model throughout."""
    from shardctl.control.migration.engine import MigrationEngine
    from shardctl.store.shardmap import ShardMapStore

    catalog = scorer_stack.settings.catalog_dsn or ""
    model = ModelRegistry(catalog).current(scorer_stack.settings.model_name)
    every = [entity_id(i) for i in range(N_ENTITIES)]
    assert scorer_stack.predictions.wait_current(model, every)
    before = ShardMapStore(catalog).current()
    keep, dsns = before.servers[0], scorer_stack.settings.shard_dsns()
    moved = [e for e in every if before.placement[logical_shard_for(e)] != 0]
    assert moved
    assert len(moved) < len(every)
    engine = MigrationEngine(catalog)
    record = engine.begin([keep])
    engine.run(record.id)
    after = ShardMapStore(catalog).current()
    assert after.epoch > before.epoch
    assert set(after.placement) == {0}
    with psycopg.connect(dsns[1]) as conn:  # cleanup left the source no features of its old shards
        assert conn.execute("SELECT count(*) FROM entity_features").fetchone()[0] == 0
    # Event-driven: woken by each batch the scorer commits, until every moved entity is current on server 0.
    assert scorer_stack.predictions.wait_current(model, moved)
    with psycopg.connect(dsns[0]) as conn:
        on_target = conn.execute(
            f"SELECT count(*) FROM {PREDICTION_TABLE} WHERE entity_id = ANY(%s) AND model_version = %s",
            (moved, model.version),
        ).fetchone()[0]
    assert on_target == len(moved)
    assert f"to {after.epoch})" in scorer_stack.scorer.log_tail(20_000)  # "the shard map moved from epoch ..."
    body = scorer_stack.predict(moved[:20])
    assert {item["prediction"]["model_version"] for item in body["items"]} == {model.version}


@pytest.mark.req("JTBD-02.scorer-stack")
def test_the_stack_starts_its_scorer_by_pid_and_down_stops_it(scorer_stack: ScorerStack) -> None:
    """What `shardctl stack up` does after the servers (unless --no-scorer): the scorer started by PID, shown by
    `status`, following the change logs; `stack down` stops it with the servers. (Last: it stops the stack.)"""
    assert scorer_stack.scorer is not None
    scorer_stack.scorer.stop()  # one scorer per deployment: the stack's replaces the test's
    stack = scorer_stack.stack
    state = stack.start_scorer()
    assert pid_alive(state.scorer_pid)
    assert stack.start_scorer().scorer_pid == state.scorer_pid  # idempotent, as `up` is
    row = next(r for r in stack.status() if r.name == "scorer")
    assert (row.pid, row.port, row.healthy) == (state.scorer_pid, state.scorer_port, True)
    ready = lambda: httpx.get(f"http://127.0.0.1:{state.scorer_port}/readyz", timeout=2).status_code == 200  # noqa: E731
    assert wait_for(_answers(ready), timeout=WAIT), (stack.data_dir / "scorer.log").read_text()[-3000:]
    assert state.scorer_pid in stack.pids()
    scorer_stack.predictions.close()  # its connections are to the servers `down` stops
    assert stack.down() == []
    assert not pid_alive(state.scorer_pid)
    assert stack.pids() == []


def _answers(probe):
    def check() -> bool:
        try:
            return probe()
        except httpx.HTTPError:
            return False

    return check
