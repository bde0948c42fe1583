"""What the in-process measurements (``cost_breakdown.py``, ``hot_path.py``) share: how they end."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn


def exit_with(result: Any, json_path: Path | None) -> NoReturn:
    """Write ``result`` to ``json_path`` (if given) and exit at once: JPype's JVM shutdown at interpreter exit can
    hang, and everything the measurement opened is closed already."""
    if json_path:
        json_path.write_text(json.dumps(result, indent=2))
    sys.stdout.flush()
    os._exit(0)
