"""The shard map as a value: one epoch's servers (names and DSNs) and the placement of the 256 logical shards on
them, validated on construction and immutable, so every reader and writer can share the one it routes with."""

from __future__ import annotations

import re
from dataclasses import dataclass

from shardctl.errors import StoreError
from shardctl.store.hashing import TOTAL_LOGICAL_SHARDS, entity_hash

SERVER_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class ShardMapError(StoreError, RuntimeError):
    """The catalog has no usable shard map (not initialized, or inconsistent), or a publish lost a race."""


def server_name(index: int) -> str:
    """The name a server gets when none is given: ``server-<index>``."""
    return f"server-{index}"


def check_server_name(name: str) -> str:
    if not isinstance(name, str) or not SERVER_NAME.match(name):
        raise ShardMapError(f"bad server name {name!r}: use lower-case letters, digits, - and _ (max 63)")
    return name


def initial_placement(server_count: int) -> tuple[int, ...]:
    """Logical shard ``l`` on server ``l % server_count``."""
    return tuple(shard % server_count for shard in range(TOTAL_LOGICAL_SHARDS))


@dataclass(frozen=True)
class ShardMap:
    """One epoch of the topology: server ``i`` is named ``servers[i]`` and reached at ``dsns[i]`` (a libpq DSN,
    possibly multi-host); ``placement[l]`` is the index of the server holding logical shard ``l``."""

    epoch: int
    dsns: tuple[str, ...]
    servers: tuple[str, ...] = ()
    placement: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.epoch < 1:
            raise ValueError(f"epoch must be >= 1, got {self.epoch}")
        if not self.dsns:
            raise ValueError("a shard map needs at least one server")
        if any(not isinstance(d, str) or not d.strip() for d in self.dsns):
            raise ValueError("every server DSN must be a non-empty string")
        if not self.servers:
            object.__setattr__(self, "servers", tuple(server_name(i) for i in range(len(self.dsns))))
        if not self.placement:
            object.__setattr__(self, "placement", initial_placement(len(self.dsns)))
        if len(self.servers) != len(self.dsns) or len(set(self.servers)) != len(self.servers):
            raise ValueError(f"servers {self.servers} must be unique and one per DSN")
        if len(self.placement) != TOTAL_LOGICAL_SHARDS or not all(0 <= i < len(self.dsns) for i in self.placement):
            raise ValueError(f"a placement names a server index for each of the {TOTAL_LOGICAL_SHARDS} logical shards")

    @property
    def server_count(self) -> int:
        return len(self.dsns)

    @property
    def total_shards(self) -> int:
        """Deprecated name of ``server_count`` (it counted servers before logical shards existed)."""
        return len(self.dsns)

    @staticmethod
    def logical_shard_for(entity_id: str) -> int:
        return entity_hash(entity_id) % TOTAL_LOGICAL_SHARDS

    def server_index_for(self, entity_id: str) -> int:
        return self.placement[entity_hash(entity_id) % TOTAL_LOGICAL_SHARDS]

    shard_for = server_index_for  # the name from before logical shards; callers move to server_index_for

    def dsn_for(self, entity_id: str) -> str:
        return self.dsns[self.server_index_for(entity_id)]

    def placement_by_name(self) -> dict[int, str]:
        return {shard: self.servers[index] for shard, index in enumerate(self.placement)}

    def logical_shards_on(self, name: str) -> list[int]:
        index = self.servers.index(name) if name in self.servers else -1
        return [shard for shard, held in enumerate(self.placement) if held == index]

    def logical_shards_of(self, index: int) -> list[int]:
        return [shard for shard, held in enumerate(self.placement) if held == index]

    def dsn_of(self, name: str) -> str:
        return self.dsns[self.servers.index(name)]
