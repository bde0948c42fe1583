"""Rolling per-entity features from the raw events, computed in SQL next to the data.

A daily partition D writes the entities active on D, with features as of the end of D over the 30 days up to
it: each day's write is the delta of entities whose features changed, and an entity's stored row is its
latest state. The feature names and their order are the model's inputs (registered with the model, read
back by serving).
"""

from __future__ import annotations

from datetime import date

import psycopg
from psycopg.rows import dict_row

# The long window of the ``*_30d`` features (the SQL takes it as a parameter; the names say its length).
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

FEATURES_AS_OF = """
WITH active AS (
    SELECT DISTINCT entity_id FROM raw_events WHERE event_date = %(day)s AND entity_id IS NOT NULL
)
SELECT e.entity_id,
       max(e.event_ts)                                                       AS event_ts,
       count(*) FILTER (WHERE e.event_date > %(day)s - 7)                    AS txn_count_7d,
       count(*)                                                              AS txn_count_30d,
       round(coalesce(sum(e.amount) FILTER (WHERE e.event_date > %(day)s - 7), 0)::numeric, 2)::float8
                                                                             AS amount_sum_7d,
       round(sum(e.amount)::numeric, 2)::float8                              AS amount_sum_30d,
       round(avg(e.amount)::numeric, 2)::float8                              AS amount_mean_30d,
       count(DISTINCT e.event_date)                                          AS active_days_30d,
       count(DISTINCT e.category)                                            AS distinct_categories_30d,
       round(avg(e.is_refund::int), 4)::float8                               AS refund_rate_30d,
       round((count(*) FILTER (WHERE e.event_date > %(day)s - 7) / 7.0
              / (count(*) / %(window)s::numeric))::numeric, 4)::float8       AS activity_trend,
       (%(day)s - min(e.signup_date))                                        AS tenure_days,
       min(e.segment)                                                        AS segment,
       min(e.country)                                                        AS country
FROM raw_events e JOIN active USING (entity_id)
WHERE e.event_date > %(day)s - %(window)s::int AND e.event_date <= %(day)s
GROUP BY e.entity_id
ORDER BY e.entity_id
"""

LABELS = """
SELECT entity_id, bool_or(churned) AS churned, min(signup_date) AS signup_date
FROM raw_events WHERE entity_id IS NOT NULL GROUP BY entity_id
"""


def features_as_of(catalog_dsn: str, day: date) -> list[dict]:
    """One dict per entity active on ``day``: entity_id, event_ts and the FEATURES."""
    with psycopg.connect(catalog_dsn) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(FEATURES_AS_OF, {"day": day, "window": WINDOW_DAYS})
        return cur.fetchall()


def labels(catalog_dsn: str) -> list[dict]:
    """The label (did the customer churn) and signup date per entity, from the source system's data."""
    with psycopg.connect(catalog_dsn) as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(LABELS)
        return cur.fetchall()
