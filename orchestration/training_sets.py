"""The point-in-time training set in the catalog: one row per (as_of, entity_id), its label, the time of the
newest event its features were computed from, and the features (jsonb, like the shards), so every Dagster
process reads the same set and a user can inspect it in SQL."""

from __future__ import annotations

import json

import dagster as dg
import pandas as pd
import psycopg
from psycopg import sql

from orchestration.feature_engineering import CATEGORICAL_FEATURES, FEATURES
from orchestration.labels import LABEL
from orchestration.point_in_time import FEATURE_TS
from orchestration.sql_frames import query_frame

SCHEMA = """
CREATE TABLE IF NOT EXISTS churn_training_set (
    as_of      timestamptz NOT NULL,
    entity_id  text        NOT NULL,
    churned    boolean     NOT NULL,
    feature_ts timestamptz NOT NULL CHECK (feature_ts <= as_of),
    features   jsonb       NOT NULL,
    PRIMARY KEY (as_of, entity_id)
);
"""

LABEL_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("as_of", "timestamptz", description="end of the as-of day (UTC)"),
        dg.TableColumn("entity_id", "text"),
        dg.TableColumn(LABEL, "boolean", description="no event in (as_of, as_of + horizon]"),
        dg.TableColumn("horizon_days", "integer"),
    ]
)
TRAINING_SET_SCHEMA = dg.TableSchema(
    columns=[
        dg.TableColumn("as_of", "timestamptz"),
        dg.TableColumn("entity_id", "text"),
        dg.TableColumn(LABEL, "boolean"),
        dg.TableColumn(FEATURE_TS, "timestamptz", description="newest event the features read; <= as_of"),
        *(dg.TableColumn(f, "text" if f in CATEGORICAL_FEATURES else "double") for f in FEATURES),
    ]
)


def store(catalog_dsn: str, frame: pd.DataFrame, features: list[str]) -> None:
    """Replace the stored training set in one transaction."""
    with psycopg.connect(catalog_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('tessera_churn_training_set'))")
        cur.execute(SCHEMA)
        cur.execute("DELETE FROM churn_training_set")
        rows = frame[["as_of", "entity_id", LABEL, FEATURE_TS, *features]].itertuples(index=False, name=None)
        with cur.copy("COPY churn_training_set (as_of, entity_id, churned, feature_ts, features) FROM STDIN") as cp:
            for as_of, entity_id, label, feature_ts, *values in rows:  # one row at a time: no list of dicts
                features_json = json.dumps({f: _plain(v) for f, v in zip(features, values, strict=True)})
                cp.write_row((as_of.to_pydatetime(), entity_id, bool(label), feature_ts.to_pydatetime(), features_json))


def _plain(value: object) -> object:
    if value is None or (isinstance(value, float) and value != value):
        return None
    return value.item() if hasattr(value, "item") else value


def load(catalog_dsn: str) -> pd.DataFrame:
    """The stored training set: as_of, entity_id, churned, feature_ts and one column per feature (numeric ones
    as float64, as H2O reads them), parsed column by column (orchestration/sql_frames.py)."""
    columns = sql.SQL(", ").join(
        sql.SQL("(features ->> {}){} AS {}").format(
            sql.Literal(f), sql.SQL("" if f in CATEGORICAL_FEATURES else "::float8"), sql.Identifier(f)
        )
        for f in FEATURES
    )
    query = sql.SQL(
        "SELECT as_of, entity_id, churned AS {label}, feature_ts AS {ts}, {columns} FROM churn_training_set "
        "ORDER BY as_of, entity_id"
    ).format(label=sql.Identifier(LABEL), ts=sql.Identifier(FEATURE_TS), columns=columns)
    with psycopg.connect(catalog_dsn) as conn:
        return query_frame(conn, query)
