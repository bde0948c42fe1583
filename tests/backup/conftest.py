"""One plain stack (catalog + 2 servers) per test file: backups, accidents and migrations change it for good."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shardctl.process import free_port
from shardctl.stack.manager import Stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    the_stack = Stack(tmp_path_factory.mktemp("backup-stack"))
    the_stack.up(servers=2, base_port=free_port(block=10))
    try:
        yield the_stack
    finally:
        assert the_stack.down(purge=True) == []
