"""Probe the logical-replication facts online resharding builds on, on each PostgreSQL this machine has.

    PYTHONPATH=. .venv/bin/python bench/migrate/probe_replication_facts.py            # system 15 and the wheel's 18
    PYTHONPATH=. .venv/bin/python bench/migrate/probe_replication_facts.py --bin-dir /usr/lib/postgresql/15/bin

For each bin dir it starts two throwaway servers (from one initdb'd template) in a temporary directory,
runs every probe, prints one line per fact and a JSON summary, and stops both servers by their postmaster
PID. Each probe reports what the server did (the error text when it refused), not what the docs say:
docs/architecture/resharding.md quotes these results.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import psycopg
from psycopg import sql

from shardctl.process import wait_until

sys.path.insert(0, str(Path(__file__).resolve().parent))
from servers import default_bin_dirs, server_pair

Probe = Callable[[str, str], str]


def _try(conn: psycopg.Connection, statement: str, params: tuple = ()) -> str:
    """Run one statement; 'ok' or the server's error message (first line)."""
    try:
        conn.execute(statement, params)
    except psycopg.Error as exc:
        detail = exc.diag.message_detail if exc.diag else None
        return f"ERROR: {str(exc).splitlines()[0]}" + (f" (DETAIL: {detail})" if detail else "")
    return "ok"


def _fresh(dsn: str) -> psycopg.Connection:
    conn = psycopg.connect(dsn, autocommit=True)
    for pub in conn.execute("SELECT pubname FROM pg_publication").fetchall():
        conn.execute(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(pub[0])))
    conn.execute("DROP TABLE IF EXISTS t, t_pk")
    conn.execute("DROP FUNCTION IF EXISTS my_shard(text)")
    return conn


def probe_row_filter_user_function(source: str, _target: str) -> str:
    with _fresh(source) as conn:
        conn.execute("CREATE TABLE t (logical_shard int, entity_id text, PRIMARY KEY (logical_shard, entity_id))")
        conn.execute("CREATE FUNCTION my_shard(text) RETURNS int LANGUAGE sql IMMUTABLE RETURN length($1)")
        user_fn = _try(conn, "CREATE PUBLICATION p_fn FOR TABLE t WHERE (my_shard(entity_id) = 1)")
        builtin = _try(
            conn,
            "CREATE PUBLICATION p_md5 FOR TABLE t WHERE (('x' || substr(md5(entity_id), 1, 16))::bit(64)::bigint > 0)",
        )
        column = _try(conn, "CREATE PUBLICATION p_col FOR TABLE t WHERE (logical_shard IN (1, 2, 3))")
    return f"user function: {user_fn} | built-in immutable md5 expression: {builtin} | column IN list: {column}"


def probe_update_outside_replica_identity(source: str, _target: str) -> str:
    with _fresh(source) as conn:
        conn.execute("CREATE TABLE t (logical_shard int, entity_id text PRIMARY KEY, v int)")
        conn.execute(
            "CREATE TABLE t_pk (logical_shard int, entity_id text, v int, PRIMARY KEY (logical_shard, entity_id))"
        )
        conn.execute("INSERT INTO t VALUES (1, 'a', 0)")
        conn.execute("INSERT INTO t_pk VALUES (1, 'a', 0)")
        conn.execute("CREATE PUBLICATION p1 FOR TABLE t WHERE (logical_shard IN (1))")
        conn.execute("CREATE PUBLICATION p2 FOR TABLE t_pk WHERE (logical_shard IN (1))")
        outside = _try(conn, "UPDATE t SET v = v + 1")
        outside_delete = _try(conn, "DELETE FROM t")
        inside = _try(conn, "UPDATE t_pk SET v = v + 1")
    return f"filter column outside PK: UPDATE {outside}; DELETE {outside_delete} | logical_shard in PK: UPDATE {inside}"


def probe_subscription_privileges(source: str, target: str) -> str:
    with _fresh(source) as conn:
        conn.execute("CREATE TABLE t (logical_shard int, entity_id text, PRIMARY KEY (logical_shard, entity_id))")
        conn.execute("CREATE PUBLICATION p FOR TABLE t")
    results = []
    with psycopg.connect(target, autocommit=True) as conn:
        for sub in conn.execute("SELECT subname FROM pg_subscription").fetchall():
            conn.execute(sql.SQL("DROP SUBSCRIPTION {}").format(sql.Identifier(sub[0])))
        conn.execute("DROP TABLE IF EXISTS t")
        conn.execute("CREATE TABLE t (logical_shard int, entity_id text, PRIMARY KEY (logical_shard, entity_id))")
        conn.execute("DROP ROLE IF EXISTS probe_mover")
        conn.execute("CREATE ROLE probe_mover LOGIN PASSWORD 'probe'")
        conn.execute("GRANT CREATE ON DATABASE tessera TO probe_mover")
        conn.execute("GRANT ALL ON t TO probe_mover")
        has_role = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'pg_create_subscription'").fetchone()
        results.append(f"pg_create_subscription role exists: {bool(has_role)}")
        if has_role:
            conn.execute("GRANT pg_create_subscription TO probe_mover")
        conn.execute("SET ROLE probe_mover")
        conninfo = f"{source} password=probe"
        results.append(
            "non-superuser CREATE SUBSCRIPTION (trust auth, password in conninfo): "
            + _try(conn, f"CREATE SUBSCRIPTION s_probe CONNECTION '{conninfo}' PUBLICATION p WITH (connect = false)")
        )
        results.append(
            "non-superuser CREATE SUBSCRIPTION that connects: "
            + _try(conn, f"CREATE SUBSCRIPTION s_conn CONNECTION '{conninfo}' PUBLICATION p WITH (create_slot = false)")
        )
        conn.execute("RESET ROLE")
        results.append(
            "superuser CREATE SUBSCRIPTION: "
            + _try(conn, f"CREATE SUBSCRIPTION s_super CONNECTION '{source}' PUBLICATION p WITH (connect = false)")
        )
        for name in ("s_probe", "s_conn", "s_super"):
            if conn.execute("SELECT 1 FROM pg_subscription WHERE subname = %s", (name,)).fetchone():
                conn.execute(sql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)").format(sql.Identifier(name)))
                conn.execute(sql.SQL("DROP SUBSCRIPTION {}").format(sql.Identifier(name)))
        conn.execute("REVOKE ALL ON t FROM probe_mover")
        conn.execute("REVOKE CREATE ON DATABASE tessera FROM probe_mover")
        conn.execute("DROP ROLE probe_mover")
    return " | ".join(results)


