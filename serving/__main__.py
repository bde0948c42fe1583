"""``python -m serving``: the prediction service on Granian with ``serving.workers`` worker processes.

HTTPS when ``serving.tls_certificate`` and ``serving.tls_key`` are set (``serving.tls`` checks them first: bad
input is one line on stderr and exit 2, before Granian starts).

Stop it with SIGTERM/SIGINT to this process' PID: Granian stops accepting connections, each worker finishes its
in-flight requests (at most ``serving.drain_seconds``), closes its pools and exits.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile

from granian.constants import Interfaces, Loops
from granian.server import Server

from serving.settings import ServingSettings
from serving.tls import TLSSettingsError, tls_files
from shardctl.settings import get_settings

APP = "serving.app:create_service"
CLOSE_SECONDS = 10


def main(argv: list[str] | None = None) -> int:
    settings = get_settings()
    serving = ServingSettings()
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    parser.add_argument("--host", default=serving.host)
    parser.add_argument("--port", type=int, default=serving.port)
    parser.add_argument("--workers", type=int, default=serving.workers)
    parser.add_argument("--app", default=APP, help="the app factory Granian loads (tests load a variant)")
    args = parser.parse_args(argv)
    try:
        tls = tls_files(serving)
    except TLSSettingsError as exc:
        print(f"python -m serving: {exc}", file=sys.stderr)
        return 2
    if not settings.catalog_dsn:
        print("no catalog DSN: run `shardctl stack up` or set TESSERA_CATALOG_DSN", file=sys.stderr)
        return 2
    metrics_dir = None
    if args.workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        metrics_dir = tempfile.mkdtemp(prefix="tessera-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # workers inherit it: /metrics sums them
    try:
        import uvloop  # noqa: F401

        loop = Loops.uvloop
    except ImportError:
        loop = Loops.asyncio
    try:
        Server(
            args.app,
            address=args.host,
            port=args.port,
            interface=Interfaces.ASGI,
            workers=args.workers,
            loop=loop,
            factory=True,
            log_access=False,
            # The drain's bound (serving.drain), plus time to close the pools and the JVM bridge.
            workers_kill_timeout=math.ceil(serving.drain_seconds) + CLOSE_SECONDS,
            **(tls.granian_options() if tls is not None else {}),
        ).serve()
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
