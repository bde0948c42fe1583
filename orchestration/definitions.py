"""The code location: every module in ``orchestration/defs/`` is loaded (assets, checks, jobs, schedules, and
the ``@dg.definitions`` functions such as the resources), so a new module there is picked up on its own.

Load it with ``dg dev`` / ``dg check defs`` (the project is in pyproject.toml's ``[tool.dg]``) or
``dagster dev -w workspace.yaml``; in Python, ``defs()`` returns the ``Definitions``.
"""

from pathlib import Path

import dagster as dg


@dg.definitions
def defs() -> dg.Definitions:
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
