"""The stack's backups on a schedule: every night a base backup of every server and a consistent restore point
(`backup`), and after it a check that they can be restored (`verify_backups`): pgBackRest's checksum verification,
then the newest restore point restored into a scratch stack whose rows are counted, then the scratch stack
removed. Retention is pgBackRest's (``TESSERA_BACKUP__RETENTION_FULL`` full backups), applied after each backup."""

import json
from pathlib import Path

import dagster as dg
import psycopg

from orchestration.resources import BackupResource


@dg.op(description="A base backup of the catalog and every server, then a consistent restore point on all of them.")
def base_backup(context: dg.OpExecutionContext, backups: BackupResource) -> str:
    report = backups.shardctl("backup", "create")
    point = report["point"]
    table = "".join(
        f"| {b['stanza']} | {b['kind']} | {b['label']} | {b['size'] / 1e6:.1f} |\n" for b in report["backups"]
    )
    context.add_output_metadata(
        {
            "restore_point": point["name"],
            "epoch": point["epoch"],
            "fence_held_ms": point["fence_held_ms"],
            "seconds": report["seconds"],
            "backups": dg.MetadataValue.md("| server | type | label | MB |\n|---|---|---|---|\n" + table),
        }
    )
    return point["name"]


@dg.job(name="backup", description="Base backups of every server and a consistent restore point.")
def backup_job() -> None:
    base_backup()


backup_schedule = dg.ScheduleDefinition(
    name="nightly_backup",
    job=backup_job,
    cron_schedule="0 1 * * *",
    execution_timezone="UTC",
    description="Every night: base backups (full the first time, then incremental) and a restore point.",
)


@dg.op(description="pgBackRest's verification of every backup file and archived WAL segment against its checksum.")
def verify_checksums(context: dg.OpExecutionContext, backups: BackupResource) -> str:
    results = backups.shardctl("backup", "verify")
    context.add_output_metadata({r["stanza"]: "ok" if r["ok"] else "INVALID" for r in results})
    listed = backups.shardctl("backup", "list")
    restorable = [p["name"] for p in listed["points"] if p["restorable"]]
    if not restorable:
        raise dg.Failure("no restorable restore point: run the `backup` job first")
    return restorable[-1]


@dg.op(description="The newest restore point restored into a scratch stack, its rows counted, the stack removed.")
def restore_newest(context: dg.OpExecutionContext, backups: BackupResource, point: str) -> int:
    scratch = f"{Path(backups.data_dir)}-verify-restore"
    restored = backups.shardctl("restore", "--to-point", point, "--into", scratch, "--force")
    try:
        rows = {}
        for server in json.loads(Path(scratch, "settings.json").read_text())["servers"]:
            with psycopg.connect(server["dsn"], connect_timeout=10) as conn:
                rows[f"rows on {server['name']}"] = conn.execute("SELECT count(*) FROM entity_features").fetchone()[0]
    finally:
        backups.shardctl("stack", "down", "--purge", data_dir=scratch, as_json=False)
    context.add_output_metadata({"restore_point": point, "seconds": restored["seconds"], **rows})
    return sum(rows.values())


@dg.job(name="verify_backups", description="Verify the backups' checksums, then restore the newest point and count.")
def verify_job() -> None:
    restore_newest(verify_checksums())


verify_schedule = dg.ScheduleDefinition(
    name="nightly_backup_verification",
    job=verify_job,
    cron_schedule="0 2 * * *",
    execution_timezone="UTC",
    description="After the nightly backup: prove it restores.",
)
