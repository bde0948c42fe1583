"""The model lifecycle on the real catalog: promotions as compare-and-set (two racing promotions, exactly one
wins), their records with both figures, rollback through the promotion history, and `shardctl models`."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from shardctl.cli import main
from shardctl.store.promotion import (
    PROMOTE,
    ROLLBACK,
    Evaluation,
    NothingToRollBackError,
    Promotion,
    PromotionConflictError,
    PromotionError,
    PromotionRefusedError,
    beats,
    manual_promotion_evidence,
    promotion_stack,
    rollback_target,
)
from shardctl.store.registry import ModelRegistry, ModelVersion

RACE_ROUNDS = 12


@pytest.fixture
def registry(settings) -> ModelRegistry:
    reg = ModelRegistry(settings.catalog_dsn)
    reg.ensure_schema()
    return reg


@pytest.fixture
def name() -> str:
    return f"churn-{uuid.uuid4().hex[:8]}"


def _register(reg: ModelRegistry, name: str, tmp: Path | None = None, auc: float = 0.7) -> ModelVersion:
    """A version whose artifact files exist when ``tmp`` is given (the CLI's checks look for them)."""
    mojo, jar = Path(f"/nonexistent/{name}/model.zip"), Path(f"/nonexistent/{name}/h2o-genmodel.jar")
    if tmp is not None:
        mojo, jar = tmp / f"{uuid.uuid4().hex}.zip", tmp / "h2o-genmodel.jar"
        mojo.write_bytes(b"PK")
        jar.write_bytes(b"PK")
    return reg.register(
        name,
        algorithm="h2o-gbm",
        feature_set="customer_v1",
        features=["f"],
        metrics={"auc": auc, "logloss": 0.5},
        artifact_path=str(mojo),
        genmodel_jar=str(jar),
    )


def _evaluate(reg: ModelRegistry, name: str, candidate: int, serving: int | None, cand: float, serv: float | None):
    return reg.record_evaluation(
        name,
        candidate=candidate,
        serving=serving,
        metric="auc",
        candidate_score=cand,
        serving_score=serv,
        margin=0.0,
        passed=beats("auc", cand, serv),
        rows=100,
    )


@pytest.mark.req("PLAT.model-promotion")
def test_a_promotion_is_a_compare_and_set_recorded_with_both_figures(registry: ModelRegistry, name: str) -> None:
    for _ in range(3):
        _register(registry, name)
    first = registry.promote(name, 1, replaces=None, evaluation=_evaluate(registry, name, 1, None, 0.71, None))
    assert (first.version, first.replaces, first.candidate_score, first.serving_score) == (1, None, 0.71, None)
    evaluation = _evaluate(registry, name, 2, 1, 0.74, 0.71)
    second = registry.promote(name, 2, replaces=1, evaluation=evaluation)
    assert (second.replaces, second.metric, second.candidate_score, second.serving_score) == (1, "auc", 0.74, 0.71)
    with pytest.raises(PromotionConflictError, match="serves version 2, not version 1"):
        registry.promote(name, 3, replaces=1)  # names a version that no longer serves
    with pytest.raises(PromotionError, match="already serves"):
        registry.promote(name, 2, replaces=2)
    assert registry.current(name).version == 2
    assert [(p.version, p.replaces, p.action) for p in registry.promotions(name)] == [
        (1, None, PROMOTE),
        (2, 1, PROMOTE),
    ]


@pytest.mark.req("PLAT.model-concurrent-promotion")
def test_two_promotions_racing_against_the_same_serving_version_exactly_one_wins(
    registry: ModelRegistry, name: str
) -> None:
    """Each round, two threads released together promote different versions, both replacing the one serving:
    one wins, the other fails with a conflict, and the alias and the record agree on the winner."""
    _register(registry, name)
    registry.promote(name, 1, replaces=None)
    serving = 1
    for _ in range(RACE_ROUNDS):
        contenders = [_register(registry, name).version for _ in range(2)]
        barrier = threading.Barrier(2)
        won: list[int] = []
        lost: list[BaseException] = []

        def race(version: int, expected: int = serving, barrier=barrier, won: list[int] = won, lost=lost) -> None:
            barrier.wait()
            try:
                registry.promote(name, version, replaces=expected)
                won.append(version)
            except PromotionConflictError as exc:
                lost.append(exc)

        threads = [threading.Thread(target=race, args=(v,)) for v in contenders]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert (len(won), len(lost)) == (1, 1), (won, lost)
        assert registry.current(name).version == won[0]
        last = registry.promotions(name)[-1]
        assert (last.version, last.replaces) == (won[0], serving)
        serving = won[0]
    assert len(registry.promotions(name)) == 1 + RACE_ROUNDS


@pytest.mark.req("PLAT.model-rollback")
def test_rollback_walks_back_through_the_promoted_versions(registry: ModelRegistry, name: str) -> None:
    for _ in range(3):
        _register(registry, name)
    with pytest.raises(NothingToRollBackError, match="nothing is serving"):
        registry.rollback(name)
    registry.promote(name, 1, replaces=None)
    with pytest.raises(NothingToRollBackError, match="only version ever promoted"):
        registry.rollback(name)
    registry.promote(name, 2, replaces=1)
    registry.promote(name, 3, replaces=2)
    back = registry.rollback(name)
    assert (back.version, back.replaces, back.action) == (2, 3, ROLLBACK)
    assert registry.rollback(name).version == 1
    assert registry.current(name).version == 1
    with pytest.raises(NothingToRollBackError):
        registry.rollback(name)


def _record(version: int, replaces: int | None, action: str = PROMOTE) -> Promotion:
    return Promotion(0, "m", "production", version, replaces, action, False, None, None, None, datetime.now(UTC), "")


def _evaluation(candidate: int, serving: int | None, passed: bool) -> Evaluation:
    return Evaluation(0, "m", candidate, serving, "auc", 0.7, 0.6, 0.0, passed, 10, datetime.now(UTC), {})


def test_promotion_rules() -> None:
    assert beats("auc", 0.7, None)
    assert beats("auc", 0.71, 0.70)
    assert not beats("auc", 0.70, 0.70)  # equal never replaces
    assert not beats("auc", 0.705, 0.70, margin=0.01)
    assert beats("logloss", 0.40, 0.45)  # lower is better
    assert not beats("logloss", 0.45, 0.40)
    with pytest.raises(ValueError, match="unknown promotion metric"):
        beats("accuracy", 0.9, 0.8)
    history = [_record(1, None), _record(2, 1), _record(3, 2), _record(2, 3, ROLLBACK), _record(4, 2)]
    assert promotion_stack(history) == [1, 2, 4]
    assert rollback_target(history, 4) == 2
    with pytest.raises(NothingToRollBackError, match="not promoted through"):
        rollback_target(history, 3)
    assert manual_promotion_evidence(5, None, []) is None
    with pytest.raises(PromotionRefusedError, match="never compared with version 4"):
        manual_promotion_evidence(5, 4, [_evaluation(5, 2, True)])
    with pytest.raises(PromotionRefusedError, match="does not beat"):
        manual_promotion_evidence(5, 4, [_evaluation(5, 4, True), _evaluation(5, 4, False)])
    assert manual_promotion_evidence(5, 4, [_evaluation(5, 4, True)]).passed


@given(st.lists(st.one_of(st.integers(1, 6), st.just(ROLLBACK)), max_size=30))
def test_rollback_returns_to_the_version_served_before_the_newest_promotion_still_standing(ops) -> None:
    """Against a model of the history (a list of the versions each standing promotion put in place): any mix of
    promotions and rollbacks, replayed as records, gives the same serving version and rollback target."""
    history: list[Promotion] = []
    standing: list[int] = []
    for op in ops:
        serving = standing[-1] if standing else None
        if op == ROLLBACK:
            if len(standing) < 2:
                with pytest.raises(NothingToRollBackError):
                    rollback_target(history, serving)
                continue
            target = rollback_target(history, serving)
            assert target == standing[-2]
            history.append(_record(target, serving, ROLLBACK))
            standing.pop()
        elif op != serving:
            history.append(_record(op, serving))
            standing.append(op)
        assert promotion_stack(history) == standing


def _cli(settings, *args: str):
    env = {"TESSERA_CATALOG_DSN": settings.catalog_dsn}
    return CliRunner().invoke(main, ["models", *args], env=env)


@pytest.mark.req("PLAT.model-cli")
def test_models_cli_lists_shows_promotes_and_rolls_back(
    registry: ModelRegistry, name: str, settings, tmp_path: Path
) -> None:
    for auc in (0.70, 0.72, 0.69):
        _register(registry, name, tmp_path, auc)
    promoted = _cli(settings, "--model", name, "promote", "1")
    assert promoted.exit_code == 0, promoted.output
    assert "version 1 serves now" in promoted.output
    assert "nothing served before" in promoted.output
    _evaluate(registry, name, 2, 1, 0.72, 0.70)
    promoted = _cli(settings, "--model", name, "promote", "2", "--json")
    assert promoted.exit_code == 0, promoted.output
    record = json.loads(promoted.output)
    assert (record["version"], record["replaces"], record["candidate_score"], record["serving_score"]) == (
        2,
        1,
        0.72,
        0.70,
    )
    listed = json.loads(_cli(settings, "--model", name, "list", "--json").output)
    assert listed["serving"] == 2
    assert [(v["version"], v["serving"]) for v in listed["versions"]] == [(1, False), (2, True), (3, False)]
    assert listed["versions"][0]["last_promoted_at"]
    assert listed["versions"][2]["last_promoted_at"] is None
    table = _cli(settings, "--model", name, "list").output
    assert "* serving: version 2" in table
    assert "0.7200" in table
    shown = json.loads(_cli(settings, "--model", name, "show", "2", "--json").output)
    assert shown["evaluations"][0]["against"] == 1
    assert shown["evaluations"][0]["passed"] is True
    assert [p["action"] for p in shown["promotions"]] == ["promote"]
    assert "beats version 1" in _cli(settings, "--model", name, "show", "2").output
    rolled = _cli(settings, "--model", name, "rollback")
    assert rolled.exit_code == 0, rolled.output
    assert "version 1 serves now" in rolled.output
    assert "rollback, replaces version 2" in rolled.output
    assert registry.current(name).version == 1


@pytest.mark.req("PLAT.model-cli")
def test_models_cli_bad_input_is_one_line_and_a_non_zero_exit(
    registry: ModelRegistry, name: str, settings, tmp_path: Path
) -> None:
    for auc in (0.70, 0.72, 0.69):
        _register(registry, name, tmp_path, auc)
    _register(registry, name)  # version 4: its artifacts are not on disk

    def fails(message: str, *args: str) -> None:
        result = _cli(settings, "--model", name, *args)
        assert result.exit_code != 0, (args, result.output)
        assert "Traceback" not in result.output
        lines = result.output.strip().splitlines()
        assert message in lines[-1], (args, result.output)
        assert [line for line in lines if "Error" in line] == [lines[-1]], result.output  # one line of error

    fails("nothing to roll back", "rollback")
    fails("has no version 99", "show", "99")
    fails("has no version 99", "promote", "99")
    fails("serves nothing, not version 3", "promote", "1", "--replaces", "3")
    assert _cli(settings, "--model", name, "promote", "1").exit_code == 0
    fails("nothing to roll back to", "rollback")
    fails("never compared with version 1", "promote", "3")
    fails("serves version 1, not nothing", "promote", "2", "--replaces", "0")
    fails("artifacts are missing", "promote", "4")
    fails("already serves", "promote", "1")
    fails("is not a valid integer", "promote", "zero")
    _evaluate(registry, name, 3, 1, 0.69, 0.70)
    fails("does not beat version 1", "promote", "3")
    assert registry.current(name).version == 1  # none of it changed anything
    forced = _cli(settings, "--model", name, "promote", "3", "--force", "--note", "hotfix")
    assert forced.exit_code == 0, forced.output
    assert "promote, forced, replaces version 1" in forced.output
    assert registry.promotions(name)[-1].note == "hotfix"
