"""The scorer's probe and metrics listener: ``GET /healthz`` (its loop completes rounds), ``/readyz`` (it follows
every server's change log; JSON detail either way) and ``/metrics`` (Prometheus). A few lines of asyncio: the
scorer answers three fixed paths for the orchestrator and Prometheus, not an API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serving.scorer.engine import Scorer

_REASONS = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}


def status(scorer: Scorer) -> dict[str, object]:
    model = scorer.holder.current
    return {
        "model": model.key if model is not None else None,
        "following": scorer.following,
        "rounds": scorer.rounds,
        "seconds_since_round": round(time.monotonic() - scorer.last_round_at, 3),
    }


def answer(scorer: Scorer, path: str) -> tuple[int, str, bytes]:
    if path == "/metrics":
        return 200, CONTENT_TYPE_LATEST, generate_latest()
    detail = status(scorer)
    if path == "/healthz":
        alive = time.monotonic() - scorer.last_round_at < scorer.settings.stall_seconds
        body = json.dumps({"status": "ok" if alive else "stalled"}).encode()
        return (200 if alive else 503), "application/json", body
    if path == "/readyz":
        ready = scorer.following
        body = {"status": "ready" if ready else "not ready", **detail}
        return (200 if ready else 503), "application/json", json.dumps(body).encode()
    return 404, "application/json", b'{"status": "not found"}'


async def serve_probes(scorer: Scorer, host: str, port: int) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            method, path = request.split(b" ", 2)[:2]
            code, kind, body = answer(scorer, path.decode(errors="replace").split("?")[0])
            if method != b"GET":
                code, kind, body = 404, "application/json", b'{"status": "not found"}'
            head = (
                f"HTTP/1.1 {code} {_REASONS[code]}\r\ncontent-type: {kind}\r\ncontent-length: {len(body)}\r\n"
                "connection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port)
