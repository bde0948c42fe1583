"""The operator's endpoints: liveness and readiness for the orchestrator's probes (open: probes carry no
credentials), metrics for Prometheus (an API key with the ``metrics`` scope)."""

from __future__ import annotations

from litestar import Controller, Response, get
from litestar.openapi import ResponseSpec
from litestar.plugins.prometheus import PrometheusController

from serving.controllers.openapi import Runtime
from serving.schemas import Health
from serving.security import requires
from shardctl.store.api_keys import METRICS


class OpsController(Controller):
    """``/healthz`` and ``/readyz`` (at the root, where probes look for them)."""

    path = "/"
    tags = ["operations"]

    # exclude_from_auth: serving.security lets probes in without a key.
    @get("/healthz", operation_id="checkLiveness", summary="Liveness: the process answers", exclude_from_auth=True)
    async def healthz(self) -> Health:
        return Health("ok")

    @get(
        "/readyz",
        operation_id="checkReadiness",
        summary="Readiness: a model is loaded and the worker serves; the catalog's state is reported, not required",
        responses={503: ResponseSpec(Health, description="No model is loaded yet")},
        exclude_from_auth=True,
    )
    async def readyz(self, runtime: Runtime) -> Response[Health]:
        # Predictions need the shards, Redis and the loaded model, not the catalog: a catalog outage must not take
        # every pod out of the load balancer at once. Its state comes from the promotion listener's connection
        # (no connection per probe).
        model = runtime.predictor.holder.current
        catalog = "connected" if runtime.catalog_connected() else "unreachable"
        scorer, lag = runtime.scorer_status()
        if model is None:
            return Response(Health("not ready", None, "no model promoted", catalog, scorer, lag), status_code=503)
        return Response(Health("ready", model.key, catalog=catalog, scorer=scorer, scorer_lag_seconds=lag))


class MetricsController(PrometheusController):
    """``/metrics`` for Prometheus (text exposition format): an operator's endpoint, not in the API's schema."""

    include_in_schema = False
    guards = [requires(METRICS)]
