"""The per-logical-shard fence on a real server: raising it waits for in-flight writes to the moving logical
shards only, then refuses writes routed on the old epoch to them, and nothing else."""

from __future__ import annotations

import threading

import psycopg
import pytest

from shardctl.process import wait_until
from shardctl.store.fence import FencedError, check, ensure_fence, raise_fence
from tests.migrate.conftest import ServerPair


def waiting_on_lock(dsn: str, application_name: str) -> bool:
    with psycopg.connect(dsn) as conn:
        return bool(
            conn.execute(
                "SELECT 1 FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'",
                (application_name,),
            ).fetchone()
        )


@pytest.mark.req("JTBD-03.migration-fence")
def test_raising_the_fence_waits_for_writes_to_moving_shards_only_then_refuses_old_epochs(
    servers: ServerPair,
) -> None:
    dsn = servers.target
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS tessera_logical_shard_fence")
    ensure_fence(dsn, 256)
    ensure_fence(dsn, 256)  # idempotent
    moving, staying = [5, 9], [6]
    with psycopg.connect(dsn) as in_flight, psycopg.connect(dsn, options="-c lock_timeout=5s") as other:
        check(in_flight, [5], write_epoch=1)  # a write to a moving shard, not yet committed
        raised: list[int] = []
        raiser = threading.Thread(
            target=lambda: raised.append(raise_fence(f"{dsn} application_name=fence_raiser", moving, 2))
        )
        raiser.start()
        assert wait_until(lambda: waiting_on_lock(dsn, "fence_raiser"), 10), "the raise did not wait"
        check(other, staying, write_epoch=1)  # a write to another shard goes on meanwhile
        other.commit()
        assert raised == [], "the fence was raised before the in-flight write committed"
        in_flight.commit()
        raiser.join(10)
        assert raised == [2]

        with pytest.raises(FencedError, match=r"\[5\] are fenced at epoch 2"):
            check(in_flight, [5, 6], write_epoch=1)
        in_flight.rollback()
        check(in_flight, [5, 6], write_epoch=2)  # routed on the new epoch: passes
        check(in_flight, staying, write_epoch=1)  # other shards: never fenced
        in_flight.rollback()
    assert raise_fence(dsn, moving, 1) == 2
    with psycopg.connect(dsn) as conn, pytest.raises(FencedError):
        check(conn, [9], write_epoch=1)  # a fence is never lowered


@pytest.mark.req("JTBD-03.migration-fence")
def test_a_bounded_raise_gives_up_without_fencing(servers: ServerPair) -> None:
    dsn = servers.target
    ensure_fence(dsn, 256)
    with psycopg.connect(dsn) as in_flight:
        check(in_flight, [77], write_epoch=100)
        with pytest.raises(psycopg.errors.LockNotAvailable):
            raise_fence(dsn, [77], 101, lock_timeout_s=0.2)
        in_flight.commit()
    with psycopg.connect(dsn) as conn:
        check(conn, [77], write_epoch=100)  # nothing was raised
