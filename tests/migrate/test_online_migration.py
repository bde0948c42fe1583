"""The issue's done-when under load, on real servers: while a writer writes at a steady rate through the
store and an open-loop client asks the real prediction service (Granian) for predictions, both counting
every outcome, the engine migrates 2 -> 3 servers and then 3 -> 2. Afterwards: 0 failed requests, 0 failed
or lost writes, 0 duplicated rows (row by row against what the writer acknowledged), every row on the server
the new placement names (none left on the sources), and rows moved at most 1.05x the minimum."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from shardctl.settings import TesseraSettings
from shardctl.stack.manager import Stack
from tests.conftest import _random_base_port
from tests.migrate.online import OnlineEnv, assert_clean, migrate_under_load, online_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OnlineEnv]:
    stack = Stack(tmp_path_factory.mktemp("online_stack"))
    stack.up(servers=2, base_port=_random_base_port())
    try:
        settings = TesseraSettings(**json.loads(stack.settings_file.read_text()))
        with online_env(
            stack, settings, tmp_path_factory.mktemp("online_model"), tmp_path_factory.mktemp("online_logs")
        ) as running:
            yield running
    finally:
        assert stack.down(purge=True) == []


def _grown(env: OnlineEnv) -> None:
    """Three servers with logical shards on each (the grow test's end state; made here if it did not run)."""
    env.stack.up(servers=3)
    if len(set(env.placement().values())) < 3:
        migrate_under_load(env, ["server-0", "server-1", "server-2"], seed_rows=0, settle_seconds=0.5)


@pytest.mark.req("JTBD-03.migration")
def test_two_to_three_servers_under_load(env: OnlineEnv) -> None:
    env.stack.up(servers=3)  # the new server, empty and registered; the placement is untouched
    assert set(env.placement().values()) == {"server-0", "server-1"}
    result = migrate_under_load(env, ["server-0", "server-1", "server-2"])
    assert_clean(result, ["server-0", "server-1", "server-2"])
    assert sorted(list(result.after.values()).count(s) for s in ("server-0", "server-1", "server-2")) == [85, 85, 86]


@pytest.mark.req("JTBD-03.migration")
def test_three_to_two_servers_under_load(env: OnlineEnv) -> None:
    _grown(env)
    result = migrate_under_load(env, ["server-0", "server-1"])
    assert_clean(result, ["server-0", "server-1"])
    assert "server-2" not in result.after.values()
    # Emptied, the removed server can leave the stack; before, `remove-server` refused it (test_stack_servers).
    env.stack.remove_server("server-2")
    assert Stack.server_ids(env.stack.load_state()) == [0, 1]  # type: ignore[arg-type]
