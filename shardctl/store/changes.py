"""The shard's change log: every write to the feature table leaves one row per statement and feature set naming
the entities it changed, so a cache in front of the store can drop exactly those entries instead of trusting
nothing for longer than a time bound. The store only publishes; consumers (serving) read.

Why a statement-level trigger with a transition table (and not rows the writer commits itself): it catches every
writer (``FeatureWriter``, the pipeline, a migration's initial copy, a hand-written ``UPDATE``) and costs one
``INSERT`` per statement, not per row: measured in ``bench/store/bench_change_log.py`` (docs/benchmarks.md,
"Change log cost"). Logical replication's apply worker fires no statement triggers, so rows a migration copies
while it follows its source are logged on the source, where they were written.

Why a transaction-id watermark (and not ``seq > last seen``): sequence numbers are taken in statement order,
rows become visible in commit order, so a later-numbered row can be read before an earlier one commits. Each row
records its writer's ``xid8``; a reader keeps the oldest transaction still running in its snapshot
(``pg_snapshot_xmin``) as its watermark and re-reads every row from there on, skipping sequence numbers it has
already handled. Every transaction older than the watermark had committed (or aborted) before the snapshot, so
nothing is skipped. This works on a hot standby (it has snapshots; only LISTEN does not), where the change log is
read from the same server the features are read from, after that server replayed the write.

Pruning: the trigger deletes rows older than ``CHANGE_LOG_RETENTION`` whenever it finds one (at most one writer
at a time, under a try-lock), so the table holds about that much history. A reader away for longer has lost
changes and must fall back to its time bound (serving does after any interruption).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg

CHANGE_TABLE = "tessera_feature_changes"
CHANGE_LOG_RETENTION = "10 minutes"
_PRUNE_LOCK_KEY = 0x7E55C4A6


def change_log_ddl(feature_table: str) -> str:
    """The change log table, its pruning trigger function, and the three statement triggers on ``feature_table``
    (a safe identifier: ``shardctl.store.schema`` passes its own)."""
    return f"""CREATE TABLE {CHANGE_TABLE} (
    seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    txid        xid8 NOT NULL DEFAULT pg_current_xact_id(),
    feature_set text NOT NULL,
    entity_ids  text[] NOT NULL,
    changed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX {CHANGE_TABLE}_txid ON {CHANGE_TABLE} (txid);
CREATE INDEX {CHANGE_TABLE}_changed_at ON {CHANGE_TABLE} (changed_at);
CREATE FUNCTION tessera_log_feature_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {CHANGE_TABLE} (feature_set, entity_ids)
    SELECT feature_set, array_agg(entity_id) FROM tessera_changed_rows GROUP BY feature_set;
    IF EXISTS (SELECT 1 FROM {CHANGE_TABLE} WHERE changed_at < now() - interval '{CHANGE_LOG_RETENTION}')
       AND pg_try_advisory_xact_lock({_PRUNE_LOCK_KEY}) THEN
        DELETE FROM {CHANGE_TABLE} WHERE changed_at < now() - interval '{CHANGE_LOG_RETENTION}';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER tessera_changes_insert AFTER INSERT ON {feature_table}
    REFERENCING NEW TABLE AS tessera_changed_rows FOR EACH STATEMENT EXECUTE FUNCTION tessera_log_feature_changes();
CREATE TRIGGER tessera_changes_update AFTER UPDATE ON {feature_table}
    REFERENCING NEW TABLE AS tessera_changed_rows FOR EACH STATEMENT EXECUTE FUNCTION tessera_log_feature_changes();
CREATE TRIGGER tessera_changes_delete AFTER DELETE ON {feature_table}
    REFERENCING OLD TABLE AS tessera_changed_rows FOR EACH STATEMENT EXECUTE FUNCTION tessera_log_feature_changes()"""


# One statement, so the watermark and the rows come from the same snapshot. The LEFT JOIN keeps the watermark's
# row when there is no change to read.
_POLL_SQL = f"""SELECT h.horizon::text, c.seq, c.txid::text, c.feature_set, c.entity_ids, pg_is_in_recovery()
FROM (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS horizon) h
LEFT JOIN {CHANGE_TABLE} c ON c.txid >= %s::text::xid8
ORDER BY c.seq"""
_HORIZON_SQL = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text, pg_is_in_recovery()"


@dataclass(frozen=True, slots=True)
class FeatureChange:
    """Entities of one feature set that one statement wrote (inserted, updated or deleted)."""

    feature_set: str
    entity_ids: tuple[str, ...]


@dataclass
class ChangeCursor:
    """Where a reader of one shard's change log stands: the watermark (every transaction older has been read)
    and the sequence numbers already handled at or after it (with their transaction ids, to forget them once
    the watermark passes). Pure bookkeeping: ``advance`` takes what one poll returned."""

    watermark: int = 0
    handled: dict[int, int] = field(default_factory=dict)  # seq -> txid

    def advance(self, horizon: int, rows: list[tuple[int, int, str, list[str]]]) -> list[FeatureChange]:
        """Rows (seq, txid, feature set, ids) read at or after the watermark, in a snapshot whose oldest running
        transaction is ``horizon``; returns the changes not handled before, and moves the watermark."""
        fresh: list[FeatureChange] = []
        for seq, txid, feature_set, ids in rows:
            if seq in self.handled:
                continue
            self.handled[seq] = txid
            fresh.append(FeatureChange(feature_set, tuple(ids)))
        self.watermark = max(self.watermark, horizon)
        self.handled = {s: t for s, t in self.handled.items() if t >= self.watermark}
        return fresh


@dataclass
class PollResult:
    changes: list[FeatureChange]
    on_standby: bool


async def start_cursor(conn: psycopg.AsyncConnection) -> tuple[ChangeCursor, bool]:
    """A cursor that starts now: every change committed before this call is taken as already applied."""
    cursor = await conn.execute(_HORIZON_SQL)
    horizon, on_standby = await cursor.fetchone()
    return ChangeCursor(int(horizon)), bool(on_standby)


async def poll_changes(conn: psycopg.AsyncConnection, position: ChangeCursor) -> PollResult:
    """Read the changes committed since ``position`` (an autocommit connection: one snapshot per call)."""
    cursor = await conn.execute(_POLL_SQL, (str(position.watermark),))
    rows = await cursor.fetchall()
    if not rows:
        raise psycopg.OperationalError("change log poll returned no row")
    horizon, on_standby = int(rows[0][0]), bool(rows[0][5])
    found = [(seq, int(txid), fs, ids) for _, seq, txid, fs, ids, _ in rows if seq is not None]
    return PollResult(position.advance(horizon, found), on_standby)


def chunks(ids: tuple[str, ...], size: int = 1000) -> Iterator[tuple[str, ...]]:
    """A large change's ids in slices (a bulk write can name a million entities)."""
    for start in range(0, len(ids), size):
        yield ids[start : start + size]
