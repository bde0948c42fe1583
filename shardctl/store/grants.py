"""Least privilege: which Postgres role of which part may do what to which table, on the shards and the catalog.

The roles themselves (login, password) are created by whoever administers the servers (the local stack, the
Kubernetes setup job: ``shardctl.control.roles``); this module only grants, and only to roles that exist, so
it is safe to run on a bare server. ``apply_schema`` runs ``grant_shard_privileges`` after its migrations and
``prepare`` runs ``grant_catalog_privileges``, every time: a table a later migration creates gets its grants
the next time the schema is applied, and ``test_roles`` fails if a migration creates a table this module does
not mention (the choice of who may touch it is made, not forgotten). Why each grant:
docs/architecture/physical.md, "Database roles".
"""

from __future__ import annotations

from collections.abc import Mapping

import psycopg
from psycopg import sql

SERVING_ROLE = "tessera_serving"  # reads features and the model registry
WRITER_ROLE = "tessera_writer"  # writes features (FeatureStore / FeatureWriter)
PIPELINE_ROLE = "tessera_pipeline"  # writes features, registers models, owns orchestration's catalog tables
SCORER_ROLE = "tessera_scorer"  # reads features and the change log, writes precomputed predictions and its cursor
PART_ROLES = (SERVING_ROLE, WRITER_ROLE, PIPELINE_ROLE, SCORER_ROLE)

_FEATURE_WRITE = ("SELECT", "INSERT", "UPDATE")
_LOGICAL_FENCE_LOCK = ("SELECT", "UPDATE (changed_at)")
_CHANGE_LOG_WRITE = ("SELECT", "INSERT", "DELETE")

# table -> role -> privileges, on every shard. Tables the parts never touch map to {}.
SHARD_GRANTS: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "entity_features": {
        SERVING_ROLE: ("SELECT",),
        WRITER_ROLE: _FEATURE_WRITE,
        PIPELINE_ROLE: _FEATURE_WRITE,
        SCORER_ROLE: ("SELECT",),
    },
    # Migration 2's whole-server fence: no part reads or moves it any more (the per-logical-shard fence below
    # replaced it). The table stays for now: writers of an older Tessera still lock it during an upgrade (their
    # grants, given before, are kept); a later migration can drop it once none runs.
    "tessera_shard_fence": {},
    # The per-logical-shard fence (resharding's cutover): locked FOR SHARE by writes, which Postgres allows only
    # with UPDATE on some column; only the control plane raises it. UPDATE of ``changed_at`` alone is what lets
    # a writer take the lock without moving the fence.
    "tessera_logical_shard_fence": {WRITER_ROLE: _LOGICAL_FENCE_LOCK, PIPELINE_ROLE: _LOGICAL_FENCE_LOCK},
    # The change log serving follows (cache invalidation): writes log their batch and prune old entries.
    "tessera_feature_changes": {
        SERVING_ROLE: ("SELECT",),
        WRITER_ROLE: _CHANGE_LOG_WRITE,
        PIPELINE_ROLE: _CHANGE_LOG_WRITE,
        SCORER_ROLE: ("SELECT",),
    },
    # Precomputed predictions (shardctl/store/predictions.py): the scorer writes them (and deletes those of gone
    # entities and of logical shards placed elsewhere); serving reads them beside the features.
    "tessera_predictions": {SERVING_ROLE: ("SELECT",), SCORER_ROLE: ("SELECT", "INSERT", "UPDATE", "DELETE")},
    # The scorer's durable change-log cursor; serving reads when it last caught up (its lag).
    "tessera_scorer_cursors": {SERVING_ROLE: ("SELECT",), SCORER_ROLE: ("SELECT", "INSERT", "UPDATE")},
    "tessera_schema_migrations": {},
}

