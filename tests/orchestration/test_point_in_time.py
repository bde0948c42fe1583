"""Point-in-time correctness on real shards, a real catalog and a real H2O JVM: labels with a time, historical
features from events up to the as-of time only, the training-set builder refusing or excluding leaks, and the
online/offline skew check passing on good data and failing on a planted mismatch."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg
import pandas as pd
import psycopg
import psycopg.sql
import pytest
from psycopg.types.json import Jsonb

from orchestration import labels as labels_mod
from orchestration.defs.point_in_time import check_skew
from orchestration.feature_engineering import ACTIVE_ON_DAY, FEATURES, end_of_day, features_as_of, features_query
from orchestration.labels import LABEL, LabelSpec
from orchestration.point_in_time import (
    FEATURE_TS,
    LeakageError,
    TimedFeatures,
    build_training_set,
    get_historical_features,
)
from orchestration.skew import MISSING_ONLINE, sample_entities
from shardctl.store.hashing import logical_shard_for, shard_for
from shardctl.store.schema import FEATURE_TABLE
from tests.orchestration.conftest import HORIZON_DAYS, QUIET, SMALL_GBM

SPEC = LabelSpec(horizon_days=HORIZON_DAYS, every_days=2, warmup_days=2)


def _events(dsn: str) -> pd.DataFrame:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT entity_id, event_ts FROM raw_events WHERE entity_id IS NOT NULL").fetchall()
    frame = pd.DataFrame(rows, columns=["entity_id", "event_ts"])
    frame["event_ts"] = labels_mod.utc_times(frame["event_ts"])
    return frame


@pytest.fixture(scope="module")
def label_frame(graph, settings) -> pd.DataFrame:
    return labels_mod.build_labels(settings.catalog_dsn, SPEC)


@pytest.mark.req("PLAT.labels")
def test_labels_follow_the_documented_definition_and_leave_out_dates_without_a_full_horizon(
    label_frame, settings, days
) -> None:
    events = _events(settings.catalog_dsn)
    horizon = pd.Timedelta(days=HORIZON_DAYS)
    dates = sorted(label_frame["as_of"].unique())
    assert [pd.Timestamp(t) for t in dates] == [pd.Timestamp(end_of_day(days[i])) for i in (1, 3, 5, 7)]
    assert pd.Timestamp(dates[-1]) + horizon <= pd.Timestamp(end_of_day(days[-1]))  # day 10's as-of has no future
    for t in dates:
        t = pd.Timestamp(t)
        before = set(events[(events.event_ts > t - horizon) & (events.event_ts <= t)].entity_id)
        after = set(events[(events.event_ts > t) & (events.event_ts <= t + horizon)].entity_id)
        rows = label_frame[label_frame.as_of == t]
        assert set(rows.entity_id) == before  # active and not yet churned at t, nobody else
        expected = {e: e not in after for e in before}
        assert dict(zip(rows.entity_id, rows[LABEL], strict=True)) == expected
        assert 0 < rows[LABEL].mean() < 1
    short = LabelSpec(horizon_days=9, every_days=1, warmup_days=1)  # day 1 + 9 days is the last day: one date only
    with pytest.raises(labels_mod.LabelError, match="an out-of-time split needs two"):
        labels_mod.build_labels(settings.catalog_dsn, short)


@pytest.mark.req("PLAT.historical-features")
def test_online_rows_are_the_historical_features_as_of_each_day(graph, settings, days) -> None:
    """One definition: what a daily partition wrote equals historical retrieval as of that day's end."""
    for day in (days[2], days[6]):
        online = pd.DataFrame(features_as_of(settings.catalog_dsn, day))
        frame = pd.DataFrame({"entity_id": online["entity_id"], "as_of": end_of_day(day), "mark": 1})
        offline = get_historical_features(settings.catalog_dsn, frame)
        assert list(offline.columns[:3]) == ["entity_id", "as_of", "mark"]  # the caller's frame, then features
        assert offline[FEATURE_TS].tolist() == labels_mod.utc_times(online["event_ts"]).tolist()
        for feature in FEATURES:
            assert offline[feature].tolist() == online[feature].tolist(), feature


