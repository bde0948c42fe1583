"""Screenshot the Dagster UI's asset graph (headless Chromium) so a person can see the UI works.

Starts `dagster dev` on the local stack (like `python -m orchestration dev`), opens the asset graph page in
headless Chromium, writes a PNG, and stops every process it started by PID. Not part of CI.

    .venv/bin/python scripts/screenshot_ui.py [--out docs/images/asset-graph.png] [--path /asset-groups]
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestration.dagster_dev import DagsterDevError, start_dagster_dev
from shardctl.settings import load_settings


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    raise click.ClickException("no Chromium found: install it (Debian: `apt-get install chromium`)")


@click.command()
@click.option("--out", type=click.Path(dir_okay=False), default="docs/images/asset-graph.png", show_default=True)
@click.option("--path", "page", default="/asset-groups", show_default=True, help="UI page to capture.")
@click.option("--wait-ms", type=int, default=20000, show_default=True, help="Time the page gets to render.")
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
        with tempfile.TemporaryDirectory() as profile:
            argv = [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                "--window-size=1600,1000",
                f"--virtual-time-budget={wait_ms}",
                f"--screenshot={Path(out).absolute()}",
                f"{dev.url}{page}",
            ]
            result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        if result.returncode != 0 or not Path(out).exists():
            raise click.ClickException(f"chromium failed: {result.stderr[-2000:]}")
        click.echo(f"wrote {out} ({Path(out).stat().st_size // 1024} KB) from {dev.url}{page}")
    finally:
        left = dev.stop()
        if left:
            click.echo(f"warning: processes still running: {left}", err=True)


if __name__ == "__main__":
    main()
