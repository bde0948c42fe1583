"""The migration journal on a real catalog: one migration at a time, phases only forward, no abort after cutover."""

from __future__ import annotations

import psycopg
import pytest

from shardctl.control.migration.journal import PHASES, Journal, JournalError
from tests.migrate.conftest import ServerPair


@pytest.fixture
def journal(servers: ServerPair) -> Journal:
    with psycopg.connect(servers.target, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS tessera_migration_events, tessera_migrations")
    journal = Journal(servers.target)
    journal.ensure_schema()
    journal.ensure_schema()  # idempotent
    return journal


@pytest.mark.req("JTBD-03.migration-journal")
def test_one_migration_at_a_time_and_phases_only_move_forward(journal: Journal) -> None:
    first = journal.begin({"moves": [[1, "a", "b"]]})
    with pytest.raises(JournalError, match=f"migration {first.id} is already running"):
        journal.begin({"moves": []})
    journal.finish_phase(first.id, "provisioned")
    journal.finish_phase(first.id, "provisioned")  # a resumed run finishing it again: no-op
    with pytest.raises(JournalError, match="cannot come next"):
        journal.finish_phase(first.id, "verified")
    with pytest.raises(JournalError, match="cannot come next"):
        journal.finish_phase(first.id, "planned")
    running = journal.running()
    assert running is not None
    assert (running.id, running.phase, running.plan) == (first.id, "provisioned", {"moves": [[1, "a", "b"]]})
    journal.abort(first.id)
    assert journal.running() is None

    second = journal.begin({"moves": []})
    for phase in PHASES[1:]:
        journal.finish_phase(second.id, phase)
        if phase == "cut_over":
            with pytest.raises(JournalError, match="past cutover"):
                journal.abort(second.id)
    assert journal.running() is None, "a cleaned migration is done, not running"
    with pytest.raises(JournalError, match="is done"):
        journal.finish_phase(second.id, "cleaned")
