"""The README's two commands are the ones CI and a new user run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.req("PLAT.fresh-machine")
def test_readme_has_the_two_commands_and_ci_runs_the_test_one() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```(?:bash|sh)\n(.+?)\n```", readme, flags=re.S)
    assert "scripts/demo.sh" in commands[0]
    assert "scripts/test.sh" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1].strip() in ci
    for script in ("scripts/bootstrap.sh", "scripts/demo.sh", "scripts/test.sh"):
        text = (ROOT / script).read_text()
        assert text.startswith("#!/usr/bin/env bash")
        assert "set -euo pipefail" in text
    assert "bootstrap.sh" in (ROOT / "scripts" / "demo.sh").read_text()
    assert "bootstrap.sh" in (ROOT / "scripts" / "test.sh").read_text()
