"""The shard's change log: every write to the feature table leaves a row naming the feature set and the entities
it changed, so a cache in front of the store can drop exactly those entries instead of trusting nothing for
longer than a time bound. The store only publishes; consumers (serving) read.

Who writes the rows, chosen by measurement (``bench/store/bench_change_log.py``, docs/benchmarks.md, "Change
log cost"): ``FeatureWriter`` logs each batch itself, one row per shard in the batch's own transaction (the ids
it streamed there; an identical re-write is logged too, which only costs a re-read). A statement trigger with
a transition table would have caught every writer for free in code, but it copies every written row into a
tuple store: it made the writer's merge of 300k rows ~1.9x slower and its COPY ~1.3x. Every other write (a
hand-written ``UPDATE``, a repair script) is caught by a row trigger that the writer's transactions switch off
(``SET LOCAL tessera.changes_logged``). Logical replication's apply worker fires no ordinary trigger, so rows
a migration copies while it follows its source are logged on the source, where they were written; the cutover
itself reaches consumers as a new shard-map epoch.

Why a transaction-id watermark (and not ``seq > last seen``): sequence numbers are taken in statement order,
rows become visible in commit order, so a later-numbered row can be read before an earlier one commits. Each row
records its writer's ``xid8``; a reader keeps the oldest transaction still running in its snapshot
(``pg_snapshot_xmin``) as its watermark and re-reads every row from there on, skipping sequence numbers it has
already handled. Every transaction older than the watermark had committed (or aborted) before the snapshot, so
nothing is skipped. This works on a hot standby (it has snapshots; only LISTEN does not), where the change log is
read from the same server the features are read from, after that server replayed the write.

Pruning: logging deletes rows older than ``CHANGE_LOG_RETENTION`` whenever it finds one (one writer at a time,
under a try-lock), so the table holds about that much history. A reader away for longer has lost changes and
must fall back to its time bound (serving does after any interruption).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg

CHANGE_TABLE = "tessera_feature_changes"
CHANGE_LOG_RETENTION_MINUTES = 10
CHANGE_LOG_RETENTION = f"{CHANGE_LOG_RETENTION_MINUTES} minutes"  # as the DDL writes it
_PRUNE_LOCK_KEY = 0x7E55C4A6
LOG_FUNCTION = "tessera_log_feature_changes"
# A writer that logs its own batch sets this for its transaction, so the row trigger stays out of its way.
LOGGED_SETTING = "tessera.changes_logged"
LOG_BATCH_SQL = f"SELECT {LOG_FUNCTION}(%s, %s)"
MARK_LOGGED_SQL = f"SET LOCAL {LOGGED_SETTING} = 'on'"


def change_log_ddl(feature_table: str) -> str:
    """The change log table, the function that logs (and prunes), and the row trigger on ``feature_table`` for
    writes that do not log themselves (``feature_table``: a safe identifier, ``shardctl.store.schema``'s own)."""
    return f"""CREATE TABLE {CHANGE_TABLE} (
    seq         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    txid        xid8 NOT NULL DEFAULT pg_current_xact_id(),
    feature_set text NOT NULL,
    entity_ids  text[] NOT NULL,
    changed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX {CHANGE_TABLE}_txid ON {CHANGE_TABLE} (txid);
CREATE INDEX {CHANGE_TABLE}_changed_at ON {CHANGE_TABLE} (changed_at);
CREATE FUNCTION {LOG_FUNCTION}(p_feature_set text, p_entity_ids text[]) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {CHANGE_TABLE} (feature_set, entity_ids) VALUES (p_feature_set, p_entity_ids);
    IF EXISTS (SELECT 1 FROM {CHANGE_TABLE} WHERE changed_at < now() - interval '{CHANGE_LOG_RETENTION}')
       AND pg_try_advisory_xact_lock({_PRUNE_LOCK_KEY}) THEN
        DELETE FROM {CHANGE_TABLE} WHERE changed_at < now() - interval '{CHANGE_LOG_RETENTION}';
    END IF;
END
$$;
CREATE FUNCTION tessera_log_feature_row_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        PERFORM {LOG_FUNCTION}(OLD.feature_set, ARRAY[OLD.entity_id]);
    END IF;
    IF TG_OP = 'INSERT' THEN
        PERFORM {LOG_FUNCTION}(NEW.feature_set, ARRAY[NEW.entity_id]);
    ELSIF TG_OP = 'UPDATE' AND (NEW.entity_id, NEW.feature_set) IS DISTINCT FROM (OLD.entity_id, OLD.feature_set) THEN
        PERFORM {LOG_FUNCTION}(NEW.feature_set, ARRAY[NEW.entity_id]);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER tessera_feature_changes AFTER INSERT OR UPDATE OR DELETE ON {feature_table} FOR EACH ROW
    WHEN (current_setting('{LOGGED_SETTING}', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION tessera_log_feature_row_change()"""


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
