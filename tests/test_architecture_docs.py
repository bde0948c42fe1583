"""The 4+1 views exist, point at code that exists, and the code keeps the development view's import rule."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.tracing import collect_markers

ROOT = Path(__file__).resolve().parent.parent
VIEWS = ("logical", "development", "process", "physical", "scenarios")
CODE_REF = re.compile(r"`((?:shardctl|serving|orchestration|tests|bench|k8s|scripts)/[\w./-]+)`")
TEST_REF = re.compile(r"`(tests/[^`]+?::[^`]+)`")


@pytest.mark.req("JTBD-01.view-logical")
@pytest.mark.req("JTBD-01.view-development")
@pytest.mark.req("JTBD-01.view-process")
@pytest.mark.req("JTBD-01.view-physical")
@pytest.mark.req("JTBD-01.view-scenarios")
def test_each_view_exists_and_names_real_code() -> None:
    for view in VIEWS:
        path = ROOT / "docs" / "architecture" / f"{view}.md"
        text = path.read_text()
        assert text.startswith("# "), f"{path} has no title"
        refs = CODE_REF.findall(text)
        assert refs, f"{path} names no code"
        missing = [r for r in refs if not (ROOT / r.split("::")[0]).exists()]
        assert missing == [], f"{path} names paths that do not exist: {missing}"


@pytest.mark.req("JTBD-01.view-scenarios")
def test_scenarios_name_tests_that_exist() -> None:
    text = (ROOT / "docs" / "architecture" / "scenarios.md").read_text()
    named = set(TEST_REF.findall(text))
    assert named, "the scenarios view names no test"
    existing = {t for tests in collect_markers(ROOT).values() for t in tests}
    assert sorted(named - existing) == []


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.req("JTBD-01.view-development")
def test_imports_flow_one_way() -> None:
    """serving and orchestration use shardctl; shardctl uses neither; serving and orchestration are apart."""
    forbidden = {
        "shardctl": {"serving", "orchestration"},
        "serving": {"orchestration"},
        "orchestration": {"serving"},
    }
    violations = []
    for package, banned in forbidden.items():
        for path in (ROOT / package).rglob("*.py"):
            bad = _imported_modules(path) & banned
            if bad:
                violations.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert violations == []
