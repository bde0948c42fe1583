"""Fixtures for the feature store tests: the session stack's store, and helpers to look at shards in SQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from shardctl.process import free_port
from shardctl.settings import TesseraSettings, load_settings
from shardctl.stack.manager import Stack
from shardctl.store import FeatureStore
from shardctl.store.writer import FeatureRow

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="session")
def feature_store(settings: TesseraSettings) -> Iterator[FeatureStore]:
    """The feature store of the session stack (2 shards); tests isolate themselves by feature set."""
    with FeatureStore.open(settings) as store:
        yield store


@pytest.fixture
def feature_set() -> str:
    """A feature set no other test writes to."""
    return f"test_{uuid.uuid4().hex[:12]}"


def make_rows(n: int, *, prefix: str = "e", ts: datetime = T0, seed: int = 0) -> list[FeatureRow]:
    return [
        FeatureRow(
            f"{prefix}{i}",
            ts + timedelta(seconds=i),
            {"spend": float(i * 1.5 + seed), "visits": i + seed, "tier": f"t{(i + seed) % 3}", "active": i % 2 == 0},
        )
        for i in range(n)
    ]


def shard_snapshot(dsns: tuple[str, ...], feature_set: str) -> list[list[tuple]]:
    """Every stored row of ``feature_set`` on every shard, with ``xmin`` (a new tuple version changes it)."""
    snapshot = []
    for dsn in dsns:
        with psycopg.connect(dsn) as conn:
            snapshot.append(
                conn.execute(
                    "SELECT entity_id, features, event_ts, written_at, version, xmin::text FROM entity_features "
                    "WHERE feature_set = %s ORDER BY entity_id",
                    (feature_set,),
                ).fetchall()
            )
    return snapshot


@contextmanager
def private_stack(root: Path, servers: int) -> Iterator[tuple[Stack, TesseraSettings]]:
    """A stack of its own (catalog + ``servers`` servers) for tests that publish epochs or stop servers: things
    that would disturb the session stack. Stopped and purged afterwards."""
    stack = Stack(root)
    state = stack.up(shards=servers, base_port=free_port(block=10))
    started = stack.postgres_servers(state)
    settings = load_settings(
        data_dir=root,
        catalog_dsn=started[0].dsn(),
        servers=[{"index": i, "dsn": s.dsn()} for i, s in enumerate(started[1:])],
    )
    try:
        yield stack, settings
    finally:
        failed = stack.down(purge=True)
        assert not failed, f"servers left running: {failed}"
