"""The main job at growing sizes (issue 23): each stage's wall time at every size and how it grows, the peak memory
of each process (the Dagster run, its H2O JVM, each Postgres server), and the disk per row.

```
PYTHONPATH=. .venv/bin/python bench/scale/bench_scale.py                     # 0.3M, 1M, 3M raw rows
PYTHONPATH=. .venv/bin/python bench/scale/bench_scale.py --sizes 1M,3M,10M   # the issue's sizes (hours here)
PYTHONPATH=. .venv/bin/python bench/scale/bench_scale.py --tiny              # the harness's own test: no figure
```

Each size runs on a stack of its own (2 servers; 4 from 10M raw rows), `python -m orchestration run` as a user runs
it: `--days` daily partitions of size / days rows, one customer per 20 rows (1M rows: 50k, the demo's ratio). A
stage's time is read from Dagster's own event log: each step's start to its success, summed over the runs (every
daily partition is a run). Meanwhile a sampler reads, every `--sample-seconds`, the memory of the run's process tree
(the run and its H2O JVM, RSS) and of each Postgres server's processes (PSS: shared buffers count once).

The growth ratio of a stage is its time at the largest size over its time at the smallest, divided by the ratio of
the sizes: 1.0 is linear, above it grows faster than the data. A run that fails, or outlasts `--timeout-minutes`,
stops the benchmark with the stage named.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psutil
import psycopg

from orchestration.instance import apply_env, dagster_env
from shardctl.process import free_port
from shardctl.settings import TesseraSettings
from shardctl.stack.manager import Stack

REPO = Path(__file__).resolve().parents[2]
ROWS_PER_ENTITY = 20
SERVERS_FROM_10M = 4
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([kKmM]?)$")


class ScaleRunError(RuntimeError):
    """A size's run failed or ran out of time; the message names the size and the stage."""


def parse_size(text: str) -> int:
    """``300k``, ``1M``, ``2.5M`` or a plain number of raw rows."""
    match = _SIZE.match(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 300k, 1M, 10M)")
    number, unit = match.groups()
    return int(float(number) * {"": 1, "k": 1_000, "m": 1_000_000}[unit.lower()])


@dataclass
class SizeResult:
    raw_rows: int
    entities: int
    servers: int
    wall_seconds: float
    stages: dict[str, float]  # step key -> seconds, summed over the runs
    peak_mb: dict[str, float]  # process -> peak memory
    stage_peak_mb: dict[str, dict[str, float]]  # step key -> the run's and the JVM's peak while that step ran
    parts: dict[str, float]  # "<asset>: seconds_<part>" -> seconds, summed: a stage's own breakdown of its time
    bytes_per_row: dict[str, float]  # raw store and each shard
    rows: dict[str, int] = field(default_factory=dict)


class MemorySampler:
    """Peak memory of the run's process tree (its H2O JVM apart) and of each Postgres server, sampled in a thread."""

    def __init__(self, run_pid: int, postgres: dict[str, int], every: float):
        self._run = run_pid
        self._postgres = postgres
        self._every = every
        self.peak_mb: dict[str, float] = defaultdict(float)
        self.series: list[tuple[float, float, float]] = []  # (time.time(), the run's MB, the JVM's MB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self._every)

    def sample(self) -> None:
        try:
            run = psutil.Process(self._run)
            tree = [run, *run.children(recursive=True)]
        except psutil.Error:
            return
        jvm = sum(_rss(p) for p in tree if _is_java(p))
        python = sum(_rss(p) for p in tree if not _is_java(p))
        self._peak("dagster run (python)", python)
        self._peak("h2o jvm", jvm)
        self.series.append((time.time(), python / 2**20, jvm / 2**20))
        for name, pid in self._postgres.items():
            try:
                server = psutil.Process(pid)
                self._peak(f"postgres {name}", sum(_pss(p) for p in [server, *server.children()]))
            except psutil.Error:
                continue

    def _peak(self, name: str, byte_count: float) -> None:
        self.peak_mb[name] = max(self.peak_mb[name], byte_count / 2**20)


def _is_java(process: psutil.Process) -> bool:
    try:
        return process.name() == "java"
    except psutil.Error:
        return False


def _rss(process: psutil.Process) -> int:
    try:
        return process.memory_info().rss
    except psutil.Error:
        return 0


def _pss(process: psutil.Process) -> int:
    try:
        return process.memory_full_info().pss
    except psutil.Error:
        return 0


def postmaster_pids(stack: Stack) -> dict[str, int]:
    state = stack.load_state()
    assert state is not None, "the stack is not up"
    pids = {}
    for server in stack.layout.postgres_servers(state):
        pid_file = server.data_dir / "postmaster.pid"
        pids[server.name] = int(pid_file.read_text().split()[0])
    return pids


