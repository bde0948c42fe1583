"""The hot path's own CPU: a cached single prediction through the service's ASGI app, in process (no server, no
network), answered by the fast path and by the Litestar route (typed dependency injection, router, response
object) it stands in front of.

    TESSERA_SETTINGS_FILE=... PYTHONPATH=. .venv/bin/python bench/serving/hot_path.py --ids ids.json [--json out]

Opens the worker's runtime through the app's own lifespan, asks each entity of ``--ids`` (a JSON list; they must
have features) twice so later calls are memory-tier hits, then times N calls of each variant. The route variant
sends the same body without ``Content-Length``, which the fast path leaves to Litestar.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.serving.in_process import exit_with
from serving.app import create_service

ASGI = Any


def _scope(body: bytes, with_length: bool) -> dict[str, Any]:
    headers = [(b"host", b"bench"), (b"content-type", b"application/json")]
    if with_length:
        headers.append((b"content-length", str(len(body)).encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/predictions",
        "raw_path": b"/v1/predictions",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }


async def _request(app: ASGI, body: bytes, with_length: bool) -> int:
    delivered = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # never: the app has read its body
        return {}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(_scope(body, with_length), receive, send)
    return status


async def _run(ids: list[str], n: int) -> dict[str, float]:
    app = create_service()
    started, stop = asyncio.Event(), asyncio.Event()
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if not started.is_set():
            started.set()
            return {"type": "lifespan.startup"}
        await stop.wait()
        return {"type": "lifespan.shutdown"}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    lifespan = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send))
    while not messages:
        await asyncio.sleep(0.05)
    if messages[0]["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"the app did not start: {messages[0]}")
    try:
        bodies = [json.dumps({"entity_id": e}).encode() for e in ids]
        for body in bodies * 2:
            if await _request(app, body, True) != 200:
                raise RuntimeError(f"{body!r} is not answered 200: give ids that have features")
        out = {}
        for name, with_length in (("fast path", True), ("Litestar route", False)):
            cpu = time.process_time()
            for k in range(n):
                await _request(app, bodies[k % len(bodies)], with_length)
            out[name] = (time.process_time() - cpu) / n * 1e6
            print(f"  cached single prediction, {name:>15}: {out[name]:6.1f} us CPU per request", flush=True)
        return out
    finally:
        stop.set()
        await lifespan


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ids", type=Path, required=True, help="a JSON list of entity ids that have features")
    parser.add_argument("-n", type=int, default=20_000)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    exit_with(asyncio.run(_run(json.loads(args.ids.read_text())[:100], args.n)), args.json)


if __name__ == "__main__":
    sys.exit(main())
