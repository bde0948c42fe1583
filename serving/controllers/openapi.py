"""What the controllers share: the injected dependencies' types and how their error answers are documented."""

from __future__ import annotations

from dataclasses import dataclass

from litestar import MediaType
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import (
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    RequestBody,
    Schema,
)
from litestar.params import SkipValidation

from serving.http_errors import PROBLEM_JSON
from serving.runtime import ServingRuntime
from serving.schemas import ProblemDetail, request_schema
from serving.scoring import ModelHolder

# Injected objects are the worker's own, not client input: Litestar would otherwise convert (validate) each one
# against its type on every request.
Runtime = NamedDependency[SkipValidation[ServingRuntime]]
Models = NamedDependency[SkipValidation[ModelHolder]]


def problem(description: str) -> ResponseSpec:
    """An error answer: an RFC 9457 problem detail (``serving.http_errors`` renders it)."""
    return ResponseSpec(ProblemDetail, description=description, media_type=PROBLEM_JSON, generate_examples=False)


def key_errors() -> dict[int, ResponseSpec]:
    """The answers of a route that needs an API key (``serving.security``)."""
    return {
        401: problem("No valid API key: send `Authorization: Bearer <key>`"),
        403: problem("The API key lacks the scope this route needs"),
        429: problem("The API key is over its rate limit: ask again after Retry-After"),
    }


@dataclass
class RetryAfterDocumented(Operation):
    """An operation whose 503 and 429 answers carry ``Retry-After`` (seconds), documented as such in the OpenAPI."""

    def __post_init__(self) -> None:
        for status in ("503", "429"):
            answer = (self.responses or {}).get(status)
            if isinstance(answer, OpenAPIResponse):
                retry = OpenAPIHeader(schema=Schema(type=OpenAPIType.STRING), description="seconds", required=True)
                answer.headers = {"Retry-After": retry}


@dataclass
class PredictOperation(RetryAfterDocumented):
    """The prediction handler reads its body itself: its request body is documented from the struct, with
    msgspec's own schema of it (the one the decoder enforces: lengths, pattern, no unknown fields)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.request_body = RequestBody(
            content={MediaType.JSON: OpenAPIMediaType(schema=request_schema())},  # type: ignore[arg-type]
            required=True,
        )