@dataclass
class EventLog:
    """What the runs created since a moment tell about their steps, read in one pass over Dagster's event log."""

    seconds: dict[str, float]  # step key -> seconds from each start to its success, summed over the runs
    windows: dict[str, list[tuple[float, float]]]  # step key -> its (start, end) wall-clock windows
    failed: str | None  # the first failed step's key (None: none failed)
    parts: dict[str, float]  # "<asset>: seconds_<part>" -> the ``seconds_*`` metadata of its materializations, summed


def read_event_log(settings: TesseraSettings, since: datetime) -> EventLog:
    """Step timings, the first failure, and each asset's own breakdown of its time (``seconds_*`` entries of its
    materializations, e.g. the features' query, write and check) of the runs created since ``since``."""
    apply_env(dagster_env(settings))
    import dagster as dg
    from dagster._core.events import DagsterEventType

    wanted = {
        DagsterEventType.STEP_START,
        DagsterEventType.STEP_SUCCESS,
        DagsterEventType.STEP_FAILURE,
        DagsterEventType.ASSET_MATERIALIZATION,
    }
    seconds: dict[str, float] = defaultdict(float)
    windows: dict[str, list[tuple[float, float]]] = defaultdict(list)
    parts: dict[str, float] = defaultdict(float)
    failed: str | None = None
    with dg.DagsterInstance.get() as instance:
        records = instance.get_run_records(filters=dg.RunsFilter(created_after=since))
        for record in sorted(records, key=lambda r: r.create_timestamp):  # stages in the order they ran
            started: dict[str, float] = {}
            for entry in instance.all_logs(record.dagster_run.run_id, of_type=wanted):
                event = entry.dagster_event
                if event is None:
                    continue
                step = event.step_key
                if event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
                    materialization = entry.asset_materialization
                    for name, value in (materialization.metadata if materialization else {}).items():
                        if name.startswith("seconds_"):
                            parts[f"{materialization.asset_key.to_user_string()}: {name}"] += float(value.value)
                elif step is None:
                    continue
                elif event.event_type == DagsterEventType.STEP_START:
                    started[step] = entry.timestamp
                elif event.event_type == DagsterEventType.STEP_SUCCESS and step in started:
                    began = started.pop(step)
                    seconds[step] += entry.timestamp - began
                    windows[step].append((began, entry.timestamp))
                elif event.event_type == DagsterEventType.STEP_FAILURE and failed is None:
                    failed = step
    return EventLog(dict(seconds), dict(windows), failed, dict(parts))


def stage_peaks(
    series: list[tuple[float, float, float]], windows: dict[str, list[tuple[float, float]]]
) -> dict[str, dict[str, float]]:
    """Per step, the highest memory of the run and of its JVM sampled while that step ran: which stage sets the
    peak."""
    peaks: dict[str, dict[str, float]] = {}
    for step, spans in windows.items():
        inside = [(py, jvm) for t, py, jvm in series if any(a <= t <= b for a, b in spans)]
        if inside:
            peaks[step] = {"python": max(py for py, _ in inside), "jvm": max(jvm for _, jvm in inside)}
    return peaks


def disk_per_row(settings: TesseraSettings) -> tuple[dict[str, float], dict[str, int]]:
    """Bytes on disk per row (table, indexes and TOAST) of the raw store and of each shard's features."""
    per_row: dict[str, float] = {}
    rows: dict[str, int] = {}
    targets = [("raw_events (catalog)", settings.catalog_dsn or "", "raw_events")]
    for i, dsn in enumerate(settings.shard_dsns()):
        targets.append((f"entity_features (server {i})", dsn, "entity_features"))
    for name, dsn, table in targets:
        with psycopg.connect(dsn) as conn:
            size, count = conn.execute(f"SELECT pg_total_relation_size('{table}'), count(*) FROM {table}").fetchone()
        rows[name] = int(count)
        per_row[name] = size / count if count else 0.0
    return per_row, rows


