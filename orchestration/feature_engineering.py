"""Rolling per-entity features from the raw events, computed in SQL next to the data: one definition, used
online and offline.

A daily partition D writes the entities active on D, with features as of the end of D over the 30 days up to
it: each day's write is the delta of entities whose features changed, and an entity's stored row is its
latest state. Historical retrieval (orchestration/point_in_time.py) runs the same query for any (entity, as-of
time) pairs. The feature names and their order are the model's inputs (registered with the model, read back by
serving). Labels live elsewhere (orchestration/labels.py): nothing here reads the ``churned`` column.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from orchestration.synthetic import COLUMNS

WINDOW_DAYS = 30
NUMERIC_FEATURES = (
    "txn_count_7d",
    "txn_count_30d",
    "amount_sum_7d",
    "amount_sum_30d",
    "amount_mean_30d",
    "active_days_30d",
    "distinct_categories_30d",
    "refund_rate_30d",
    "activity_trend",
    "tenure_days",
)
CATEGORICAL_FEATURES = ("segment", "country")
FEATURES = NUMERIC_FEATURES + CATEGORICAL_FEATURES

# The one feature definition, used online (each day's partition, written to the shards) and offline (historical
# retrieval for training sets, orchestration/point_in_time.py). For every (entity_id, as_of) pair of the
# ``entities`` relation it anchors at the entity's newest event with event_ts <= as_of (the same row the online
# store holds for that entity when the partitions up to as_of have run) and aggregates the events of the WINDOW_DAYS
# up to the anchor's day, never an event after the anchor. It reads the raw events through a projection without
# the ``churned`` column, so no feature can read the label.
SOURCE_COLUMNS = tuple(c for c in COLUMNS if c != "churned")

FEATURES_SQL = """
WITH entities AS ({entities}),
src AS NOT MATERIALIZED (SELECT {source_columns} FROM raw_events),
anchor AS (
    SELECT p.entity_id, p.as_of, a.event_ts AS anchor_ts, (a.event_ts AT TIME ZONE 'UTC')::date AS day
    FROM entities p
    CROSS JOIN LATERAL (
        SELECT s.event_ts FROM src s
        WHERE s.entity_id = p.entity_id
          AND s.event_date <= (p.as_of AT TIME ZONE 'UTC')::date AND s.event_ts <= p.as_of
        ORDER BY s.event_date DESC, s.event_ts DESC LIMIT 1
    ) a
)
SELECT a.entity_id,
       a.as_of,
       a.anchor_ts                                                           AS event_ts,
       count(*) FILTER (WHERE e.event_date > a.day - 7)                      AS txn_count_7d,
       count(*)                                                              AS txn_count_30d,
       round(coalesce(sum(e.amount) FILTER (WHERE e.event_date > a.day - 7), 0)::numeric, 2)::float8
                                                                             AS amount_sum_7d,
       round(sum(e.amount)::numeric, 2)::float8                              AS amount_sum_30d,
       round(avg(e.amount)::numeric, 2)::float8                              AS amount_mean_30d,
       count(DISTINCT e.event_date)                                          AS active_days_30d,
       count(DISTINCT e.category)                                            AS distinct_categories_30d,
       round(avg(e.is_refund::int), 4)::float8                               AS refund_rate_30d,
       round((count(*) FILTER (WHERE e.event_date > a.day - 7) / 7.0
              / (count(*) / {window}::numeric))::numeric, 4)::float8         AS activity_trend,
       (a.day - min(e.signup_date))                                          AS tenure_days,
       min(e.segment)                                                        AS segment,
       min(e.country)                                                        AS country
FROM anchor a JOIN src e
  ON e.entity_id = a.entity_id AND e.event_date > a.day - {window} AND e.event_date <= a.day
     AND e.event_ts <= a.anchor_ts
GROUP BY a.entity_id, a.as_of, a.anchor_ts, a.day
ORDER BY a.entity_id, a.as_of
"""

# Online: the entities active on the partition's day, as of the end of that day.
ACTIVE_ON_DAY = """SELECT DISTINCT entity_id, %(as_of)s::timestamptz AS as_of
                   FROM raw_events WHERE event_date = %(day)s AND entity_id IS NOT NULL"""


def features_query(entities: str) -> sql.Composed:
    """The feature definition over an ``entities`` relation (a query yielding entity_id, as_of)."""
    return sql.SQL(FEATURES_SQL).format(
        entities=sql.SQL(entities),
        source_columns=sql.SQL(", ").join(map(sql.Identifier, SOURCE_COLUMNS)),
        window=sql.Literal(WINDOW_DAYS),
    )


def end_of_day(day: date) -> datetime:
    """The last instant of ``day`` (UTC): a daily partition's features are as of this time."""
    return datetime.combine(day, time.max, tzinfo=UTC)


def features_as_of(catalog_dsn: str, day: date) -> list[dict]:
    """One dict per entity active on ``day``: entity_id, as_of, event_ts and the FEATURES (the online path)."""
    with psycopg.connect(catalog_dsn) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(features_query(ACTIVE_ON_DAY), {"day": day, "as_of": end_of_day(day)})
        return cur.fetchall()
