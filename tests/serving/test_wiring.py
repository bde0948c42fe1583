"""How the app is put together, without servers: which status each domain error becomes, and that no handler
asks for more than one injected dependency (two or more cost an anyio task group per request)."""

from __future__ import annotations

import inspect

import pytest
from litestar.testing import RequestFactory

from serving.app import create_app
from serving.errors import NoModelError, PredictionError, ShardDownError, UnknownEntityError
from serving.http_errors import exception_handlers, status_of
from serving.routes import ROUTES
from serving.settings import ServingSettings
from shardctl.settings import TesseraSettings


class _Unmapped(PredictionError):
    """A domain error nobody mapped: a bug, answered as a bare 500."""


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
    handler = exception_handlers(retry_after_seconds=7)[PredictionError]
    response = handler(RequestFactory().get("/v1/predictions"), error)
    assert response.status_code == status
    assert response.headers.get("Retry-After") == retry_after
    assert response.content == {
        "status_code": status,
        "detail": error.message if status != 500 else "internal error",
    }


def test_every_handler_asks_for_at_most_one_injected_dependency() -> None:
    app = create_app(TesseraSettings(catalog_dsn="postgresql://unused"), ServingSettings())
    provided = set(app.dependencies)
    assert provided, "the init plugin registers the providers"
    for handler in ROUTES:
        wanted = set(inspect.signature(handler.fn).parameters) & provided
        assert len(wanted) <= 1, f"{handler.fn.__name__} asks for {sorted(wanted)}"
