"""The free space of the local stack's servers, measured on their filesystems: the ``DiskSpaceSource`` the CLI
gives the migration engine for the servers this stack runs (``shardctl/control/migration/disk.py``; the control
plane defines the protocol and never imports the stack).

A registered server is the stack's when its DSN names the same host and port(s) as one of the stack's servers.
Its space is that of the filesystem holding its data directory (``shutil.disk_usage``); every server of a stack
shares that filesystem as a rule, so each measure names the filesystem (its device) as the volume, and the
migration's check adds up the needs of every target on it. A Patroni cluster's members each hold a copy:
``copies`` counts those on the measured filesystem.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

from shardctl.control.migration.disk import DiskSpace
from shardctl.stack.layout import StackLayout, StackState

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class StackDiskSpace:
    """Measures the servers of the stack in ``layout`` (None for any other server, or when there is no stack)."""

    def __init__(self, layout: StackLayout):
        self.layout = layout
        self._dirs: dict[frozenset[tuple[str, str]], list[Path]] | None = None

    def measure(self, name: str, dsn: str) -> DiskSpace | None:
        dirs = self._data_dirs().get(_endpoints(dsn))
        if not dirs:
            return None
        by_volume: dict[int, list[Path]] = {}
        for folder in dirs:
            found = _existing(folder)
            if found is not None:
                by_volume.setdefault(os.stat(found).st_dev, []).append(found)
        measures = []
        for device, folders in by_volume.items():
            usage = shutil.disk_usage(folders[0])
            measures.append(
                DiskSpace(usage.free, usage.total, f"filesystem of {folders[0]}", str(device), len(folders))
            )
        # Members on several filesystems: the one with the least room per copy decides.
        return min(measures, key=lambda space: space.free_bytes / space.copies, default=None)

    def _data_dirs(self) -> dict[frozenset[tuple[str, str]], list[Path]]:
        """Each of the stack's servers, by its endpoints: the data directories holding its copies."""
        if self._dirs is None:
            try:
                state = self.layout.load_state()
            except (OSError, ValueError):  # no readable stack here: it measures nothing
                state = None
            self._dirs = {} if state is None else _servers_of(self.layout, state)
        return self._dirs


def _servers_of(layout: StackLayout, state: StackState) -> dict[frozenset[tuple[str, str]], list[Path]]:
    entries = layout.shard_entries(state)
    cluster = layout.ha_cluster(state)
    if cluster is None:
        folders = [[server.data_dir] for server in layout.postgres_servers(state)[1:]]
    else:
        folders = [[member.plan.data_dir for member in cluster.members(i)] for i in range(cluster.shard_count())]
    return {_endpoints(entry["dsn"]): dirs for entry, dirs in zip(entries, folders, strict=True)}


def _endpoints(dsn: str) -> frozenset[tuple[str, str]]:
    """The (host, port) pairs a DSN names, loopback spelt one way (empty for a DSN that cannot be read)."""
    try:
        params = conninfo_to_dict(dsn)
    except Exception:  # a DSN libpq cannot parse is no server of the stack
        return frozenset()
    hosts = (params.get("host") or "localhost").split(",")
    ports = (params.get("port") or "5432").split(",")
    if len(ports) == 1:
        ports = ports * len(hosts)
    return frozenset(("127.0.0.1" if h in _LOOPBACK else h, p) for h, p in zip(hosts, ports, strict=False))


def _existing(folder: Path) -> Path | None:
    """``folder``, or its nearest ancestor that exists (a member not cloned yet), readable for ``statvfs``."""
    for candidate in (folder, *folder.parents):
        try:
            os.stat(candidate)
        except OSError:
            continue
        return candidate
    return None