def _raw_event_scans(plan: dict) -> list[tuple[str, str | None]]:
    """(node type, index) of every plan node that reads raw_events."""
    found = [(plan["Node Type"], plan.get("Index Name"))] if plan.get("Relation Name") == "raw_events" else []
    return found + [scan for child in plan.get("Plans", []) for scan in _raw_event_scans(child)]


@pytest.mark.req("PLAT.features-index-only")
def test_the_feature_window_reads_the_raw_events_index_only(graph, settings, days) -> None:
    """At 10M raw rows the window's events, one heap page each, were most of the features stage's time
    (docs/benchmarks.md): both forms of the one definition must be answerable from raw_events_window alone.
    With every other way to read the table priced out, a column the index lacks leaves a sequential scan."""
    pairs = "SELECT DISTINCT entity_id, now() AS as_of FROM raw_events WHERE entity_id IS NOT NULL"
    with psycopg.connect(settings.catalog_dsn) as conn:
        for off in ("enable_seqscan", "enable_bitmapscan", "enable_indexscan"):
            conn.execute(f"SET LOCAL {off} = off")
        for entities, params in ((ACTIVE_ON_DAY, {"day": days[5], "as_of": end_of_day(days[5])}), (pairs, None)):
            query = psycopg.sql.SQL("EXPLAIN (FORMAT JSON) ") + features_query(entities)
            plan = conn.execute(query, params).fetchone()[0][0]["Plan"]
            window_reads = [s for s in _raw_event_scans(plan) if s[1] != "raw_events_pkey"]
            assert window_reads, plan
            assert set(window_reads) == {("Index Only Scan", "raw_events_window")}, window_reads


@pytest.mark.req("PLAT.historical-features")
def test_features_as_of_t_ignore_every_event_after_t(graph, settings, days) -> None:
    dsn = settings.catalog_dsn
    t = end_of_day(days[4])
    with psycopg.connect(dsn) as conn:
        entity = conn.execute(
            "SELECT entity_id FROM raw_events WHERE event_date = %s ORDER BY entity_id LIMIT 1", (days[4],)
        ).fetchone()[0]
    frame = pd.DataFrame({"entity_id": [entity, entity, "nobody"], "as_of": [t, t + timedelta(days=3), t]})
    before = get_historical_features(dsn, frame)
    with psycopg.connect(dsn) as conn:  # big planted events one second and one day after t
        conn.execute(
            """INSERT INTO raw_events
               SELECT 'planted-' || n, ((%(t)s::timestamptz + make_interval(secs => n)) AT TIME ZONE 'UTC')::date,
                      %(t)s::timestamptz + make_interval(secs => n), entity_id, country, segment, signup_date,
                      channel, 'cat_planted', 99999, true, churned
               FROM (SELECT * FROM raw_events WHERE entity_id = %(e)s LIMIT 1) r, (VALUES (1), (86400)) v(n)""",
            {"t": t, "e": entity},
        )
    try:
        after = get_historical_features(dsn, frame)
    finally:
        with psycopg.connect(dsn) as conn:
            conn.execute("DELETE FROM raw_events WHERE event_id LIKE 'planted-%'")
    pd.testing.assert_frame_equal(after.iloc[[0]], before.iloc[[0]])  # as of t: unchanged
    assert after.loc[1, "amount_sum_30d"] > before.loc[1, "amount_sum_30d"] + 99_000  # later: the events count
    assert pd.isna(after.loc[2, FEATURE_TS])
    assert pd.isna(after.loc[2, "txn_count_30d"])
    with pytest.raises(ValueError, match="timezone-aware"):
        get_historical_features(dsn, pd.DataFrame({"entity_id": [entity], "as_of": [t.replace(tzinfo=None)]}))


