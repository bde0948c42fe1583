"""Shard routing: Shard_Index = Hash(entity_id) % Total_Shards, stable and uniform, same in SQL."""

from __future__ import annotations

import math
import random
import subprocess
import sys

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardctl.store.hashing import entity_hash, shard_for, to_signed64

# Known test vectors: fixed forever. Changing the hash would move every entity to another shard.
VECTORS = [
    ("", 0xD41D8CD98F00B204),
    ("customer-000001", None),
    ("a", 0x0CC175B9C0F1B6A8),
    ("entity_42", None),
    ("Ünïcødé-🙂", None),
]


@pytest.mark.req("JTBD-03.routing")
def test_known_vectors_match_md5_prefix() -> None:
    # MD5("") = d41d8cd98f00b204e9800998ecf8427e, MD5("a") = 0cc175b9c0f1b6a831c399e269772661.
    assert entity_hash("") == 0xD41D8CD98F00B204
    assert entity_hash("a") == 0x0CC175B9C0F1B6A8
    assert shard_for("a", 7) == 0x0CC175B9C0F1B6A8 % 7
    assert [shard_for("customer-000001", n) for n in (1, 2, 4, 16)] == [
        entity_hash("customer-000001") % n for n in (1, 2, 4, 16)
    ]
    assert shard_for("", 1) == 0


@pytest.mark.req("JTBD-03.routing")
def test_hash_is_identical_in_a_fresh_interpreter_with_another_hash_seed() -> None:
    keys = [f"customer-{i}" for i in range(200)] + [v for v, _ in VECTORS]
    code = (
        "import sys, json; from shardctl.store.hashing import entity_hash;"
        "print(json.dumps([entity_hash(k) for k in json.loads(sys.stdin.read())]))"
    )
    import json

    out = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(keys),
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin", "PYTHONPATH": "."},
    ).stdout
    assert json.loads(out) == [entity_hash(k) for k in keys]


@pytest.mark.req("JTBD-03.routing")
@given(st.text(max_size=64), st.integers(min_value=1, max_value=1024))
@settings(max_examples=500, deadline=None)
def test_shard_is_in_range_and_deterministic(entity_id: str, total: int) -> None:
    first = shard_for(entity_id, total)
    assert 0 <= first < total
    assert shard_for(entity_id, total) == first
    assert 0 <= entity_hash(entity_id) < 2**64
    assert to_signed64(entity_hash(entity_id)) % 2**64 == entity_hash(entity_id)


@pytest.mark.req("JTBD-03.routing")
def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="total_shards"):
        shard_for("x", 0)
    with pytest.raises(TypeError, match="entity_id must be str"):
        shard_for(123, 4)  # type: ignore[arg-type]


def _chi_square_critical(dof: int, z: float = 4.0) -> float:
    """Wilson-Hilferty upper quantile of chi-square (z=4: a false alarm about once in 30,000 runs)."""
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


@pytest.mark.req("JTBD-03.routing")
@pytest.mark.parametrize("total", [2, 7, 64])
def test_uniform_over_a_million_keys(total: int) -> None:
    n = 1_000_000
    counts = [0] * total
    for i in range(n):
        counts[shard_for(f"customer-{i}", total)] += 1
    expected = n / total
    chi2 = sum((c - expected) ** 2 / expected for c in counts)
    assert chi2 < _chi_square_critical(total - 1), (chi2, counts[:8])


@pytest.mark.req("JTBD-03.routing")
def test_chi_square_check_can_fail_on_a_skewed_router() -> None:
    """The uniformity bound is tight enough to catch a router that favours one shard by 1%."""
    n, total = 1_000_000, 4
    rng = random.Random(7)
    counts = [0] * total
    for _ in range(n):
        counts[0 if rng.random() < 0.01 else rng.randrange(total)] += 1
    expected = n / total
    chi2 = sum((c - expected) ** 2 / expected for c in counts)
    assert chi2 > _chi_square_critical(total - 1)


@pytest.mark.req("JTBD-03.routing-sql")
def test_sql_twin_equals_python_on_10k_keys_on_a_real_shard(settings) -> None:
    rng = random.Random(42)
    keys = [f"customer-{i}" for i in range(9_000)] + [
        "".join(rng.choice("abcXYZ019-_ üé漢🙂") for _ in range(rng.randrange(0, 30))) for _ in range(1_000)
    ]
    with psycopg.connect(settings.shards[0].dsn) as conn:
        rows = conn.execute(
            "SELECT k, tessera_entity_hash(k), tessera_shard_for(k, 2), tessera_shard_for(k, 7),"
            " tessera_shard_for(k, 64) FROM unnest(%s::text[]) AS k",
            (keys,),
        ).fetchall()
    assert len(rows) == len(keys)
    for key, signed_hash, s2, s7, s64 in rows:
        assert signed_hash == to_signed64(entity_hash(key)), key
        assert (s2, s7, s64) == (shard_for(key, 2), shard_for(key, 7), shard_for(key, 64)), key
