"""`shardctl models`: the model lifecycle from the command line, in the manner of `mlflow models` and
`patronictl` (list, show, promote, roll back). Every change is a compare-and-set on the registry: it names the
version it replaces and fails, changing nothing, if another promotion got there first.

Promote and rollback ask no question: each is recorded and undone by the next rollback or promotion. Errors are
one line and exit 1 (the root group, ``shardctl/cli/options.py``, prints them, as for every command). Only click is
imported at load (`shardctl --help` stays light); the rest when a command runs.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from shardctl.cli.options import catalog_dsn, json_option, read_settings

if TYPE_CHECKING:
    from shardctl.store.promotion import Evaluation, Promotion
    from shardctl.store.registry import ModelRegistry, ModelVersion


@click.group()
@click.option("--model", "model_name", default=None, help="Model name (default: $TESSERA_MODEL_NAME or churn).")
@click.pass_context
def models(ctx: click.Context, model_name: str | None) -> None:
    """Model versions in the registry: list, show, promote, roll back (what serving answers with)."""
    ctx.obj = {"model_name": model_name}


def _open(ctx: click.Context, *, writes: bool = False) -> tuple[ModelRegistry, str]:
    """The registry and the model name; a command that writes first creates the lifecycle tables a catalog made
    before them lacks (reads never run DDL: a read-only role can list)."""
    from shardctl.settings import StoreSettings
    from shardctl.store.registry import ModelRegistry

    # An operator's command: as the control plane (TESSERA_CONTROL__DB_*), like every `shardctl` command.
    registry = ModelRegistry(catalog_dsn())
    if writes:
        registry.ensure_schema()
    return registry, ctx.obj["model_name"] or read_settings(StoreSettings).model_name


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _version_json(v: ModelVersion, serving: int | None, promoted_at: Any) -> dict[str, Any]:
    return {
        "version": v.version,
        "created_at": v.created_at.isoformat(),
        "algorithm": v.algorithm,
        "feature_set": v.feature_set,
        "metrics": v.metrics,
        "serving": v.version == serving,
        "last_promoted_at": promoted_at.isoformat() if promoted_at else None,
    }


def _evaluation_json(e: Evaluation) -> dict[str, Any]:
    return {
        "against": e.serving,
        "metric": e.metric,
        "candidate_score": e.candidate_score,
        "serving_score": e.serving_score,
        "margin": e.margin,
        "passed": e.passed,
        "rows": e.rows,
        "evaluated_at": e.evaluated_at.isoformat(),
    }


def _promotion_json(p: Promotion) -> dict[str, Any]:
    return {
        "version": p.version,
        "replaces": p.replaces,
        "action": p.action,
        "forced": p.forced,
        "metric": p.metric,
        "candidate_score": p.candidate_score,
        "serving_score": p.serving_score,
        "promoted_at": p.promoted_at.isoformat(),
        "note": p.note,
    }


def _change_facts(p: Promotion) -> str:
    """What a promotion record says beyond its version: what it replaced and the figures it rests on."""
    replaced = f"replaces version {p.replaces}" if p.replaces is not None else "nothing served before"
    figures = ""
    if p.metric is not None and p.candidate_score is not None:
        figures = f"; {p.metric} {p.candidate_score:.4f}"
        if p.serving_score is not None:
            figures += f" vs {p.serving_score:.4f}"
    forced = ", forced" if p.forced else ""
    note = f" ({p.note})" if p.note else ""
    return f"{p.action}{forced}, {replaced}{figures}{note}"


def _describe_change(p: Promotion) -> str:
    return f"{p.model_name} version {p.version} serves now: {_change_facts(p)}"


@models.command("list")
@json_option
@click.pass_context
def models_list(ctx: click.Context, as_json: bool) -> None:
    """Every version with its out-of-time metrics, which one serves, and when each last became the serving one
    (by a promotion or a rollback)."""
    registry, name = _open(ctx)
    versions = registry.versions(name)
    current = registry.current(name)
    serving = current.version if current else None
    promoted_at = {p.version: p.promoted_at for p in registry.promotions(name)}
    if as_json:
        rows = [_version_json(v, serving, promoted_at.get(v.version)) for v in versions]
        click.echo(json.dumps({"model": name, "serving": serving, "versions": rows}, indent=2))
        return
    if not versions:
        click.echo(f"model {name!r} has no versions yet")
        return
    click.echo(f"{'':1} {'version':>7}  {'created':<16}  {'algorithm':<22} {'auc':>7} {'logloss':>8}  last promoted")
    for v in versions:
        when = promoted_at.get(v.version)
        click.echo(
            f"{'*' if v.version == serving else '':1} {v.version:>7}  {v.created_at:%Y-%m-%d %H:%M}  "
            f"{v.algorithm:<22} {_figure(v.metrics.get('auc')):>7} {_figure(v.metrics.get('logloss')):>8}  "
            f"{f'{when:%Y-%m-%d %H:%M:%S}' if when else '-'}"
        )
    click.echo(f"* serving: version {serving}" if serving is not None else "nothing serving yet")


@models.command("show")
@click.argument("version", type=click.IntRange(1, None))
@json_option
@click.pass_context
def models_show(ctx: click.Context, version: int, as_json: bool) -> None:
    """One version: metrics, artifacts, details, its out-of-time comparisons and its promotions."""
    registry, name = _open(ctx)
    v = registry.get(name, version)
    current = registry.current(name)
    serving = current.version if current else None
    evaluations = registry.evaluations(name, version)
    changes = [p for p in registry.promotions(name) if version in (p.version, p.replaces)]
    if as_json:
        payload = _version_json(v, serving, max((p.promoted_at for p in changes if p.version == version), default=None))
        payload.update(
            artifact_path=v.artifact_path,
            genmodel_jar=v.genmodel_jar,
            features=v.features,
            details=v.details,
            evaluations=[_evaluation_json(e) for e in evaluations],
            promotions=[_promotion_json(p) for p in changes],
        )
        click.echo(json.dumps(payload, indent=2, default=str))
        return
    click.echo(f"{v.key}{'  (serving)' if version == serving else ''}")
    click.echo(f"  created      {v.created_at:%Y-%m-%d %H:%M:%S %Z}")
    click.echo(f"  algorithm    {v.algorithm}, feature set {v.feature_set}, {len(v.features)} features")
    click.echo(f"  metrics      {', '.join(f'{k} {val:.4f}' for k, val in sorted(v.metrics.items()))}")
    click.echo(f"  artifact     {v.artifact_path}")
    if v.details.get("validation"):
        click.echo(f"  validation   {v.details['validation']}")
    for e in evaluations:
        click.echo(f"  compared     {e.evaluated_at:%Y-%m-%d %H:%M:%S}: {e.describe()}")
    for p in changes:
        role = "served from" if p.version == version else "replaced"
        click.echo(f"  {role:<12} {p.promoted_at:%Y-%m-%d %H:%M:%S}: version {p.version}, {_change_facts(p)}")


@models.command("promote")
@click.argument("version", type=click.IntRange(1, None))
@click.option(
    "--replaces",
    type=click.IntRange(0, None),
    default=None,
    help="The version you expect to be serving (0: none); fails if another is (default: the one serving now).",
)
@click.option("--force", is_flag=True, help="Skip the comparison and artifact checks (never the compare-and-set).")
@click.option("--note", default="", help="Why, kept with the promotion's record.")
@json_option
@click.pass_context
def models_promote(
    ctx: click.Context, version: int, replaces: int | None, force: bool, note: str, as_json: bool
) -> None:
    """Serve VERSION. Checks, unless --force: its MOJO and genmodel jar exist, and its newest out-of-time
    comparison with the version serving now passed (the pipeline's production_model step makes them; with
    nothing serving, none is needed). Always: VERSION exists, is not serving already, and the serving version
    is still the one it replaces when the change is written (else it fails and nothing changes)."""
    from pathlib import Path

    from shardctl.store.promotion import (
        PromotionConflictError,
        PromotionError,
        PromotionRefusedError,
        conflict_message,
        manual_promotion_evidence,
    )

    registry, name = _open(ctx, writes=True)
    candidate = registry.get(name, version)
    current = registry.current(name)
    serving = current.version if current else None
    if replaces is not None and (replaces or None) != serving:
        raise PromotionConflictError(conflict_message(name, serving, replaces or None))
    if serving == version:
        raise PromotionError(f"version {version} of {name} already serves")
    evidence = None
    if not force:
        missing = [p for p in (candidate.artifact_path, candidate.genmodel_jar) if not Path(p).is_file()]
        if missing:
            raise PromotionRefusedError(f"version {version}'s artifacts are missing: {', '.join(missing)}")
        evidence = manual_promotion_evidence(version, serving, registry.evaluations(name, version))
    record = registry.promote(name, version, replaces=serving, evaluation=evidence, forced=force, note=note)
    click.echo(json.dumps(_promotion_json(record), indent=2) if as_json else _describe_change(record))


@models.command("rollback")
@json_option
@click.pass_context
def models_rollback(ctx: click.Context, as_json: bool) -> None:
    """Serve the previously promoted version again (each rollback goes one promotion further back)."""
    registry, name = _open(ctx, writes=True)
    record = registry.rollback(name)
    click.echo(json.dumps(_promotion_json(record), indent=2) if as_json else _describe_change(record))