def _next_window_counts(events: pd.DataFrame, label_frame: pd.DataFrame, shift: pd.Timedelta) -> pd.DataFrame:
    """A planted feature: each labelled entity's event count in (t + shift, t + shift + horizon], known (its
    feature_ts) only once that window is over."""
    horizon = pd.Timedelta(days=HORIZON_DAYS)
    rows = []
    for t, entity in label_frame[["as_of", "entity_id"]].itertuples(index=False):
        start = t + shift
        mine = events[(events.entity_id == entity) & (events.event_ts > start) & (events.event_ts <= start + horizon)]
        rows.append({"entity_id": entity, FEATURE_TS: start + horizon, "next_window_txns": len(mine), "as_of": t})
    return pd.DataFrame(rows)


@pytest.mark.req("PLAT.leakage")
def test_a_feature_known_only_after_the_as_of_time_never_reaches_the_training_set(label_frame, settings) -> None:
    dsn = settings.catalog_dsn
    events = _events(dsn)
    planted = _next_window_counts(events, label_frame, pd.Timedelta(0))
    # The plant is a real leak: joined naively on (entity, as_of) it gives the label away.
    naive = label_frame.merge(planted, on=["entity_id", "as_of"])
    assert ((naive["next_window_txns"] == 0) == naive[LABEL]).all()

    source = TimedFeatures("next_window", planted.drop(columns=["as_of"]))
    built = build_training_set(dsn, label_frame, [source])
    frame = built.frame
    assert "next_window_txns" in built.features
    assert (frame[FEATURE_TS] <= frame["as_of"]).all()
    # Each row gets the newest value known at its as-of time (an earlier as-of date's window), never its own.
    by_entity = {e: g.sort_values(FEATURE_TS) for e, g in planted.groupby("entity_id")}
    for entity, t, got in frame[["entity_id", "as_of", "next_window_txns"]].itertuples(index=False):
        rows = by_entity.get(entity)
        known = rows[rows[FEATURE_TS] <= t] if rows is not None else None
        if known is None or known.empty:
            assert pd.isna(got), (entity, t)
        else:
            assert got == known["next_window_txns"].iloc[-1], (entity, t)
            assert known["as_of"].iloc[-1] < t
    first = frame["as_of"] == frame["as_of"].min()
    assert frame.loc[first, "next_window_txns"].isna().all()  # nothing is known yet at the first as-of date
    assert not ((frame["next_window_txns"] == 0) == frame[LABEL]).all()  # the giveaway is gone

    # A feature from further ahead is known at no as-of time: excluded, with the reason.
    far = _next_window_counts(events, label_frame, pd.Timedelta(days=30)).drop(columns=["as_of"])
    built = build_training_set(dsn, label_frame, [TimedFeatures("far_future", far)])
    assert "next_window_txns" not in built.features
    assert "next_window_txns" not in built.frame.columns
    assert "a feature from the future" in built.excluded["next_window_txns"]

    # Refused: values with no time they became known, and the label dressed up as a feature.
    with pytest.raises(LeakageError, match="has no 'feature_ts' column"):
        build_training_set(dsn, label_frame, [TimedFeatures("untimed", planted.drop(columns=[FEATURE_TS, "as_of"]))])
    label_as_feature = label_frame.assign(**{FEATURE_TS: label_frame["as_of"]})[["entity_id", FEATURE_TS, LABEL]]
    with pytest.raises(LeakageError, match="may not read them"):
        build_training_set(dsn, label_frame, [TimedFeatures("label", label_as_feature)])


@pytest.mark.req("PLAT.leakage")
def test_no_feature_can_read_the_churned_column(settings) -> None:
    from orchestration.feature_engineering import SOURCE_COLUMNS, features_query

    assert LABEL not in SOURCE_COLUMNS
    with psycopg.connect(settings.catalog_dsn) as conn:
        text = features_query("SELECT 'x'::text AS entity_id, now() AS as_of").as_string(conn)
        with pytest.raises(psycopg.errors.UndefinedColumn):  # a feature reading the label fails to run
            conn.execute(text.replace("min(e.country)", "bool_or(e.churned)::text"))


