"""The migration journal in the catalog: which migration runs, its plan, and the last phase it finished.

A resumed run reads the journal and re-runs the first unfinished phase; every phase is idempotent
(``replication``'s ``ensure_*`` steps, verification, cleanup by logical shard), so finishing a phase twice
is harmless and the journal only has to say where to start. One migration at a time: a partial unique
index admits a single ``running`` row, so a second ``begin`` fails in the database, not by a race in
Python. Phases only move forward; ``abort`` is refused once the new placement is published (moving back
is then another migration).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import psycopg

from shardctl.errors import ControlError
from shardctl.store.connection import connect

PHASES = ("planned", "provisioned", "copying", "synced", "verified", "cut_over", "cleaned")
ABORTABLE = frozenset(PHASES[: PHASES.index("cut_over")])

JOURNAL_DDL = """
CREATE TABLE IF NOT EXISTS tessera_migrations (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    state      text NOT NULL CHECK (state IN ('running', 'done', 'aborted')),
    phase      text NOT NULL,
    plan       jsonb NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS tessera_migrations_one_running ON tessera_migrations ((true))
    WHERE state = 'running';
CREATE TABLE IF NOT EXISTS tessera_migration_events (
    migration_id bigint NOT NULL REFERENCES tessera_migrations (id),
    at           timestamptz NOT NULL DEFAULT now(),
    phase        text NOT NULL,
    detail       jsonb NOT NULL DEFAULT '{}'
);
"""


class JournalError(ControlError, RuntimeError):
    """A migration is already running, or a phase change is not allowed."""


@dataclass(frozen=True)
class MigrationRecord:
    id: int
    state: str
    phase: str
    plan: dict[str, Any]


class Journal:
    """The journal tables in the catalog database (``catalog_dsn``)."""

    def __init__(self, catalog_dsn: str):
        self.catalog_dsn = catalog_dsn

    def _connect(self) -> psycopg.Connection:
        return connect(self.catalog_dsn, connect_timeout=5)

    def ensure_schema(self) -> None:
        with self._connect() as conn:
            conn.execute(JOURNAL_DDL)

    def begin(self, plan: dict[str, Any]) -> MigrationRecord:
        """Record a new migration in phase ``planned``; ``JournalError`` naming the running one if any."""
        with self._connect() as conn:
            try:
                row = conn.execute(
                    "INSERT INTO tessera_migrations (state, phase, plan) VALUES ('running', 'planned', %s) "
                    "RETURNING id",
                    (json.dumps(plan),),
                ).fetchone()
            except psycopg.errors.UniqueViolation:
                conn.rollback()
                running = _running(conn)
                raise JournalError(
                    f"migration {running.id if running else '?'} is already running (phase "
                    f"{running.phase if running else '?'}): resume or abort it first"
                ) from None
            _event(conn, row[0], "planned", {})
        return MigrationRecord(row[0], "running", "planned", plan)

    def running(self) -> MigrationRecord | None:
        with self._connect() as conn:
            return _running(conn)

    def get(self, migration_id: int) -> MigrationRecord | None:
        with self._connect() as conn:
            row = conn.execute(
                "SELECT id, state, phase, plan FROM tessera_migrations WHERE id = %s", (migration_id,)
            ).fetchone()
        return MigrationRecord(*row) if row else None

    def latest(self) -> MigrationRecord | None:
        """The newest migration, whatever its state (status shows the last one when none runs)."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT id, state, phase, plan FROM tessera_migrations ORDER BY id DESC LIMIT 1"
            ).fetchone()
        return MigrationRecord(*row) if row else None

    def events(self, migration_id: int) -> list[tuple[str, Any, dict[str, Any]]]:
        """Each finished phase of the migration: (phase, when, detail), oldest first."""
        with self._connect() as conn:
            return [
                (r[0], r[1], r[2])
                for r in conn.execute(
                    "SELECT phase, at, detail FROM tessera_migration_events WHERE migration_id = %s ORDER BY at",
                    (migration_id,),
                )
            ]

    def finish_phase(self, migration_id: int, phase: str, detail: dict[str, Any] | None = None) -> None:
        """Record ``phase`` as finished. The same phase again is a no-op; going back or skipping is refused."""
        if phase not in PHASES:
            raise JournalError(f"unknown phase {phase!r}: one of {PHASES}")
        with self._connect() as conn:
            current = _locked(conn, migration_id)
            have, want = PHASES.index(current.phase), PHASES.index(phase)
            if want == have:
                return
            if want != have + 1:
                raise JournalError(f"migration {migration_id} is at {current.phase}; {phase} cannot come next")
            state = "done" if phase == PHASES[-1] else "running"
            conn.execute(
                "UPDATE tessera_migrations SET phase = %s, state = %s, updated_at = now() WHERE id = %s",
                (phase, state, migration_id),
            )
            _event(conn, migration_id, phase, detail or {})

    def abort(self, migration_id: int) -> None:
        """Mark the migration aborted (the caller has torn its links down); refused after cutover."""
        with self._connect() as conn:
            current = _locked(conn, migration_id)
            if current.phase not in ABORTABLE:
                raise JournalError(
                    f"migration {migration_id} is past cutover ({current.phase}): moving back is a new migration"
                )
            conn.execute(
                "UPDATE tessera_migrations SET state = 'aborted', updated_at = now() WHERE id = %s", (migration_id,)
            )
            _event(conn, migration_id, current.phase, {"aborted": True})


def _running(conn: psycopg.Connection) -> MigrationRecord | None:
    row = conn.execute("SELECT id, state, phase, plan FROM tessera_migrations WHERE state = 'running'").fetchone()
    return MigrationRecord(*row) if row else None


def _locked(conn: psycopg.Connection, migration_id: int) -> MigrationRecord:
    row = conn.execute(
        "SELECT id, state, phase, plan FROM tessera_migrations WHERE id = %s FOR UPDATE", (migration_id,)
    ).fetchone()
    if row is None:
        raise JournalError(f"no migration {migration_id}")
    if row[1] != "running":
        raise JournalError(f"migration {migration_id} is {row[1]}")
    return MigrationRecord(*row)


def _event(conn: psycopg.Connection, migration_id: int, phase: str, detail: dict[str, Any]) -> None:
    conn.execute(
        "INSERT INTO tessera_migration_events (migration_id, phase, detail) VALUES (%s, %s, %s)",
        (migration_id, phase, json.dumps(detail)),
    )
