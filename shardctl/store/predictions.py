"""Precomputed predictions: a table on each server beside the features they were computed from, and the durable
cursor of the scorer that fills it (``serving/scorer/``). The store owns the tables and their SQL; the
scorer (serving) and the re-scoring job only run it.

Where they live, and why there: on the entity's own server, keyed like the features (``logical_shard`` leads the
key), so a lookup is the same index descent as the feature read and rides in the same statement (``SCORED_READ_SQL``
joins them), and a Redis flush loses nothing. A prediction is tagged with the model (name and registry version)
and with the features it was computed from: their ``version`` and a digest of their stored JSON
(``md5(features::text)``, canonical for jsonb). The read joins on all of them, so a prediction made from other
features (older, newer, or a hand-written ``UPDATE`` that did not bump the version) or by another model version
than the caller serves is never returned: correctness does not depend on the scorer keeping up.

Resharding does not move this table (the migration engine moves ``entity_features``): predictions are derived
data. After a cutover the moved entities have none on their new server, so serving scores them on demand, and
the scorer, seeing the new epoch, scores whatever its servers hold without a current prediction and deletes the
predictions of logical shards placed elsewhere (``MISPLACED_DELETE_SQL``).

The cursor (``tessera_scorer_cursors``): one row per scorer name on each server, holding the change-log cursor
(``shardctl.store.changes.ChangeCursor``: watermark and the sequence numbers handled past it), and
``caught_up_at``: every change committed before it has been scored. The scorer saves it only after the
predictions of everything before it are committed, so a scorer killed mid-batch re-reads those changes on
restart (at least once; a prediction written twice is the same row). Serving reads ``caught_up_at`` as the
scorer's lag.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg

from shardctl.store.changes import ChangeCursor

# The feature table (``shardctl.store.schema.FEATURE_TABLE``, which imports this module and checks they agree).
FEATURE_TABLE = "entity_features"
PREDICTION_TABLE = "tessera_predictions"
CURSOR_TABLE = "tessera_scorer_cursors"
DEFAULT_SCORER = "scorer"
# Announced on the server in each write's transaction (so on its commit), payload ``{model key} {rows}``: whoever
# waits for a prediction (a test, a benchmark) LISTENs on the entity's server instead of polling.
WRITTEN_CHANNEL = "tessera_predictions_written"

PREDICTIONS_DDL = f"""CREATE TABLE {PREDICTION_TABLE} (
    logical_shard   integer NOT NULL,
    entity_id       text NOT NULL,
    feature_set     text NOT NULL,
    model_name      text NOT NULL,
    model_version   integer NOT NULL,
    feature_version bigint NOT NULL,
    feature_digest  uuid NOT NULL,
    score           double precision NOT NULL,
    label           text,
    scored_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (logical_shard, entity_id, feature_set, model_name)
) WITH (fillfactor = 70);
CREATE TABLE {CURSOR_TABLE} (
    scorer       text PRIMARY KEY,
    watermark    xid8 NOT NULL,
    handled      jsonb NOT NULL DEFAULT '{{}}'::jsonb,
    caught_up_at timestamptz NOT NULL,
    epoch        bigint NOT NULL DEFAULT 0,
    saved_at     timestamptz NOT NULL DEFAULT now()
)"""

_DIGEST = "md5(f.features::text)::uuid"

# Serving's shard read: the features and, when one exists for exactly these features and this model version, the
# precomputed prediction (score, label).
SCORED_READ_SQL = (
    f"SELECT f.entity_id, f.features, f.event_ts, f.written_at, f.version, p.score, p.label FROM {FEATURE_TABLE} f "
    f"LEFT JOIN {PREDICTION_TABLE} p ON p.logical_shard = f.logical_shard AND p.entity_id = f.entity_id "
    "AND p.feature_set = f.feature_set AND p.model_name = %s AND p.model_version = %s "
    f"AND p.feature_version = f.version AND p.feature_digest = {_DIGEST} "
    "WHERE f.feature_set = %s AND (f.logical_shard, f.entity_id) IN (SELECT * FROM unnest(%s::integer[], %s::text[]))"
)

# The scorer's read of changed entities on one server (absent ones were deleted: their predictions go too).
FEATURES_TO_SCORE_SQL = (
    f"SELECT f.logical_shard, f.entity_id, f.features, f.version, {_DIGEST}, f.event_ts, f.written_at "
    f"FROM {FEATURE_TABLE} f "
    "WHERE f.feature_set = %s AND (f.logical_shard, f.entity_id) IN (SELECT * FROM unnest(%s::integer[], %s::text[]))"
)

# Entities of one logical shard with no prediction for these features and this model version: a page of them
# after ``entity_id`` (keyset pagination; ``force`` re-scores current ones too). One logical shard per statement,
# not ``logical_shard = ANY(...)`` with a row comparison: PostgreSQL 15 walks every earlier shard of the array
# again for each page (a full pass became quadratic, 9k rows/s at the end of 300k against 25k at its start).
STALE_PAGE_SQL = (
    f"SELECT f.logical_shard, f.entity_id, f.features, f.version, {_DIGEST}, f.event_ts, f.written_at "
    f"FROM {FEATURE_TABLE} f "
    f"LEFT JOIN {PREDICTION_TABLE} p ON p.logical_shard = f.logical_shard AND p.entity_id = f.entity_id "
    "AND p.feature_set = f.feature_set AND p.model_name = %(model)s "
    "WHERE f.feature_set = %(feature_set)s AND f.logical_shard = %(shard)s AND f.entity_id > %(after)s "
    f"AND (%(force)s OR p.entity_id IS NULL OR p.model_version <> %(version)s OR p.feature_version <> f.version "
    f"OR p.feature_digest <> {_DIGEST}) "
    "ORDER BY f.entity_id LIMIT %(limit)s"
)
# A page of one logical shard's current predictions of a model version, with what serving caches beside them: the
# scorer copies them into serving's cache when it starts a new epoch there (``serving/scorer/cache_fill.py``).
CURRENT_PAGE_SQL = (
    f"SELECT f.entity_id, f.version, f.event_ts, f.written_at, p.score, p.label FROM {FEATURE_TABLE} f "
    f"JOIN {PREDICTION_TABLE} p ON p.logical_shard = f.logical_shard AND p.entity_id = f.entity_id "
    "AND p.feature_set = f.feature_set AND p.model_name = %(model)s AND p.model_version = %(version)s "
    f"AND p.feature_version = f.version AND p.feature_digest = {_DIGEST} "
    "WHERE f.feature_set = %(feature_set)s AND f.logical_shard = %(shard)s AND f.entity_id > %(after)s "
    "ORDER BY f.entity_id LIMIT %(limit)s"
)
COUNT_SQL = f"SELECT count(*) FROM {FEATURE_TABLE} WHERE feature_set = %s AND logical_shard = ANY(%s::integer[])"

# Write predictions only for features still current when the statement runs: a slow re-score cannot put back a
# prediction of features a later change replaced (that change's own scoring writes the current one).
_UPSERT_SQL = f"""INSERT INTO {PREDICTION_TABLE} AS p
    (logical_shard, entity_id, feature_set, model_name, model_version, feature_version, feature_digest, score, label)
