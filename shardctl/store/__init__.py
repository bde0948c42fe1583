"""Layer 1, the store core: routing, schema, shard map, pools, writer, readers, export, model registry.

Imports only the base helpers (``shardctl.settings``, ``shardctl.process``, ``shardctl.java``) and itself.
``FeatureStore`` and ``prepare`` are resolved on first use, so importing one module of the store (say
``shardctl.store.hashing``) does not load the writer, the readers and sqlglot.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shardctl.store.feature_store import FeatureStore, prepare

__all__ = ["FeatureStore", "prepare"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from shardctl.store import feature_store

        return getattr(feature_store, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
