"""The 4+1 views exist, point at code that exists, and the code keeps the development view's import rule."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.tracing import collect_markers

ROOT = Path(__file__).resolve().parent.parent
VIEWS = ("logical", "development", "process", "physical", "scenarios")
CODE_REF = re.compile(r"`((?:shardctl|serving|orchestration|tests|testkit|bench|k8s|scripts)/[\w./-]+)`")
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


# What each part of the tree must not import (a dotted prefix matches the module and everything under it).
# Layers: base helpers (settings, process, java) < store < control < stack < cli; serving and orchestration
# sit on the store (and the control plane) and never reach the local stack at run time.
_NOT_ABOVE_STORE = ("shardctl.control", "shardctl.stack", "shardctl.cli", "serving", "orchestration")
_STACK_JOBS = tuple(f"shardctl.stack.{job}" for job in ("layout", "lifecycle", "status", "topology", "manager"))
_STACK_BASE = ("binaries", "users", "postgres", "redis_server", "server_runtime", "settings")
LAYER_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("shardctl/settings.py", ("shardctl.store", *_NOT_ABOVE_STORE)),
    ("shardctl/process.py", ("shardctl.store", *_NOT_ABOVE_STORE)),
    ("shardctl/java.py", ("shardctl.store", *_NOT_ABOVE_STORE)),
    ("shardctl/__init__.py", _NOT_ABOVE_STORE),
    ("shardctl/store", _NOT_ABOVE_STORE),
    ("shardctl/control", ("shardctl.stack", "shardctl.cli", "serving", "orchestration")),
    ("shardctl/stack", ("shardctl.cli", "serving", "orchestration")),
    ("shardctl/cli.py", ("serving", "orchestration")),
    ("shardctl/models_cli.py", ("serving", "orchestration")),
    ("serving", ("orchestration", "shardctl.stack", "shardctl.cli")),
    ("orchestration", ("serving", "shardctl.stack", "shardctl.cli")),
    # Test support (testkit/) and tests are never part of the product; benchmarks share testkit, never tests.
    ("shardctl", ("testkit", "tests")),
    ("serving", ("testkit", "tests")),
    ("orchestration", ("testkit", "tests")),
    ("testkit", ("tests",)),
    ("bench", ("tests",)),
    # Inside the stack: its base modules < ha/ (the local HA cluster) < the stack's jobs (layout, lifecycle,
    # status, topology) < manager.py, the facade that composes them.
    ("shardctl/stack/ha", _STACK_JOBS),
    *((f"shardctl/stack/{base}.py", ("shardctl.stack.ha", *_STACK_JOBS)) for base in _STACK_BASE),
)


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(root: Path, path: Path) -> set[str]:
    """Every module a file imports, anywhere in it (function-local imports too), as absolute dotted names.

    ``from a.b import c`` yields ``a.b.c`` (``c`` may be a submodule), relative imports are resolved.
    """
    tree = ast.parse(path.read_text())
    package = _module_name(root, path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                prefix = package[: len(package) - node.level + 1]
                base = ".".join([*prefix, *([base] if base else [])])
            names |= {f"{base}.{alias.name}" for alias in node.names}
    return names


def layer_violations(root: Path) -> list[str]:
    """Imports that go the wrong way through the layers of ``LAYER_RULES``, for the tree at ``root``."""
    violations = []
    for place, banned in LAYER_RULES:
        target = root / place
        paths = [target] if target.is_file() else sorted(target.rglob("*.py"))
        for path in paths:
            for name in sorted(imported_names(root, path)):
                hits = [b for b in banned if name == b or name.startswith(b + ".")]
                if hits:
                    violations.append(f"{path.relative_to(root)} imports {name} (layer rule: no {hits[0]})")
    return violations


@pytest.mark.req("JTBD-01.view-development")
def test_imports_flow_one_way() -> None:
    """store < control < stack < cli inside shardctl; serving and orchestration use the store, never the stack,
    and never each other; shardctl uses neither."""
    assert layer_violations(ROOT) == []


@pytest.mark.req("JTBD-01.view-development")
def test_the_layer_check_catches_a_wrong_way_import(tmp_path: Path) -> None:
    """A planted import against the layers (a function-local one, one through ``from shardctl import ...``
    and a relative one) fails the check that guards the real tree."""
    store = tmp_path / "shardctl" / "store"
    store.mkdir(parents=True)
    (store / "__init__.py").write_text("")
    (store / "reader.py").write_text("def helper():\n    from shardctl.stack import manager\n    return manager\n")
    (store / "writer.py").write_text("from shardctl import control\nfrom ..stack.ha import drill\n")
    serving = tmp_path / "serving"
    serving.mkdir()
    (serving / "app.py").write_text("import shardctl.store.reader\nimport shardctl.stack.binaries\n")
    assert layer_violations(tmp_path) == [
        "shardctl/store/reader.py imports shardctl.stack.manager (layer rule: no shardctl.stack)",
        "shardctl/store/writer.py imports shardctl.control (layer rule: no shardctl.control)",
        "shardctl/store/writer.py imports shardctl.stack.ha.drill (layer rule: no shardctl.stack)",
        "serving/app.py imports shardctl.stack.binaries (layer rule: no shardctl.stack)",
    ]


@pytest.mark.req("JTBD-01.view-development")
def test_the_code_map_names_every_shardctl_module() -> None:
    """The development view's map of ``shardctl/`` matches the tree: each module and folder is named there."""
    text = (ROOT / "docs" / "architecture" / "development.md").read_text()
    names = {p.name for p in (ROOT / "shardctl").rglob("*.py") if p.name != "__init__.py"}
    names |= {f"{p.name}/" for p in (ROOT / "shardctl").rglob("*") if p.is_dir() and p.name != "__pycache__"}
    assert sorted(n for n in names if n not in text) == []
