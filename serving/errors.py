"""What can keep the service from answering an entity, as types: the domain raises or returns these and
only the HTTP layer (``serving.http_errors``) decides which status code each one is."""

from __future__ import annotations

from typing import ClassVar


class PredictionError(Exception):
    """Base of the service's domain errors; ``retryable`` errors may go away if the caller asks again later."""

    retryable: ClassVar[bool] = False

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class NoModelError(PredictionError):
    """No model version is promoted for the served model name (a promotion fixes it without a restart)."""

    retryable = True


class UnknownEntityError(PredictionError):
    """The entity has no features in the model's feature set."""


class ShardDownError(PredictionError):
    """The shard holding the entity did not answer within the readers' acquire timeout."""

    retryable = True
