"""The request coalescer on its own (pure asyncio logic): batching under load, no waiting when idle, errors."""

from __future__ import annotations

import asyncio

import pytest

from serving.coalesce import Coalescer


async def _ticks(n: int = 3) -> None:
    """Let tasks just created run up to their first await (no timers involved)."""
    for _ in range(n):
        await asyncio.sleep(0)


@pytest.mark.req("JTBD-02.coalescing")
def test_an_idle_coalescer_sends_a_key_at_once_and_concurrent_keys_share_the_next_call() -> None:
    calls: list[list[int]] = []
    release = asyncio.Event()

    async def run(keys: list[int]) -> dict[int, int]:
        calls.append(keys)
        if len(calls) == 1:
            await release.wait()  # hold the first call so the others queue behind it
        return {k: k * 10 for k in keys}

    async def scenario() -> list[dict[int, int]]:
        coalescer: Coalescer[int, int] = Coalescer(run, max_inflight=1)
        first = asyncio.create_task(coalescer.submit([1]))
        await _ticks()
        assert calls == [[1]]  # no batching window: sent immediately
        others = [asyncio.create_task(coalescer.submit([k, k + 100])) for k in (2, 3, 4)]
        await _ticks()
        assert len(calls) == 1  # queued behind the call in flight
        release.set()
        return await asyncio.gather(first, *others)

    results = asyncio.run(scenario())
    assert calls == [[1], [2, 102, 3, 103, 4, 104]]
    assert results == [{1: 10}, {2: 20, 102: 1020}, {3: 30, 103: 1030}, {4: 40, 104: 1040}]


@pytest.mark.req("JTBD-02.coalescing")
def test_duplicate_keys_are_computed_once_and_answered_to_every_caller() -> None:
    seen: list[list[str]] = []

    async def run(keys: list[str]) -> dict[str, str]:
        seen.append(keys)
        await asyncio.sleep(0.01)
        return {k: k.upper() for k in keys}

    async def scenario():
        coalescer: Coalescer[str, str] = Coalescer(run, max_inflight=1)
        blocker = asyncio.create_task(coalescer.submit(["x"]))
        await _ticks()
        both = await asyncio.gather(coalescer.submit(["a", "b"]), coalescer.submit(["b", "c"]))
        await blocker
        return both

    assert asyncio.run(scenario()) == [{"a": "A", "b": "B"}, {"b": "B", "c": "C"}]
    assert seen == [["x"], ["a", "b", "c"]]


@pytest.mark.req("JTBD-02.coalescing")
def test_a_failing_call_fails_only_its_own_callers_and_the_next_batch_runs() -> None:
    async def run(keys: list[int]) -> dict[int, int]:
        await asyncio.sleep(0)
        if 13 in keys:
            raise RuntimeError("unlucky batch")
        return {k: k for k in keys if k != 7}  # 7: the runner forgot it

    async def scenario():
        coalescer: Coalescer[int, int] = Coalescer(run, max_inflight=1)
        with pytest.raises(RuntimeError, match="unlucky"):
            await coalescer.submit([13, 1])
        with pytest.raises(KeyError, match="7"):
            await coalescer.submit([7])
        assert await coalescer.submit([2]) == {2: 2}
        assert coalescer.inflight == 0

    asyncio.run(scenario())


@pytest.mark.req("JTBD-02.coalescing")
def test_batches_are_capped_and_run_up_to_max_inflight_at_once() -> None:
    sizes: list[int] = []
    running = 0
    peak = 0

    async def run(keys: list[int]) -> dict[int, int]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        sizes.append(len(keys))
        await asyncio.sleep(0.005)
        running -= 1
        return {k: k for k in keys}

    async def scenario():
        coalescer: Coalescer[int, int] = Coalescer(run, max_inflight=2, max_batch=4)
        await asyncio.gather(*(coalescer.submit([k]) for k in range(20)))

    asyncio.run(scenario())
    assert peak == 2
    assert max(sizes) == 4
    assert sum(sizes) == 20


def test_bad_limits_are_refused() -> None:
    async def run(keys: list[int]) -> dict[int, int]:
        return {}

    with pytest.raises(ValueError, match="max_inflight"):
        Coalescer(run, max_inflight=0)
