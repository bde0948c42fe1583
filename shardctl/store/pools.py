"""Small psycopg connection pools, one per server, keyed by the server's DSN (threads use ``ShardPools``; an
event loop uses ``AsyncShardPools``, so its reads need no thread hop). A new epoch that only moves logical
shards between the same servers keeps every pool; a server that left the map has its pool closed, a new one
gets a pool."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from shardctl.store.shardmap import ShardMap

log = logging.getLogger(__name__)


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
        self._by_dsn: dict[str, ConnectionPool] = {}

    def pools_for(self, shard_map: ShardMap) -> list[ConnectionPool]:
        """The pools of ``shard_map``'s servers, by server index."""
        with self._lock:
            if self._epoch != shard_map.epoch:
                by_dsn = {
                    dsn: self._by_dsn.get(dsn) or self._pool(name, dsn)
                    for name, dsn in zip(shard_map.servers, shard_map.dsns, strict=True)
                }
                for dsn, pool in self._by_dsn.items():
                    if dsn not in by_dsn:
                        pool.close(timeout=0)  # connections in use close when they are returned
                self._by_dsn = by_dsn
                self._pools = [by_dsn[dsn] for dsn in shard_map.dsns]
                self._epoch = shard_map.epoch
            return self._pools

    def _connection_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"autocommit": self.autocommit, "connect_timeout": self.connect_timeout}
        if self.options:
            kwargs["options"] = self.options
        return kwargs

    def _dsn(self, dsn: str) -> str:
        """The shard's DSN, with this pool's ``target_session_attrs`` when it sets one (e.g. reads that may go
        to a standby: ``prefer-standby``; the shard map's multi-host DSNs ask for ``read-write``)."""
        if self.target_session_attrs is None or "," not in str(conninfo_to_dict(dsn).get("host", "")):
            return dsn  # one host: nothing to choose (and no wasted standby-only attempt per connection)
        return make_conninfo(dsn, target_session_attrs=self.target_session_attrs)

    def _pool(self, server: str, dsn: str) -> ConnectionPool:
        kwargs = self._connection_kwargs()
        pool = ConnectionPool(
            self._dsn(dsn),
            min_size=self.min_size,
            max_size=self.max_size,
            kwargs=kwargs,
            timeout=self.acquire_timeout,
            reconnect_timeout=60,
            name=f"{self.name}-{server}",
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
            for pool in self._by_dsn.values():
                pool.close(timeout=1)
            self._pools = []
            self._by_dsn = {}
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
        self._async_by_dsn: dict[str, AsyncConnectionPool] = {}

    async def pools_for_async(self, shard_map: ShardMap) -> list[AsyncConnectionPool]:
        if self._epoch == shard_map.epoch:
            return self._async_pools
        async with self._async_lock:
            if self._epoch != shard_map.epoch:
                by_dsn: dict[str, AsyncConnectionPool] = {}
                for name, dsn in zip(shard_map.servers, shard_map.dsns, strict=True):
                    pool = self._async_by_dsn.get(dsn)
                    if pool is None:
                        pool = self._async_pool(name, dsn)
                        await pool.open(wait=False)
                    by_dsn[dsn] = pool
                for dsn, pool in self._async_by_dsn.items():
                    if dsn not in by_dsn:
                        await pool.close(timeout=0)
                self._async_by_dsn = by_dsn
                self._async_pools, self._epoch = [by_dsn[dsn] for dsn in shard_map.dsns], shard_map.epoch
            return self._async_pools

    def _async_pool(self, server: str, dsn: str) -> AsyncConnectionPool:
        return AsyncConnectionPool(
            self._dsn(dsn),
            min_size=self.min_size,
            max_size=self.max_size,
            kwargs=self._connection_kwargs(),
            timeout=self.acquire_timeout,
            reconnect_timeout=60,
            name=f"{self.name}-{server}",
            configure=self.configure_async,
            open=False,
        )

    async def aclose(self) -> None:
        async with self._async_lock:
            for pool in self._async_by_dsn.values():
                await pool.close(timeout=1)
            self._async_pools = []
            self._async_by_dsn = {}
            self._epoch = None