SELECT f.logical_shard, f.entity_id, f.feature_set, %s, %s, u.fv, u.digest, u.score, u.label
  FROM unnest(%s::integer[], %s::text[], %s::bigint[], %s::uuid[], %s::float8[], %s::text[])
       AS u(ls, eid, fv, digest, score, label)
  JOIN {FEATURE_TABLE} f ON f.logical_shard = u.ls AND f.entity_id = u.eid AND f.feature_set = %s
   AND f.version = u.fv AND {_DIGEST} = u.digest
ON CONFLICT (logical_shard, entity_id, feature_set, model_name) DO UPDATE
   SET model_version = excluded.model_version, feature_version = excluded.feature_version,
       feature_digest = excluded.feature_digest, score = excluded.score, label = excluded.label, scored_at = now()
RETURNING p.entity_id"""
_DELETE_GONE_SQL = (
    f"DELETE FROM {PREDICTION_TABLE} p WHERE p.feature_set = %s "
    "AND (p.logical_shard, p.entity_id) IN (SELECT * FROM unnest(%s::integer[], %s::text[])) "
    f"AND NOT EXISTS (SELECT 1 FROM {FEATURE_TABLE} f WHERE f.logical_shard = p.logical_shard "
    "AND f.entity_id = p.entity_id AND f.feature_set = p.feature_set)"
)
MISPLACED_DELETE_SQL = f"DELETE FROM {PREDICTION_TABLE} WHERE NOT (logical_shard = ANY(%s::integer[]))"

_LOAD_CURSOR_SQL = (
    "SELECT watermark::text, handled, epoch, extract(epoch FROM now() - saved_at)::float8 "
    f"FROM {CURSOR_TABLE} WHERE scorer = %s"
)
_SAVE_CURSOR_SQL = f"""INSERT INTO {CURSOR_TABLE} (scorer, watermark, handled, caught_up_at, epoch, saved_at)
VALUES (%s, %s::text::xid8, %s::jsonb, %s, %s, now())
ON CONFLICT (scorer) DO UPDATE SET watermark = excluded.watermark, handled = excluded.handled,
    caught_up_at = excluded.caught_up_at, epoch = excluded.epoch, saved_at = now()"""
# Serving's view of the scorer on one server: seconds since the freshest scorer was caught up (NULL: none ran).
LAG_SQL = f"SELECT extract(epoch FROM now() - max(caught_up_at))::float8 FROM {CURSOR_TABLE}"


@dataclass(frozen=True, slots=True)
class ScoredRow:
    """One entity's prediction and the features it was computed from."""

    logical_shard: int
    entity_id: str
    feature_version: int
    feature_digest: object  # uuid.UUID as read from the server
    score: float
    label: str | None


