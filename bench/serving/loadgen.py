"""Open-loop HTTP load generator spread over processes (a single asyncio process tops out near 2-3k req/s).

Every request has a scheduled send time (``start + i / rate``); its latency is measured from that time, not
from when it was actually sent, so a server (or generator) falling behind shows up as latency instead of
silently lowering the rate (no coordinated omission). Each process owns ``rate / procs`` of the schedule,
spread over keep-alive connections (request ``i`` of a process goes to connection ``i % conns``), records
latencies in an HDR histogram, and the parent merges them.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from hdrh.histogram import HdrHistogram

MAX_US = 60_000_000


@dataclass(frozen=True)
class Scenario:
    """Which entity each request asks for: ``hit`` cycles a small warm set, ``miss`` never repeats an id,
    ``zipf`` draws from a Zipf(s) law over ``n_entities``, ``uniform`` uniformly from all of them (most never asked
    before); ``hello`` sends an empty body to a trivial endpoint."""

    name: str
    kind: str
    n_entities: int = 0
    warm: int = 100
    zipf_s: float = 1.1
    path: str = "/v1/predictions"
    ids: tuple[str, ...] = ()  # the entity ids to ask for (index i -> ids[i]); empty: ``entity_name(i)``
    api_key: str = ""  # sent as ``Authorization: Bearer`` when set (every app under test gets it)

    def entity(self, i: int) -> str:
        return self.ids[i % len(self.ids)] if self.ids else entity_name(i)


@dataclass
class LoadResult:
    rate: float
    achieved: float
    completed: int
    errors: int
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    server_cpu_us: float = 0.0  # CPU of the server's processes per completed request (set by the benchmark)


def entity_name(i: int) -> str:
    return f"bench-{i:07d}"


def _body_source(scenario: Scenario, proc: int, procs: int, start_index: int) -> Callable[[], bytes]:
    if scenario.kind == "hello":
        return lambda: b"{}"
    rng = random.Random(proc * 7919 + start_index)
    if scenario.kind == "hit":
        ids = [scenario.entity(i) for i in range(scenario.warm)]
        return lambda: b'{"entity_id":"%s"}' % ids[rng.randrange(len(ids))].encode()
    if scenario.kind == "miss":
        counter = iter(range(start_index + proc, 1 << 62, procs))
        return lambda: b'{"entity_id":"%s"}' % scenario.entity(next(counter) % scenario.n_entities).encode()
    if scenario.kind == "uniform":
        n = scenario.n_entities
        return lambda: b'{"entity_id":"%s"}' % scenario.entity(rng.randrange(n)).encode()
    if scenario.kind == "zipf":
        weights = [1.0 / (k**scenario.zipf_s) for k in range(1, scenario.n_entities + 1)]
        cum = []
        total = 0.0
        for w in weights:
            total += w
            cum.append(total)
        import bisect

        return lambda: b'{"entity_id":"%s"}' % scenario.entity(bisect.bisect_left(cum, rng.random() * total)).encode()
    raise ValueError(scenario.kind)


async def _run(host, port, scenario, rate, duration, conns, proc, procs, start_index, start_at):
    loop = asyncio.get_running_loop()
    hist = HdrHistogram(1, MAX_US, 3)
    body = _body_source(scenario, proc, procs, start_index)
    auth = f"Authorization: Bearer {scenario.api_key}\r\n" if scenario.api_key else ""
    head = (
        f"POST {scenario.path} HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}Content-Type: application/json\r\n"
        "Content-Length: "
    ).encode()
    counts = {"done": 0, "errors": 0}
    # Map the wall-clock start shared by all processes onto this loop's clock.
    start = loop.time() + (start_at - time.time())
    n_total = int(rate * duration)

    async def connection(j: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        i = j
        try:
            while i < n_total:
                scheduled = start + (i * procs + proc) / (rate * procs)
                delay = scheduled - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                payload = body()
                writer.write(head + str(len(payload)).encode() + b"\r\n\r\n" + payload)
                headers = await reader.readuntil(b"\r\n\r\n")
                status = int(headers[9:12])
                length = 0
                for line in headers.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
                hist.record_value(min(MAX_US, max(1, int((loop.time() - scheduled) * 1e6))))
                counts["done"] += 1
                if status >= 400:
                    counts["errors"] += 1
                i += conns
        finally:
            writer.close()

    await asyncio.gather(*(connection(j) for j in range(conns)))
    return hist.encode(), counts["done"], counts["errors"], loop.time() - start


def _proc_main(queue, *args) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    queue.put(asyncio.run(_run(*args)))


def run_load(
    host: str,
    port: int,
    scenario: Scenario,
    rate: float,
    duration: float,
    *,
    procs: int = 2,
    conns: int = 32,
    start_index: int = 0,
) -> LoadResult:
    """Offer ``rate`` req/s for ``duration`` s; latency percentiles from the scheduled send times."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    start_at = time.time() + 0.5
    per_proc = rate / procs
    workers = [
        ctx.Process(
            target=_proc_main,
            args=(queue, host, port, scenario, per_proc, duration, conns, p, procs, start_index, start_at),
        )
        for p in range(procs)
    ]
    for w in workers:
        w.start()
    results = [queue.get(timeout=duration + 120) for _ in workers]
    for w in workers:
        w.join(timeout=10)
    merged = HdrHistogram(1, MAX_US, 3)
    done = errors = 0
    elapsed = 0.0
    for encoded, d, e, el in results:
        merged.decode_and_add(encoded)
        done += d
        errors += e
        elapsed = max(elapsed, el)
    return LoadResult(
        rate=rate,
        achieved=done / elapsed if elapsed else 0.0,
        completed=done,
        errors=errors,
        p50_ms=merged.get_value_at_percentile(50) / 1000,
        p99_ms=merged.get_value_at_percentile(99) / 1000,
        p999_ms=merged.get_value_at_percentile(99.9) / 1000,
        max_ms=merged.get_max_value() / 1000,
    )
