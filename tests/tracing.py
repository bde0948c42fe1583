"""Requirement tracing: docs/requirements.md against the ``@pytest.mark.req("ID")`` markers in tests.

Pure functions over text and source, so the tracing test can check the real repository and also show,
on a fixture repository, that removing a marker makes the check fail.

Rules: every ID in the file is unique; a ``built`` requirement names at least one test; the tests the file
names for an ID are exactly the tests that carry its marker; a marker names an ID the file has; a
``planned`` requirement has no tests yet (when it gets one, its status must change); a ``measured`` requirement
(a performance figure: benchmarks prove it, tests cannot) names the figure, ``docs/benchmarks.md#<heading>``, and
the harness that produced it, ``bench/<path>.py``, both of which must exist; the harness's own test (it runs at a
tiny scale, so a broken harness fails CI) may be named beside them like any test.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ID_PATTERN = re.compile(r"^(?:JTBD-\d{2}|PLAT)\.[a-z0-9][a-z0-9.-]*$")
TEST_REF = re.compile(r"`(tests/[^`]+?::[^`]+)`")
FIGURE_REF = re.compile(r"`docs/benchmarks\.md#([a-z0-9-]+)`")
HARNESS_REF = re.compile(r"`(bench/[^`]+\.py)`")
BENCHMARKS_FILE = "docs/benchmarks.md"
STATUSES = ("built", "measured", "planned")


@dataclass
class Requirement:
    id: str
    text: str
    status: str
    tests: set[str] = field(default_factory=set)
    figures: set[str] = field(default_factory=set)  # heading anchors in docs/benchmarks.md
    harnesses: set[str] = field(default_factory=set)  # bench/ scripts


def parse_requirements(markdown: str) -> tuple[dict[str, Requirement], list[str]]:
    """Requirements by ID from the markdown tables, and the problems found while reading them."""
    found: dict[str, Requirement] = {}
    problems: list[str] = []
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.lstrip().startswith("|") else []
        if len(cells) < 4 or not ID_PATTERN.match(cells[0].strip("`")):
            continue
        req_id, text, status, proof = cells[0].strip("`"), cells[1], cells[2].lower(), cells[3]
        if req_id in found:
            problems.append(f"{req_id}: listed twice")
        if status not in STATUSES:
            problems.append(f"{req_id}: status {status!r} is not one of {STATUSES}")
        found[req_id] = Requirement(
            req_id,
            text,
            status,
            set(TEST_REF.findall(proof)),
            set(FIGURE_REF.findall(proof)),
            set(HARNESS_REF.findall(proof)),
        )
    return found, problems


def heading_anchors(markdown: str) -> set[str]:
    """The anchors a Markdown renderer gives the headings (GitHub's rule: lower case, punctuation dropped except
    ``-``, spaces to ``-``)."""
    anchors = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def _req_ids(decorators: list[ast.expr]) -> list[str]:
    ids = []
    for deco in decorators:
        if (
            isinstance(deco, ast.Call)
            and isinstance(deco.func, ast.Attribute)
            and deco.func.attr == "req"
            and isinstance(deco.func.value, ast.Attribute)
            and deco.func.value.attr == "mark"
        ):
            ids += [a.value for a in deco.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    return ids


def collect_markers(root: Path, tests_dir: str = "tests") -> dict[str, set[str]]:
    """Test references (``tests/file.py::[Class::]name``) by the requirement IDs their markers name."""
    markers: dict[str, set[str]] = defaultdict(set)
    for path in sorted((root / tests_dir).rglob("test_*.py")):
        rel = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text(), filename=rel)
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for req_id in _req_ids(node.decorator_list):
                    markers[req_id].add(f"{rel}::{node.name}")
            elif isinstance(node, ast.ClassDef):
                class_ids = _req_ids(node.decorator_list)
                for req_id in class_ids:
                    markers[req_id].add(f"{rel}::{node.name}")
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                        for req_id in _req_ids(item.decorator_list):
                            markers[req_id].add(f"{rel}::{node.name}::{item.name}")
    return dict(markers)


def check(root: Path, requirements_file: str = "docs/requirements.md") -> list[str]:
    """Every disagreement between the requirements file and the test markers, as readable lines."""
    requirements, problems = parse_requirements((root / requirements_file).read_text())
    markers = collect_markers(root)
    benchmarks = root / BENCHMARKS_FILE
    anchors = heading_anchors(benchmarks.read_text()) if benchmarks.is_file() else set()
    for req_id in sorted(set(markers) - set(requirements)):
        problems.append(f"{req_id}: named by {sorted(markers[req_id])} but not in {requirements_file}")
    for req in requirements.values():
        marked = markers.get(req.id, set())
        if req.status == "built" and not req.tests:
            problems.append(f"{req.id}: built but no test proves it")
        if req.status == "measured":
            if not req.figures:
                problems.append(f"{req.id}: measured but names no figure (`{BENCHMARKS_FILE}#<heading>`)")
            if not req.harnesses:
                problems.append(f"{req.id}: measured but names no benchmark harness (`bench/<path>.py`)")
            for figure in sorted(req.figures - anchors):
                problems.append(f"{req.id}: figure {BENCHMARKS_FILE}#{figure} has no such heading")
            for harness in sorted(h for h in req.harnesses if not (root / h).is_file()):
                problems.append(f"{req.id}: benchmark harness {harness} does not exist")
        if req.status == "planned" and (req.tests or marked):
            problems.append(f"{req.id}: planned but has tests {sorted(req.tests | marked)}: mark it built")
        for missing in sorted(req.tests - marked):
            problems.append(f"{req.id}: {requirements_file} names {missing}, which has no req marker for it")
        for unlisted in sorted(marked - req.tests):
            problems.append(f"{req.id}: {unlisted} is marked but not listed in {requirements_file}")
    return problems
