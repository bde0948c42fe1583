"""Small psycopg connection pools, one per shard, rebuilt when the shard map's epoch changes (threads use
``ShardPools``; an event loop uses ``AsyncShardPools``, so its reads need no thread hop)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from shardctl.store.retry import is_multi_host
from shardctl.store.shardmap import ShardMap

log = logging.getLogger(__name__)


def session_dsn(dsn: str, target_session_attrs: str | None) -> str:
    """The shard's DSN with ``target_session_attrs`` when one is given (e.g. reads that may go to a standby:
    ``prefer-standby``; the shard map's multi-host DSNs ask for ``read-write``)."""
    if target_session_attrs is None or not is_multi_host(dsn):
        return dsn  # one host: nothing to choose (and no wasted standby-only attempt per connection)
    return make_conninfo(dsn, target_session_attrs=target_session_attrs)


class ShardPools:
    """One pool per shard of the current epoch. Pools open without waiting, so a dead shard does not block
    the others: asking for its connection times out after ``acquire_timeout`` seconds."""

    def __init__(
        self,
        name: str,
        *,
        min_size: int = 1,
        max_size: int = 4,
        connect_timeout: int = 2,
        acquire_timeout: float = 1.0,
        autocommit: bool = True,
        options: str = "",
        configure: Callable[[psycopg.Connection], None] | None = None,
        target_session_attrs: str | None = None,
    ):
        self.name = name
        self.target_session_attrs = target_session_attrs
        self.min_size = min_size
        self.max_size = max_size
        self.connect_timeout = connect_timeout
        self.acquire_timeout = acquire_timeout
        self.autocommit = autocommit
        self.options = options
        self.configure = configure
        self._lock = threading.Lock()
        self._epoch: int | None = None
        self._pools: list[ConnectionPool] = []

    def pools_for(self, shard_map: ShardMap) -> list[ConnectionPool]:
        with self._lock:
            if self._epoch != shard_map.epoch:
                old, self._pools = self._pools, [self._pool(i, dsn) for i, dsn in enumerate(shard_map.dsns)]
                self._epoch = shard_map.epoch
                for pool in old:
                    # Connections in use close when they are returned.
                    pool.close(timeout=0)
            return self._pools

    def _connection_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"autocommit": self.autocommit, "connect_timeout": self.connect_timeout}
        if self.options:
            kwargs["options"] = self.options
        return kwargs

    def _dsn(self, dsn: str) -> str:
        return session_dsn(dsn, self.target_session_attrs)

    def _pool(self, index: int, dsn: str) -> ConnectionPool:
        kwargs = self._connection_kwargs()
        pool = ConnectionPool(
            self._dsn(dsn),
            min_size=self.min_size,
            max_size=self.max_size,
            kwargs=kwargs,
            timeout=self.acquire_timeout,
            reconnect_timeout=60,
            name=f"{self.name}-shard{index}",
            configure=self.configure,
            open=False,
        )
        pool.open(wait=False)
        return pool

    @property
    def epoch(self) -> int | None:
        return self._epoch

    def close(self) -> None:
        with self._lock:
            for pool in self._pools:
                pool.close(timeout=1)
            self._pools = []
            self._epoch = None


class AsyncShardPools(ShardPools):
    """``ShardPools`` for an event loop: the same sizes and timeouts, ``AsyncConnectionPool`` per shard."""

    def __init__(
        self,
        name: str,
        *,
        configure: Callable[[psycopg.AsyncConnection], Awaitable[None]] | None = None,
        **options: Any,
    ):
        super().__init__(name, **options)
        self.configure_async = configure
        self._async_lock = asyncio.Lock()
        self._async_pools: list[AsyncConnectionPool] = []

    async def pools_for_async(self, shard_map: ShardMap) -> list[AsyncConnectionPool]:
        if self._epoch == shard_map.epoch:
            return self._async_pools
        async with self._async_lock:
            if self._epoch != shard_map.epoch:
                old = self._async_pools
                pools = [self._async_pool(i, dsn) for i, dsn in enumerate(shard_map.dsns)]
                for pool in pools:
                    await pool.open(wait=False)
                self._async_pools, self._epoch = pools, shard_map.epoch
                for pool in old:
                    await pool.close(timeout=0)
            return self._async_pools

    def _async_pool(self, index: int, dsn: str) -> AsyncConnectionPool:
        return AsyncConnectionPool(
            self._dsn(dsn),
            min_size=self.min_size,
            max_size=self.max_size,
            kwargs=self._connection_kwargs(),
            timeout=self.acquire_timeout,
            reconnect_timeout=60,
            name=f"{self.name}-shard{index}",
            configure=self.configure_async,
            open=False,
        )

    async def aclose(self) -> None:
        async with self._async_lock:
            for pool in self._async_pools:
                await pool.close(timeout=1)
            self._async_pools = []
            self._epoch = None
