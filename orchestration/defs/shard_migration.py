"""The Dagster job `shard_migration`: the same engine as `shardctl migrate`, one op per phase.

Run config names the target servers (``to_servers``, as `shardctl stack status` lists them), never a DSN:
the engine looks the servers up in the catalog, and every op's metadata (progress, the verification report)
names servers only. Each phase is idempotent and recorded in the catalog's journal, so a run that failed or
was killed is continued by launching the job again with ``resume: true``; a second migration while one runs
fails with the engine's message.
"""

import re
import time
from typing import Any

import dagster as dg
from pydantic import Field

from orchestration.resources import ControlPlaneResource
from shardctl.control.migration.engine import MigrationEngine
from shardctl.control.migration.journal import PHASES, Journal, JournalError

# A libpq key=value DSN or URI inside any text the engine reports: never shown in run metadata.
_DSN = re.compile(r"(postgres(?:ql)?://\S+|\b(?:host|password|user|dbname|port)=\S+)")
PROGRESS_EVERY_SECONDS = 5.0


class MigrationTarget(dg.Config):
    to_servers: list[str] = Field(
        description="The servers that hold every logical shard afterwards, by name (e.g. server-0); never DSNs.",
    )
    resume: bool = Field(
        default=False,
        description="Continue the migration that is running (after a failed or killed run) instead of starting one.",
    )


def scrub(value: Any) -> Any:
    """``value`` with any connection string replaced (metadata is shown to everyone who sees the UI)."""
    if isinstance(value, str):
        return _DSN.sub("<dsn>", value)
    if isinstance(value, dict):
        return {str(k): scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value


def _engine(context: dg.OpExecutionContext, control_plane: ControlPlaneResource) -> MigrationEngine:
    """The engine, logging its progress events at most every few seconds."""
    last = [0.0]

    def on_progress(event: Any) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY_SECONDS:
            last[0] = now
            context.log.info(f"progress: {scrub(str(event))}")

    return MigrationEngine(control_plane.dsn(), on_progress=on_progress)


@dg.op(out=dg.Out(int, description="The migration's id in the catalog's journal."))
def plan_shard_migration(context: dg.OpExecutionContext, config: MigrationTarget, control_plane: ControlPlaneResource):
    """Plan the move to ``to_servers`` and record it (phase ``planned``); with ``resume`` take the running one."""
    engine = _engine(context, control_plane)
    if config.resume:
        running = Journal(control_plane.dsn()).running()
        if running is None:
            raise dg.Failure("resume: no migration is running")
        context.log.info(f"resuming migration {running.id} at phase {running.phase}")
        yield dg.Output(running.id, metadata={"resumed_at_phase": running.phase, "status": _json(engine.status())})
        return
    if not config.to_servers:
        raise dg.Failure("to_servers is empty: name the servers that hold the logical shards afterwards")
    try:
        record = engine.begin(config.to_servers)  # plans (moves, rows, bytes) and journals the plan
    except (JournalError, ValueError, LookupError, RuntimeError) as exc:
        raise dg.Failure(scrub(str(exc))) from exc
    yield dg.Output(record.id, metadata={"plan": _json(record.plan), "to_servers": ", ".join(config.to_servers)})


def _json(value: Any) -> dg.MetadataValue:
    return dg.MetadataValue.json(scrub(value))


def _phase_op(phase: str) -> dg.OpDefinition:
    @dg.op(
        name=f"migrate_{phase}",
        ins={"migration_id": dg.In(int)},
        out=dg.Out(int),
        description=f"Run the migration's phase `{phase}` (idempotent: a finished phase is a no-op).",
    )
    def run_phase(context: dg.OpExecutionContext, migration_id: int, control_plane: ControlPlaneResource):
        engine = _engine(context, control_plane)
        started = time.monotonic()
        try:
            detail = engine.run_phase(migration_id, phase)
        except Exception as exc:  # the engine's message, without credentials, and the journal's state
            raise dg.Failure(
                f"phase {phase} of migration {migration_id} failed: {scrub(str(exc))}",
                metadata={"status": _json(_status(engine))},
            ) from exc
        metadata: dict[str, Any] = {
            "phase": phase,
            "seconds": round(time.monotonic() - started, 3),
            "detail": _json(detail),
            "status": _json(_status(engine)),
        }
        if phase == "verified":
            metadata["verification_report"] = _json(detail)
        yield dg.Output(migration_id, metadata=metadata)

    return run_phase


def _status(engine: MigrationEngine) -> Any:
    try:
        return engine.status()
    except Exception as exc:  # status is for the reader; its failure must not hide the phase's own outcome
        return {"error": str(exc)}


PHASE_OPS = [_phase_op(phase) for phase in PHASES[1:]]


@dg.job(description="Online resharding: provision, copy, catch up, verify, cut over, clean up (shardctl's engine).")
def shard_migration() -> None:
    migration_id = plan_shard_migration()
    for op in PHASE_OPS:
        migration_id = op(migration_id)
