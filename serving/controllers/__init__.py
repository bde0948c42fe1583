"""The service's HTTP surface, one Litestar ``Controller`` per resource: predictions, models, and the operator's
endpoints (liveness, readiness, metrics). Every handler has an ``operation_id``; ``serving.app`` registers
``CONTROLLERS``."""

from serving.controllers.models import ModelController
from serving.controllers.ops import MetricsController, OpsController
from serving.controllers.predictions import PredictionController

CONTROLLERS = [PredictionController, ModelController, OpsController, MetricsController]

__all__ = ["CONTROLLERS", "MetricsController", "ModelController", "OpsController", "PredictionController"]
