"""Traffic for the online-migration tests and the online-resharding benchmark: a writer through
``FeatureStore`` at a steady rate that records every acknowledged row and every failure, an open-loop client
of the real prediction service that counts every outcome, and the row-by-row audit of the servers afterwards.

Open loop: the client sends request *i* at ``start + i / rate`` whatever the earlier ones are doing, so a
pause of the service shows as late and failed answers rather than as fewer requests (a closed loop would
slow down with the service and hide it).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
import psycopg

from shardctl.store import FeatureStore
from shardctl.store.hashing import logical_shard_for
from shardctl.store.writer import FeatureRow

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class WriteLog:
    """What the writer saw: per entity, the ``seq`` of its newest acknowledged write; every failure; and each
    acknowledged batch's (start time, seconds) for the pause at cutover."""

    acknowledged: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    # Ids of failed writes: a write that failed as its server failed over may still have committed.
    uncertain: set[str] = field(default_factory=set)
    batches: list[tuple[float, float]] = field(default_factory=list)


class SteadyWriter(threading.Thread):
    """Writes ``batch`` rows every ``interval`` seconds through the store: about half new entities, half
    updates of earlier ones (a newer event time and ``seq``), so moved logical shards get inserts and updates
    while they are copied and cut over."""

    def __init__(
        self,
        store: FeatureStore,
        feature_set: str,
        *,
        batch: int = 5,
        interval: float = 0.05,
        seed: int = 11,
        prefix: str = "w",
    ):
        super().__init__(name="steady-writer", daemon=True)
        self.store = store
        self.feature_set = feature_set
        self.batch = batch
        self.interval = interval
        self.prefix = prefix
        self.log = WriteLog()
        self._rng = random.Random(seed)
        self._seq = itertools.count(1)
        self._halt = threading.Event()

    def seed_rows(self, count: int) -> None:
        """Write ``count`` entities before traffic starts (recorded like any acknowledged write)."""
        for start in range(0, count, 1000):
            self._write([f"{self.prefix}-{i:07d}" for i in range(start, min(count, start + 1000))])

    def _write(self, ids: Sequence[str]) -> None:
        seqs = {eid: next(self._seq) for eid in ids}
        rows = [FeatureRow(eid, T0 + timedelta(seconds=s), {"seq": s, "value": s % 97}) for eid, s in seqs.items()]
        started = time.monotonic()
        try:
            self.store.write(self.feature_set, rows)
        except Exception as exc:  # every failure counts: the test demands none
            self.log.failures.append(f"{type(exc).__name__}: {exc}")
            self.log.uncertain.update(ids)
            return
        self.log.batches.append((started, time.monotonic() - started))
        self.log.acknowledged.update(seqs)

    def run(self) -> None:
        next_at = time.monotonic()
        while not self._halt.is_set():
            known = list(self.log.acknowledged)
            fresh = len(known) + self.batch * 4  # beyond every id used so far
            ids = {
                self._rng.choice(known) if known and self._rng.random() < 0.5 else f"{self.prefix}-{fresh + k:07d}"
                for k in range(self.batch)
            }
            self._write(sorted(ids))
            next_at += self.interval
            self._halt.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> WriteLog:
        self._halt.set()
        self.join(timeout=60)
        assert not self.is_alive(), "the writer did not stop"
        return self.log


@dataclass
class ClientLog:
    """Every request's outcome: 'ok' or why not (status, per-item status, exception)."""

    outcomes: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # of the ok requests, in seconds
    sent_at: list[float] = field(default_factory=list)  # their send times (time.monotonic), paired with latencies

    @property
    def sent(self) -> int:
        return sum(self.outcomes.values())


