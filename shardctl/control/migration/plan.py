"""Which logical shards move where: the fewest moves that leave every server balanced.

Pure logic (no I/O) so that the CLI, the Dagster job and the tests compute the same plan from the same
placement. A placement maps each logical shard to the server that holds it; servers are names, never DSNs,
so plans can be printed and stored without credentials.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from shardctl.errors import ControlError
from shardctl.store.hashing import TOTAL_LOGICAL_SHARDS

DEFAULT_TOTAL_SHARDS = TOTAL_LOGICAL_SHARDS  # a power of two: why in docs/architecture/logical.md

Placement = Mapping[int, str]


class PlanError(ControlError, ValueError):
    """The placement or the target server set cannot be planned (empty, unknown shards, bad count)."""


@dataclass(frozen=True, order=True)
class Move:
    """One logical shard leaving ``source`` for ``target``."""

    logical_shard: int
    source: str
    target: str


def initial_placement(servers: Sequence[str], total_shards: int = DEFAULT_TOTAL_SHARDS) -> dict[int, str]:
    """Logical shard ``l`` on ``servers[l % len(servers)]``.

    With ``total_shards`` a multiple of the server count (any power-of-two count up to ``total_shards``
    when it is a power of two), ``hash % total_shards % n == hash % n``: every row stays on the server that
    ``hash % n`` put it on before logical shards existed, so introducing them moves nothing.
    """
    if not servers:
        raise PlanError("a placement needs at least one server")
    if len(set(servers)) != len(servers):
        raise PlanError(f"servers named twice: {sorted(servers)}")
    if total_shards < len(servers):
        raise PlanError(f"{total_shards} logical shards cannot cover {len(servers)} servers")
    return {shard: servers[shard % len(servers)] for shard in range(total_shards)}


def shards_by_server(placement: Placement, servers: Iterable[str] = ()) -> dict[str, list[int]]:
    """Each server's logical shards, sorted; ``servers`` adds servers that hold none."""
    grouped: dict[str, list[int]] = {server: [] for server in servers}
    for shard, server in sorted(placement.items()):
        grouped.setdefault(server, []).append(shard)
    return grouped


def quotas(placement: Placement, servers: Sequence[str]) -> dict[str, int]:
    """How many logical shards each target server ends with: ``floor`` or ``ceil`` of the mean.

    The ``total % len(servers)`` servers that get one more are those holding the most now (ties by name),
    which maximises the shards that stay put: the plan's minimality rests on this choice.
    """
    total = len(placement)
    base, extra = divmod(total, len(servers))
    held = shards_by_server(placement, servers)
    ranked = sorted(servers, key=lambda s: (-len(held[s]), s))
    return {server: base + (1 if rank < extra else 0) for rank, server in enumerate(ranked)}


def plan_moves(placement: Placement, servers: Sequence[str]) -> list[Move]:
    """The moves that take ``placement`` onto exactly ``servers``, balanced, moving the fewest logical shards.

    Servers absent from ``servers`` give away all their logical shards (shrinking); new ones receive.
    Each server over its quota gives away its highest-numbered shards, and receivers fill up in name order,
    so the same input always gives the same plan. An already balanced placement on the same servers gives [].
    """
    _check(placement, servers)
    quota = quotas(placement, servers)
    held = shards_by_server(placement, servers)
    leaving: list[tuple[int, str]] = []
    for server, shards in sorted(held.items()):
        keep = quota.get(server, 0)
        leaving += [(shard, server) for shard in shards[keep:]]
    receivers = [server for server in sorted(servers) for _ in range(max(0, quota[server] - len(held[server])))]
    # Both sides count the same shards (sum of quotas = total): strict zip turns any slip into an error.
    return sorted(
        Move(shard, source, target) for (shard, source), target in zip(sorted(leaving), receivers, strict=True)
    )


def apply_moves(placement: Placement, moves: Iterable[Move]) -> dict[int, str]:
    """The placement after ``moves``; refuses a move whose source does not hold the shard."""
    result = dict(placement)
    for move in moves:
        if result.get(move.logical_shard) != move.source:
            raise PlanError(
                f"logical shard {move.logical_shard} is on {result.get(move.logical_shard)}, not {move.source}"
            )
        result[move.logical_shard] = move.target
    return result


def group_by_pair(moves: Iterable[Move]) -> dict[tuple[str, str], tuple[int, ...]]:
    """Moves grouped per (source, target): one publication and subscription each."""
    pairs: dict[tuple[str, str], list[int]] = {}
    for move in moves:
        pairs.setdefault((move.source, move.target), []).append(move.logical_shard)
    return {pair: tuple(sorted(shards)) for pair, shards in sorted(pairs.items())}


def _check(placement: Placement, servers: Sequence[str]) -> None:
    if not servers:
        raise PlanError("the target needs at least one server")
    if len(set(servers)) != len(servers):
        raise PlanError(f"servers named twice: {sorted(servers)}")
    total = len(placement)
    if total == 0 or sorted(placement) != list(range(total)):
        raise PlanError("a placement must name a server for every logical shard 0..N-1")
    if total < len(servers):
        raise PlanError(f"{total} logical shards cannot be spread over {len(servers)} servers")
