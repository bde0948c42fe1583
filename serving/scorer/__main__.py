"""``python -m serving.scorer``: the precomputing scorer, one per deployment (``run``, the default), or one pass
that re-scores every entity with the promoted model (``rescore``: the Dagster job's step on each promotion and
rollback).

``run`` stops on SIGTERM/SIGINT after the round in progress (a SIGKILL loses nothing either: the cursor is saved
only after the predictions before it are committed). ``rescore`` logs its progress (rows, rows/s) and, when a
Dagster job launched it through Pipes, reports it there (``orchestration/defs/predictions.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time

from serving.scorer.engine import Progress, Scorer
from serving.scorer.probes import serve_probes
from serving.scorer.settings import ScorerSettings
from shardctl.settings import get_settings

log = logging.getLogger("serving.scorer")


async def _run(scorer: Scorer, settings: ScorerSettings, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await loop.run_in_executor(None, scorer.open)
    probes = await serve_probes(scorer, settings.host, port)
    log.info("scorer %s: following every server's change log; probes on %s:%s", settings.name, settings.host, port)
    try:
        await scorer.run(stop)
    finally:
        probes.close()
        await scorer.close()


def _pipes():
    """Dagster Pipes' context when a Dagster step launched this process through Pipes, else None."""
    if "DAGSTER_PIPES_CONTEXT" not in os.environ:
        return None
    from dagster_pipes import open_dagster_pipes

    return open_dagster_pipes()


async def _rescore(scorer: Scorer, force: bool) -> dict[str, object]:
    await asyncio.get_running_loop().run_in_executor(None, scorer.open)
    pipes = _pipes()
    last = [0.0]

    def report(progress: Progress) -> None:
        if time.monotonic() - last[0] < 2.0 and progress.done < progress.total:
            return
        last[0] = time.monotonic()
        line = (
            f"re-scored {progress.done:,}/{progress.total:,} entities ({progress.rows_per_second:,.0f} rows/s, "
            f"{progress.seconds:.1f}s)"
        )
        log.info(line)
        if pipes is not None:
            pipes.log.info(line)

    try:
        model = scorer.holder.current
        progress = await scorer.rescore(force=force, on_progress=report)
        result = {
            "model": model.key if model else None,
            "model_version": model.version.version if model else None,
            "rows": progress.done,
            "entities": progress.total,
            "seconds": round(progress.seconds, 3),
            "rows_per_second": round(progress.rows_per_second, 1),
        }
        if pipes is not None:
            pipes.report_asset_materialization(metadata={**result, "dagster/row_count": progress.done})
        return result
    finally:
        if pipes is not None:
            pipes.close()
        await scorer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.scorer", description=__doc__)
    parser.add_argument("command", nargs="?", choices=("run", "rescore"), default="run")
    parser.add_argument("--port", type=int, default=None, help="probe and metrics port (run)")
    parser.add_argument("--force", action="store_true", help="rescore: every entity, current predictions too")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    scorer_settings = ScorerSettings()
    if not settings.catalog_dsn:
        print("no catalog DSN: run `shardctl stack up` or set TESSERA_CATALOG_DSN", file=sys.stderr)
        return 2
    scorer = Scorer(settings, scorer_settings)
    if args.command == "rescore":
        try:
            result = asyncio.run(_rescore(scorer, args.force))
        except RuntimeError as exc:
            print(f"python -m serving.scorer rescore: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(result))
        return 0
    port = args.port if args.port is not None else scorer_settings.port
    asyncio.run(_run(scorer, scorer_settings, port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
