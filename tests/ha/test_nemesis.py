"""The nemesis, short form: one round of each fault kind (seeded order) on a real shard under write load,
healed by `shardctl stack up` / `ha restart` / `ha reinit`, then the whole history judged: no acknowledged
write lost, no certain failure present, one primary at a time, every member back as a streaming sync
standby with every acknowledged row. The 20-round form runs in `bench/failover --nemesis-rounds 20`.

The checker itself is tested on made-up histories first, so a broken judge cannot pass a broken cluster.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shardctl.process import pid_alive
from shardctl.stack.manager import Stack
from testkit.ha.history import FAIL, INFO, OK, Op, check
from testkit.ha.nemesis import FAULTS, Nemesis
from tests.conftest import _random_base_port

SEED = 12


def _op(n: int, outcome: str, port: int | None = 1, tl: int | None = 1, at: float | None = None) -> Op:
    t = float(n) if at is None else at
    return Op(n, t, t + 0.1, outcome, port if outcome == OK else None, tl if outcome == OK else None)


@pytest.mark.req("JTBD-04.nemesis")
def test_the_checker_flags_lost_acks_failed_writes_present_and_two_primaries() -> None:
    clean = [_op(1, OK), _op(2, INFO), _op(3, FAIL), _op(4, OK, port=2, tl=2)]
    assert check(clean, {1, 4}, {1, 2}).passed
    assert check(clean, {1, 2, 4}, {1, 2}).indeterminate_present == 1  # indeterminate: either way is fine

    assert check(clean, {4}, {1, 2}).lost == [1]
    assert check(clean, {1, 3, 4}, {1, 2}).failed_present == [3]
    same_timeline_two_ports = [_op(1, OK, port=1, tl=2), _op(2, OK, port=2, tl=2)]
    assert check(same_timeline_two_ports, {1, 2}, {1, 2}).split_brain
    timeline_went_back = [_op(1, OK, port=2, tl=2), _op(2, OK, port=1, tl=1)]
    assert check(timeline_went_back, {1, 2}, {1, 2}).split_brain
    forked_off = [_op(1, OK, port=1, tl=2), _op(2, OK, port=2, tl=3)]
    assert check(forked_off, {1, 2}, {1, 3}).split_brain  # timeline 2 is not on the final history


@pytest.fixture(scope="module")
def proxied_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack whose members reach each other and etcd only through the nemesis's proxies; its own, since
    the shared HA stack's members talk directly."""
    stack = Stack(tmp_path_factory.mktemp("nemesis"), ha_proxied=True)
    stack.plan(shards=1, base_port=_random_base_port(), ha=True, replicas=1)
    yield stack
    pids = set(stack.pids())
    failed = stack.down(purge=True)
    assert not failed, f"servers left running: {failed}"
    assert [p for p in pids if pid_alive(p)] == []


@pytest.mark.req("JTBD-04.nemesis")
@pytest.mark.req("JTBD-04.rpo0")
@pytest.mark.req("JTBD-04.degraded")
def test_nemesis_short_form_loses_no_acknowledged_write_and_heals_every_member(proxied_stack: Stack) -> None:
    with Nemesis(proxied_stack, seed=SEED) as nemesis:
        proxied_stack.up()
        report = nemesis.run(rounds=len(FAULTS))
    kinds = [r.kind for r in report.rounds]
    assert sorted(kinds) == sorted(FAULTS)
    verdict = report.verdict
    assert verdict.ok > 100, verdict
    assert verdict.lost == [], f"acknowledged writes lost: {verdict.lost[:20]}"
    assert verdict.failed_present == []
    assert verdict.split_brain == []
    assert all(r.acked_missing == 0 for r in report.rounds), report.rounds
    assert report.members_back, f"not every member is back as a streaming sync standby: {report.final_members}"
    assert report.replicas_have_every_ack
    # Every round with a primary fault moved the primary; the replica's loss showed as degraded.
    for r in report.rounds:
        if r.kind in ("kill-primary", "pause-primary", "partition-primary"):
            assert r.new_leader != r.old_leader, r
        if r.kind == "kill-replica":
            assert r.degraded_seen, r
        assert r.first_write_s is not None, r
        # Healed by the round's own command (`stack up` or `ha restart`), without falling back to `ha reinit`.
        assert len(r.heals) == 1, r
