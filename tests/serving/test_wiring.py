"""How the app is put together, without servers: which status and problem detail each domain error becomes,
that no handler asks for more than one injected dependency (two or more cost an anyio task group per
request), and that the OpenAPI names every operation with the id its controller gives it."""

from __future__ import annotations

import inspect

import pytest
from litestar import Litestar
from litestar.testing import RequestFactory

from serving.app import create_app
from serving.errors import NoModelError, PredictionError, ShardDownError, UnknownEntityError
from serving.http_errors import PROBLEM_JSON, exception_handlers, problem_details_plugin, status_of
from serving.settings import ServingSettings
from shardctl.settings import TesseraSettings


class _Unmapped(PredictionError):
    """A domain error nobody mapped: a bug, answered as a bare 500."""


@pytest.mark.req("JTBD-02.errors")
@pytest.mark.parametrize(
    ("error", "status", "retry_after"),
    [
        (UnknownEntityError("entity 'x' has no features"), 404, None),
        (ShardDownError("shard 1 is unavailable; retry later"), 503, "7"),
        (NoModelError("no version of model 'churn' is promoted yet"), 503, "7"),
        (_Unmapped("oops"), 500, None),
    ],
)
def test_each_domain_error_has_its_status_and_only_retryable_ones_say_when(
    error: PredictionError, status: int, retry_after: str | None
) -> None:
    assert status_of(error) == status
    to_problem = problem_details_plugin(retry_after_seconds=7).config.exception_to_problem_detail_map[PredictionError]
    response = to_problem(error).to_response(RequestFactory().get("/v1/predictions"))
    assert response.status_code == status
    assert response.media_type == PROBLEM_JSON
    assert response.headers.get("Retry-After") == retry_after
    assert response.content == {
        "status": status,
        "title": {404: "Not Found", 503: "Service Unavailable", 500: "Internal Server Error"}[status],
        "detail": error.message if status != 500 else "internal error",
    }


@pytest.mark.req("JTBD-02.errors")
def test_any_other_exception_is_a_problem_detail_500_without_its_message() -> None:
    handler = exception_handlers()[Exception]
    response = handler(RequestFactory().get("/v1/predictions"), KeyError("secret internals"))
    assert response.status_code == 500
    assert response.media_type == PROBLEM_JSON
    assert "secret" not in str(response.content)


def _app() -> Litestar:
    return create_app(TesseraSettings(catalog_dsn="postgresql://unused"), ServingSettings())


def test_every_handler_asks_for_at_most_one_injected_dependency() -> None:
    app = _app()
    provided = set(app.dependencies)
    assert provided, "the init plugin registers the providers"
    handlers = [h for route in app.routes for h in route.route_handlers]
    assert {h.fn.__name__ for h in handlers} >= {"predict", "current", "healthz", "readyz"}
    for handler in handlers:
        wanted = set(inspect.signature(handler.fn).parameters) & provided
        assert len(wanted) <= 1, f"{handler.fn.__name__} asks for {sorted(wanted)}"


@pytest.mark.req("JTBD-02.openapi")
def test_every_operation_in_the_openapi_has_the_operation_id_its_controller_gives_it() -> None:
    paths = _app().openapi_schema.to_schema()["paths"]
    ids = {(path, method): op.get("operationId") for path, ops in paths.items() for method, op in ops.items()}
    assert ids == {
        ("/v1/predictions", "post"): "predict",
        ("/v1/models/current", "get"): "getCurrentModel",
        ("/healthz", "get"): "checkLiveness",
        ("/readyz", "get"): "checkReadiness",
    }
