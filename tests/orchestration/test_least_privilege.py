"""The pipeline runs as its own role: after the graph ran, orchestration's catalog tables belong to
``tessera_pipeline`` (it created them), and so does Dagster's database on the local stack."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from shardctl.store.grants import PIPELINE_ROLE


@pytest.mark.req("PLAT.least-privilege")
def test_the_pipeline_created_its_catalog_tables_as_its_own_role(graph, settings) -> None:
    with psycopg.connect(settings.catalog_dsn) as conn:
        owners = dict(
            conn.execute(
                "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public' AND tablename = ANY(%s)",
                (["raw_events", "raw_profiles", "shard_key_choices", "churn_labels", "churn_training_set"],),
            ).fetchall()
        )
        dagster_owner = conn.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'dagster'"
        ).fetchone()[0]
    assert set(owners) == {"raw_events", "raw_profiles", "shard_key_choices", "churn_labels", "churn_training_set"}
    assert set(owners.values()) == {PIPELINE_ROLE}
    assert dagster_owner == PIPELINE_ROLE
    with psycopg.connect(make_conninfo(settings.catalog_dsn, dbname="dagster")) as conn:
        dagster_tables = conn.execute(
            "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    assert dagster_tables in ([], [(PIPELINE_ROLE,)])  # Dagster's storage, where a test used it
