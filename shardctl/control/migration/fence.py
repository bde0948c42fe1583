"""The cutover's fence on the moving logical shards: the store's per-logical-shard fence
(``shardctl/store/fence.py``, which the writer checks), re-exported here for the migration engine."""

from __future__ import annotations

from shardctl.store.fence import FENCE_DDL, FencedError, check, ensure_fence, fence_epochs, raise_fence

__all__ = ["FENCE_DDL", "FencedError", "check", "ensure_fence", "fence_epochs", "raise_fence"]
