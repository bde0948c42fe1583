"""Zero requirements overlooked (JTBD-01): docs/requirements.md and the test markers agree."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.tracing import check, parse_requirements

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.req("JTBD-01.tracing")
def test_requirements_file_and_markers_agree() -> None:
    assert check(ROOT) == []


@pytest.fixture
def fixture_repo(tmp_path: Path) -> Path:
    (tmp_path / "docs").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "docs" / "requirements.md").write_text(
        "| ID | Requirement | Status | Proved by |\n|---|---|---|---|\n"
        "| JTBD-03.routing | hash routing | built | `tests/test_a.py::test_route` |\n"
        "| JTBD-04.rpo0 | no acked write lost | planned | |\n"
    )
    (tmp_path / "tests" / "test_a.py").write_text(
        "import pytest\n\n@pytest.mark.req('JTBD-03.routing')\ndef test_route():\n    assert True\n"
    )
    return tmp_path


@pytest.mark.req("JTBD-01.tracing")
def test_fixture_repo_passes_then_fails_when_a_marker_is_removed(fixture_repo: Path) -> None:
    assert check(fixture_repo) == []
    test_file = fixture_repo / "tests" / "test_a.py"
    test_file.write_text(test_file.read_text().replace("@pytest.mark.req('JTBD-03.routing')\n", ""))
    problems = check(fixture_repo)
    assert any("JTBD-03.routing" in p and "no req marker" in p for p in problems), problems


@pytest.mark.req("JTBD-01.tracing")
def test_unknown_id_and_untested_built_requirement_are_reported(fixture_repo: Path) -> None:
    (fixture_repo / "tests" / "test_b.py").write_text(
        "import pytest\n\n@pytest.mark.req('JTBD-09.nonexistent')\ndef test_x():\n    pass\n"
    )
    md = fixture_repo / "docs" / "requirements.md"
    md.write_text(md.read_text() + "| JTBD-02.cache | look-aside cache | built | |\n")
    problems = check(fixture_repo)
    assert any("JTBD-09.nonexistent" in p and "not in" in p for p in problems), problems
    assert any("JTBD-02.cache: built but no test" in p for p in problems), problems


@pytest.mark.req("JTBD-01.tracing")
def test_planned_requirement_with_a_test_must_be_marked_built(fixture_repo: Path) -> None:
    shutil.copy(fixture_repo / "tests" / "test_a.py", fixture_repo / "tests" / "test_c.py")
    text = (fixture_repo / "tests" / "test_c.py").read_text()
    (fixture_repo / "tests" / "test_c.py").write_text(text.replace("JTBD-03.routing", "JTBD-04.rpo0"))
    assert any("JTBD-04.rpo0: planned but has tests" in p for p in check(fixture_repo))


@pytest.mark.req("JTBD-01.tracing")
def test_every_seed_deliverable_is_listed() -> None:
    """The seed's deliverables each have a row, built or planned: none can silently drop out."""
    requirements, _ = parse_requirements((ROOT / "docs" / "requirements.md").read_text())
    seed = {
        "JTBD-01.view-logical",
        "JTBD-01.view-development",
        "JTBD-01.view-process",
        "JTBD-01.view-physical",
        "JTBD-01.view-scenarios",
        "JTBD-01.tracing",
        "JTBD-02.hpa",
        "JTBD-02.threadpool",
        "JTBD-02.cache",
        "JTBD-02.load-1000rps",
        "JTBD-02.p99-50ms",
        "JTBD-03.profile",
        "JTBD-03.key",
        "JTBD-03.routing",
        "JTBD-03.migration",
        "JTBD-03.write-throughput",
        "JTBD-03.bloat",
        "JTBD-04.replica",
        "JTBD-04.patroni-etcd",
        "JTBD-04.failover-30s",
        "JTBD-04.sync-commit",
        "JTBD-04.rpo0",
        "PLAT.dagster-ui",
        "PLAT.migrate-cli",
        "PLAT.rest-predictions",
        "PLAT.backfills",
    }
    assert sorted(seed - set(requirements)) == []


@pytest.mark.req("JTBD-01.tracing")
def test_a_measured_row_needs_a_figure_and_a_harness_that_exist(fixture_repo: Path) -> None:
    """``measured`` is accepted only with a heading of docs/benchmarks.md and a bench/ script that exist."""
    md = fixture_repo / "docs" / "requirements.md"
    md.write_text(
        md.read_text() + "| JTBD-02.load | 1000 req/s | measured | `docs/benchmarks.md#serving-figures`, "
        "`bench/serving/run.py` |\n"
    )
    problems = check(fixture_repo)
    assert any("JTBD-02.load: figure docs/benchmarks.md#serving-figures has no such heading" in p for p in problems)
    assert any("JTBD-02.load: benchmark harness bench/serving/run.py does not exist" in p for p in problems)
    (fixture_repo / "docs" / "benchmarks.md").write_text("# Benchmarks\n\n## Serving figures (3 runs)\n")
    (fixture_repo / "bench" / "serving").mkdir(parents=True)
    (fixture_repo / "bench" / "serving" / "run.py").write_text("")
    assert any("serving-figures has no such heading" in p for p in check(fixture_repo))  # the heading says more
    (fixture_repo / "docs" / "benchmarks.md").write_text("# Benchmarks\n\n## Serving figures\n")
    assert check(fixture_repo) == []
    md.write_text(md.read_text().replace("`docs/benchmarks.md#serving-figures`, ", ""))
    assert any("JTBD-02.load: measured but names no figure" in p for p in check(fixture_repo))


def _checklist_rows(markdown: str) -> list[tuple[str, list[str], str]]:
    """(job, requirement IDs, met) for each row of the seed's checklist table."""
    section = markdown.split("## The seed's checklist", 1)[1]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("JTBD-"):
            rows.append((cells[0], re.findall(r"`([A-Z]+[-\w]*\.[\w.-]+)`", cells[3]), cells[4]))
    return rows


@pytest.mark.req("JTBD-01.tracing")
def test_the_seed_checklist_claims_no_more_than_its_rows_prove() -> None:
    markdown = (ROOT / "docs" / "requirements.md").read_text()
    requirements, _ = parse_requirements(markdown)
    rows = _checklist_rows(markdown)
    assert [job.split()[0] for job, _, _ in rows] == ["JTBD-01", "JTBD-02", "JTBD-03", "JTBD-04"]
    for job, ids, met in rows:
        assert ids, f"{job} names no requirement"
        assert [i for i in ids if i not in requirements] == [], f"{job} names unknown requirements"
        all_built = all(requirements[i].status in ("built", "measured") for i in ids)
        assert met.startswith("yes") == all_built, f"{job}: 'met' says {met!r} but built = {all_built}"
        assert met.startswith(("yes", "no: ")), f"{job}: 'met' is 'yes' or 'no: <why>'"
