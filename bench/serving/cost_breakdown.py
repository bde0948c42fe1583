"""Where a request's CPU goes: each part of the serving path timed alone, in one worker's own process.

    TESSERA_SETTINGS_FILE=... PYTHONPATH=. .venv/bin/python bench/serving/cost_breakdown.py [--json out.json]

Opens the same ``ServingRuntime`` a worker opens (promoted model, readers, Redis, pools, interpreter
settings) and runs each part N times in a row on the event loop, reporting process CPU and wall time per
call. The benchmark runs it on its own stack after the load scenarios; it needs entities named as the load
generator names them (``bench-0000000`` ...).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.serving.in_process import exit_with
from bench.serving.loadgen import entity_name
from serving.cache import CachedPrediction
from serving.freshness import now_ms
from serving.runtime import ServingRuntime
from shardctl.settings import get_settings


async def _measure(n: int, part: Callable[[int], Awaitable[object]]) -> tuple[float, float]:
    for i in range(50):
        await part(i)
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(n):
        await part(i)
    return (time.process_time() - cpu) / n * 1e6, (time.perf_counter() - wall) / n * 1e6


async def breakdown(n: int) -> dict[str, dict[str, float]]:
    runtime = await ServingRuntime.open(get_settings())
    try:
        p = runtime.predictor
        loop = asyncio.get_running_loop()
        model = p.holder.require()
        fs = model.version.feature_set
        rows = [r.features for r in (await p.features.aread([entity_name(j) for j in range(8)], fs)).records.values()]
        pred = CachedPrediction(0.5, "no", 1, "2026-01-01T00:00:00+00:00", "2026-01-01T00:00:00+00:00")

        async def redis_write(i: int) -> None:
            p.cache.put_behind(
                fs, {entity_name(i): 1}, {entity_name(i): pred}, model.key, read_ms=now_ms(), version_ttl_ms=2000
            )
            await p.cache.flush()

        parts: dict[str, Callable[[int], Awaitable[object]]] = {
            "redis lookup, 1 entity": lambda i: p.cache.lookup(model.key, fs, [entity_name(i)]),
            "redis lookup, 8 entities": lambda i: p.cache.lookup(
                model.key, fs, [entity_name(8 * i + j) for j in range(8)]
            ),
            "redis write, 1 entity": redis_write,
            "shard read on the loop, 2 ids": lambda i: p.features.aread(
                [entity_name(2 * i), entity_name(2 * i + 1)], fs
            ),
            "shard read on the loop, 8 ids": lambda i: p.features.aread([entity_name(8 * i + j) for j in range(8)], fs),
            "shard read via a thread, 2 ids": lambda i: loop.run_in_executor(
                runtime.io_pool, p.features.read, [entity_name(2 * i), entity_name(2 * i + 1)], fs
            ),
            "scoring via the pool, 2 rows": lambda i: loop.run_in_executor(runtime.scoring_pool, model.score, rows[:2]),
            "scoring via the pool, 8 rows": lambda i: loop.run_in_executor(runtime.scoring_pool, model.score, rows),
            "empty thread hop": lambda i: loop.run_in_executor(runtime.io_pool, int),
            "memory-tier lookup": lambda i: asyncio.sleep(
                0, p.local.get(model.key, fs, entity_name(i % 100), p.freshness.live_epoch())
            ),
        }
        out = {}
        for name, part in parts.items():
            cpu, wall = await _measure(n, part)
            out[name] = {"cpu_us": round(cpu, 1), "wall_us": round(wall, 1)}
            print(f"  {name:>32}: CPU {cpu:7.1f} us  wall {wall:7.1f} us per call", flush=True)
        return out
    finally:
        await runtime.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    exit_with(asyncio.run(breakdown(args.n)), args.json)


if __name__ == "__main__":
    sys.exit(main())
