"""Start Patroni with the ttl its configuration asks for, even below Patroni's built-in floor of 20 s.

Why: after a hard kill of the primary, failover waits for the leader key's lease to expire, so it takes
about ``ttl`` seconds. Patroni 4.1 silently raises any ttl below 20 to 20 (its maintainers advise against
short ttls: a primary whose Patroni stalls for longer than ttl loses its lock). Tessera's target is a
failover under 10 s, so it accepts that trade-off explicitly: this entry point lowers the floor to the
ttl written in the member's own configuration and changes nothing else. Patroni's other rule,
``loop_wait + 2 * retry_timeout <= ttl``, still applies (and `HASettings` checks it first).

Usage (what `shardctl/stack/ha/cluster.py` runs): ``python -P patroni_entry.py patroni.yml``. It imports nothing of
shardctl, so the server user can run a copy of this file (see `shardctl/stack/server_runtime.py`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

PATRONI_TTL_FLOOR = 20


def configured_ttl(config_file: Path) -> int | None:
    """The ttl the member's YAML bootstraps the cluster with, if any."""
    config = yaml.safe_load(config_file.read_text()) or {}
    ttl = config.get("bootstrap", {}).get("dcs", {}).get("ttl")
    return int(ttl) if ttl is not None else None


def lower_ttl_floor(floor: int) -> None:
    """Make Patroni accept a ttl down to ``floor`` (other timing minimums are kept)."""
    from patroni.config import Config

    hook = "_Config__get_and_maybe_adjust_int_value"
    adjust = getattr(Config, hook, None)
    if adjust is None:
        raise SystemExit(
            "this Patroni version has no ttl floor hook: set TESSERA_HA__TTL to 20 or more (failover takes ~ttl)"
        )

    def adjusted(self: Any, config: dict[str, Any], param: str, min_value: int) -> int:
        return adjust(self, config, param, min(min_value, floor) if param == "ttl" else min_value)

    setattr(Config, hook, adjusted)


def main() -> None:
    config_file = Path(sys.argv[-1])
    ttl = configured_ttl(config_file) if config_file.is_file() else None
    if ttl is not None and ttl < PATRONI_TTL_FLOOR:
        lower_ttl_floor(ttl)
    from patroni.__main__ import main as patroni_main

    patroni_main()


if __name__ == "__main__":
    main()
