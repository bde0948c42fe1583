"""The one place errors become HTTP: a status per domain error type, ``Retry-After`` on retryable ones, and every
error body an RFC 9457 problem detail (``application/problem+json``: ``status``, ``title``, the message in
``detail``; a malformed body's field errors in ``errors``). A malformed body is 422; a body that never arrived
whole (broken framing: ``serving.body_framing``) is 400.

Litestar's ``ProblemDetailsPlugin`` renders them: each exception type converts to a ``ProblemDetailsException``.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.plugins.problem_details import ProblemDetailsConfig, ProblemDetailsException, ProblemDetailsPlugin
from litestar.types import ExceptionHandlersMap

from serving.body_framing import IncompleteBodyError
from serving.errors import NoModelError, PredictionError, ShardDownError, UnknownEntityError

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
STATUS: dict[type[PredictionError], int] = {UnknownEntityError: 404, ShardDownError: 503, NoModelError: 503}


def status_of(error: PredictionError) -> int:
    """The HTTP status of a domain error (the nearest mapped base class; 500 for an unmapped one)."""
    for kind in type(error).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return 500


def problem(status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> ProblemDetailsException:
    """A problem detail with the status' standard phrase as ``title`` (its ``type`` is about:blank)."""
    return ProblemDetailsException(
        status_code=status,
        title=HTTPStatus(status).phrase,
        detail=detail,
        headers=headers,
        extra={key: value for key, value in extra.items() if value} or None,
    )


def _invalid_body(exc: ValidationException) -> ProblemDetailsException:
    return problem(422, str(exc.detail), errors=exc.extra if isinstance(exc.extra, list) else None)


def _incomplete_body(exc: IncompleteBodyError) -> ProblemDetailsException:
    return problem(400, str(exc.detail))


def _http_error(exc: HTTPException) -> ProblemDetailsException:
    """Litestar's own errors (unknown route, wrong method, body too large...); its 400s are 422 here."""
    status = 422 if exc.status_code == 400 else exc.status_code
    return problem(status, str(exc.detail), exc.headers)


def _internal_error(request: Request, exc: Exception) -> Response[Any]:
    """A bug: logged with its traceback, answered with no detail of it."""
    log.error("unhandled error on %s", request.url.path, exc_info=exc)
    return problem(500, "internal error").to_response(request)


def problem_details_plugin(retry_after_seconds: int) -> ProblemDetailsPlugin:
    """Domain errors by ``STATUS`` (+ ``Retry-After`` when retryable), validation and Litestar's own errors."""
    retry_after = {"Retry-After": str(retry_after_seconds)}

    def domain_error(exc: PredictionError) -> ProblemDetailsException:
        status = status_of(exc)
        if status == 500:  # an unmapped domain error is a bug
            log.error("unmapped domain error", exc_info=exc)
            return problem(500, "internal error")
        return problem(status, exc.message, retry_after if exc.retryable else None)

    return ProblemDetailsPlugin(
        ProblemDetailsConfig(
            exception_to_problem_detail_map={
                PredictionError: domain_error,
                ValidationException: _invalid_body,
                IncompleteBodyError: _incomplete_body,
                HTTPException: _http_error,
            }
        )
    )


def exception_handlers() -> ExceptionHandlersMap:
    """What no problem-details mapping covers: any other exception is a logged 500."""
    return {Exception: _internal_error}
