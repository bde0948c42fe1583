"""Commit coordination across shards: every shard merges, then every shard commits, or all roll back.

Without two-phase commit the only window left is a shard dying between another shard's commit and its
own: that raises ``PartialCommitError`` naming both sets (the batch is idempotent, so re-running it
completes it). Failures are classified here, so the caller sees a shard outage as ``ShardUnavailableError``
and a programming error as itself.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

import psycopg
from psycopg_pool import PoolTimeout

from shardctl.store.errors import FeatureWriteError, PartialCommitError, ShardUnavailableError
from shardctl.store.fence import FencedError
from shardctl.store.retry import failover_in, is_multi_host
from shardctl.store.shardmap import ShardMap
from shardctl.store.writer.streaming import ShardResult, ShardStream


def merge_all(
    streams: dict[int, ShardStream],
    feature_set: str,
    shard_map: ShardMap,
    failures: dict[int, BaseException],
    executor: ThreadPoolExecutor,
) -> dict[int, ShardResult]:
    """Merge on every shard that staged rows, in parallel (the work is in the Postgres backends)."""
    results = {i: ShardResult(len(s.rows), 0, True) for i, s in streams.items() if s.fast}
    pending = {i: s for i, s in streams.items() if not s.fast}
    if len(pending) > 1:
        futures = {i: executor.submit(s.merge, feature_set) for i, s in pending.items()}
        outcomes = {}
        for i, future in futures.items():
            try:
                outcomes[i] = future.result()
            except Exception as exc:
                failures[i] = classify(i, shard_map.dsns[i], exc)
        results.update(outcomes)
    else:
        for i, stream in pending.items():
            try:
                results[i] = stream.merge(feature_set)
            except Exception as exc:
                failures[i] = classify(i, shard_map.dsns[i], exc)
    return results


def raise_failures(failures: dict[int, BaseException]) -> None:
    """Raise what the caller should see: a fence first (the batch waits and re-routes), one shard's outage as
    itself, else all of them."""
    fenced = [f for f in failures.values() if isinstance(f, FencedError)]
    if fenced:
        raise fenced[0]
    if len(failures) == 1:
        only = next(iter(failures.values()))
        if isinstance(only, ShardUnavailableError):
            raise only
    raise FeatureWriteError(
        "batch not written (rolled back on every shard): "
        + "; ".join(f"shard {i}: {exc}" for i, exc in sorted(failures.items())),
        failures,
    )


def rollback_all(conns: dict[int, psycopg.Connection]) -> None:
    for conn in conns.values():
        # A dead connection has nothing to roll back: the server aborts its transaction.
        with contextlib.suppress(psycopg.Error):
            conn.rollback()


def commit_all(conns: dict[int, psycopg.Connection], shard_map: ShardMap) -> None:
    """Commit shard by shard; after the first failure roll the rest back and say which shards committed."""
    committed: list[int] = []
    failures: dict[int, BaseException] = {}
    for i, conn in conns.items():
        if failures:
            conn.rollback()
            failures[i] = FeatureWriteError("not committed: an earlier shard failed to commit")
            continue
        try:
            conn.commit()
            committed.append(i)
        except psycopg.Error as exc:
            failures[i] = ShardUnavailableError(i, shard_map.dsns[i], exc)
    if failures and committed:
        raise PartialCommitError(committed, failures)
    if failures:
        raise FeatureWriteError(f"batch not written: {'; '.join(map(str, failures.values()))}", failures)


def failover_retryable(exc: ShardUnavailableError | FeatureWriteError, shard_map: ShardMap) -> bool:
    """A failover on an HA shard (multi-host DSN): worth re-running the batch. A single server that is
    down stays down for now, so its error goes straight to the caller."""
    shards = set(getattr(exc, "failures", None) or ())
    if isinstance(exc, ShardUnavailableError):
        shards.add(exc.shard)
    return failover_in(exc) and any(is_multi_host(shard_map.dsns[i]) for i in shards if i < len(shard_map.dsns))


def classify(shard: int, dsn: str, exc: BaseException) -> BaseException:
    """A lost connection or an exhausted pool is the shard being unavailable; anything else stays itself."""
    if isinstance(exc, FencedError | ShardUnavailableError):
        return exc
    if isinstance(exc, psycopg.OperationalError | PoolTimeout):
        return ShardUnavailableError(shard, dsn, exc)
    return exc
