"""The local H2O JVM's heap sized from the data a step loads (``TESSERA_H2O__MAX_MEM=auto``, the default): the
rule itself, a real JVM started with the heap it gives, and a step whose data cannot fit refused before any JVM
starts, with a message that says what to change."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import h2o
import psutil
import pytest

from orchestration.h2o_heap import HEAP_PER_CELL, MIN_HEAP, HeapTooSmallError, heap_bytes, max_mem_for, memory_limit
from orchestration.resources import H2OResource

GIB = 1 << 30


@pytest.mark.req("JTBD-03.scale-h2o-heap")
def test_the_heap_is_four_times_the_data_between_a_floor_and_the_limits_share() -> None:
    assert heap_bytes(1_000, 13, limit=24 * GIB) == MIN_HEAP  # the demo's sizes: the 1 GB floor
    ten_x = 15_000_000 * 13 * HEAP_PER_CELL  # 100M raw rows' training set: 6.2 GB
    assert ten_x - (1 << 20) < heap_bytes(15_000_000, 13, limit=24 * GIB) <= ten_x + (1 << 20)
    with pytest.raises(HeapTooSmallError) as refused:  # the same set in a 4 GiB pod
        heap_bytes(15_000_000, 13, limit=4 * GIB)
    text = str(refused.value)
    for said in ("15,000,000 rows x 13 columns", "about 5.8 GiB", "2.0 GiB can go", "dagster-k8s/config", "_H2O__URL"):
        assert said in text
    assert max_mem_for("3G", 15_000_000, 13) == "3G"  # an explicit heap is the operator's call
    assert 0 < memory_limit() <= psutil.virtual_memory().total


@pytest.mark.req("JTBD-03.scale-h2o-heap")
def test_auto_starts_the_local_jvm_with_the_heap_the_data_needs(tmp_path: Path) -> None:
    rows = 5_000_000  # 2.1 GB of heap: above the floor, far below this machine's share
    resource = H2OResource(max_mem="auto", nthreads=1, work_dir=str(tmp_path))
    with resource.cluster(rows=rows, columns=13):
        max_mem = sum(node["max_mem"] for node in h2o.cluster().nodes)
    expected = heap_bytes(rows, 13)
    assert 0.8 * expected < max_mem <= expected  # the JVM reports its -Xmx less what it keeps for itself


@pytest.mark.req("JTBD-03.scale-h2o-heap")
def test_data_no_heap_here_can_hold_is_refused_before_a_jvm_starts(tmp_path: Path) -> None:
    resource = H2OResource(max_mem="auto", work_dir=str(tmp_path))
    with (
        pytest.raises(dg.Failure, match="need an H2O heap of about") as refused,
        resource.cluster(rows=10**12, columns=13),
    ):
        pytest.fail("the block ran")
    assert "TESSERA_H2O__URL" in str(refused.value)
    assert not list(tmp_path.iterdir())  # no JVM was started: it would have written its logs here
