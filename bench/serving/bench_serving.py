"""Serving benchmark: open-loop load, ramped until p99 crosses the target, Tessera against its baselines.

    PYTHONPATH=. .venv/bin/python bench/serving/bench_serving.py [--step-seconds 4] [--workers 1]

One run: a private 2-shard stack and Redis, a GBM trained on H2O (kept alive for the H2O-REST baseline),
N entities written through the FeatureWriter, the model registered and promoted. Then, per app and scenario,
rates step up until p99 > the target (50 ms; also reported: highest rate under 20 ms) or errors appear.
Everything started is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.serving.loadgen import LoadResult, Scenario, entity_name, run_load
from shardctl.java import find_java_home
from shardctl.process import free_port, pid_alive, stop_pid, wait_until
from shardctl.settings import TesseraSettings
from shardctl.stack.manager import Stack
from shardctl.store import FeatureStore
from shardctl.store.registry import ModelRegistry
from shardctl.store.writer import FeatureRow

REPO = Path(__file__).resolve().parents[2]
FEATURE_SET = "bench_serving_v1"
FEATURES = ["spend", "visits", "tier", "tenure"]
RATES = [250, 500, 1000, 1500, 2000, 2500, 3000, 4000, 5000, 6000, 8000]


def features_of(i: int) -> dict:
    rng = random.Random(i)
    return {
        "spend": round(rng.uniform(0, 500), 3),
        "visits": rng.randint(0, 40),
        "tier": ("gold", "silver", "bronze")[rng.randrange(3)],
        "tenure": rng.randint(1, 120),
    }


def train(out: Path):
    import h2o
    import pandas as pd
    from h2o.estimators import H2OGradientBoostingEstimator

    h2o.init(port=free_port(block=2), nthreads=1, max_mem_size="1G", verbose=False)
    rows = [features_of(i) for i in range(5000)]
    frame = pd.DataFrame(rows)
    frame["churn"] = ["yes" if r["spend"] < 200 else "no" for r in rows]
    train_frame = h2o.H2OFrame(frame, column_types={"tier": "enum", "churn": "enum"})
    gbm = H2OGradientBoostingEstimator(ntrees=50, max_depth=5, seed=1)
    gbm.train(x=FEATURES, y="churn", training_frame=train_frame)
    mojo = gbm.download_mojo(str(out), get_genmodel_jar=True)
    return h2o, gbm, mojo, str(out / "h2o-genmodel.jar")


class Server:
    def __init__(self, argv: list[str], env: dict, port: int, ready_path: str, log: Path):
        self.port = port
        with log.open("wb") as sink:
            self.proc = subprocess.Popen(
                argv, env=env, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )
        url = f"http://127.0.0.1:{port}{ready_path}"

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{argv} exited:\n{log.read_text()[-2000:]}")
            try:
                return httpx.request("GET" if ready_path != "/hello" else "POST", url, timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        if not wait_until(ready, 90, 0.2):
            self.stop()
            raise RuntimeError(f"{argv} not ready:\n{log.read_text()[-2000:]}")

    def stop(self) -> None:
        stop_pid(self.proc.pid, timeout=20)
        self.proc.wait(timeout=5)


def ramp(port: int, scenario: Scenario, step: float, counter: list[int], rates=RATES, target_ms=50.0):
    results: list[LoadResult] = []
    for rate in rates:
        if scenario.kind == "miss" and counter[0] + rate * step > scenario.n_entities:
            print(f"    (stopping: not enough unused entities for {rate} req/s)")
            break
        r = run_load("127.0.0.1", port, scenario, rate, step, start_index=counter[0])
        if scenario.kind == "miss":  # only misses consume never-seen entities
            counter[0] += int(rate * step) + 10
        results.append(r)
        print(
            f"    {scenario.name:>22} offered {rate:>6} req/s: achieved {r.achieved:7.0f}  p50 {r.p50_ms:7.2f} ms  "
            f"p99 {r.p99_ms:7.2f}  p99.9 {r.p999_ms:7.2f}  errors {r.errors}",
            flush=True,
        )
        if r.p99_ms > target_ms or r.errors > 0.01 * max(1, r.completed) or r.achieved < 0.9 * rate:
            break
    return results


def best(results: list[LoadResult], limit_ms: float) -> float:
    ok = [r.rate for r in results if r.p99_ms <= limit_ms and r.errors == 0 and r.achieved >= 0.9 * r.rate]
    return max(ok) if ok else 0.0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--step-seconds", type=float, default=4.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--entities", type=int, default=200_000)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    # SIGTERM (a stopped run) unwinds through the finally below, so every server started here is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="tessera-bench-serving-"))
    stack = Stack(tmp / "stack")
    h2o = None
    jvm_pid = None
    servers: list[Server] = []
    summary: dict = {"date": datetime.now(UTC).isoformat(), "workers": args.workers, "step_seconds": args.step_seconds}
    try:
        stack.up(shards=2, base_port=free_port(block=10))
        settings = TesseraSettings(**json.loads(stack.settings_file.read_text()))
        os.environ["JAVA_HOME"] = str(find_java_home())
        (tmp / "model").mkdir()
        h2o, gbm, mojo, jar = train(tmp / "model")
        jvm_pid = h2o.connection().local_server._process.pid
        t = time.perf_counter()
        with FeatureStore.open(settings) as store:
            ts = datetime(2026, 1, 1, tzinfo=UTC)
            store.write(FEATURE_SET, (FeatureRow(entity_name(i), ts, features_of(i)) for i in range(args.entities)))
        print(f"wrote {args.entities} entities in {time.perf_counter() - t:.1f} s")
        registry = ModelRegistry(settings.catalog_dsn)
        version = registry.register(
            settings.model_name,
            algorithm="gbm",
            feature_set=FEATURE_SET,
            features=FEATURES,
            metrics={"auc": 0.9},
            artifact_path=mojo,
            genmodel_jar=jar,
        )
        registry.promote(settings.model_name, version.version)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
        env.update(
            PYTHONPATH=str(REPO),
            TESSERA_SETTINGS_FILE=str(stack.settings_file),
            TESSERA_SERVING__WORKERS=str(args.workers),
            TESSERA_SERVING__FEATURE_VERSION_TTL_SECONDS="60",
        )
        rc = redis.Redis.from_url(settings.redis_url)
        step = args.step_seconds
        counter = [1000]  # entities 0..999 are the hit scenario's warm set: misses start past them
        n = args.entities
        miss = Scenario("0% hits", "miss", n_entities=n)
        hit = Scenario("100% hits", "hit", warm=1000)
        zipf = Scenario("Zipf(1.1)", "zipf", n_entities=n)
        py = sys.executable

        def serve(name, argv, ready, extra_env=None):
            port = free_port()
            e = dict(env, TESSERA_SERVING__PORT=str(port), **(extra_env or {}))
            full = [a.replace("{port}", str(port)) for a in argv]
            server = Server(full, e, port, ready, tmp / f"{name}.log")
            servers.append(server)
            return server

        def warm(port):
            with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
                for i in range(0, 1000, 100):
                    c.post("/v1/predictions", json={"entity_ids": [entity_name(j) for j in range(i, i + 100)]})

        def run(app, server, scenarios, rates=RATES):
            summary[app] = {}
            for sc in scenarios:
                rc.flushdb()
                if sc.kind == "hit":
                    warm(server.port)
                time.sleep(3)  # let a previous overloaded step drain: it must not spill into this scenario
                res = ramp(server.port, sc, step, counter, rates)
                summary[app][sc.name] = {
                    "best_50ms": best(res, 50),
                    "best_20ms": best(res, 20),
                    "steps": [r.__dict__ for r in res],
                }
            server.stop()
            servers.remove(server)

        print("== H2O REST baseline (FastAPI + uvicorn, model.predict on the H2O cluster)")
        s = serve(
            "h2o_rest",
            [
                py,
                "-m",
                "uvicorn",
                "--factory",
                "bench.serving.baselines:fastapi_h2o_rest",
                "--port",
                "{port}",
                "--log-level",
                "warning",
            ],
            "/docs",
            {"BENCH_H2O_URL": h2o.connection().base_url, "BENCH_H2O_MODEL_ID": gbm.model_id},
        )
        run("fastapi_h2o_rest", s, [miss], rates=[1, 2, 5, 10, 20])
        h2o.cluster().shutdown()
        wait_until(lambda: not pid_alive(jvm_pid), 30)
        print(f"== calibration: trivial Litestar endpoint on Granian ({args.workers} worker(s))")
        s = serve(
            "hello",
            [
                py,
                "-m",
                "granian",
                "--interface",
                "asgi",
                "--factory",
                "--port",
                "{port}",
                "--workers",
                str(args.workers),
                "--loop",
                "uvloop",
                "--no-log",
                "bench.serving.baselines:hello_app",
            ],
            "/hello",
        )
        run("hello", s, [Scenario("hello", "hello", path="/hello")])
        print(f"== Tessera: Litestar on Granian ({args.workers} worker(s)), in-process MOJO, Redis cache")
        s = serve("tessera", [py, "-m", "serving"], "/readyz")
        run("tessera", s, [hit, miss, zipf])
        print("== FastAPI + uvicorn, same in-process scoring and cache")
        s = serve(
            "fastapi_inprocess",
            [
                py,
                "-m",
                "uvicorn",
                "--factory",
                "bench.serving.baselines:fastapi_inprocess",
                "--port",
                "{port}",
                "--workers",
                str(args.workers),
                "--log-level",
                "warning",
            ],
            "/docs",
        )
        run("fastapi_inprocess", s, [hit, miss])
        print("== where a request's CPU goes (each part alone, in a worker's own setup)")
        costs = tmp / "costs.json"
        subprocess.run(
            [py, str(REPO / "bench" / "serving" / "cost_breakdown.py"), "--json", str(costs)],
            env=env,
            cwd=REPO,
            check=True,
            timeout=300,
        )
        summary["cost_breakdown"] = json.loads(costs.read_text())
        print_summary(summary)
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2))
    finally:
        for server in servers:
            server.stop()
        if jvm_pid and pid_alive(jvm_pid):
            try:
                h2o.cluster().shutdown()
            except Exception:
                stop_pid(jvm_pid)
        failed = stack.down(purge=True)
        if failed:
            print(f"left running: {failed}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def print_summary(summary: dict) -> None:
    limit = summary["hello"]["hello"]["best_50ms"] or 1
    print("\nhighest offered rate holding p99 <= 50 ms (and <= 20 ms); fraction of the calibration limit")
    for app in ("hello", "tessera", "fastapi_inprocess", "fastapi_h2o_rest"):
        for sc, r in summary.get(app, {}).items():
            print(
                f"  {app:>18} {sc:>10}: {r['best_50ms']:>6.0f} req/s (<=20 ms: {r['best_20ms']:>6.0f})"
                f"  = {r['best_50ms'] / limit:.2f} of calibration"
            )
    t, f, h = summary.get("tessera", {}), summary.get("fastapi_inprocess", {}), summary.get("fastapi_h2o_rest", {})
    if "0% hits" in t and "0% hits" in f and f["0% hits"]["best_50ms"]:
        print(
            "  ratio Tessera / FastAPI in-process (0% hits): "
            f"{t['0% hits']['best_50ms'] / f['0% hits']['best_50ms']:.2f}"
        )
    if "0% hits" in t and "0% hits" in h and h["0% hits"]["best_50ms"]:
        print(
            "  ratio Tessera / FastAPI + H2O REST (0% hits): "
            f"{t['0% hits']['best_50ms'] / h['0% hits']['best_50ms']:.1f}"
        )


if __name__ == "__main__":
    sys.exit(main())
