"""The whole asset graph, in-process, on real shards, a real catalog and a real H2O JVM (10k raw rows)."""

from __future__ import annotations

import zipfile
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from orchestration import cardinality
from orchestration.defs.customer_features import placement_check_result, shard_check_results
from orchestration.feature_engineering import FEATURES
from orchestration.run_graph import run_days
from shardctl.store.hashing import logical_shard_for, shard_for
from shardctl.store.registry import ModelRegistry
from shardctl.store.schema import FEATURE_TABLE
from tests.orchestration.conftest import DAYS, QUIET, ROWS_PER_DAY


def _checks(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def _mat(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    [event] = [m for m in result.get_asset_materialization_events() if m.asset_key.to_user_string() == asset]
    return event.materialization.metadata


@pytest.mark.req("PLAT.features-per-shard")
def test_features_land_on_the_shard_shard_for_names_and_every_shard_check_passes(graph, settings) -> None:
    summary = graph["summary"]
    assert summary.raw_rows == DAYS * ROWS_PER_DAY
    with psycopg.connect(settings.catalog_dsn) as conn:
        entities = [r[0] for r in conn.execute("SELECT DISTINCT entity_id FROM raw_events")]
    expected = {i: sum(1 for e in entities if shard_for(e, 2) == i) for i in (0, 1)}
    assert summary.rows_per_shard == expected  # every raw entity has features, on its own shard
    for i, dsn in enumerate(settings.shard_dsns()):
        with psycopg.connect(dsn) as conn:
            ids = [
                r[0]
                for r in conn.execute(
                    f"SELECT entity_id FROM {FEATURE_TABLE} WHERE feature_set = %s", (settings.feature_set,)
                )
            ]
        assert ids
        assert all(shard_for(e, 2) == i for e in ids)
    for day_result in graph["daily"]:
        checks = _checks(day_result)
        assert set(checks) == {"rows_and_placement"}
        assert all(c.passed for c in checks.values()), [c.description for c in checks.values()]
        meta = _mat(day_result, "customer_features")
        assert meta["shard_0_rows"].value + meta["shard_1_rows"].value == meta["rows"].value > 0
        assert meta["dagster/row_count"].value == meta["rows"].value
        per_shard = {r.data["shard"]: r.data["rows_written"] for r in meta["rows_per_shard"].records}
        assert per_shard == {0: meta["shard_0_rows"].value, 1: meta["shard_1_rows"].value}


@pytest.mark.req("PLAT.training")
def test_model_is_trained_on_the_point_in_time_set_validated_out_of_time_registered_and_promoted(
    graph, settings
) -> None:
    meta = _mat(graph["model"], "churn_model")
    assert 0.5 < meta["auc"].value <= 1.0
    assert meta["out_of_time_auc"].value == meta["auc"].value
    assert 0.5 < meta["latest_state_auc"].value <= 1.0  # the old set's figure, recorded beside it
    assert meta["algorithm"].value == "h2o-gbm"
    assert "out of time" in meta["split"].value
    assert meta["logloss"].value > 0
    assert "| `" in meta["variable_importance"].value  # the Markdown bar chart
    registry = ModelRegistry(settings.catalog_dsn)
    version = registry.get(settings.model_name, meta["model_version"].value)
    assert version.features == list(FEATURES)
    assert version.feature_set == settings.feature_set
    assert version.metrics["auc"] == pytest.approx(meta["auc"].value)
    artifact = Path(version.artifact_path)
    assert artifact.parent == Path(settings.data_dir).absolute() / "models" / settings.model_name / str(version.version)
    assert zipfile.is_zipfile(artifact)
    assert "model.ini" in zipfile.ZipFile(artifact).namelist()
    assert zipfile.is_zipfile(version.genmodel_jar)
    with psycopg.connect(settings.catalog_dsn) as conn:
        per_date = conn.execute("SELECT as_of, count(*) FROM churn_training_set GROUP BY 1 ORDER BY 1").fetchall()
    assert len(per_date) == 4  # as-of days 2, 4, 6, 8: the last validates; the others' 2-day labels end by it
    assert meta["validation_rows"].value == per_date[-1][1]
    assert meta["train_rows"].value == sum(n for _, n in per_date[:-1])
    assert version.metrics["latest_state_auc"] == pytest.approx(meta["latest_state_auc"].value)
    assert graph["summary"].auc == pytest.approx(meta["auc"].value)
    assert "out-of-time AUC" in "\n".join(graph["summary"].lines())
    assert registry.current(settings.model_name).version == version.version
    promotion = _mat(graph["model"], "production_model")
    assert promotion["promoted"].value is True


@pytest.mark.req("JTBD-03.profile")
def test_profile_is_exact_for_small_data_stored_and_shown_as_a_table(graph, settings) -> None:
    meta = _mat(graph["model"], "raw_profile")
    assert meta["method"].value == "exact"
    with psycopg.connect(settings.catalog_dsn) as conn:
        exact = conn.execute("SELECT count(DISTINCT entity_id), count(DISTINCT channel) FROM raw_events").fetchone()
        stored = conn.execute("SELECT profile FROM raw_profiles ORDER BY id DESC LIMIT 1").fetchone()[0]
    assert meta["entity_id_distinct"].value == exact[0]
    table = meta["profile"]
    assert [c.name for c in table.schema.columns] == ["column", "distinct", "null_pct", "top_values"]
    rows = {r.data["column"]: r.data for r in table.records}
    assert rows["channel"]["distinct"] == exact[1]
    keys = {r.data["candidate_key"]: r.data for r in meta["candidate_keys"].records}
    assert keys["entity_id"]["immutable"] is True
    by_name = {c["name"]: c for c in stored["columns"]}
    assert by_name["entity_id"]["distinct"] == exact[0]
    assert {k["column"]: k["mutable_values"] for k in stored["candidates"]}["entity_id"] == 0


@pytest.mark.req("JTBD-03.profile")
def test_approximate_profile_from_merged_sketches_is_within_three_percent(graph, settings) -> None:
    exact = cardinality.profile_raw(settings.catalog_dsn, exact_max_rows=10**9)
    approx = cardinality.profile_raw(settings.catalog_dsn, exact_max_rows=0)
    assert approx.method == "hll"
    for column in ("entity_id", "event_id", "amount", "country"):
        e, a = exact.column(column).distinct, approx.column(column).distinct
        assert abs(a - e) <= 0.03 * e, (column, e, a)


def _run_shard_key(defs, column: str) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def("profile_and_train").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(),
        op_selection=None,
        asset_selection=[dg.AssetKey("shard_key")],
        run_config={"ops": {"shard_key": {"config": {"column": column}}}, **QUIET},
        raise_on_error=False,
    )


@pytest.mark.req("JTBD-03.key")
def test_shard_key_check_passes_for_entity_id_and_fails_on_a_low_cardinality_column(graph, defs) -> None:
    assert _checks(graph["model"])["shard_key_is_valid"].passed
    result = _run_shard_key(defs, "channel")
    check = _checks(result)["shard_key_is_valid"]
    assert not check.passed
    assert "`channel` has 4 distinct values, fewer than the 100 needed for 2 shards" in check.description


@pytest.mark.req("JTBD-03.key")
def test_shard_key_check_fails_when_an_entity_changes_its_country(graph, defs, settings) -> None:
    with psycopg.connect(settings.catalog_dsn) as conn:
        conn.execute(
            """INSERT INTO raw_events
               SELECT 'planted-' || event_id, event_date, event_ts, entity_id,
                      CASE WHEN country = 'US' THEN 'DE' ELSE 'US' END, segment, signup_date, channel, category,
                      amount, is_refund, churned
               FROM raw_events WHERE event_id NOT LIKE 'planted-%' ORDER BY event_id LIMIT 3"""
        )
    try:
        check = _checks(_run_shard_key(defs, "entity_id"))["shard_key_is_valid"]
        assert not check.passed
        assert "3 `entity_id` values change their key-defining attributes" in check.description
        assert "not immutable" in check.description
    finally:
        with psycopg.connect(settings.catalog_dsn) as conn:
            conn.execute("DELETE FROM raw_events WHERE event_id LIKE 'planted-%'")
    assert _checks(_run_shard_key(defs, "entity_id"))["shard_key_is_valid"].passed


@pytest.mark.req("PLAT.features-per-shard")
def test_shard_check_fails_on_a_misplaced_row_and_on_a_missing_entity(graph, settings, days, tessera) -> None:
    wrong = next(f"planted-{i}" for i in range(100) if shard_for(f"planted-{i}", 2) == 1)
    with psycopg.connect(settings.shard_dsns()[0]) as conn:  # a shard-1 entity written to shard 0
        conn.execute(
            f"INSERT INTO {FEATURE_TABLE} (logical_shard, entity_id, feature_set, features, event_ts) "
            "VALUES (%s, %s, %s, '{}', now())",
            (logical_shard_for(wrong), wrong, settings.feature_set),
        )
    with psycopg.connect(settings.shard_dsns()[1]) as conn:  # a shard-1 entity lost
        lost = conn.execute(
            f"DELETE FROM {FEATURE_TABLE} WHERE entity_id = (SELECT min(entity_id) FROM {FEATURE_TABLE}) "
            "RETURNING entity_id, feature_set, features, event_ts, written_at, version"
        ).fetchone()
    try:
        shard0, shard1 = shard_check_results(tessera, None)
        assert not shard0["passed"]
        assert shard0["misplaced_rows"] == 1
        assert "server-0: 1 rows belong on another server" in shard0["description"]
        assert not shard1["passed"]
        assert shard1["missing_entities"] == 1
        assert lost[0] in shard1["description"]
        combined = placement_check_result(tessera, None)
        assert not combined.passed
        assert combined.metadata["misplaced_rows"].value == 1
        assert combined.metadata["missing_entities"].value == 1
    finally:
        with psycopg.connect(settings.shard_dsns()[0]) as conn:
            conn.execute(f"DELETE FROM {FEATURE_TABLE} WHERE entity_id = %s", (wrong,))
        with psycopg.connect(settings.shard_dsns()[1]) as conn:
            conn.execute(
                f"INSERT INTO {FEATURE_TABLE} "
                "(logical_shard, entity_id, feature_set, features, event_ts, written_at, version) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (logical_shard_for(lost[0]), lost[0], lost[1], psycopg.types.json.Jsonb(lost[2]), *lost[3:6]),
            )
    assert all(r["passed"] for r in shard_check_results(tessera, None))
    assert all(r["passed"] for r in shard_check_results(tessera, days[-1]))
    assert placement_check_result(tessera, days[-1]).passed


def _fingerprints(settings) -> list:
    out = []
    with psycopg.connect(settings.catalog_dsn) as conn:
        out.append(
            conn.execute(
                "SELECT count(*), md5(string_agg(r::text, '|' ORDER BY event_id)) FROM raw_events r"
            ).fetchone()
        )
    for dsn in settings.shard_dsns():
        with psycopg.connect(dsn) as conn:
            out.append(
                conn.execute(
                    "SELECT count(*), sum(version), max(written_at), "
                    f"md5(string_agg(features::text, '|' ORDER BY entity_id)) "
                    f"FROM {FEATURE_TABLE} WHERE feature_set = %s",
                    (settings.feature_set,),
                ).fetchone()
            )
    return out


@pytest.mark.req("PLAT.backfills")
def test_rematerializing_partitions_is_idempotent(graph, defs, days, settings, small_data) -> None:
    before = _fingerprints(settings)
    run_days(defs, [days[3], days[-1]], graph["instance"], small_data)
    assert _fingerprints(settings) == before


@pytest.mark.req("PLAT.backfills")
def test_daily_schedule_tick_requests_yesterdays_partition(defs) -> None:
    schedule = defs.resolve_schedule_def("daily_partitions_schedule")
    tick = datetime(2026, 10, 5, 1, 0, tzinfo=UTC)
    with dg.DagsterInstance.ephemeral() as instance:
        context = dg.build_schedule_context(
            instance=instance, scheduled_execution_time=tick, repository_def=defs.get_repository_def()
        )
        requests = schedule.evaluate_tick(context).run_requests
    assert [r.partition_key for r in requests] == ["2026-10-04"]
    assert schedule.cron_schedule == "0 1 * * *"
    assert defs.resolve_schedule_def("daily_training").cron_schedule == "0 3 * * *"


@pytest.mark.req("PLAT.migrate-cli")
def test_shard_migration_refuses_an_unknown_server_with_a_clear_message(defs, settings) -> None:
    """Bad run config fails the plan op with the engine's one-line message; nothing is journalled."""
    from shardctl.control.migration.journal import Journal

    result = defs.resolve_job_def("shard_migration").execute_in_process(
        run_config={"ops": {"plan_shard_migration": {"config": {"to_servers": ["server-0", "nope-9"]}}}, **QUIET},
        raise_on_error=False,
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.event_specific_data.error.message
    assert "nope-9" in message
    assert "host=" not in message
    assert Journal(settings.catalog_dsn).running() is None
