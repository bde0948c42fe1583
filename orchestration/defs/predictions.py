"""Precomputed predictions after a promotion or a rollback: every entity re-scored with the newly promoted model,
so requests become lookups again (serving scores on demand, with the new model, until an entity's new prediction
exists; serving never reads a prediction of another model version: ``shardctl/store/predictions.py``).

The asset runs the scorer's re-scoring pass (``python -m serving.scorer rescore``) through Dagster Pipes: the
process logs its progress (rows done, rows/s) into the run's log and reports rows, seconds and rows per second as
the materialization's metadata. The sensor launches the job once per promotion or rollback in the registry (its
cursor is the newest one's id); the scorer process itself keeps predictions current between promotions.
"""

import dagster as dg

from orchestration.resources import ScorerResource, TesseraResource


@dg.asset(group_name="serving", kinds={"postgres"})
def precomputed_predictions(
    context: dg.AssetExecutionContext, scorer: ScorerResource, pipes_subprocess_client: dg.PipesSubprocessClient
) -> dg.MaterializeResult:
    """Every entity of the promoted model's feature set scored with it, on its own server (entities whose
    prediction is already current are skipped, so a re-run continues where a stopped one ended)."""
    return pipes_subprocess_client.run(
        command=scorer.command("rescore"), context=context, env=scorer.env()
    ).get_materialize_result()


rescore_job = dg.define_asset_job(
    "rescore_predictions",
    selection=dg.AssetSelection.assets(precomputed_predictions),
    description="Re-score every entity with the promoted model (after a promotion or a rollback).",
    tags={
        "tessera/mojo": "rescore",
        # On Kubernetes the run pod gets the scorer's password (the pass connects as tessera_scorer), from the
        # scorer's own Secret; other runs never see it.
        "dagster-k8s/config": {
            "container_config": {
                "env": [
                    {
                        "name": "TESSERA_SCORER__DB_PASSWORD",
                        "valueFrom": {
                            "secretKeyRef": {"name": "tessera-scorer-db", "key": "TESSERA_SCORER__DB_PASSWORD"}
                        },
                    }
                ]
            }
        },
    },
)


@dg.sensor(job=rescore_job, minimum_interval_seconds=10, default_status=dg.DefaultSensorStatus.RUNNING)
def rescore_on_promotion(context: dg.SensorEvaluationContext, tessera: TesseraResource):
    """One re-scoring run per promotion or rollback of the served model (run key: the registry's record)."""
    promotions = tessera.registry().promotions(tessera.model_name)
    if not promotions:
        return dg.SkipReason(f"no version of {tessera.model_name!r} promoted yet")
    newest = promotions[-1]
    if context.cursor == str(newest.id):
        return dg.SkipReason(f"version {newest.version} ({newest.action}) already re-scored")
    context.update_cursor(str(newest.id))
    return dg.RunRequest(
        run_key=f"{tessera.model_name}-promotion-{newest.id}",
        tags={"tessera/model_version": str(newest.version), "tessera/action": newest.action},
    )
