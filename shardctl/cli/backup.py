"""`shardctl backup`: base backups of every server with a consistent restore point (create), a point alone
(point), what the repository holds (list) and pgBackRest's verification of it (verify). `shardctl restore` is
``shardctl/cli/restore.py``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from shardctl.cli.options import data_dir_option, json_option, read_settings

if TYPE_CHECKING:
    from shardctl.backup.target import BackupTarget


@click.group()
def backup() -> None:
    """Backups of the stack: every server's WAL archived, base backups, consistent restore points."""


def open_target(data_dir: str | None) -> BackupTarget:
    """The stack in ``data_dir`` (default: the settings'), as its backups see it."""
    from shardctl.backup.settings import BackupSettings
    from shardctl.backup.target import open_target as target_of
    from shardctl.cli.stack import open_stack
    from shardctl.control.settings import ControlSettings

    return target_of(open_stack(data_dir).layout, read_settings(BackupSettings), read_settings(ControlSettings))


@backup.command("create")
@data_dir_option
@json_option
@click.option(
    "--full", is_flag=True, help="A full backup of every server (default: full the first time, then incremental)."
)
@click.option(
    "--point", "point_name", default=None, help="Name of the restore point taken after it (default: by the time)."
)
def backup_create(data_dir: str | None, as_json: bool, full: bool, point_name: str | None) -> None:
    """Back up the catalog and every server, then take a consistent restore point on all of them."""
    from shardctl.backup import base
    from shardctl.backup.settings import BackupSettings

    report = base.create(open_target(data_dir), full=full, point=point_name, settings=read_settings(BackupSettings))
    if as_json:
        click.echo(json.dumps(_report_json(report), indent=2, default=str))
        return
    for made in report.backups:
        stored = f"{made.repo_size / 1e6:.1f} MB stored"
        click.echo(f"{made.stanza}: {made.kind} backup {made.label}, {made.size / 1e6:.1f} MB ({stored})")
    point = report.point
    click.echo(
        f"restore point {point.name} taken on {len(point.lsns)} servers at {point.taken_at.isoformat()} "
        f"(epoch {point.epoch}, writes held {point.fence_held_ms} ms); {report.seconds} s"
    )


@backup.command("point")
@data_dir_option
@json_option
@click.argument("name", required=False)
def backup_point(data_dir: str | None, as_json: bool, name: str | None) -> None:
    """Take a consistent restore point NAME (default: by the time) on the catalog and every server at once."""
    from shardctl.backup.points import take_point
    from shardctl.backup.settings import BackupSettings

    point = take_point(open_target(data_dir), name, read_settings(BackupSettings))
    if as_json:
        click.echo(point.to_json())
        return
    click.echo(
        f"restore point {point.name} taken on {len(point.lsns)} servers at {point.taken_at.isoformat()} "
        f"(epoch {point.epoch}, writes held {point.fence_held_ms} ms)"
    )


@backup.command("list")
@data_dir_option
@json_option
def backup_list(data_dir: str | None, as_json: bool) -> None:
    """Each server's backups and the consistent restore points (restorable: a backup of every server ends
    before it)."""
    from dataclasses import asdict

    from shardctl.backup.base import inventory, restorable

    backups, points = inventory(open_target(data_dir))
    if as_json:
        listed = {
            "backups": {s: [asdict(b) for b in found] for s, found in backups.items()},
            "points": [{**json.loads(p.to_json()), "restorable": restorable(p, backups)} for p in points],
        }
        click.echo(json.dumps(listed, indent=2))
        return
    for stanza, found in backups.items():
        click.echo(
            f"{stanza}: {len(found)} backups" + "".join(f"\n  {b.label} {b.kind} {b.size / 1e6:.1f} MB" for b in found)
        )
    click.echo(f"restore points: {len(points)}")
    for point in points:
        can = "restorable" if restorable(point, backups) else "NOT restorable (no backup before it)"
        click.echo(f"  {point.name}  {point.taken_at.isoformat()}  epoch {point.epoch}  {can}")


@backup.command("verify")
@data_dir_option
@json_option
def backup_verify(data_dir: str | None, as_json: bool) -> None:
    """pgBackRest's verification of every server's backups and archived WAL; exit 1 if any is invalid."""
    from shardctl.backup.base import verify
    from shardctl.errors import BackupError

    results = verify(open_target(data_dir))
    if as_json:
        click.echo(json.dumps([{"stanza": r.stanza, "ok": r.ok, "detail": r.detail} for r in results], indent=2))
    else:
        for r in results:
            click.echo(f"{r.stanza}: {'ok' if r.ok else 'INVALID'}")
            if not r.ok:
                click.echo("  " + r.detail.replace("\n", "\n  "))
    bad = [r.stanza for r in results if not r.ok]
    if bad:
        raise BackupError(
            f"backup verification failed for {', '.join(bad)}: do not restore from them; take a new full backup"
        )


def _report_json(report) -> dict:
    from dataclasses import asdict

    return {
        "backups": [asdict(b) for b in report.backups],
        "point": json.loads(report.point.to_json()),
        "seconds": report.seconds,
    }