@pytest.mark.req("PLAT.leakage")
def test_the_model_run_reports_out_of_time_metrics_and_the_latest_state_figure(graph) -> None:
    [event] = [m for m in graph["model"].get_asset_materialization_events() if m.asset_key.path == ["churn_model"]]
    meta = event.materialization.metadata
    assert {"out_of_time_auc", "latest_state_auc", "logloss", "train_auc", "split"} <= set(meta)
    [training_set] = [
        m for m in graph["model"].get_asset_materialization_events() if m.asset_key.path == ["churn_training_set"]
    ]
    ts_meta = training_set.materialization.metadata
    assert ts_meta["dagster/row_count"].value > 0
    assert ts_meta["max_feature_age_days"].value <= HORIZON_DAYS  # eligible: an event within the horizon
    assert ts_meta["excluded_features"].value == {}


def _skew_check(result: dg.ExecuteInProcessResult) -> dg.AssetCheckEvaluation:
    [check] = [e for e in result.get_asset_check_evaluations() if e.check_name == "online_offline_skew"]
    return check


@pytest.mark.req("PLAT.skew-check")
def test_skew_check_passes_on_good_data_and_names_a_planted_mismatch(graph, defs, settings, tessera) -> None:
    check = _skew_check(graph["model"])
    assert check.passed, check.description
    assert check.metadata["sampled_entities"].value == 200

    sample = sample_entities(settings.catalog_dsn, 40)
    assert check_skew(tessera, sample).passed
    changed, lost = sample[0], sample[1]
    restore = []
    for dsn in settings.shard_dsns():
        with psycopg.connect(dsn) as conn:
            restore += conn.execute(
                f"SELECT entity_id, feature_set, features, event_ts, written_at, version FROM {FEATURE_TABLE} "
                "WHERE entity_id = ANY(%s)",
                ([changed, lost],),
            ).fetchall()
            conn.execute(
                f"UPDATE {FEATURE_TABLE} SET features = jsonb_set(features, '{{txn_count_7d}}', '999') "
                "WHERE entity_id = %s",
                (changed,),
            )
            conn.execute(f"DELETE FROM {FEATURE_TABLE} WHERE entity_id = %s", (lost,))
    assert len(restore) == 2
    try:
        report = check_skew(tessera, sample)
        assert not report.passed
        assert report.mismatches == {changed: ["txn_count_7d"], lost: [MISSING_ONLINE]}
        assert f"{changed}: txn_count_7d" in report.description()
        assert lost in report.description()
        run = defs.resolve_job_def("profile_and_train").execute_in_process(
            instance=graph["instance"],
            asset_selection=[dg.AssetKey("churn_training_set"), dg.AssetKey("churn_model")],
            run_config={"ops": {"churn_model": SMALL_GBM["ops"]["churn_model"]}, **QUIET},
            raise_on_error=False,
        )
        check = _skew_check(run)  # the asset check in a run: fails, names them, and blocks training
        assert not check.passed
        assert f"{changed}: txn_count_7d" in check.description
        assert check.metadata["mismatched_entities"].value == 2
        assert not [m for m in run.get_asset_materialization_events() if m.asset_key.path == ["churn_model"]]
    finally:
        for row in restore:
            for dsn in settings.shard_dsns():
                with psycopg.connect(dsn) as conn:
                    conn.execute(f"DELETE FROM {FEATURE_TABLE} WHERE entity_id = %s", (row[0],))
            with psycopg.connect(settings.shard_dsns()[shard_for(row[0], len(settings.shard_dsns()))]) as conn:
                conn.execute(
                    f"INSERT INTO {FEATURE_TABLE} "
                    "(logical_shard, entity_id, feature_set, features, event_ts, written_at, version) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (logical_shard_for(row[0]), row[0], row[1], Jsonb(row[2]), row[3], row[4], row[5]),
                )
    assert check_skew(tessera, sample).passed
