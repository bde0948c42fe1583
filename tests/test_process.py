"""``wait_until``: expected failures mean "not yet", anything else surfaces instead of looking like a timeout."""

from __future__ import annotations

import pytest

from shardctl.process import wait_until


def test_an_expected_failure_is_not_yet_and_the_wait_ends_when_the_predicate_holds() -> None:
    calls = iter([ConnectionRefusedError(), ConnectionRefusedError(), True])

    def ready() -> bool:
        outcome = next(calls)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    assert wait_until(ready, timeout=5, interval=0.01)


def test_a_predicate_that_keeps_failing_as_expected_times_out() -> None:
    def refused() -> bool:
        raise ConnectionRefusedError

    assert not wait_until(refused, timeout=0.1, interval=0.01)


def test_a_bug_in_the_predicate_surfaces_at_once() -> None:
    def buggy() -> bool:
        return {}["missing"]

    with pytest.raises(KeyError):
        wait_until(buggy, timeout=30, interval=0.01)


def test_the_caller_names_what_it_expects() -> None:
    def not_ready() -> bool:
        raise LookupError("not there yet")

    assert not wait_until(not_ready, timeout=0.1, interval=0.01, expected=(LookupError,))
