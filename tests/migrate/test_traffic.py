"""The traffic harness's pure arithmetic: the minimum rows a balanced placement must move, and the pause per
cutover window (the under-load tests and the benchmark rest on both)."""

from __future__ import annotations

import pytest

from testkit.traffic import minimum_rows_moved, pause_per_window, rows_moved


def test_minimum_rows_moved_is_what_a_row_balanced_placement_must_move() -> None:
    rows = dict.fromkeys(range(256), 10)
    alone = dict.fromkeys(range(256), "server-0")
    assert minimum_rows_moved(alone, ["server-0", "server-1"], rows) == 1280
    halves = {lg: f"server-{lg % 2}" for lg in range(256)}
    assert minimum_rows_moved(halves, ["server-0", "server-1", "server-2"], rows) == pytest.approx(2560 / 3)
    three = {lg: f"server-{lg % 3}" for lg in range(256)}
    on_removed = sum(rows[lg] for lg in range(256) if lg % 3 == 2)
    assert minimum_rows_moved(three, ["server-0", "server-1"], rows) == on_removed  # the others are under the mean
    uneven = {lg: "server-0" if lg < 200 else "server-1" for lg in range(256)}
    assert minimum_rows_moved(uneven, ["server-0", "server-1"], rows) == 2000 - 1280


def test_rows_moved_counts_only_logical_shards_that_changed_server() -> None:
    before = {0: "a", 1: "a", 2: "b"}
    after = {0: "a", 1: "c", 2: "c"}
    assert rows_moved(before, after, {0: 5, 1: 7, 2: 11}) == 18


def test_pause_is_the_slowest_overlapping_write_minus_the_typical_one() -> None:
    batches = [(float(t), 0.01) for t in range(20)] + [(100.0, 0.4), (100.2, 0.05), (200.5, 0.9)]
    assert [round(p, 3) for p in pause_per_window(batches, [(100.1, 100.3), (200.0, 201.0), (300.0, 301.0)])] == [
        0.39,
        0.89,
        0.0,
    ]
