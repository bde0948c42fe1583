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
# Layers: base helpers (errors, settings, credentials, process, java) < store < control < stack < cli; serving and
# orchestration sit on the store (and the control plane) and never reach the local stack at run time.
_NOT_ABOVE_STORE = ("shardctl.control", "shardctl.stack", "shardctl.cli", "serving", "orchestration")
_STACK_JOBS = tuple(f"shardctl.stack.{job}" for job in ("layout", "lifecycle", "status", "topology", "manager"))
_STACK_BASE = ("binaries", "users", "postgres", "redis_server", "secrets", "server_runtime", "settings")
_BASE = ("shardctl.store", *_NOT_ABOVE_STORE)
LAYER_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "shardctl/errors.py",
        (
            "shardctl.settings",
            "shardctl.credentials",
            "shardctl.redis_acl",
            "shardctl.process",
            "shardctl.java",
            *_BASE,
        ),
    ),
    ("shardctl/settings.py", _BASE),
    ("shardctl/credentials.py", _BASE),
    ("shardctl/redis_acl.py", _BASE),
    ("shardctl/process.py", _BASE),
    ("shardctl/java.py", _BASE),
    ("shardctl/__init__.py", _NOT_ABOVE_STORE),
    ("shardctl/store", _NOT_ABOVE_STORE),
    ("shardctl/control", ("shardctl.stack", "shardctl.cli", "serving", "orchestration")),
    ("shardctl/stack", ("shardctl.cli", "serving", "orchestration")),
    # Backups: the base modules (settings, the tool, archiving) sit below the stack's lifecycle, which starts
    # servers archiving; the jobs (points, base backups, restore) sit above the stack.
    ("shardctl/backup", ("shardctl.cli", "serving", "orchestration")),
    *((f"shardctl/backup/{base}.py", _STACK_JOBS) for base in ("settings", "pgbackrest", "archiving")),
    ("shardctl/cli", ("serving", "orchestration")),  # every command group: stack, ha, shards, migrate, models...
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
CYCLE_ROOTS = ("shardctl", "serving", "orchestration")


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


def _plant(root: Path, files: dict[str, str]) -> None:
    """A tree of modules at ``root`` for the checks to read (path: source)."""
    for path, source in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(source)


@pytest.mark.req("JTBD-01.view-development")
def test_the_layer_check_catches_a_wrong_way_import(tmp_path: Path) -> None:
    """A planted import against the layers (a function-local one, one through ``from shardctl import ...``
    and a relative one) fails the check that guards the real tree."""
    _plant(
        tmp_path,
        {
            "shardctl/store/__init__.py": "",
            "shardctl/store/reader.py": "def helper():\n    from shardctl.stack import manager\n    return manager\n",
            "shardctl/store/writer.py": "from shardctl import control\nfrom ..stack.ha import drill\n",
            "serving/app.py": "import shardctl.store.reader\nimport shardctl.stack.binaries\n",
        },
    )
    assert layer_violations(tmp_path) == [
        "shardctl/store/reader.py imports shardctl.stack.manager (layer rule: no shardctl.stack)",
        "shardctl/store/writer.py imports shardctl.control (layer rule: no shardctl.control)",
        "shardctl/store/writer.py imports shardctl.stack.ha.drill (layer rule: no shardctl.stack)",
        "serving/app.py imports shardctl.stack.binaries (layer rule: no shardctl.stack)",
    ]


def import_cycles(root: Path) -> list[str]:
    """Import cycles among the modules under ``CYCLE_ROOTS`` at ``root``, one line per strongly connected set.

    A module imports what ``imported_names`` finds in it (function-local imports too: a lazy import that closes a
    cycle still ties two modules together), each name resolved to the longest dotted prefix that is a module of
    the tree (``from a.b import c`` is ``a.b.c`` if that is a module, else ``a.b``)."""
    files = [path for top in CYCLE_ROOTS if (root / top).is_dir() for path in sorted((root / top).rglob("*.py"))]
    modules = {_module_name(root, path): path for path in files}

    def resolve(name: str) -> str | None:
        parts = name.split(".")
        return next((m for n in range(len(parts), 0, -1) if (m := ".".join(parts[:n])) in modules), None)

    graph = {
        module: sorted({t for n in imported_names(root, path) if (t := resolve(n)) is not None and t != module})
        for module, path in modules.items()
    }
    return [" <-> ".join(members) for members in _strongly_connected(graph) if len(members) > 1]


