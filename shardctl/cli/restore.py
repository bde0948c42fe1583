"""`shardctl restore`: the catalog and every server of the stack back at one consistent restore point, as a new
stack."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import click

from shardctl.cli.backup import open_target
from shardctl.cli.options import data_dir_option, json_option, read_settings


def _parse_time(value: str) -> datetime:
    """An ISO 8601 time; without a zone it is UTC."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time (e.g. 2026-12-03T10:42:00Z)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@click.command("restore")
@data_dir_option
@json_option
@click.option("--to-point", "point_name", default=None, help="Restore to this restore point (`shardctl backup list`).")
@click.option(
    "--to", "to_time", default=None, help="Restore to the newest restore point at or before this ISO 8601 time."
)
@click.option(
    "--into",
    "into",
    type=click.Path(file_okay=False),
    default=None,
    help="The new stack's data dir (default: <data dir>-<point>).",
)
@click.option("--force", is_flag=True, help="Replace a stack or files already in --into (stopped, then deleted).")
def restore(
    data_dir: str | None, as_json: bool, point_name: str | None, to_time: str | None, into: str | None, force: bool
) -> None:
    """Bring the catalog and every server back to one consistent restore point, as a new stack (its own data
    dir and ports; the stack backed up keeps running)."""
    from shardctl.backup.points import resolve
    from shardctl.backup.restore import restore as restore_stack
    from shardctl.backup.settings import BackupSettings
    from shardctl.control.settings import ControlSettings

    if (point_name is None) == (to_time is None):
        raise click.UsageError("give exactly one of --to-point NAME and --to TIME")
    at = _parse_time(to_time) if to_time is not None else None
    source = open_target(data_dir)
    point, said = resolve(source.repo, point_name, at)
    if not as_json:
        click.echo(f"restoring to {said}", err=True)
    target_dir = Path(into) if into else source.layout.data_dir.with_name(f"{source.layout.data_dir.name}-{point.name}")
    report = restore_stack(
        source,
        point,
        target_dir,
        force=force,
        settings=read_settings(BackupSettings),
        credentials=read_settings(ControlSettings).db_credentials(),
    )
    if as_json:
        click.echo(
            json.dumps(
                {
                    "point": json.loads(point.to_json()),
                    "resolved": said,
                    "data_dir": str(report.data_dir),
                    "ports": report.ports,
                    "bases": report.bases,
                    "seconds": report.seconds,
                    "migration": report.migration,
                },
                indent=2,
            )
        )
        return
    ports = ", ".join(f"{s} :{p}" for s, p in report.ports.items())
    click.echo(f"restored {point.name} (epoch {point.epoch}) into {report.data_dir} in {report.seconds} s: {ports}")
    if report.migration is not None:
        click.echo(report.migration)
    click.echo(f"use it: TESSERA_DATA_DIR={report.data_dir} .venv/bin/shardctl stack status")
