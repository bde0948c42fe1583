"""Churn labels with a time: for each as-of date t, the entities active and not yet churned at t, labelled by
whether they stop within the horizon after t.

Definition (documented in docs/architecture/logical.md): with horizon H days,
- an entity is *eligible* at t when it has an event in (t - H, t] (active, and not already silent for a whole
  horizon, i.e. not already churned by this definition);
- its label ``churned`` is true when it has no event in (t, t + H];
- an as-of date is used only when the landed data covers (t, t + H] completely: entities without enough
  future to know are left out, never labelled "no".

The label source is the entities' activity after t (entity_id and event timestamps only). It never reads the raw
``churned`` column either: that flag is the source system's final status, known only at the end of the data, so
it would label an entity that churns months after t as a churner at t.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

import pandas as pd
import psycopg

from orchestration.feature_engineering import end_of_day
from orchestration.sql_frames import query_frame

LABEL = "churned"

SCHEMA = """
CREATE TABLE IF NOT EXISTS churn_labels (
    as_of        timestamptz NOT NULL,
    entity_id    text        NOT NULL,
    churned      boolean     NOT NULL,
    horizon_days integer     NOT NULL,
    PRIMARY KEY (as_of, entity_id)
);
"""

LABELS_AT = """
WITH dates AS (SELECT unnest(%(as_of)s::timestamptz[]) AS as_of),
eligible AS (
    SELECT DISTINCT d.as_of, r.entity_id
    FROM dates d JOIN raw_events r
      ON r.event_ts > d.as_of - make_interval(days => %(h)s) AND r.event_ts <= d.as_of
     AND r.event_date >= ((d.as_of AT TIME ZONE 'UTC')::date - %(h)s)
     AND r.event_date <= (d.as_of AT TIME ZONE 'UTC')::date
    WHERE r.entity_id IS NOT NULL
)
SELECT g.as_of, g.entity_id,
       NOT EXISTS (
           SELECT 1 FROM raw_events f
           WHERE f.entity_id = g.entity_id
             AND f.event_date >= (g.as_of AT TIME ZONE 'UTC')::date
             AND f.event_date <= (g.as_of AT TIME ZONE 'UTC')::date + %(h)s
             AND f.event_ts > g.as_of AND f.event_ts <= g.as_of + make_interval(days => %(h)s)
       ) AS churned
FROM eligible g
ORDER BY g.as_of, g.entity_id
"""


def utc_times(values: pd.Series) -> pd.Series:
    """Timestamps as UTC with one resolution (microseconds, as Postgres keeps them), so joins on them match."""
    return pd.to_datetime(values, utc=True).dt.as_unit("us")


class LabelError(ValueError):
    """The data cannot give the labels asked for (too few days for the horizon)."""


@dataclass(frozen=True)
class LabelSpec:
    """When labels are taken and how far ahead they look."""

    horizon_days: int = 7
    every_days: int = 7
    warmup_days: int = 7  # days of history before the first as-of date


def landed_days(catalog_dsn: str) -> tuple[date, date] | None:
    """The first and last day of landed raw events."""
    with psycopg.connect(catalog_dsn) as conn:
        first, last = conn.execute("SELECT min(event_date), max(event_date) FROM raw_events").fetchone()
    return (first, last) if first else None


def as_of_dates(first_day: date, last_day: date, spec: LabelSpec) -> list[datetime]:
    """End-of-day as-of times every ``every_days`` after the warm-up, each with a full horizon of data after it."""
    out = []
    day = first_day + timedelta(days=spec.warmup_days - 1)
    while day + timedelta(days=spec.horizon_days) <= last_day:
        out.append(end_of_day(day))
        day += timedelta(days=spec.every_days)
    return out


def churn_labels(catalog_dsn: str, as_of: list[datetime], horizon_days: int) -> pd.DataFrame:
    """One row per eligible (as_of, entity_id) with its boolean label; columns as_of, entity_id, churned."""
    with psycopg.connect(catalog_dsn) as conn:
        return query_frame(conn, LABELS_AT, {"as_of": as_of, "h": horizon_days})


def build_labels(catalog_dsn: str, spec: LabelSpec) -> pd.DataFrame:
    """Labels over all landed data; fails when fewer than two as-of dates fit (no out-of-time split)."""
    span = landed_days(catalog_dsn)
    if span is None:
        raise LabelError("no raw events landed: materialize raw_events first")
    dates = as_of_dates(*span, spec)
    if len(dates) < 2:
        days = (span[1] - span[0]).days + 1
        raise LabelError(
            f"{days} days of data ({span[0]}..{span[1]}) give {len(dates)} as-of date(s) with a "
            f"{spec.horizon_days}-day horizon every {spec.every_days} days after {spec.warmup_days} warm-up days; "
            "an out-of-time split needs two: land more days or shorten the horizon"
        )
    return churn_labels(catalog_dsn, dates, spec.horizon_days)


def store_labels(catalog_dsn: str, frame: pd.DataFrame, horizon_days: int) -> None:
    """Replace the stored labels in one transaction."""
    with psycopg.connect(catalog_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('tessera_churn_labels'))")
        cur.execute(SCHEMA)
        cur.execute("DELETE FROM churn_labels")
        with cur.copy("COPY churn_labels (as_of, entity_id, churned, horizon_days) FROM STDIN") as copy:
            for row in frame.itertuples(index=False):
                copy.write_row((row.as_of.to_pydatetime(), row.entity_id, bool(row.churned), horizon_days))


def load_labels(catalog_dsn: str) -> pd.DataFrame:
    """The stored labels (as_of, entity_id, churned, horizon_days)."""
    with psycopg.connect(catalog_dsn) as conn:
        return query_frame(
            conn,
            f"SELECT as_of, entity_id, churned AS {LABEL}, horizon_days FROM churn_labels ORDER BY as_of, entity_id",
        )


def stored_horizon(catalog_dsn: str) -> int:
    """The horizon the stored labels were taken with."""
    with psycopg.connect(catalog_dsn) as conn:
        row = conn.execute("SELECT max(horizon_days) FROM churn_labels").fetchone()
    if row is None or row[0] is None:
        raise LabelError("no labels stored: materialize churn_labels first")
    return int(row[0])