def _strongly_connected(graph: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, each sorted, iteratively (no recursion limit on deep chains)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            nxt = next(edges, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(graph[nxt])))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                members = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    members.append(member)
                    if member == node:
                        break
                found.append(sorted(members))
    return sorted(found)


@pytest.mark.req("JTBD-01.view-development")
def test_no_import_cycle_anywhere() -> None:
    """No two modules of shardctl, serving and orchestration import each other, directly or through others
    (``shardctl/cli.py`` and ``migrate_cli.py`` did, through a function-local import)."""
    assert import_cycles(ROOT) == []


@pytest.mark.req("JTBD-01.view-development")
def test_the_cycle_check_catches_a_planted_cycle(tmp_path: Path) -> None:
    """A planted three-module cycle (one edge a function-local import, one relative) and a two-module one fail
    the check that guards the real tree; a package importing its own submodule is no cycle."""
    _plant(
        tmp_path,
        {
            "shardctl/cli/__init__.py": "from shardctl.cli.options import json_option\n",
            "shardctl/cli/options.py": "json_option = None\n",
            "shardctl/cli/a.py": "def run():\n    from shardctl.cli import b\n    return b\n",
            "shardctl/cli/b.py": "from .c import thing\n",
            "shardctl/cli/c.py": "import shardctl.cli.a\nthing = 1\n",
            "serving/x.py": "from serving.y import f\n",
            "serving/y.py": "from serving import x\nf = 1\n",
        },
    )
    assert import_cycles(tmp_path) == [
        "serving.x <-> serving.y",
        "shardctl.cli.a <-> shardctl.cli.b <-> shardctl.cli.c",
    ]


_MAP_TOKEN = re.compile(r"^[\w./-]+(?:\.py|/)$")


def mapped_paths(text: str) -> set[str]:
    """The paths the code blocks of a development view name, read as a tree: a line whose first word ends in
    ``/`` opens that folder for the lines indented under it, and every ``name.py`` or ``folder/`` word of a line
    is a path inside the folders open at that line (for a folder's own line, inside that folder). ``store/``'s
    ``settings.py`` is then ``shardctl/store/settings.py``, never ``shardctl/stack/settings.py``."""
    paths: set[str] = set()
    for block in re.findall(r"```\n(.*?)```", text, flags=re.S):
        open_folders: list[tuple[int, str]] = []
        for line in block.splitlines():
            words = [w.strip("`,;:()") for w in line.split()]
            if not words:
                continue
            indent = len(line) - len(line.lstrip())
            while open_folders and open_folders[-1][0] >= indent:
                open_folders.pop()
            if words[0].endswith("/") and _MAP_TOKEN.match(words[0]):
                parent = open_folders[-1][1] if open_folders else ""
                open_folders.append((indent, parent + words[0]))
                paths.add(parent + words[0])
                words = words[1:]
            prefix = open_folders[-1][1] if open_folders else ""
            paths |= {(w if w.startswith(CYCLE_ROOTS) else prefix + w) for w in words if _MAP_TOKEN.match(w)}
    return paths


@pytest.mark.req("JTBD-01.view-development")
def test_the_code_map_names_every_shardctl_module() -> None:
    """The development view's map of ``shardctl/`` matches the tree: each module and folder is named there,
    at its place (paths, not names: five ``settings.py`` would pass a check of names whatever moved)."""
    mapped = mapped_paths((ROOT / "docs" / "architecture" / "development.md").read_text())
    tree = {p.relative_to(ROOT).as_posix() for p in (ROOT / "shardctl").rglob("*.py") if p.name != "__init__.py"}
    tree |= {f"{p.relative_to(ROOT).as_posix()}/" for p in (ROOT / "shardctl").rglob("*") if p.is_dir()}
    assert sorted(p for p in tree if "__pycache__" not in p and p not in mapped) == []


@pytest.mark.req("JTBD-01.view-development")
def test_the_code_map_places_each_name_in_its_folder() -> None:
    """A file named under the wrong folder is not found at its real path (what a check of basenames missed)."""
    text = "```\nshardctl/\n  settings.py     base\n  store/          layer 1\n    writer/  bulk: commit.py\n"
    text += "    schema.py       DDL;\n                    continued: notify.py\n  stack/  the stack\n```\n"
    assert mapped_paths(text) == {
        "shardctl/",
        "shardctl/settings.py",
        "shardctl/store/",
        "shardctl/store/writer/",
        "shardctl/store/writer/commit.py",
        "shardctl/store/schema.py",
        "shardctl/store/notify.py",
        "shardctl/stack/",
    }
