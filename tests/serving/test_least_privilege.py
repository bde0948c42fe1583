"""The running service connects to the catalog and to every shard as serving's own read-only role (the stack
wrote it into the settings file's ``serving`` section), never as the superuser."""

from __future__ import annotations

import psutil
import psycopg
import pytest
import redis

from shardctl.redis_acl import SERVING_USER
from shardctl.store.grants import SERVING_ROLE
from tests.serving.conftest import entity_id


def backends_of(pids: set[int], dsn: str) -> list[str]:
    """The roles of ``dsn``'s server's client backends whose client is one of ``pids`` (matched by TCP port)."""
    ports = {
        c.laddr.port
        for pid in pids
        for c in psutil.Process(pid).net_connections(kind="tcp")
        if c.raddr and c.status == psutil.CONN_ESTABLISHED
    }
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT usename, client_port FROM pg_stat_activity WHERE backend_type = 'client backend'"
        ).fetchall()
    return [user for user, port in rows if port in ports]


@pytest.mark.req("PLAT.least-privilege")
@pytest.mark.req("PLAT.redis-acl")
def test_the_service_reads_the_catalog_and_every_shard_as_its_own_role(
    service, serving_stack, own_redis, models
) -> None:
    _stack, settings = serving_stack
    response = service.client.post("/v1/predictions", json={"entity_ids": [entity_id(i) for i in range(40)]})
    assert response.status_code == 200, response.text
    assert service.client.get("/readyz").status_code == 200
    root = psutil.Process(service.proc.pid)
    pids = {root.pid, *(child.pid for child in root.children(recursive=True))}
    for dsn in (settings.catalog_dsn or "", *settings.shard_dsns()):
        roles = backends_of(pids, dsn)
        assert roles, f"the service holds no connection to {dsn}"
        assert set(roles) == {SERVING_ROLE}, f"{dsn}: the service connects as {sorted(set(roles))}"
    # And to Redis as its own ACL user (limited to serving's key prefix), never the admin or the default user.
    admin = redis.Redis.from_url(own_redis.url, username=own_redis.username, password=own_redis.password)
    users = {c["user"] for c in admin.client_list()} - {own_redis.username}  # less this admin connection
    assert users == {SERVING_USER}, f"the service's Redis connections log in as {sorted(users)}"
