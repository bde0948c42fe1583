"""The heap of a local H2O JVM sized from the data it will hold (``TESSERA_H2O__MAX_MEM=auto``, the default).

H2O's own sizing rule is a heap of about four times the data it loads. We count the data as H2O holds it
before compression: 8 bytes per cell (rows x columns), so the rule is ``HEAP_PER_CELL`` bytes per cell. The heap
never goes below ``MIN_HEAP`` (what the demo's GBM trains in) nor above the share of this process's memory
limit (its cgroup's on Kubernetes, else the machine's) left for the JVM beside the step's Python and the rest.
A training set that needs more fails before the JVM starts, naming both figures and what to change, instead
of the kernel killing the pod halfway through training.
"""

from __future__ import annotations

import math
from pathlib import Path

import psutil

AUTO = "auto"
HEAP_PER_CELL = 4 * 8  # four times the uncompressed cell
MIN_HEAP = 1 << 30
JVM_SHARE = 0.5  # of the memory limit: the step's Python (the training frame) and the JVM's own overhead share the rest
CGROUP_FILES = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))


class HeapTooSmallError(RuntimeError):
    """The data needs more heap than this process may give a local JVM."""


def memory_limit() -> int:
    """Bytes this process may use: its cgroup's limit when it has one (a Kubernetes pod's), else the machine's."""
    physical = psutil.virtual_memory().total
    for path in CGROUP_FILES:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < physical:  # "max", or v1's "no limit" (a huge number)
            return int(text)
    return physical


def heap_bytes(rows: int, columns: int, limit: int | None = None) -> int:
    """The heap for ``rows`` x ``columns`` cells, in whole MiB; raises HeapTooSmallError when the limit's share
    cannot hold it."""
    limit = memory_limit() if limit is None else limit
    ceiling = int(limit * JVM_SHARE)
    needed = max(MIN_HEAP, rows * columns * HEAP_PER_CELL)
    if needed > ceiling:
        raise HeapTooSmallError(
            f"{rows:,} rows x {columns} columns need an H2O heap of about {_gib(needed)} (4x the data); this "
            f"process may use {_gib(limit)}, of which {_gib(ceiling)} can go to a local JVM. Give the step more "
            "memory (on Kubernetes the run's dagster-k8s/config), or point TESSERA_H2O__URL at an H2O cluster."
        )
    return math.ceil(needed / (1 << 20)) << 20


def max_mem_for(setting: str, rows: int, columns: int) -> str:
    """The ``-Xmx`` value: ``setting`` as given, or, for ``auto``, sized from the data."""
    if setting.lower() != AUTO:
        return setting
    return f"{heap_bytes(rows, columns) >> 20}m"


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB"
