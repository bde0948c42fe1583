"""The threat model (docs/architecture/security.md) is linked, covers every STRIDE letter and names real tests: a
named test exists, and a test file that does not exist yet sits only in a row whose status says it is being
built (issue 21's other items add them)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture" / "security.md"
TEST_REF = re.compile(r"`(tests/[\w./-]+\.py)(?:::(\w+))?`")


def missing_references(text: str) -> list[str]:
    """References of ``text``'s threat rows to tests that do not exist, outside rows that are being built."""
    missing = []
    for row in (line for line in text.splitlines() if re.match(r"\| [STRIDE]\d+ \|", line)):
        for path, name in TEST_REF.findall(row):
            target = ROOT / path
            if not target.exists():
                if "being built" not in row.rsplit("|", 2)[-2]:
                    missing.append(path)
            elif name and not re.search(rf"^(async )?def {name}\(", target.read_text(), flags=re.M):
                missing.append(f"{path}::{name}")
    return missing


@pytest.mark.req("PLAT.threat-model")
def test_the_threat_model_is_linked_covers_stride_and_names_tests_that_exist() -> None:
    text = DOC.read_text()
    assert "(security.md)" in (DOC.parent / "README.md").read_text()
    rows = re.findall(r"^\| ([STRIDE])\d+ \|", text, flags=re.M)
    assert set(rows) == set("STRIDE"), sorted(set(rows))
    assert missing_references(text) == []
    for heading in ("## Assets", "## Actors", "## Trust boundaries", "## Out of scope"):
        assert heading in text, heading


@pytest.mark.req("PLAT.threat-model")
def test_the_reference_check_catches_a_renamed_test_and_a_missing_file_in_a_built_row() -> None:
    renamed = "| T9 | x | y | z | `tests/test_stack_tls.py::test_that_does_not_exist` | built |"
    absent = "| D9 | x | y | z | `tests/serving/test_nowhere.py` | built |"
    planned = "| D8 | x | y | z | `tests/serving/test_nowhere.py` | being built |"
    assert missing_references("\n".join((renamed, absent, planned))) == [
        "tests/test_stack_tls.py::test_that_does_not_exist",
        "tests/serving/test_nowhere.py",
    ]