def probe_failover_slot_option(source: str, target: str) -> str:
    with _fresh(source) as conn:
        conn.execute("CREATE TABLE t (logical_shard int, entity_id text, PRIMARY KEY (logical_shard, entity_id))")
        conn.execute("CREATE PUBLICATION p FOR TABLE t")
    with psycopg.connect(target, autocommit=True) as conn:
        result = _try(
            conn,
            f"CREATE SUBSCRIPTION s_fo CONNECTION '{source}' PUBLICATION p WITH (connect = false, failover = true)",
        )
        if conn.execute("SELECT 1 FROM pg_subscription WHERE subname = 's_fo'").fetchone():
            conn.execute("ALTER SUBSCRIPTION s_fo SET (slot_name = NONE)")
            conn.execute("DROP SUBSCRIPTION s_fo")
    return f"CREATE SUBSCRIPTION ... WITH (failover = true): {result}"


def probe_generated_columns(source: str, _target: str) -> str:
    with _fresh(source) as conn:
        part = _try(
            conn,
            "CREATE TABLE t (entity_id text, g int GENERATED ALWAYS AS (length(entity_id)) STORED) "
            "PARTITION BY LIST (g)",
        )
        conn.execute("DROP TABLE IF EXISTS t")
        conn.execute(
            "CREATE TABLE t (entity_id text PRIMARY KEY, g int GENERATED ALWAYS AS (length(entity_id)) STORED)"
        )
        published = _try(conn, "CREATE PUBLICATION p_gen FOR TABLE t WITH (publish_generated_columns = stored)")
    return f"generated column as partition key: {part} | publish_generated_columns: {published}"


def probe_slot_wal_retention(source: str, _target: str) -> str:
    with _fresh(source) as conn:
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'probe_slot'"
        )
        default = conn.execute("SHOW max_slot_wal_keep_size").fetchone()[0]
        conn.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '64MB'")
        conn.execute("SELECT pg_reload_conf()")
        wait_until(lambda: conn.execute("SHOW max_slot_wal_keep_size").fetchone()[0] == "64MB", 10)
        conn.execute("SELECT pg_create_logical_replication_slot('probe_slot', 'pgoutput')")
        before = conn.execute("SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'probe_slot'").fetchone()
        conn.execute(
            "CREATE TABLE t (logical_shard int, entity_id text, pad text, PRIMARY KEY (logical_shard, entity_id))"
        )
        for round_ in range(8):  # ~20 MB of WAL a round, segments switched so checkpoints can remove them
            conn.execute(
                "INSERT INTO t SELECT %s, g::text, repeat('x', 200) FROM generate_series(1, 60000) g", (round_,)
            )
            conn.execute("SELECT pg_switch_wal()")
            conn.execute("CHECKPOINT")
        after = conn.execute(
            "SELECT wal_status, pg_size_pretty(safe_wal_size), "
            "pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)) "
            "FROM pg_replication_slots WHERE slot_name = 'probe_slot'"
        ).fetchone()
        conn.execute("SELECT pg_drop_replication_slot('probe_slot')")
        conn.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
        conn.execute("SELECT pg_reload_conf()")
    return (
        f"default max_slot_wal_keep_size {default} (a slot holds WAL without limit); set to 64MB, idle slot: "
        f"wal_status {before[0]} at creation; after ~160 MB of WAL and "
        f"checkpoints: wal_status {after[0]}, safe_wal_size {after[1]}, held {after[2]}"
    )


PROBES: dict[str, Probe] = {
    "row_filter_functions": probe_row_filter_user_function,
    "update_outside_replica_identity": probe_update_outside_replica_identity,
    "subscription_privileges": probe_subscription_privileges,
    "failover_slots": probe_failover_slot_option,
    "generated_columns": probe_generated_columns,
    "slot_wal_retention": probe_slot_wal_retention,
}


def run_probes(bin_dir: Path) -> dict[str, str]:
    """Start two servers from ``bin_dir``, run every probe, stop the servers by PID."""
    with server_pair(bin_dir) as (source, target, version):
        results: dict[str, str] = {"version": version}
        for name, probe in PROBES.items():
            try:
                results[name] = probe(source, target)
            except Exception as exc:  # a probe that breaks is a result too, and the others still run
                results[name] = f"PROBE FAILED: {type(exc).__name__}: {exc}"
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin-dir", action="append", type=Path, help="PostgreSQL bin dir (repeatable)")
    args = parser.parse_args(argv)
    summary = {}
    for bin_dir in args.bin_dir or default_bin_dirs():
        results = run_probes(bin_dir)
        summary[results["version"]] = results
        for name, outcome in results.items():
            print(f"[{results['version']}] {name}: {outcome}", file=sys.stderr)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
