"""A promotion and a rollback under a steady request stream, against the running prediction service (real
Granian, shards, Redis, MOJOs): every answer counted, none failed, and each client's answers switch to the new
version once it is loaded and back after the rollback, never flapping, each scored by the model it names."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

import httpx
import pytest
from click.testing import CliRunner

from shardctl.cli import main
from shardctl.store.registry import ModelRegistry
from tests.serving.conftest import entity_id

CLIENTS = 3
BATCH = [entity_id(i) for i in range(50, 60)]
AFTER_SWITCH = 30  # answers to see from a version (across clients) before the next step
WAIT = 60.0


@dataclass
class Stream:
    """Answers of ``CLIENTS`` closed-loop clients; the condition wakes waiters at every answer."""

    url: str
    headers: dict[str, str]  # the API key
    answers: list[list[tuple[int, str | None, dict[str, float]]]] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    changed: threading.Condition = field(default_factory=threading.Condition)
    stop: threading.Event = field(default_factory=threading.Event)

    def client(self, slot: int) -> None:
        with httpx.Client(base_url=self.url, timeout=10, headers=self.headers) as http:
            while not self.stop.is_set():
                try:
                    response = http.post("/v1/predictions", json={"entity_ids": BATCH})
                except httpx.HTTPError as exc:
                    outcome = (0, None, {})
                    self.failures[type(exc).__name__] += 1
                else:
                    body = response.json() if response.status_code == 200 else {}
                    scores = {i["entity_id"]: i["prediction"]["score"] for i in body.get("items", [])}
                    outcome = (response.status_code, body.get("model"), scores)
                    if response.status_code != 200:
                        self.failures[f"HTTP {response.status_code}"] += 1
                with self.changed:
                    self.answers[slot].append(outcome)
                    self.changed.notify_all()

    def count(self, model_key: str) -> int:
        return sum(1 for answers in self.answers for _, key, _ in answers if key == model_key)

    def wait_for_answers(self, model_key: str, at_least: int) -> bool:
        """Block until the stream has answered ``at_least`` times (in all) from ``model_key``."""
        with self.changed:
            return self.changed.wait_for(lambda: self.count(model_key) >= at_least, timeout=WAIT)


@pytest.mark.req("PLAT.model-rollback")
@pytest.mark.req("JTBD-02.hot-swap")
def test_promotion_and_rollback_swap_the_served_model_with_no_failed_request(
    service, serving_stack, trained, models
) -> None:
    _, settings = serving_stack
    registry = ModelRegistry(settings.catalog_dsn)
    before = registry.current(settings.model_name)
    index = {m.key: n for n, m in enumerate(models)}
    old = next(m for m in models if m.version == before.version)
    new = next(m for m in models if m.version != before.version)
    stream = Stream(service.url, service.auth_headers, answers=[[] for _ in range(CLIENTS)])
    clients = [threading.Thread(target=stream.client, args=(slot,)) for slot in range(CLIENTS)]
    for thread in clients:
        thread.start()
    try:
        assert stream.wait_for_answers(old.key, AFTER_SWITCH)
        registry.promote(settings.model_name, new.version, replaces=old.version, note="lifecycle test")
        assert stream.wait_for_answers(new.key, AFTER_SWITCH), "the stream never answered from the promoted model"
        rolled = CliRunner().invoke(
            main,
            ["models", "rollback"],
            env={
                "TESSERA_CATALOG_DSN": settings.catalog_dsn,
                "TESSERA_MODEL_NAME": settings.model_name,
                "TESSERA_DATA_DIR": str(serving_stack[0].data_dir),  # this stack's operator: its credentials
            },
        )
        assert rolled.exit_code == 0, rolled.output
        assert f"version {old.version} serves now" in rolled.output
        old_answers_so_far = stream.count(old.key)
        assert stream.wait_for_answers(old.key, old_answers_so_far + AFTER_SWITCH), "the rollback never served"
    finally:
        stream.stop.set()
        for thread in clients:
            thread.join()

    assert stream.failures == Counter()
    total = sum(len(a) for a in stream.answers)
    assert total == sum(1 for a in stream.answers for status, _, _ in a if status == 200)
    for answers in stream.answers:
        keys = [key for _, key, _ in answers]
        switches = [k for n, k in enumerate(keys) if n == 0 or keys[n - 1] != k]
        # Each client: the old version, then the new one, then the old one again; never back and forth.
        assert switches in ([old.key], [old.key, new.key], [old.key, new.key, old.key]), switches
        for _, key, scores in answers:  # every answer scored by the model it names
            expected = trained.expected[index[key]]
            assert scores == pytest.approx({e: expected[e] for e in BATCH}, abs=1e-6)
    assert registry.current(settings.model_name).version == old.version
    assert service.client.get("/v1/models/current").json()["version"] == old.version
