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


def test_a_process_that_exits_while_its_state_is_read_is_not_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    """The race CI met: the process answered ``kill(pid, 0)``, then exited between the open of ``/proc/<pid>/stat``
    and its read, which the kernel answers with ESRCH. ``pid_alive`` says False instead of raising (a watcher
    thread died of it and missed the pg_rewind it watched for)."""
    import subprocess

    from shardctl import process

    child = subprocess.Popen(["sleep", "60"])
    stat = open(f"/proc/{child.pid}/stat")  # noqa: SIM115 (read after the process is gone)
    child.kill()
    child.wait()
    monkeypatch.setattr(process.os, "kill", lambda pid, sig: None)  # it answered a moment before
    monkeypatch.setattr(process, "open", lambda *args, **kwargs: stat, raising=False)
    assert process.pid_alive(child.pid) is False
