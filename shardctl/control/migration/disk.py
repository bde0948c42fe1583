"""Does each target server have the disk a migration's copy needs? The verdict is pure; the free space comes from a
``DiskSpaceSource`` the engine is handed.

Both copies exist until cleanup: the copy writes the moved rows onto the targets while the sources keep theirs
(they shrink only in the ``cleaned`` phase, after the cutover), so only the targets are checked, each against
what it receives. The sources do grow meanwhile: each holds the WAL its replication slots have not confirmed yet
(bounded by ``max_slot_wal_keep_size``), which is not counted here.

PostgreSQL cannot report its free disk space in plain SQL, so the space comes from one of:

- ``DeclaredCapacity``: the capacity declared for the server in the catalog (``tessera_servers.
  disk_capacity_bytes``, set by ``shardctl servers add --disk-capacity`` and ``shardctl servers disk``), less
  what the server holds (its databases' ``pg_database_size`` and its WAL, read over its DSN);
- the local stack's measure of its servers' filesystems (``shardctl/stack/disk.py``: the CLI composes it, as the
  control plane never imports the stack);
- neither: unknown. The plan says so and how to declare it, and is not refused.

Sizes are decimal (``GB`` = 10^9 bytes) unless written binary (``GiB``, or Kubernetes's ``Gi``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import psycopg

from shardctl.errors import ControlError
from shardctl.store.shardmap import ShardMapStore

# The copy's tables and indexes on a target take more than the estimate (``estimate.py``: the sources' heap, TOAST
# and index bytes per row times the rows) when the target's index is looser than the source's (its pages split by
# rows arriving out of key order, where the source's may have been rebuilt by an earlier cleanup) and by the
# free-space and visibility maps. A quarter on top covers that: a 29 MB copy grew the target's databases by 1.005x
# the estimate (docs/architecture/resharding.md, "Disk"). The WAL the copy writes is counted apart
# (``check_targets``): it stays until a checkpoint recycles it, and checkpoints come every ``max_wal_size``, so a
# target also needs about as much again as it receives, up to its max_wal_size.
HEADROOM = 1.25
# Kept free on a target after the copy: a full disk stops PostgreSQL (WAL, temporary files, autovacuum, and the
# writes that keep arriving during the copy all need room), and filesystems slow down when nearly full.
RESERVE_FRACTION = 0.10

DECLARED = "declared"

_UNITS = {
    "": 1,
    "b": 1,
    **{f"{p}{b}": 1000**i for i, p in enumerate("kmgtp", 1) for b in ("", "b")},
    **{f"{p}i{b}": 1024**i for i, p in enumerate("kmgtp", 1) for b in ("", "b")},
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-zA-Z]*)\s*$")


class DiskSizeError(ControlError, ValueError):
    """A size that cannot be read (``500GB``, ``40GiB``, ``50Gi``, ``1.5TB`` or plain bytes are)."""


def parse_size(text: str) -> int:
    """Bytes from ``500GB``, ``40GiB``, ``50Gi`` (Kubernetes), ``1.5TB`` or a plain number of bytes; units are
    case-insensitive, decimal (kB, MB, GB, TB, PB) or binary (KiB .. PiB). Zero and negative sizes are refused."""
    match = _SIZE.match(str(text))
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise DiskSizeError(f"not a size: {text!r} (e.g. 500GB, 40GiB, 50Gi, 1.5TB or a number of bytes)")
    size = round(float(match.group(1)) * _UNITS[unit])
    if size < 1:
        raise DiskSizeError(f"a disk size must be at least 1 byte, not {text!r}")
    return size


def format_bytes(n: int | float) -> str:
    """``12.3 GB``: decimal units, as ``parse_size`` reads them (``format_bytes(parse_size("20GB")) == "20.0 GB"``)."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class DiskSpace:
    """A server's disk as measured: free and total bytes, and where the figures come from (``declared``, or the
    filesystem a path is on). Targets whose ``volume`` is the same (not None) share its free space; ``copies`` is
    how many copies of what the server receives land there (a Patroni cluster's members on one filesystem)."""

    free_bytes: int
    capacity_bytes: int
    source: str
    volume: str | None = None
    copies: int = 1


class DiskSpaceSource(Protocol):
    """Where a server's free space comes from: ``None`` when this source does not know the server."""

    def measure(self, name: str, dsn: str) -> DiskSpace | None: ...


@dataclass(frozen=True)
class TargetDisk:
    """One target's verdict. Without a measure (``source`` None) nothing is known and ``fits`` is None."""

    server: str
    incoming_bytes: int  # the plan's estimate of what the server receives
    needed_bytes: int  # (incoming x HEADROOM + its WAL) x copies
    wal_bytes: int = 0  # the WAL counted in needed_bytes, per copy: incoming, at most the target's max_wal_size
    free_bytes: int | None = None
    capacity_bytes: int | None = None
    reserve_bytes: int | None = None  # kept free after the copy
    source: str | None = None
    fits: bool | None = None
    shared_with: tuple[str, ...] = ()  # other targets on the same volume: their needs add up
    volume_needed_bytes: int | None = None  # what this target and those with it on its volume need together

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "shared_with": list(self.shared_with)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TargetDisk:
        """Back from ``to_json`` (a journaled plan's ``disk``)."""
        return cls(**{**data, "shared_with": tuple(data.get("shared_with", ()))})


