"""The writer on the session stack's real shards: routing, idempotency, versions, all-or-nothing batches."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from types import MappingProxyType

import psycopg
import pytest

from shardctl.store import FeatureStore
from shardctl.store.hashing import shard_for
from shardctl.store.schema import placement_query
from shardctl.store.writer import BadFeatureRowError, FeatureRow
from tests.store.conftest import T0, make_rows, shard_snapshot


@pytest.mark.req("JTBD-03.routing")
@pytest.mark.req("JTBD-03.writer")
def test_every_row_lands_on_the_shard_shard_for_names(feature_store: FeatureStore, feature_set: str) -> None:
    rows = make_rows(400)
    report = feature_store.write(feature_set, rows)
    shard_map = feature_store.shard_map
    assert report.epoch == shard_map.epoch
    assert report.inserted == 400
    assert (report.updated, report.unchanged) == (0, 0)
    expected = {i: sum(1 for r in rows if shard_for(r.entity_id, 2) == i) for i in range(2)}
    assert report.rows_per_shard == expected
    assert all(expected.values()), "400 ids should reach both shards"
    for index, dsn in enumerate(shard_map.dsns):
        with psycopg.connect(dsn) as conn:
            total, misplaced, wrong_shard, wrong_hash = conn.execute(
                placement_query(shard_map.logical_shards_of(index))
            ).fetchone()
            assert total > 0
            assert (misplaced, wrong_shard, wrong_hash) == (0, 0, 0)
            # The same check for this batch, in SQL, with the shards' own routing function.
            here = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE tessera_shard_for(entity_id, %s) = %s) "
                "FROM entity_features WHERE feature_set = %s",
                (shard_map.total_shards, index, feature_set),
            ).fetchone()
            assert here == (expected[index], expected[index])


@pytest.mark.req("JTBD-03.writer")
def test_rewriting_the_same_batch_changes_nothing(feature_store: FeatureStore, feature_set: str) -> None:
    rows = make_rows(300)
    first = feature_store.write(feature_set, rows)
    assert first.inserted == 300
    before = shard_snapshot(feature_store.shard_map.dsns, feature_set)
    again = feature_store.write(feature_set, rows)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 300)
    # Same xmin on every row: no new tuple version was written, so no dead tuples and no version bump.
    assert shard_snapshot(feature_store.shard_map.dsns, feature_set) == before


@pytest.mark.req("JTBD-03.writer")
def test_changed_values_bump_the_version_and_older_events_never_overwrite(
    feature_store: FeatureStore, feature_set: str
) -> None:
    feature_store.write(feature_set, make_rows(100))
    changed = make_rows(50, seed=7, ts=T0 + timedelta(days=1))  # e0..e49 with new values, newer events
    report = feature_store.write(feature_set, changed)
    assert (report.inserted, report.updated, report.unchanged) == (0, 50, 0)
    older = make_rows(100, seed=99, ts=T0 - timedelta(days=1))  # every id, different values, older events
    assert feature_store.write(feature_set, older).unchanged == 100
    result = feature_store.get_features([f"e{i}" for i in range(100)], feature_set)
    assert {r.version for i, r in result.records.items() if int(i[1:]) < 50} == {2}
    assert {r.version for i, r in result.records.items() if int(i[1:]) >= 50} == {1}
    assert result.records["e3"].features["visits"] == 3 + 7
    assert result.records["e70"].features["visits"] == 70


BAD_ROWS = {
    "empty id": FeatureRow("", T0, {"x": 1}),
    "blank id": FeatureRow("   ", T0, {"x": 1}),
    "null id": FeatureRow(None, T0, {"x": 1}),  # type: ignore[arg-type]
    "int id": FeatureRow(17, T0, {"x": 1}),  # type: ignore[arg-type]
    "list value": FeatureRow("bad", T0, {"x": [1, 2]}),
    "datetime value": FeatureRow("bad", T0, {"x": T0}),
    "nan value": FeatureRow("bad", T0, {"x": math.nan}),
    "naive event_ts": FeatureRow("bad", datetime(2026, 1, 1), {"x": 1}),
    "features not a mapping": FeatureRow("bad", T0, [("x", 1)]),  # type: ignore[arg-type]
    "infinite value": FeatureRow("bad", T0, {"x": 1.0, "y": -math.inf}),
    "NUL in a value": FeatureRow("bad", T0, {"x": "a\x00b"}),
    "empty feature name": FeatureRow("bad", T0, {"": 1}),
    "non-string feature name": FeatureRow("bad", T0, {3: 1}),
    "lone surrogate id": FeatureRow("bad\udc80", T0, {"x": 1}),
    "duplicate id": FeatureRow("e5", T0, {"x": 1}),
}


@pytest.mark.req("JTBD-03.writer")
@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_a_bad_row_is_named_and_leaves_every_shard_unchanged(
    feature_store: FeatureStore, feature_set: str, case: str
) -> None:
    feature_store.write(feature_set, make_rows(60))
    before = shard_snapshot(feature_store.shard_map.dsns, feature_set)
    # New entities and changed values on both shards, then one bad row last: none of it may land.
    batch = make_rows(60, seed=3, ts=T0 + timedelta(days=2)) + make_rows(40, prefix="new") + [BAD_ROWS[case]]
    with pytest.raises(BadFeatureRowError) as caught:
        feature_store.write(feature_set, batch)
    assert caught.value.index == 100
    assert "#100" in str(caught.value)
    assert shard_snapshot(feature_store.shard_map.dsns, feature_set) == before


@pytest.mark.req("JTBD-03.writer")
def test_values_that_look_suspicious_but_are_valid_are_stored_exactly(
    feature_store: FeatureStore, feature_set: str
) -> None:
    odd = {"text_null": "null", "none": None, "zero": 0.0, "big": 1.5e12, "neg": -3, "flag": False, "uni": "ä€😀"}
    feature_store.write(
        feature_set, [FeatureRow("odd", T0, odd), FeatureRow("mapping", T0, MappingProxyType({"a": 1}))]
    )
    records = feature_store.get_features(["odd", "mapping"], feature_set).records
    assert records["odd"].features == odd
    assert records["mapping"].features == {"a": 1}


def test_bad_feature_set_and_non_row_objects_give_clear_errors(feature_store: FeatureStore) -> None:
    with pytest.raises(ValueError, match="feature_set"):
        feature_store.write("", make_rows(1))
    with pytest.raises(BadFeatureRowError, match="expected FeatureRow"):
        feature_store.write("fs", [{"entity_id": "a"}])  # type: ignore[list-item]
    assert feature_store.write("fs_empty", []).rows == 0


@pytest.mark.req("JTBD-03.writer")
def test_a_bad_row_after_rows_already_streamed_to_the_shards_still_leaves_them_unchanged(
    feature_store: FeatureStore, feature_set: str
) -> None:
    """Rows stream to the shards in chunks while later rows are validated: a late bad row aborts them all."""
    feature_store.write(feature_set, make_rows(50))
    before = shard_snapshot(feature_store.shard_map.dsns, feature_set)
    batch = make_rows(50, seed=1, ts=T0 + timedelta(days=1)) + make_rows(3_000, prefix="late")
    batch.append(FeatureRow("late-bad", T0, {"x": {"nested": 1}}))
    with pytest.raises(BadFeatureRowError, match="#3050"):
        feature_store.write(feature_set, batch)
    assert shard_snapshot(feature_store.shard_map.dsns, feature_set) == before
    assert feature_store.write(feature_set, batch[:-1]).rows == 3_050
