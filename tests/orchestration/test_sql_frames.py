"""Query results parsed column by column (orchestration/sql_frames.py) against the same rows fetched one by one
into a frame, the way they were read before, on the stack's real catalog: NULLs, empty strings, text that looks
like a number, integers with and without NULLs, booleans, and timestamps in a session that is not UTC."""

from __future__ import annotations

import pandas as pd
import psycopg
import pytest

from orchestration import labels, training_sets
from orchestration.feature_engineering import CATEGORICAL_FEATURES, FEATURES
from orchestration.point_in_time import FEATURE_TS, build_training_set
from orchestration.sql_frames import query_frame

ODD_ROWS = """
SELECT * FROM (VALUES
    ('007', '',   1::bigint, 1::bigint, 1.5::float8, true,  TIMESTAMPTZ '2026-03-01 23:59:59.999999+00', 2.50::numeric),
    ('x,"y"', NULL, 2,        NULL,      NULL,        NULL,  TIMESTAMPTZ '2026-03-02 00:00:00+00',        NULL),
    (NULL,  'b',  3,         4,         2,           false, NULL,                                         3)
) AS t(code, note, n, maybe_n, x, flag, ts, amount)
ORDER BY n
"""


@pytest.mark.req("JTBD-03.scale-columnar-frames")
def test_a_parsed_frame_has_the_values_and_types_of_the_fetched_rows(settings) -> None:
    with psycopg.connect(settings.catalog_dsn) as conn:
        conn.execute("SET TimeZone = 'America/New_York'")  # the text COPY writes carries this offset
        parsed = query_frame(conn, ODD_ROWS)
        cur = conn.execute(ODD_ROWS)
        fetched = pd.DataFrame(cur.fetchall(), columns=[c.name for c in cur.description])
    assert list(parsed.columns) == list(fetched.columns)
    assert parsed["code"].tolist()[:2] == ["007", 'x,"y"']
    assert pd.isna(parsed.loc[2, "code"])
    assert parsed["note"].tolist()[0] == ""
    assert pd.isna(parsed.loc[1, "note"])
    assert parsed["n"].dtype == "int64"
    assert parsed["n"].tolist() == [1, 2, 3]
    assert parsed["maybe_n"].dtype == "float64"
    assert pd.isna(parsed.loc[1, "maybe_n"])
    assert parsed["x"].dtype == "float64"
    assert parsed["x"].tolist()[2] == 2.0
    assert parsed["flag"].tolist()[0] is True
    assert parsed["flag"].tolist()[2] is False
    assert pd.isna(parsed.loc[1, "flag"])
    assert parsed["amount"].dtype == "float64"
    assert parsed["amount"].tolist()[0] == 2.5
    expected_ts = pd.to_datetime(fetched["ts"], utc=True).dt.as_unit("us")
    assert str(parsed["ts"].dtype) == "datetime64[us, UTC]"
    pd.testing.assert_series_equal(parsed["ts"], expected_ts)
    assert parsed.loc[0, "ts"] == pd.Timestamp("2026-03-01 23:59:59.999999", tz="UTC")


@pytest.mark.req("JTBD-03.scale-columnar-frames")
def test_the_stored_labels_and_training_set_read_back_as_they_were_built(graph, settings) -> None:
    """What churn_labels and churn_training_set stored, read back column by column, equals a fresh build."""
    dsn = settings.catalog_dsn
    stored_labels = labels.load_labels(dsn)
    built_labels = labels.build_labels(dsn, labels.LabelSpec(labels.stored_horizon(dsn), 2, 2))
    assert len(stored_labels) > 100
    assert stored_labels[labels.LABEL].dtype == bool
    pd.testing.assert_frame_equal(stored_labels.drop(columns=["horizon_days"]), built_labels)

    loaded = training_sets.load(dsn)
    built = build_training_set(dsn, stored_labels).frame
    assert list(loaded.columns) == ["as_of", "entity_id", labels.LABEL, FEATURE_TS, *FEATURES]
    assert {str(loaded[c].dtype) for c in FEATURES if c not in CATEGORICAL_FEATURES} == {"float64"}
    pd.testing.assert_frame_equal(loaded, built[loaded.columns], check_dtype=False)
