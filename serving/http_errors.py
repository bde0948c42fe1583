"""The one place domain errors become HTTP: a status per error type, ``Retry-After`` on retryable ones, and the
body every error has (``{"status_code": ..., "detail": ...}``; 422 for a malformed request, never 400)."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap

from serving.errors import NoModelError, PredictionError, ShardDownError, UnknownEntityError

log = logging.getLogger(__name__)

STATUS: dict[type[PredictionError], int] = {UnknownEntityError: 404, ShardDownError: 503, NoModelError: 503}


def status_of(error: PredictionError) -> int:
    """The HTTP status of a domain error (the nearest mapped base class; 500 for an unmapped one)."""
    for kind in type(error).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return 500


def _unprocessable(request: Request, exc: ValidationException) -> Response[dict[str, Any]]:
    """Bad request bodies are 422 with the reason (Litestar's default is 400)."""
    body: dict[str, Any] = {"status_code": 422, "detail": exc.detail}
    if exc.extra:
        body["extra"] = exc.extra
    return Response(body, status_code=422)


def _client_error(request: Request, exc: HTTPException) -> Response[dict[str, Any]]:
    status = 422 if exc.status_code == 400 else exc.status_code
    return Response({"status_code": status, "detail": exc.detail}, status_code=status, headers=exc.headers)


def _internal_error(request: Request, exc: Exception) -> Response[dict[str, Any]]:
    log.exception("unhandled error on %s", request.url.path)
    return Response({"status_code": 500, "detail": "internal error"}, status_code=500)


def exception_handlers(retry_after_seconds: int) -> ExceptionHandlersMap:
    """Handlers for the app: domain errors by ``STATUS``, Litestar's own errors, and anything else as 500."""
    retry_after = {"Retry-After": str(retry_after_seconds)}

    def domain_error(request: Request, exc: PredictionError) -> Response[dict[str, Any]]:
        status = status_of(exc)
        if status == 500:
            return _internal_error(request, exc)
        headers = retry_after if exc.retryable else None
        return Response({"status_code": status, "detail": exc.message}, status_code=status, headers=headers)

    return {
        PredictionError: domain_error,
        ValidationException: _unprocessable,
        HTTPException: _client_error,
        Exception: _internal_error,
    }
