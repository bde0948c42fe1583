"""The apps the serving benchmark compares Tessera with, same endpoint and body:

- ``hello``: a trivial Litestar endpoint on Granian (no I/O, no scoring): the limit of this box and generator;
- ``fastapi_inprocess``: FastAPI on uvicorn with the same in-process MOJO scoring and cache path as Tessera
  (``serving.predictor.Predictor``) and the same API key check and rate limit (``serving.auth``'s gate, as the
  fast path calls it): isolates the framework/server choice;
- ``fastapi_h2o_rest``: FastAPI on uvicorn reading the same features, scoring through the H2O cluster's REST
  API (``model.predict(frame)``): the naive stack the project started from, without keys (its ~80 ms scoring
  call dwarfs a key check; it is measured once, for scale).
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Request
from litestar import Litestar, post
from pydantic import BaseModel

from serving.features import FeatureSource
from serving.http_errors import status_of
from serving.runtime import ServingRuntime
from serving.settings import ServingSettings
from shardctl.settings import get_settings
from shardctl.store.api_keys import PREDICT
from shardctl.store.registry import ModelRegistry


@post("/hello", status_code=200)
async def _hello() -> dict[str, str]:
    return {"hello": "world"}


def hello_app() -> Litestar:
    return Litestar([_hello], debug=False)


class Body(BaseModel):
    entity_id: str


def fastapi_inprocess() -> FastAPI:
    settings = get_settings()
    state: dict = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        runtime = await ServingRuntime.open(settings)
        state["p"], state["gate"] = runtime.predictor, runtime.gate
        try:
            yield
        finally:
            await runtime.close()

    app = FastAPI(lifespan=lifespan)

    @app.post("/v1/predictions")
    async def predict(body: Body, request: Request) -> dict:
        gate = state["gate"]
        if gate is not None:  # the check Tessera's fast path makes, in the same order
            key = gate.key_of(request.scope["headers"])
            if key is None:
                raise HTTPException(401, "a valid API key is required")
            retry = await gate.limiter.admit(key)
            if retry is not None:
                raise HTTPException(429, "over the rate limit", headers={"Retry-After": str(retry)})
            if not key.allows(PREDICT):
                raise HTTPException(403, "the key lacks the predict scope")
        model, (outcome,) = await state["p"].predict([body.entity_id])
        if outcome.error is not None:
            raise HTTPException(status_of(outcome.error), outcome.error.message)
        return {"entity_id": body.entity_id, "score": outcome.prediction.score, "model": model.key}

    return app


def fastapi_h2o_rest() -> FastAPI:
    import h2o
    import pandas as pd

    settings = get_settings()
    features = FeatureSource(settings.catalog_dsn or "", ServingSettings().read_target)
    h2o.connect(url=os.environ["BENCH_H2O_URL"], verbose=False)
    model = h2o.get_model(os.environ["BENCH_H2O_MODEL_ID"])
    version = ModelRegistry(settings.catalog_dsn).current(settings.model_name)
    app = FastAPI()

    @app.post("/v1/predictions")
    def predict(body: Body) -> dict:  # sync: FastAPI runs it on its thread pool
        read = features.read([body.entity_id], version.feature_set)
        record = read.records.get(body.entity_id)
        if record is None:
            raise HTTPException(404, "unknown entity")
        categorical = {name: "enum" for name, value in record.features.items() if isinstance(value, str)}
        frame = h2o.H2OFrame(pd.DataFrame([record.features]), column_types=categorical)
        p1 = model.predict(frame).as_data_frame(use_multi_thread=False).iloc[0, -1]
        return {"entity_id": body.entity_id, "score": float(p1), "model": version.key}

    return app
