"""Write path and storage behaviour behind the throughput and bloat figures (the figures live in bench/)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from shardctl.settings import TesseraSettings
from shardctl.store import FeatureStore
from shardctl.store.hashing import install_sql_functions
from shardctl.store.schema import TUNED_STORAGE, apply_schema
from shardctl.store.shardmap import ShardMap
from shardctl.store.writer import FeatureWriter
from tests.store.conftest import T0, make_rows

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.req("JTBD-03.write-throughput")
def test_fresh_entities_are_copied_straight_in_and_existing_ones_merged(
    feature_store: FeatureStore, feature_set: str
) -> None:
    fresh = feature_store.write(feature_set, make_rows(200))
    assert fresh.fast_path_shards == [0, 1]  # binary COPY into the table itself, no staging pass
    mixed = feature_store.write(feature_set, make_rows(300, seed=1, ts=T0 + timedelta(days=1)))
    assert mixed.fast_path_shards == []  # the probe saw stored entities: staging + one merge per shard
    assert (mixed.inserted, mixed.updated) == (100, 200)


@pytest.fixture
def scratch_databases(settings: TesseraSettings) -> Iterator[dict[str, str]]:
    """Two scratch databases on shard 0: one with Tessera's schema, one with the same table on defaults."""
    admin = settings.shard_dsns()[0]
    names = {"tuned": f"bloat_t_{uuid.uuid4().hex[:6]}", "default": f"bloat_d_{uuid.uuid4().hex[:6]}"}
    with psycopg.connect(admin, autocommit=True) as conn:
        for name in names.values():
            conn.execute(f"CREATE DATABASE {name}")
    dsns = {kind: make_conninfo(admin, dbname=name) for kind, name in names.items()}
    try:
        for kind, dsn in dsns.items():
            with psycopg.connect(dsn) as conn:
                install_sql_functions(conn)
            apply_schema(dsn)
            if kind == "default":  # the same table on Postgres' storage defaults
                with psycopg.connect(dsn) as conn:
                    conn.execute(f"ALTER TABLE entity_features RESET ({', '.join(TUNED_STORAGE)})")
        yield dsns
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            for name in names.values():
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _sizes(dsn: str) -> tuple[int, int]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT pg_relation_size('entity_features'), pg_relation_size('entity_features_pkey')"
        ).fetchone()


@pytest.mark.req("JTBD-03.bloat")
def test_full_table_rewrites_do_not_grow_the_tuned_table_or_its_index(scratch_databases: dict[str, str]) -> None:
    growth = {}
    for kind, dsn in scratch_databases.items():
        with FeatureWriter(ShardMap(1, (dsn,))) as writer:
            writer.write("fs", make_rows(3000))
            loaded = _sizes(dsn)
            for round_ in range(1, 4):
                report = writer.write("fs", make_rows(3000, seed=round_, ts=T0 + timedelta(days=round_)))
                assert report.updated == 3000
        after = _sizes(dsn)
        growth[kind] = (after[0] / loaded[0], after[1] / loaded[1])
    assert growth["tuned"] == (1.0, 1.0), "HOT updates into the fillfactor space should need no new pages"
    table_growth, index_growth = growth["default"]
    assert table_growth > 1.5, "the untuned twin should grow: this test must be able to tell them apart"
    assert index_growth > 1.0


def test_the_benchmark_runs_from_one_command_and_prints_figures_and_ratios(tmp_path: Path) -> None:
    """A tiny run of bench/store/bench_store.py still works end to end. A smoke test of the benchmark only: it
    proves no throughput or bloat figure (the tests above prove the mechanisms; docs/benchmarks.md has the
    figures)."""
    out = tmp_path / "figures.json"
    command = [
        sys.executable,
        "bench/store/bench_store.py",
        "--rows=2000",
        "--bloat-rows=2000",
        "--rounds=2",
        "--read-iterations=20",
        f"--json={out}",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    for phrase in ("x raw COPY", "x the DB merge", "p99", "growth after 2 rounds"):
        assert phrase in done.stdout
    assert out.read_text().count("rows_s") >= 5
