"""The merge path in sub-batches: staged rows merge while later rows are still validated and streamed."""

from __future__ import annotations

from datetime import timedelta

import pytest

from shardctl.store import FeatureStore
from shardctl.store.writer import BadFeatureRowError, FeatureRow, FeatureWriter
from tests.store.conftest import T0, make_rows, shard_snapshot


@pytest.mark.req("JTBD-03.writer")
def test_merging_in_sub_batches_gives_the_same_counts_and_a_late_bad_row_still_undoes_them(
    feature_store: FeatureStore, feature_set: str
) -> None:
    with FeatureWriter(feature_store.shard_map, chunk_rows=100, merge_rows=250) as writer:
        writer.write(feature_set, make_rows(1000))
        before = shard_snapshot(feature_store.shard_map.dsns, feature_set)
        changed = make_rows(1000, seed=2, ts=T0 + timedelta(days=1)) + make_rows(500, prefix="more")
        with pytest.raises(BadFeatureRowError, match="#1500"):
            writer.write(feature_set, [*changed, FeatureRow("", T0, {})])
        assert shard_snapshot(feature_store.shard_map.dsns, feature_set) == before
        report = writer.write(feature_set, changed)
    assert (report.inserted, report.updated, report.unchanged) == (500, 1000, 0)
    records = feature_store.get_features(["e7", "more7"], feature_set).records
    assert records["e7"].version == 2
    assert records["e7"].features["visits"] == 9
    assert records["more7"].version == 1
