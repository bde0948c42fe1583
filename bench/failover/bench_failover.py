"""Failover benchmark: hard-kill failovers and planned switchovers of one shard under write load.

    PYTHONPATH=. .venv/bin/python bench/failover/bench_failover.py                 # 10 + 10 rounds, ~8 min
    PYTHONPATH=. .venv/bin/python bench/failover/bench_failover.py --rounds 3 --baseline-rounds 1
    PYTHONPATH=. .venv/bin/python bench/failover/bench_failover.py --nemesis-rounds 20 --seed 7   # ~15 min

Starts its own HA stack (1 shard: primary + 1 replica under Patroni, etcd) in a temporary directory and
stops it at the end. Each failover round SIGKILLs the primary's Patroni and Postgres while a writer
commits numbered rows, measures the time to the first write acknowledged by the new primary and the
longest gap between acknowledged writes, counts acknowledged rows missing on the new primary, and
restarts the killed member so it rejoins as a replica before the next round. Each switchover round
asks Patroni's REST API for a planned switchover under the same load.

Nemesis (``--nemesis-rounds N``, instead of the drills above): N rounds of a random fault (SIGKILL of the
primary, the replica or etcd; SIGSTOP of the primary member past the ttl; partition of the primary) on a
stack whose members talk through fault-injection proxies, healed by `shardctl stack up` / `ha restart` /
`ha reinit`; per fault kind: time to the first acknowledged write started after the fault, longest write
gap, rejoin time, acknowledged writes missing; then the whole history's verdict (`testkit.ha.history`).

Baseline, in the same run: the same hard kill with Patroni's stock timing floor (ttl 20 s, what Patroni
uses for any smaller ttl unless Tessera's entry point lowers the floor).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from shardctl.stack.ha.settings import HASettings
from shardctl.stack.manager import Stack
from testkit.ha.drill import DrillResult, hard_kill_failover, planned_switchover, wait_healthy
from testkit.ha.nemesis import FAULTS, Nemesis, NemesisReport


def _stack(root: Path, ha: HASettings, base_port: int) -> Stack:
    stack = Stack(root, ha_settings=ha)
    stack.up(shards=1, base_port=base_port, ha=True, replicas=1)
    return stack


def _summary(results: list[DrillResult]) -> dict[str, float | int]:
    first = [r.time_to_first_write for r in results]
    gaps = [r.write_gap for r in results]
    return {
        "rounds": len(results),
        "first_write_min_s": round(min(first), 2),
        "first_write_median_s": round(statistics.median(first), 2),
        "first_write_max_s": round(max(first), 2),
        "write_gap_median_s": round(statistics.median(gaps), 2),
        "write_gap_max_s": round(max(gaps), 2),
        "acked_total": sum(r.acked for r in results),
        "acked_missing": sum(len(r.acked_missing) for r in results),
        "writer_errors": sum(len(r.writer_errors) for r in results),
        "rejoined": sum(r.old_leader_rejoined for r in results),
        "rewinds": sum(r.rewind_used for r in results),
    }


def _rounds(label: str, stack: Stack, n: int, drill) -> list[DrillResult]:
    state = stack.load_state()
    cluster = stack.ha_cluster(state)
    results = []
    for i in range(n):
        wait_healthy(cluster, 0)
        result = drill(cluster, 0)
        results.append(result)
        print(
            f"{label} {i + 1}/{n}: {result.old_leader} -> {result.new_leader}  first write "
            f"{result.time_to_first_write:5.2f}s  gap {result.write_gap:5.2f}s  acked {result.acked}  "
            f"missing {len(result.acked_missing)}  rewind {result.rewind_used}",
            flush=True,
        )
    return results


def _print_table(rows: dict[str, dict[str, float | int]]) -> None:
    keys = list(next(iter(rows.values())))
    print(f"\n{'':<26}" + "".join(f"{k:>22}" for k in keys))
    for name, summary in rows.items():
        print(f"{name:<26}" + "".join(f"{summary[k]!s:>22}" for k in keys))


def _nemesis_summary(report: NemesisReport) -> dict[str, dict[str, float | int]]:
    rows: dict[str, dict[str, float | int]] = {}
    for kind in FAULTS:
        rounds = [r for r in report.rounds if r.kind == kind]
        if not rounds:
            continue
        first = [r.first_write_s for r in rounds if r.first_write_s is not None]
        rows[kind] = {
            "rounds": len(rounds),
            "first_write_median_s": round(statistics.median(first), 2) if first else -1,
            "first_write_max_s": round(max(first), 2) if first else -1,
            "write_gap_max_s": round(max(r.write_gap_s for r in rounds), 2),
            "rejoin_median_s": round(statistics.median(r.rejoin_s for r in rounds), 1),
            "rejoin_max_s": round(max(r.rejoin_s for r in rounds), 1),
            "acked_missing": sum(r.acked_missing for r in rounds),
            "reinits": sum(any("reinit" in h for h in r.heals) for r in rounds),
        }
    return rows


def run_nemesis(rounds: int, seed: int, base_port: int, root: Path) -> dict[str, dict[str, float | int]]:
    stack = Stack(root, ha_proxied=True)
    stack.plan(shards=1, base_port=base_port, ha=True, replicas=1)
    try:
        with Nemesis(stack, seed=seed, log=lambda line: print(line, flush=True)) as nemesis:
            stack.up()
            report = nemesis.run(rounds)
    finally:
        failed = stack.down(purge=True)
        if failed:
            print(f"could not stop: {failed}", file=sys.stderr)
    v = report.verdict
    print(
        f"\nnemesis seed {seed}: {v.ok} acknowledged, {v.failed} failed, {v.indeterminate} indeterminate "
        f"({v.indeterminate_present} of them present); lost {len(v.lost)}, failed-but-present "
        f"{len(v.failed_present)}, split-brain signs {len(v.split_brain)}; members back {report.members_back}; "
        f"replicas hold every ack {report.replicas_have_every_ack}; final timeline {report.final_timeline}"
    )
    figures = _nemesis_summary(report)
    figures["all"] = {
        "rounds": len(report.rounds),
        "acked": v.ok,
        "indeterminate": v.indeterminate,
        "acked_missing": len(v.lost),
        "split_brain": len(v.split_brain),
        "members_back": int(report.members_back),
    }
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10, help="hard-kill failovers (and as many switchovers)")
    parser.add_argument("--baseline-rounds", type=int, default=3, help="hard kills with Patroni's stock ttl 20")
    parser.add_argument("--base-port", type=int, default=41000)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--nemesis-rounds", type=int, default=0, help="run the nemesis instead of the drills")
    parser.add_argument("--seed", type=int, default=7, help="the nemesis's fault order")
    args = parser.parse_args(argv)
    if args.nemesis_rounds:
        with tempfile.TemporaryDirectory(prefix="tessera-bench-nemesis-") as tmp:
            nemesis_figures = run_nemesis(args.nemesis_rounds, args.seed, args.base_port, Path(tmp))
        _print_table({k: v for k, v in nemesis_figures.items() if k != "all"})
        print(f"all rounds: {nemesis_figures['all']}")
        if args.json:
            args.json.write_text(json.dumps(nemesis_figures, indent=2))
        print(f"(finished {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")
        return 0 if nemesis_figures["all"]["acked_missing"] == 0 else 1

    ours = HASettings()
    figures: dict[str, dict[str, float | int]] = {}
    with tempfile.TemporaryDirectory(prefix="tessera-bench-failover-") as tmp:
        stack = _stack(Path(tmp) / "ours", ours, args.base_port)
        try:
            print(f"Tessera timings: ttl {ours.ttl}s, loop_wait {ours.loop_wait}s, retry_timeout {ours.retry_timeout}s")
            failovers = _rounds("failover", stack, args.rounds, hard_kill_failover)
            figures[f"failover (ttl {ours.ttl})"] = _summary(failovers)
            figures["switchover"] = _summary(_rounds("switchover", stack, args.rounds, planned_switchover))
        finally:
            failed = stack.down(purge=True)
            if failed:
                print(f"could not stop: {failed}", file=sys.stderr)
        if args.baseline_rounds:
            stock = HASettings(ttl=20)
            baseline = _stack(Path(tmp) / "stock", stock, args.base_port + 100)
            try:
                figures["baseline failover (ttl 20)"] = _summary(
                    _rounds("baseline", baseline, args.baseline_rounds, hard_kill_failover)
                )
            finally:
                failed = baseline.down(purge=True)
                if failed:
                    print(f"could not stop: {failed}", file=sys.stderr)
    _print_table(figures)
    names = list(figures)
    if len(names) == 3:
        ratio = figures[names[2]]["first_write_median_s"] / max(figures[names[0]]["first_write_median_s"], 1e-9)
        print(f"\nmedian time to first write: stock ttl 20 / Tessera = {ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"(finished {started})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