_SHARD_MAP_READ = {role: ("SELECT",) for role in PART_ROLES}
# Every reader and writer records the epoch it follows (its watcher's heartbeat) and removes itself on stop.
_EPOCH_ACKS = {role: ("SELECT", "INSERT", "UPDATE", "DELETE") for role in PART_ROLES}
# The resharding journal is the control plane's; the pipeline reads it (its placement check allows a running
# migration's copies).
_JOURNAL_READ = {PIPELINE_ROLE: ("SELECT",)}
# Serving loads the promoted version; the pipeline registers versions and moves the alias (an upsert).
# The scorer loads the promoted version as serving does.
_REGISTRY = {SERVING_ROLE: ("SELECT",), SCORER_ROLE: ("SELECT",), PIPELINE_ROLE: ("SELECT", "INSERT")}
_ALIASES = {SERVING_ROLE: ("SELECT",), SCORER_ROLE: ("SELECT",), PIPELINE_ROLE: ("SELECT", "INSERT", "UPDATE")}
# The lifecycle's records (comparisons, promotions and rollbacks) are append-only for the pipeline: it can add
# its own, never rewrite history; serving reads none of them.
_RECORDS = {PIPELINE_ROLE: ("SELECT", "INSERT")}
# API keys (digests only): serving reads them to check requests; only the control plane (`shardctl keys`) writes.
_API_KEYS_READ = {SERVING_ROLE: ("SELECT",)}

# table -> role -> privileges, in the catalog database. Orchestration's own tables (raw events, labels,
# training sets) are created, so owned, by the pipeline's role: nobody else needs a grant on them.
CATALOG_GRANTS: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "tessera_shard_epochs": _SHARD_MAP_READ,
    "tessera_shard_map": _SHARD_MAP_READ,
    "tessera_servers": _SHARD_MAP_READ,
    "tessera_placement": _SHARD_MAP_READ,
    "tessera_epoch_acks": _EPOCH_ACKS,
    "tessera_migrations": _JOURNAL_READ,
    "tessera_migration_events": {},
    "model_versions": _REGISTRY,
    "model_aliases": _ALIASES,
    "model_evaluations": _RECORDS,
    "model_promotions": _RECORDS,
    "tessera_api_keys": _API_KEYS_READ,
}
# Roles that may create tables in the catalog's public schema (their own, nobody else's).
CATALOG_CREATORS = (PIPELINE_ROLE,)


def existing_roles(conn: psycopg.Connection, roles: tuple[str, ...] = PART_ROLES) -> list[str]:
    rows = conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (list(roles),)).fetchall()
    return sorted(r[0] for r in rows)


def grant_shard_privileges(conn: psycopg.Connection) -> None:
    """Grant the parts' roles what they need on this shard (idempotent; roles that do not exist are skipped)."""
    _grant(conn, SHARD_GRANTS)


def grant_catalog_privileges(conn: psycopg.Connection) -> None:
    """Grant the parts' roles what they need in the catalog database (idempotent)."""
    roles = existing_roles(conn)
    _grant(conn, CATALOG_GRANTS)
    for role in CATALOG_CREATORS:
        if role in roles:
            conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(role)))


def _grant(conn: psycopg.Connection, grants: Mapping[str, Mapping[str, tuple[str, ...]]]) -> None:
    roles = existing_roles(conn)
    for table, by_role in grants.items():
        if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is None:
            continue  # created later; granted the next time the schema step runs
        for role, privileges in by_role.items():
            if role not in roles:
                continue
            conn.execute(
                sql.SQL("GRANT {} ON TABLE {} TO {}").format(
                    sql.SQL(", ").join(sql.SQL(p) for p in privileges), sql.Identifier(table), sql.Identifier(role)
                )
            )
        # Sequences behind serial columns: whoever may insert may draw from them.
        inserters = [r for r, p in by_role.items() if "INSERT" in p and r in roles]
        for (sequence,) in conn.execute(
            "SELECT s.relname FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' "
            "WHERE d.refobjid = to_regclass(%s) AND d.deptype IN ('a', 'i')",
            (table,),
        ).fetchall():
            for role in inserters:
                conn.execute(
                    sql.SQL("GRANT USAGE, SELECT ON SEQUENCE {} TO {}").format(
                        sql.Identifier(sequence), sql.Identifier(role)
                    )
                )
