"""Running a benchmark's harness from a test, as a user runs it: from the repository root, with none of this
process's ``TESSERA_*`` settings (the benchmark builds its own stack)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_benchmark(script: str, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """``python <script> <args>``; fails the test with the output's tails unless it exits 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, script, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done
