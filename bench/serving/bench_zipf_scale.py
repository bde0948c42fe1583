"""Serving at ten times the demo's entities (issue 23, item 5): Zipf traffic over 500k entities, with default settings.

    PYTHONPATH=. .venv/bin/python bench/serving/bench_zipf_scale.py                 # 500k entities, 3 runs
    PYTHONPATH=. .venv/bin/python bench/serving/bench_zipf_scale.py --entities 20000 --runs 1 --step-seconds 3

Set-up, once: a private 2-shard stack and its Redis (the stack's settings: ``maxmemory`` and its eviction policy as
users get them), a small GBM trained on H2O (the serving benchmark's synthetic model), ``--entities`` entities'
features, and the precomputing scorer, which scores every entity and fills Redis as a deployment's scorer does.

Then ``--runs`` times: a fresh prediction service (default settings, ``--workers`` Granian workers: its memory
tier starts cold) takes open-loop Zipf(``--zipf-s``) traffic over every entity at each of ``--rates`` for
``--step-seconds``. Per step: p50, p99, p99.9, the achieved rate, errors, and where each answer came from, read from
the service's own ``tessera_cache_lookups_total`` counters: its in-process memory tier, Redis, or neither (a miss:
the features and the precomputed prediction read from the shard). Redis' side: used memory, keys, evictions, and
the bytes one cached prediction takes (``MEMORY USAGE`` over a sample of keys), so how many entities the default
``maxmemory`` holds. The Zipf law's own share of requests for the hottest ``local_cache_entries`` entities is
printed beside the memory tier's hit ratio: an LRU of that size cannot do much better.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import redis

from bench.serving.bench_serving import load_step, synthetic_data
from bench.serving.loadgen import Scenario
from serving.settings import ServingSettings
from shardctl.java import find_java_home
from shardctl.process import free_port, wait_until
from shardctl.redis_acl import ADMIN_USER
from shardctl.settings import TesseraSettings
from shardctl.stack.manager import Stack
from testkit.serving import PredictionService, ScorerProcess, create_api_key, service_env

LOOKUPS = "tessera_cache_lookups_total"
SOURCES = {"memory": {"result": "hit", "tier": "memory"}, "redis": {"result": "hit", "tier": "redis"}}


def zipf_head_share(n: int, head: int, s: float) -> float:
    """The share of Zipf(s) draws over ``n`` ranks that fall on the ``head`` most frequent ones."""
    weights = [1.0 / k**s for k in range(1, n + 1)]
    return sum(weights[:head]) / sum(weights)


def lookups(service: PredictionService) -> dict[str, float]:
    counts = {name: service.metric(LOOKUPS, **labels) for name, labels in SOURCES.items()}
    counts["miss"] = service.metric(LOOKUPS, result="miss")
    return counts


def redis_figures(client: redis.Redis, sample: int = 2000) -> dict[str, float]:
    """Used memory, keys, evictions, the eviction policy, and the mean ``MEMORY USAGE`` of sampled keys."""
    memory, stats = client.info("memory"), client.info("stats")
    sizes = []
    for key in client.scan_iter(count=1000):
        sizes.append(client.memory_usage(key, samples=0) or 0)
        if len(sizes) >= sample:
            break
    return {
        "used_memory_mb": memory["used_memory"] / 2**20,
        "maxmemory_mb": memory["maxmemory"] / 2**20,
        "policy": memory["maxmemory_policy"],
        "keys": client.dbsize(),
        "evicted_keys": stats["evicted_keys"],
        "bytes_per_key": statistics.mean(sizes) if sizes else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entities", type=int, default=500_000)
    parser.add_argument("--rates", default="1000,2000,4000", help="req/s per step (the serving benchmark's Zipf steps)")
    parser.add_argument("--step-seconds", type=float, default=15.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="Granian workers (the serving benchmark's setting)")
    parser.add_argument("--zipf-s", type=float, default=1.1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    rates = [int(r) for r in args.rates.split(",")]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="tessera-bench-zipf-"))
    tmp.chmod(0o755)  # the stack's Postgres runs as an unprivileged user
    stack = Stack(tmp / "stack")
    processes: list = []
    clean_up = False
    results: dict = {"entities": args.entities, "zipf_s": args.zipf_s, "workers": args.workers, "runs": []}
    try:
        stack.up(shards=2, base_port=free_port(block=10))
        settings = TesseraSettings(**json.loads(stack.settings_file.read_text()))
        env = service_env(stack.settings_file, TESSERA_SERVING__WORKERS=str(args.workers))
        env["JAVA_HOME"] = str(find_java_home())
        started = time.perf_counter()
        h2o, _gbm, ids = synthetic_data(settings, SimpleNamespace(entities=args.entities), tmp)
        h2o.cluster().shutdown()  # trained: its JVM would only take memory and CPU from the service
        print(f"{args.entities:,} entities written and the model promoted in {time.perf_counter() - started:.0f} s")
        client = redis.Redis.from_url(
            settings.redis_url, username=ADMIN_USER, password=stack.layout.secrets.redis_password(ADMIN_USER)
        )
        empty_bytes = client.info("memory")["used_memory"]
        started = time.perf_counter()
        scorer = ScorerProcess(env, free_port(), tmp / "scorer.log")
        processes.append(scorer)
        scorer.wait_ready("/readyz", timeout=3600)
        # The scorer copies every current prediction into Redis once it has caught up: wait until Redis stops growing.
        last = [-1]

        def settled() -> bool:
            keys = client.dbsize()
            done = keys == last[0] and keys > 0
            last[0] = keys
            return done

        wait_until(settled, 1800, interval=5.0)
        filled = redis_figures(client)
        results["scorer_and_fill_seconds"] = time.perf_counter() - started
        filled["keys_per_entity"] = filled["keys"] / args.entities
        filled["bytes_per_entity"] = (filled["used_memory_mb"] * 2**20 - empty_bytes) / args.entities
        results["redis_after_fill"] = filled
        print(f"scorer caught up and Redis filled in {results['scorer_and_fill_seconds']:.0f} s: {filled}")
        local_entries = ServingSettings().local_cache_entries
        head = zipf_head_share(args.entities, local_entries, args.zipf_s)
        results["memory_tier_entries"] = local_entries
        results["zipf_share_of_memory_tier_head"] = head
        print(
            f"memory tier: {local_entries:,} entries per worker; Zipf({args.zipf_s}) sends {head:.1%} of requests "
            f"to the {local_entries:,} hottest of {args.entities:,} entities"
        )
        key = create_api_key(settings.catalog_dsn or "", "bench-zipf", scopes=("predict", "metrics"))
        scenario = Scenario(
            f"Zipf({args.zipf_s})", "zipf", n_entities=len(ids), zipf_s=args.zipf_s, ids=tuple(ids), api_key=key
        )
        for run in range(args.runs):
            port = free_port()
            service = PredictionService(
                dict(env, TESSERA_SERVING__PORT=str(port)), port, tmp / f"serving-{run}.log", api_key=key
            )
            processes.append(service)
            service.wait_ready("/readyz", timeout=120)
            steps = []
            for rate in rates:
                before = lookups(service)
                r = load_step(service.pid, port, scenario, rate, args.step_seconds, 0)
                after = lookups(service)
                delta = {name: after[name] - before[name] for name in after}
                total = sum(delta.values()) or 1.0
                step = r.__dict__ | {f"{name}_share": delta[name] / total for name in delta}
                steps.append(step)
                print(
                    f"run {run + 1} {rate:>5}/s: achieved {r.achieved:7.0f}/s  p50 {r.p50_ms:6.2f}  p99 {r.p99_ms:7.2f}"
                    f"  p99.9 {r.p999_ms:7.2f} ms  errors {r.errors}  memory {step['memory_share']:.1%}  "
                    f"redis {step['redis_share']:.1%}  miss {step['miss_share']:.1%}",
                    flush=True,
                )
                time.sleep(2)
            service.stop()
            processes.remove(service)
            results["runs"].append({"steps": steps, "redis": redis_figures(client)})
        print_summary(results, rates)
        clean_up = True  # the logs and the model go with a run that finished (kept when it raised)
    finally:
        for process in processes:
            process.stop()
        failed = stack.down(purge=True)
        if failed:
            print(f"could not stop: {failed}")
        elif clean_up:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


def print_summary(results: dict, rates: list[int]) -> None:
    print(
        f"\n== Zipf({results['zipf_s']}) over {results['entities']:,} entities, {len(results['runs'])} runs: "
        "median (min-max) =="
    )
    for i, rate in enumerate(rates):
        steps = [run["steps"][i] for run in results["runs"] if len(run["steps"]) > i]

        def cell(field: str, fmt: str, steps=steps) -> str:
            values = [s[field] for s in steps]
            return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"

        print(
            f"{rate:>5}/s  achieved {cell('achieved', '.0f')}  p50 {cell('p50_ms', '.2f')}  p99 {cell('p99_ms', '.1f')}"
            f"  p99.9 {cell('p999_ms', '.1f')} ms  memory tier {cell('memory_share', '.2f')}  redis "
            f"{cell('redis_share', '.2f')}  miss {cell('miss_share', '.3f')}"
        )
    fill = results["redis_after_fill"]
    capacity = fill["maxmemory_mb"] * 2**20 / fill["bytes_per_entity"] if fill["bytes_per_entity"] > 0 else 0
    print(
        f"Redis: {fill['keys']:,} keys, {fill['used_memory_mb']:.0f} MB used of {fill['maxmemory_mb']:.0f} MB "
        f"({fill['policy']}), {fill['keys_per_entity']:.1f} keys and {fill['bytes_per_entity']:.0f} bytes per entity "
        f"({fill['bytes_per_key']:.0f} per key, MEMORY USAGE): the default maxmemory holds ~{capacity:,.0f} entities; "
        f"evicted {results['runs'][-1]['redis']['evicted_keys'] if results['runs'] else 0:,}"
    )


if __name__ == "__main__":
    sys.exit(main())
