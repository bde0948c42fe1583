"""Request coalescing: concurrent callers' keys share one batched call instead of one call each.

At low load a key is sent at once (no added latency: there is no batching window). While ``max_inflight``
calls are running, newly submitted keys queue up and leave together in the next call, so under load the fixed
cost of a call (a Redis round trip through the client, a thread hop, a shard query, a JVM call) is paid once
per batch, not once per request: the batch size grows with the load by itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Coalescer(Generic[K, V]):
    """``await submit(keys)`` returns ``run(batch)``'s value for each of ``keys``; ``run`` gets unique keys from
    any number of callers and must return a value for each (a missing one is an error for that key's callers)."""

    def __init__(
        self, run: Callable[[list[K]], Awaitable[Mapping[K, V]]], *, max_inflight: int = 1, max_batch: int = 512
    ):
        if max_inflight < 1 or max_batch < 1:
            raise ValueError("max_inflight and max_batch must be >= 1")
        self._run = run
        self._max_inflight = max_inflight
        self._max_batch = max_batch
        self._pending: list[tuple[K, asyncio.Future[V]]] = []
        self._inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def inflight(self) -> int:
        return self._inflight

    async def submit(self, keys: Sequence[K]) -> dict[K, V]:
        loop = asyncio.get_running_loop()
        futures = {key: loop.create_future() for key in keys}
        self._pending.extend(futures.items())
        self._start_runs()
        values = await asyncio.gather(*futures.values())  # gather also collects the others' errors
        return dict(zip(futures, values, strict=True))

    def _start_runs(self) -> None:
        while self._pending and self._inflight < self._max_inflight:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            self._inflight += 1
            task = asyncio.get_running_loop().create_task(self._run_batch(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run_batch(self, batch: list[tuple[K, asyncio.Future[V]]]) -> None:
        try:
            keys = list(dict.fromkeys(key for key, _ in batch))
            try:
                results = await self._run(keys)
            except Exception as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                return
            for key, fut in batch:
                if fut.done():
                    continue  # its caller went away (cancelled)
                if key in results:
                    fut.set_result(results[key])
                else:
                    fut.set_exception(KeyError(f"no result for {key!r}"))
        finally:
            self._inflight -= 1
            self._start_runs()
