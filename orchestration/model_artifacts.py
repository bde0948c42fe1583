"""A trained model's artifacts: the MOJO export serving loads (and the clear error when an h2o build refuses
it), their move into the registry's version folder, and variable importance as Markdown."""

from __future__ import annotations

import shutil
from pathlib import Path

import h2o
from h2o.estimators import H2OGradientBoostingEstimator
from h2o.exceptions import H2OValueError


def export_mojo(model: H2OGradientBoostingEstimator, directory: Path) -> tuple[Path, Path]:
    """The MOJO zip and h2o-genmodel.jar, in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        mojo = Path(model.download_mojo(path=str(directory), get_genmodel_jar=True))
    except H2OValueError as exc:
        if not is_secure_only_refusal(exc):
            raise
        raise MojoExportRefusedError(
            f"h2o {h2o.__version__} refuses MOJO export ({exc}); pin h2o==3.46.0.11, the last open-source "
            "client that exports MOJOs"
        ) from exc
    return mojo, directory / "h2o-genmodel.jar"


class MojoExportRefusedError(RuntimeError):
    """The installed h2o client refuses MOJO export (a release that reserves it for H2O-3 Secure)."""


def is_secure_only_refusal(exc: BaseException) -> bool:
    """Whether ``exc`` is the client's "<operation> requires H2O-3 Secure" refusal (h2o 3.46.0.12 and later),
    as opposed to any other export failure (disk full, cluster gone), which is reported as it is."""
    return "requires H2O-3 Secure" in str(exc)


def publish_artifacts(staging: Path, final: Path) -> None:
    """Move a version's artifacts from its staging folder to ``<models>/<name>/<version>/``."""
    if final.exists():
        shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(final)


def varimp_markdown(varimp: list[tuple[str, float]], width: int = 30) -> str:
    """Variable importance as a bar chart the Dagster UI renders (Markdown, no plotting library needed)."""
    lines = ["| feature | scaled importance | |", "|---|---:|---|"]
    for name, scaled in varimp:
        lines.append(f"| `{name}` | {scaled:.3f} | {'█' * max(1, round(scaled * width))} |")
    return "\n".join(lines)
