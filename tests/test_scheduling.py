"""The parallel run's work units (tests/scheduling.py): every named file exists, every test is dispatched exactly
once, and a unit's tests stay together in their order."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.scheduling import LONGEST_FIRST, SHARED_FIXTURE_GROUPS, dispatch_order, unit_of

ROOT = Path(__file__).resolve().parent.parent


def test_every_file_a_unit_names_exists() -> None:
    """A renamed or removed test file must not silently drop out of its group (and build a second fixture)."""
    named = [f for files in SHARED_FIXTURE_GROUPS.values() for f in files]
    named += [u for u in LONGEST_FIRST if u not in SHARED_FIXTURE_GROUPS]
    assert [f for f in named if not (ROOT / f).is_file()] == []
    assert len(named) == len(set(named)), "a file is in two units"


def test_longest_units_go_first_and_each_unit_stays_together_in_order() -> None:
    paths = [
        "tests/a_test.py",
        "tests/ha/test_member_rejoin.py",
        "tests/a_test.py",
        "tests/serving/test_bench_harness.py",
        "tests/ha/test_change_log_standby.py",
        "tests/ha/test_member_rejoin.py",
        "tests/z_test.py",
    ]
    order = dispatch_order(paths)
    assert sorted(order) == list(range(len(paths)))
    dispatched = [paths[i] for i in order]
    assert dispatched == [
        "tests/serving/test_bench_harness.py",
        "tests/ha/test_change_log_standby.py",  # the group's file order, not the order collected
        "tests/ha/test_member_rejoin.py",
        "tests/ha/test_member_rejoin.py",
        "tests/a_test.py",
        "tests/a_test.py",
        "tests/z_test.py",
    ]
    assert [i for i in order if paths[i] == "tests/a_test.py"] == [0, 2]  # tests keep their order in a file


@pytest.mark.parametrize("group", sorted(SHARED_FIXTURE_GROUPS))
def test_a_group_file_is_in_its_group_and_any_other_file_is_its_own_unit(group: str) -> None:
    for path in SHARED_FIXTURE_GROUPS[group]:
        assert unit_of(path) == group
    assert unit_of("tests/test_hashing.py") == "tests/test_hashing.py"
