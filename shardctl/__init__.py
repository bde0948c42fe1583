"""Tessera's sharded feature store and its control plane."""

from shardctl.store.hashing import entity_hash, shard_for

__all__ = ["entity_hash", "shard_for"]