def check_targets(
    incoming: Mapping[str, int],
    measured: Mapping[str, DiskSpace | None],
    *,
    max_wal: Mapping[str, int] | None = None,
    headroom: float = HEADROOM,
    reserve_fraction: float = RESERVE_FRACTION,
) -> list[TargetDisk]:
    """A verdict per target of ``incoming`` (server -> bytes it receives), in name order. A target needs, for each
    copy, what it receives times ``headroom`` and as much WAL, up to its ``max_wal`` (max_wal_size; none given: no
    WAL counted); it fits when its free space, less what every target on the same volume needs, leaves
    ``reserve_fraction`` of its capacity free."""
    wal = {name: min(incoming[name], (max_wal or {}).get(name, 0)) for name in incoming}
    needed = {
        name: (math.ceil(incoming[name] * headroom) + wal[name]) * _copies(measured.get(name)) for name in incoming
    }
    by_volume: dict[str, list[str]] = {}
    for name in incoming:
        space = measured.get(name)
        if space is not None and space.volume is not None:
            by_volume.setdefault(space.volume, []).append(name)
    verdicts = []
    for name in sorted(incoming):
        space = measured.get(name)
        if space is None:
            verdicts.append(TargetDisk(name, incoming[name], needed[name], wal[name]))
            continue
        sharing = sorted(by_volume.get(space.volume, [name])) if space.volume is not None else [name]
        reserve = math.ceil(space.capacity_bytes * reserve_fraction)
        together = sum(needed[s] for s in sharing)
        others = tuple(s for s in sharing if s != name)
        verdicts.append(
            TargetDisk(
                name,
                incoming[name],
                needed[name],
                wal[name],
                space.free_bytes,
                space.capacity_bytes,
                reserve,
                space.source,
                space.free_bytes - together >= reserve,
                others,
                together,
            )
        )
    return verdicts


def _copies(space: DiskSpace | None) -> int:
    return space.copies if space is not None else 1


def refusal(verdicts: Sequence[TargetDisk]) -> str | None:
    """The one-line message for the targets that lack space (targets sharing a volume together), or None."""
    said: list[str] = []
    seen: set[str] = set()
    for v in verdicts:
        if v.fits is not False or v.server in seen:
            continue
        group = sorted([v.server, *v.shared_with])
        seen.update(group)
        copy = format_bytes(v.volume_needed_bytes or v.needed_bytes)
        kept, free, capacity = (format_bytes(b or 0) for b in (v.reserve_bytes, v.free_bytes, v.capacity_bytes))
        if v.shared_with:
            who = f"{' and '.join(group)} (on one volume) need {copy} together"
        else:
            who = f"{v.server} needs {copy}"
        if v.source == DECLARED:
            remedy = f"give it more disk and declare it with 'shardctl servers disk {v.server} --capacity ...'"
        else:
            remedy = "free space there or give it more disk"
        said.append(
            f"{who} for the copy (both copies exist until cleanup) and {kept} kept free, but "
            f"{'have' if v.shared_with else 'has'} {free} free (of {capacity}, {v.source}): {remedy}, "
            "or add servers to the target so each receives less"
        )
    return "; ".join(said) or None


def describe(verdict: TargetDisk) -> str:
    """``needs 1.2 GB, 40.1 GB free of 50.0 GB (declared)``, or what to do when nothing is known."""
    needs = f"needs {format_bytes(verdict.needed_bytes)}"
    if verdict.source is None:
        return (
            f"{needs}, free space unknown: declare its disk with "
            f"'shardctl servers disk {verdict.server} --capacity SIZE' to have it checked"
        )
    together = ""
    if verdict.shared_with:
        together = (
            f" ({format_bytes(verdict.volume_needed_bytes or 0)} with {', '.join(verdict.shared_with)}, on one volume)"
        )
    fits = "fits" if verdict.fits else "DOES NOT FIT"
    return (
        f"{needs}{together}, {format_bytes(verdict.free_bytes or 0)} free of "
        f"{format_bytes(verdict.capacity_bytes or 0)} ({verdict.source}), "
        f"{format_bytes(verdict.reserve_bytes or 0)} kept free: {fits}"
    )


class DeclaredCapacity:
    """The capacity declared in the catalog, less what the server holds now: its databases (those the caller may
    connect to) and its WAL (when the caller may list it: a superuser or ``pg_monitor``). Logs and temporary files
    are not counted: the reserve covers them. ``None`` for a server without a declared capacity."""

    def __init__(self, maps: ShardMapStore):
        self.maps = maps
        self._declared: dict[str, int | None] | None = None

    def measure(self, name: str, dsn: str) -> DiskSpace | None:
        if self._declared is None:
            self._declared = self.maps.disk_capacities()
        capacity = self._declared.get(name)
        if capacity is None:
            return None
        with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as conn:
            used = conn.execute(
                "SELECT coalesce(sum(pg_database_size(oid)), 0) FROM pg_database "
                "WHERE has_database_privilege(oid, 'CONNECT')"
            ).fetchone()[0]
            with suppress(psycopg.errors.InsufficientPrivilege):  # else the databases alone: the reserve covers WAL
                used += conn.execute("SELECT coalesce(sum(size), 0) FROM pg_ls_waldir()").fetchone()[0]
        return DiskSpace(max(0, capacity - int(used)), capacity, DECLARED)


class Tightest:
    """Each source's measure of a server, the one with the least free space winning (a declared capacity below
    the filesystem's, a quota say, is honoured, and so is a filesystem fuller than the declaration says)."""

    def __init__(self, *sources: DiskSpaceSource):
        self.sources = sources

    def measure(self, name: str, dsn: str) -> DiskSpace | None:
        found = [space for source in self.sources if (space := source.measure(name, dsn)) is not None]
        return min(found, key=lambda space: space.free_bytes, default=None)
