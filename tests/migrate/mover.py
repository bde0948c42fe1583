"""The migrating process the kill tests SIGKILL: sets a link up step by step, then waits for the copy.

    python -m tests.migrate.mover '<link as JSON>' [--stop-after slot]

With ``--stop-after slot`` it stops after creating the publication and the slot (no subscription yet),
prints READY and sleeps until killed: the window between the two set-up steps. Without it, it runs every
step, prints READY, and waits for the initial copy: the test kills it while the servers copy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from shardctl.control.migration import replication
from shardctl.control.migration.table import MovedTable


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("link")
    parser.add_argument("--stop-after", choices=["slot"])
    args = parser.parse_args()
    spec = json.loads(args.link)
    link = replication.Link(
        spec["name"], spec["source"], spec["target"], tuple(spec["shards"]), MovedTable(name=spec["table"])
    )
    replication.ensure_publication(link)
    replication.ensure_slot(link)
    if args.stop_after == "slot":
        print("READY", flush=True)
        time.sleep(3600)
        return 0
    replication.prepare_target(link)
    replication.ensure_subscription(link)
    print("READY", flush=True)
    replication.wait_synced(link)
    print("SYNCED", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
