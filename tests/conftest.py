"""Shared fixtures: a real local stack (Postgres catalog + shards, Redis) per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from shardctl.process import free_port
from shardctl.settings import TesseraSettings, load_settings
from shardctl.stack.manager import Stack
from tests.scheduling import dispatch_order, unit_of


def _random_base_port() -> int:
    # Spread sessions (parallel runs, developers' stacks) over the ports outside the ephemeral range, so
    # neither another session nor an outgoing connection takes a port between allocation and bind.
    return free_port(block=10)


@contextmanager
def running_stack(root: Path, **up: Any) -> Iterator[Stack]:
    """A stack of its own in ``root`` (``Stack.up``'s keywords), stopped and purged at the end, none left running."""
    stack = Stack(root)
    stack.up(base_port=_random_base_port(), **up)
    try:
        yield stack
    finally:
        assert stack.down(purge=True) == []


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def local_stack(stack_dir: Path) -> Iterator[Stack]:
    """A running stack with 2 shards, shared by the session and stopped (by PID) at its end."""
    stack = Stack(stack_dir)
    stack.up(shards=2, base_port=_random_base_port())
    previous = os.environ.get("TESSERA_DATA_DIR")
    os.environ["TESSERA_DATA_DIR"] = str(stack_dir)
    try:
        yield stack
    finally:
        failed = stack.down(purge=True)
        if previous is None:
            os.environ.pop("TESSERA_DATA_DIR", None)
        else:
            os.environ["TESSERA_DATA_DIR"] = previous
        assert not failed, f"servers left running: {failed}"


@pytest.fixture(scope="session")
def settings(local_stack: Stack) -> TesseraSettings:
    """Settings as every Tessera process reads them once the stack is up: from the stack's file."""
    return load_settings()


def pytest_configure(config: pytest.Config) -> None:
    """`shardctl stack up` starts no precomputing scorer in the tests' stacks (TESSERA_STACK__SCORER, inherited by
    every CLI they run): a scorer per test stack would follow every shard's change log beside what each test
    measures. Tests of the scorer start it themselves (`--scorer`, `Stack.start_scorer`, `ScorerProcess`)."""
    os.environ.setdefault("TESSERA_STACK__SCORER", "false")


@pytest.hookimpl(tryfirst=True)  # before xdist names each test's group from its mark
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Put each test in its work unit and the units in dispatch order (tests/scheduling.py says why)."""
    root = Path(str(config.rootpath))
    paths = [str(Path(item.path).relative_to(root)) for item in items]
    order = dispatch_order(paths)
    for item, path in zip(items, paths, strict=True):
        item.add_marker(pytest.mark.xdist_group(unit_of(path)))
    items[:] = [items[i] for i in order]