@dataclass(frozen=True, slots=True)
class SavedCursor:
    cursor: ChangeCursor
    epoch: int  # the shard-map epoch it was saved under (another one now: the server's placement changed)
    age_seconds: float  # since it was saved


async def write_predictions(
    conn: psycopg.AsyncConnection,
    model_name: str,
    model_version: int,
    feature_set: str,
    rows: Sequence[ScoredRow],
    gone: Sequence[tuple[int, str]] = (),
) -> set[str]:
    """Upsert ``rows`` (those whose features are still current) and delete the predictions of ``gone`` entities
    ((logical shard, entity id)) whose features no longer exist; returns the ids of the entities written. Runs in
    the caller's transaction."""
    written: set[str] = set()
    if rows:
        cur = await conn.execute(
            _UPSERT_SQL,
            (
                model_name,
                model_version,
                [r.logical_shard for r in rows],
                [r.entity_id for r in rows],
                [r.feature_version for r in rows],
                [r.feature_digest for r in rows],
                [r.score for r in rows],
                [r.label for r in rows],
                feature_set,
            ),
        )
        written = {r[0] for r in await cur.fetchall()}
        await conn.execute(
            "SELECT pg_notify(%s, %s)", (WRITTEN_CHANNEL, f"{model_name}:{model_version} {len(written)}")
        )
    if gone:
        await conn.execute(_DELETE_GONE_SQL, (feature_set, [g[0] for g in gone], [g[1] for g in gone]))
    return written


async def load_cursor(conn: psycopg.AsyncConnection, scorer: str = DEFAULT_SCORER) -> SavedCursor | None:
    row = await (await conn.execute(_LOAD_CURSOR_SQL, (scorer,))).fetchone()
    if row is None:
        return None
    watermark, handled, epoch, age = row
    cursor = ChangeCursor(int(watermark), {int(s): int(t) for s, t in handled.items()})
    return SavedCursor(cursor, int(epoch), float(age))


async def save_cursor(
    conn: psycopg.AsyncConnection,
    cursor: ChangeCursor,
    caught_up_at: datetime,
    epoch: int,
    scorer: str = DEFAULT_SCORER,
) -> None:
    handled = json.dumps({str(s): t for s, t in cursor.handled.items()})
    await conn.execute(_SAVE_CURSOR_SQL, (scorer, str(cursor.watermark), handled, caught_up_at, epoch))
