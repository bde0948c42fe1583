"""Screenshot the Dagster UI's asset graph (headless Chromium) so a person can see the UI works.

Starts `dagster dev` on the local stack (like `python -m orchestration dev`), opens the asset graph page in
headless Chromium (driven over the DevTools protocol), writes a PNG, and stops every process it started
by PID. Not part of CI.

    .venv/bin/python scripts/screenshot_ui.py [--out docs/images/asset-graph.png] [--path /asset-groups]
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import requests
from websockets.sync.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestration.dagster_dev import DagsterDevError, start_dagster_dev
from shardctl.process import free_port, stop_pid
from shardctl.settings import load_settings


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    raise click.ClickException("no Chromium found: install it (Debian: `apt-get install chromium`)")


DISMISS_AND_READY = """(() => {
  const skip = [...document.querySelectorAll('button')].find(b => b.textContent.trim() === 'Skip');
  if (skip) { skip.click(); return 'dismissed'; }
  return document.querySelectorAll('[data-testid^="asset-node"], [data-testid="asset-node"]').length
    || document.body.innerText.includes('raw_events') ? 'ready' : 'waiting';
})()"""


def capture(chromium: str, url: str, settle_seconds: float) -> bytes:
    """Drive headless Chromium over the DevTools protocol: open the page, dismiss the first-visit dialog,
    let the graph lay out, and return a PNG. Chromium is started and stopped by its PID."""
    port = free_port()
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.Popen(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--remote-debugging-port={port}",
                f"--user-data-dir={profile}",
                "--window-size=1600,1000",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    targets = requests.get(f"http://127.0.0.1:{port}/json/list", timeout=2).json()
                    ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
                    break
                except (requests.RequestException, StopIteration, ValueError):
                    if time.monotonic() > deadline:
                        raise click.ClickException("chromium's DevTools endpoint did not come up") from None
                    time.sleep(0.3)
            with connect(ws_url, max_size=None) as ws:
                ids = iter(range(1, 10**6))

                def call(method: str, **params):
                    msg_id = next(ids)
                    ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
                    while True:
                        reply = json.loads(ws.recv(timeout=60))
                        if reply.get("id") == msg_id:
                            return reply.get("result", {})

                call("Emulation.setDeviceMetricsOverride", width=1600, height=1000, deviceScaleFactor=1, mobile=False)
                call("Page.navigate", url=url)
                deadline = time.monotonic() + 60
                state = "waiting"
                while time.monotonic() < deadline:
                    state = call("Runtime.evaluate", expression=DISMISS_AND_READY)["result"].get("value")
                    if state == "ready":
                        break
                    time.sleep(1)
                time.sleep(settle_seconds)  # the graph animates into place
                call("Runtime.evaluate", expression=DISMISS_AND_READY)
                time.sleep(1)
                return base64.b64decode(call("Page.captureScreenshot", format="png")["data"])
        finally:
            stop_pid(proc.pid, timeout=10)


@click.command()
@click.option("--out", type=click.Path(dir_okay=False), default="docs/images/asset-graph.png", show_default=True)
@click.option("--path", "page", default="/asset-groups", show_default=True, help="UI page to capture.")
@click.option("--wait-ms", type=int, default=4000, show_default=True, help="Time the graph gets to settle.")
def main(out: str, page: str, wait_ms: int) -> None:
    chromium = _chromium()
    settings = load_settings()
    if not settings.dagster_dsn:
        raise click.ClickException("the local stack is not up: run `.venv/bin/shardctl stack up` first")
    try:
        dev = start_dagster_dev(settings)
    except DagsterDevError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        png = capture(chromium, f"{dev.url}{page}", wait_ms / 1000)
        Path(out).write_bytes(png)
        click.echo(f"wrote {out} ({len(png) // 1024} KB) from {dev.url}{page}")
    finally:
        left = dev.stop()
        if left:
            click.echo(f"warning: processes still running: {left}", err=True)


if __name__ == "__main__":
    main()
