"""`python -m orchestration`: run the whole graph on the local stack, or start the Dagster UI for it.

Errors are one line and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta

import click

from orchestration.dagster_dev import dev_command
from orchestration.instance import REPO_ROOT, InstanceConfigError, apply_env, prepare_home
from orchestration.labels import LabelSpec, as_of_dates
from orchestration.settings import PipelineSettings
from shardctl.settings import load_settings


@click.group()
def main() -> None:
    """Tessera's Dagster pipeline."""


@main.command("run")
@click.option("--days", type=click.IntRange(1, 3650), default=10, show_default=True, help="Daily partitions.")
@click.option("--rows-per-day", type=click.IntRange(1, 10_000_000), default=None, help="Raw rows per day.")
@click.option("--entities", type=click.IntRange(1, 100_000_000), default=None, help="Customers in the population.")
@click.option("--ntrees", type=click.IntRange(1, 1000), default=None, help="GBM trees (default: the job's).")
@click.option(
    "--horizon-days",
    type=click.IntRange(1, 90),
    default=None,
    help="Churn horizon, also the days between as-of dates and before the first (default: DAYS // 3, 1 to 7).",
)
def run(
    days: int, rows_per_day: int | None, entities: int | None, ntrees: int | None, horizon_days: int | None
) -> None:
    """Materialize DAYS daily partitions from the start date, then label, build the point-in-time training set,
    train and promote; print a summary with the out-of-time AUC. The options reach the assets as run config."""
    settings = load_settings()
    try:
        # Where the Dagster instance is (DAGSTER_HOME, DAGSTER_PG_*: its dagster.yaml reads them), not options.
        apply_env(prepare_home(settings))
    except InstanceConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    import dagster as dg  # after DAGSTER_HOME is set

    from orchestration.definitions import defs
    from orchestration.defs.churn_model import TrainConfig
    from orchestration.defs.point_in_time import LabelConfig
    from orchestration.defs.resources import raw_data_resource
    from orchestration.run_graph import QUIET_LOGGERS, GraphRunError, run_days, run_model, summarize

    pipeline = PipelineSettings()
    start = pipeline.start_date
    today = datetime.now(UTC).date()
    if start + timedelta(days=days) > today:
        raise click.ClickException(f"{days} days from {start} reach past yesterday ({today - timedelta(days=1)})")
    day_list = [start + timedelta(days=i) for i in range(days)]
    horizon = horizon_days or min(7, max(1, days // 3))
    spec = LabelSpec(horizon_days=horizon, every_days=horizon, warmup_days=horizon)
    if len(as_of_dates(day_list[0], day_list[-1], spec)) < 2:
        raise click.ClickException(
            f"{days} days are too few for an out-of-time split with a {horizon}-day horizon: "
            f"need at least {3 * horizon} (two as-of dates, each with a horizon of data after it)"
        )
    scale = {"rows_per_day": rows_per_day, "entities": entities}
    source = raw_data_resource(pipeline, **{k: v for k, v in scale.items() if v is not None})
    click.echo(
        f"materializing {days} daily partitions x {source.rows_per_day:,} rows ({days * source.rows_per_day:,} raw "
        f"rows), then labels (churn = no event within {horizon} days), the point-in-time training set and the model"
    )
    started = time.monotonic()
    daily_config = dg.RunConfig(resources={"raw_data": source}, loggers=QUIET_LOGGERS)
    ops: dict[str, dg.Config] = {
        "churn_labels": LabelConfig(horizon_days=horizon, every_days=horizon, warmup_days=horizon)
    }
    if ntrees:
        ops["churn_model"] = TrainConfig(ntrees=ntrees)
    model_config = dg.RunConfig(ops=ops, loggers=QUIET_LOGGERS)
    try:
        definitions = defs()
        with dg.DagsterInstance.get() as instance:
            for i, day in enumerate(day_list, 1):
                run_days(definitions, [day], instance, daily_config)
                click.echo(f"  [{i}/{days}] {day} done ({time.monotonic() - started:.0f} s)")
            run_model(definitions, instance, model_config)
    except GraphRunError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"\nSummary ({time.monotonic() - started:.0f} s):")
    for line in summarize(settings).lines():
        click.echo(f"  {line}")


@main.command("dev")
@click.option("--port", type=click.IntRange(1024, 65535), default=3000, show_default=True)
def dev(port: int) -> None:
    """Start the Dagster webserver and daemon on the local stack (Postgres storage)."""
    try:
        env = prepare_home(load_settings())
    except InstanceConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    os.environ.update(env)
    os.chdir(REPO_ROOT)  # `dg dev` finds the project (pyproject.toml [tool.dg]) from here
    argv = dev_command("127.0.0.1", port)
    os.execve(argv[0], argv, os.environ)


@main.command("env")
def env() -> None:
    """Print the environment (DAGSTER_HOME, DAGSTER_PG_*) for running Dagster CLI commands by hand."""
    try:
        for key, value in prepare_home(load_settings()).items():
            click.echo(f"export {key}={value}")
    except InstanceConfigError as exc:
        raise click.ClickException(str(exc)) from exc


if __name__ == "__main__":
    main()
