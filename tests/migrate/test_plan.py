"""The migration plan: fewest logical shards moved, every server balanced, deterministic (pure logic)."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardctl.control.migration.plan import (
    Move,
    PlanError,
    apply_moves,
    group_by_pair,
    initial_placement,
    plan_moves,
    shards_by_server,
)
from shardctl.store.hashing import shard_for

SERVERS = [f"s{i}" for i in range(8)]


@st.composite
def placements(draw: st.DrawFn) -> tuple[dict[int, str], list[str]]:
    """Any placement (balanced or not) of 1-64 logical shards on 1-6 servers, and a target of 1-6 servers."""
    total = draw(st.integers(1, 64))
    holders = draw(st.lists(st.sampled_from(SERVERS[:6]), min_size=1, max_size=6, unique=True))
    placement = {shard: draw(st.sampled_from(holders)) for shard in range(total)}
    target = draw(st.lists(st.sampled_from(SERVERS), min_size=1, max_size=min(6, total), unique=True))
    return placement, target


def brute_force_minimum(placement: dict[int, str], target: list[str]) -> int:
    """The fewest moves of any balanced result: try every choice of which servers hold one shard more."""
    total = len(placement)
    base, extra = divmod(total, len(target))
    held = {server: len(shards) for server, shards in shards_by_server(placement, target).items()}
    best_kept = max(
        sum(min(held[s], base + (s in bigger)) for s in target) for bigger in itertools.combinations(target, extra)
    )
    return total - best_kept


@pytest.mark.req("JTBD-03.migration-plan")
@given(placements())
@settings(max_examples=300, deadline=None)
def test_plan_is_balanced_minimal_and_applies(case: tuple[dict[int, str], list[str]]) -> None:
    placement, target = case
    moves = plan_moves(placement, target)
    after = apply_moves(placement, moves)
    counts = {server: len(shards) for server, shards in shards_by_server(after, target).items()}
    assert set(counts) == set(target), "a removed server still holds logical shards"
    mean = len(placement) / len(target)
    assert all(math.floor(mean) <= c <= math.ceil(mean) for c in counts.values()), counts
    assert len(moves) == brute_force_minimum(placement, target)
    assert len({m.logical_shard for m in moves}) == len(moves), "a logical shard moves twice"
    assert all(m.source != m.target for m in moves)
    assert plan_moves(after, target) == [], "re-planning a balanced placement moves something"
    assert plan_moves(placement, target) == moves, "the plan is not deterministic"


@pytest.mark.req("JTBD-03.migration-plan")
@pytest.mark.parametrize("servers", [1, 2, 3, 4, 7])
def test_adding_one_server_moves_one_in_n_plus_one(servers: int) -> None:
    placement = plan_layout(servers)
    moves = plan_moves(placement, SERVERS[: servers + 1])
    assert {m.target for m in moves} == {SERVERS[servers]}
    assert len(moves) in (256 // (servers + 1), -(-256 // (servers + 1)))


@pytest.mark.req("JTBD-03.migration-plan")
def test_removing_a_server_empties_it_and_spreads_its_shards() -> None:
    placement = plan_layout(3)
    moves = plan_moves(placement, ["s0", "s2"])
    assert {m.source for m in moves} == {"s1"}
    assert len(moves) == len(shards_by_server(placement)["s1"])
    assert {pair: len(shards) for pair, shards in group_by_pair(moves).items()} == {("s1", "s0"): 42, ("s1", "s2"): 43}


@pytest.mark.req("JTBD-03.migration-plan")
def test_introducing_logical_shards_keeps_every_row_on_its_server() -> None:
    """``hash % 256 % n == hash % n`` for power-of-two n: today's rows are already where the placement says."""
    for servers in (1, 2, 4, 8):
        placement = initial_placement(SERVERS[:servers], 256)
        for i in range(2000):
            entity = f"customer-{i}"
            assert placement[shard_for(entity, 256)] == SERVERS[shard_for(entity, servers)]
    three = initial_placement(SERVERS[:3], 256)
    misplaced = sum(three[shard_for(f"c{i}", 256)] != SERVERS[shard_for(f"c{i}", 3)] for i in range(2000))
    assert misplaced > 0, "3 does not divide 256: introducing logical shards on 3 servers must move rows"


@pytest.mark.req("JTBD-03.migration-plan")
def test_bad_input_is_refused() -> None:
    with pytest.raises(PlanError):
        plan_moves({}, ["s0"])
    with pytest.raises(PlanError):
        plan_moves(plan_layout(2), [])
    with pytest.raises(PlanError):
        plan_moves({0: "s0", 2: "s0"}, ["s0"])
    with pytest.raises(PlanError):
        plan_moves({0: "s0"}, ["s0", "s1"])
    with pytest.raises(PlanError):
        apply_moves(plan_layout(2), [Move(0, "s1", "s2")])


def plan_layout(servers: int) -> dict[int, str]:
    return initial_placement(SERVERS[:servers], 256)