def run_size(raw_rows: int, days: int, root: Path, timeout_s: float, sample_s: float) -> SizeResult:
    entities = max(ROWS_PER_ENTITY, raw_rows // ROWS_PER_ENTITY)
    servers = SERVERS_FROM_10M if raw_rows >= 10_000_000 else 2
    stack = Stack(root / f"stack-{raw_rows}")
    stack.up(servers=servers, base_port=free_port(block=10))
    try:
        settings = TesseraSettings(**json.loads(stack.settings_file.read_text()))
        env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
        env.update(PYTHONPATH=str(REPO), TESSERA_SETTINGS_FILE=str(stack.settings_file))
        argv = [sys.executable, "-m", "orchestration", "run", "--days", str(days)]
        argv += ["--rows-per-day", str(max(1, raw_rows // days)), "--entities", str(entities)]
        log = root / f"run-{raw_rows}.log"
        since = datetime.now(UTC)
        started = time.perf_counter()
        with log.open("w") as out:
            proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
            with MemorySampler(proc.pid, postmaster_pids(stack), sample_s) as sampler:
                try:
                    rc = proc.wait(timeout=timeout_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                    rc = None
        wall = time.perf_counter() - started
        events = read_event_log(settings, since)
        stages, failed = events.seconds, events.failed
        if rc != 0:
            stage = failed or (max(stages, key=stages.get) if stages else "before the first step")
            why = f"ran out of time after {timeout_s / 60:.0f} min" if rc is None else f"failed (exit {rc})"
            tail = log.read_text(errors="replace")[-2000:]
            raise ScaleRunError(f"{raw_rows:,} raw rows: the main job {why} in stage {stage!r}\n{tail}")
        per_row, rows = disk_per_row(settings)
        peaks = stage_peaks(sampler.series, events.windows)
        return SizeResult(
            raw_rows, entities, servers, wall, stages, dict(sampler.peak_mb), peaks, events.parts, per_row, rows
        )
    finally:
        stack.down(purge=True)


def growth(results: list[SizeResult]) -> dict[str, float]:
    """Per stage (and the whole run): time at the largest size / time at the smallest / the sizes' ratio."""
    small, large = results[0], results[-1]
    scale = large.raw_rows / small.raw_rows
    out = {}
    for stage in small.stages:
        if stage in large.stages and small.stages[stage] > 0:
            out[stage] = large.stages[stage] / small.stages[stage] / scale
    out["whole run"] = large.wall_seconds / small.wall_seconds / scale
    return out


def report(results: list[SizeResult]) -> None:
    sizes = [f"{r.raw_rows / 1e6:g}M" for r in results]
    print(f"\n{'stage':<42}" + "".join(f"{s:>12}" for s in sizes) + f"{'growth':>10}")
    ratios = growth(results) if len(results) > 1 else {}
    for stage in results[0].stages:
        cells = "".join(f"{r.stages.get(stage, float('nan')):>11.1f}s" for r in results)
        print(f"{stage:<42}{cells}{ratios.get(stage, float('nan')):>10.2f}")
    cells = "".join(f"{r.wall_seconds:>11.1f}s" for r in results)
    print(f"{'whole run (wall)':<42}{cells}{ratios.get('whole run', float('nan')):>10.2f}")
    if results[0].parts:
        print(f"\n{'inside a stage (its own timings)':<42}" + "".join(f"{s:>12}" for s in sizes))
        for part in results[0].parts:
            print(f"{part:<42}" + "".join(f"{r.parts.get(part, float('nan')):>11.1f}s" for r in results))
    print(f"\n{'peak memory (MB)':<42}" + "".join(f"{s:>12}" for s in sizes))
    for name in dict.fromkeys(name for r in results for name in r.peak_mb):  # servers added at larger sizes too
        print(f"{name:<42}" + "".join(f"{r.peak_mb.get(name, float('nan')):>12.0f}" for r in results))
    print(f"\n{'the run (python) / its JVM, MB, while the stage ran':<42}" + "".join(f"{s:>12}" for s in sizes))
    for stage in results[0].stages:
        cells = []
        for r in results:
            peak = r.stage_peak_mb.get(stage)
            cells.append(f"{peak['python']:>6.0f}/{peak['jvm']:<5.0f}" if peak else f"{'-':>12}")
        print(f"{stage:<42}" + "".join(cells))
    print(f"\n{'disk per row (bytes)':<42}" + "".join(f"{s:>12}" for s in sizes))
    for name in dict.fromkeys(name for r in results for name in r.bytes_per_row):
        print(f"{name:<42}" + "".join(f"{r.bytes_per_row.get(name, float('nan')):>12.0f}" for r in results))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="300k,1M,3M", help="raw rows per size, comma-separated (e.g. 1M,3M,10M)")
    parser.add_argument("--days", type=int, default=30, help="daily partitions (rows per day = size / days)")
    parser.add_argument("--timeout-minutes", type=float, default=120.0, help="per size")
    parser.add_argument("--sample-seconds", type=float, default=1.0, help="how often memory is read")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--tiny", action="store_true", help="the harness's own test: 2 tiny sizes, 6 days")
    args = parser.parse_args(argv)
    if args.tiny:
        args.sizes, args.days, args.sample_seconds = "9000,18000", 6, 0.2
    try:
        sizes = sorted(parse_size(s) for s in args.sizes.split(","))
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if sizes[0] < args.days:
        parser.error(f"the smallest size ({sizes[0]}) must have at least a row per day ({args.days} days)")
    results: list[SizeResult] = []
    with tempfile.TemporaryDirectory(prefix="tessera-scale-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # the stack's Postgres runs as an unprivileged user
        for raw_rows in sizes:
            print(f"== {raw_rows:,} raw rows ({raw_rows // ROWS_PER_ENTITY:,} entities)", flush=True)
            try:
                result = run_size(raw_rows, args.days, root, args.timeout_minutes * 60, args.sample_seconds)
            except ScaleRunError as exc:
                print(f"bench_scale: {exc}", file=sys.stderr)
                return 1
            print(f"   whole run {result.wall_seconds:.0f} s", flush=True)
            results.append(result)
            if args.json:
                summary = {"sizes": [asdict(r) for r in results], "growth": growth(results) if len(results) > 1 else {}}
                args.json.write_text(json.dumps(summary, indent=2))
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