class OpenLoopClient(threading.Thread):
    """POSTs ``/v1/predictions`` batches of ``batch`` ids at ``rate`` requests a second (open loop) and counts
    every outcome; a request is ok only if the answer is 200 and every item of it is 200."""

    def __init__(
        self,
        base_url: str,
        entity_ids: Sequence[str],
        *,
        rate: float = 10.0,
        batch: int = 10,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(name="open-loop-client", daemon=True)
        self.base_url = base_url
        self.headers = headers or {}  # the API key (testkit.serving.bearer)
        self.entity_ids = list(entity_ids)
        self.rate = rate
        self.batch = batch
        self.log = ClientLog()
        self._halt = threading.Event()

    def run(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        rng = random.Random(7)
        pending: set[asyncio.Task] = set()
        async with httpx.AsyncClient(base_url=self.base_url, timeout=30, headers=self.headers) as client:
            start = time.monotonic()
            for i in itertools.count():
                if self._halt.is_set():
                    break
                await asyncio.sleep(max(0.0, start + i / self.rate - time.monotonic()))
                ids = rng.sample(self.entity_ids, min(self.batch, len(self.entity_ids)))
                task = asyncio.create_task(self._one(client, ids))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if pending:
                await asyncio.gather(*pending)

    async def _one(self, client: httpx.AsyncClient, ids: list[str]) -> None:
        started = time.monotonic()
        try:
            response = await client.post("/v1/predictions", json={"entity_ids": ids})
        except httpx.HTTPError as exc:
            self._failed(f"{type(exc).__name__}: {exc}")
            return
        if response.status_code != 200:
            self._failed(f"HTTP {response.status_code}: {response.text[:200]}")
            return
        bad = [item for item in response.json()["items"] if item["status"] != 200]
        if bad:
            self._failed(f"{len(bad)} items failed, e.g. {bad[0]}")
            return
        self.log.outcomes["ok"] += 1
        self.log.latencies.append(time.monotonic() - started)
        self.log.sent_at.append(started)

    def _failed(self, why: str) -> None:
        self.log.outcomes[why.split(":")[0]] += 1
        self.log.failures.append(why)

    def stop(self) -> ClientLog:
        self._halt.set()
        self.join(timeout=60)
        assert not self.is_alive(), "the client did not stop"
        return self.log


@dataclass
class Audit:
    """The servers' rows against what the writer acknowledged and what the placement names."""

    rows: int
    lost: list[str]  # acknowledged, found nowhere
    stale: list[str]  # found, but older than the newest acknowledged write
    duplicated: list[str]  # on more than one server (or twice on one)
    unexpected: list[str]  # found, never acknowledged
    misplaced: list[str]  # on a server the placement does not name for its logical shard (left on a source)
    wrong_logical_shard: list[str]  # the row's logical_shard is not the id's hash

    def problems(self) -> dict[str, list[str]]:
        return {k: v[:5] for k, v in vars(self).items() if isinstance(v, list) and v}


def audit(
    server_dsns: Mapping[str, str],
    placement: Mapping[int, str],
    feature_set: str,
    acknowledged: Mapping[str, int],
    uncertain: Iterable[str] = (),
) -> Audit:
    """Read every row of ``feature_set`` on every server and check it row by row. Ids in ``uncertain`` (their
    write failed, so it may or may not have committed) may be present without an acknowledgement."""
    found: dict[str, list[tuple[str, int, int]]] = {}
    rows = 0
    for name, dsn in server_dsns.items():
        with psycopg.connect(dsn) as conn:
            for logical, eid, seq in conn.execute(
                "SELECT logical_shard, entity_id, (features->>'seq')::bigint FROM entity_features "
                "WHERE feature_set = %s",
                (feature_set,),
            ):
                found.setdefault(eid, []).append((name, logical, seq))
                rows += 1
    lost = sorted(set(acknowledged) - set(found))
    unexpected = sorted(set(found) - set(acknowledged) - set(uncertain))
    duplicated = sorted(eid for eid, where in found.items() if len(where) > 1)
    stale = sorted(eid for eid, where in found.items() if eid in acknowledged and where[0][2] < acknowledged[eid])
    misplaced = sorted(eid for eid, where in found.items() if any(placement[lg] != srv for srv, lg, _ in where))
    wrong = sorted(eid for eid, where in found.items() if any(lg != logical_shard_for(eid) for _, lg, _ in where))
    return Audit(rows, lost, stale, duplicated, unexpected, misplaced, wrong)


def rows_per_logical_shard(server_dsns: Iterable[str]) -> Counter[int]:
    """Rows of every feature set per logical shard, over all servers."""
    counts: Counter[int] = Counter()
    for dsn in server_dsns:
        with psycopg.connect(dsn) as conn:
            for logical, n in conn.execute("SELECT logical_shard, count(*) FROM entity_features GROUP BY 1"):
                counts[logical] += n
    return counts


def minimum_rows_moved(before: Mapping[int, str], servers: Sequence[str], rows: Mapping[int, int]) -> float:
    """The fewest rows any placement on ``servers`` that is balanced by rows must move from ``before`` (logical
    shard -> server), given ``rows`` per logical shard: every row on a server that leaves, plus what each
    staying server holds beyond the mean. Adding one server to N equal ones: 1/(N+1) of the rows. Moving whole
    logical shards reaches it up to the spread of their sizes (hence the issue's 5% allowance)."""
    total = sum(rows.get(lg, 0) for lg in before)
    held: dict[str, int] = {}
    for lg, server in before.items():
        held[server] = held.get(server, 0) + rows.get(lg, 0)
    mean = total / len(servers)
    leaving = sum(n for server, n in held.items() if server not in servers)
    return leaving + sum(max(0.0, held.get(server, 0) - mean) for server in servers)


def rows_moved(before: Mapping[int, str], after: Mapping[int, str], rows: Mapping[int, int]) -> int:
    return sum(rows.get(lg, 0) for lg in before if before[lg] != after[lg])


def pause_per_window(batches: Sequence[tuple[float, float]], windows: Sequence[tuple[float, float]]) -> list[float]:
    """For each (start, end) window, the largest extra latency of a write acknowledged while it overlapped it:
    its duration minus the median duration of the writes outside every window."""
    outside = sorted(d for s, d in batches if not any(s <= b and s + d >= a for a, b in windows))
    typical = outside[len(outside) // 2] if outside else 0.0
    result = []
    for a, b in windows:
        during = [d for s, d in batches if s <= b and s + d >= a]
        result.append(max((d - typical for d in during), default=0.0))
    return result
