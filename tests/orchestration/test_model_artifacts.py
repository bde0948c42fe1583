"""MOJO export failures: only the client's "requires H2O-3 Secure" refusal is blamed on the h2o version."""

from __future__ import annotations

from pathlib import Path

import pytest
from h2o.exceptions import H2OValueError

from orchestration.model_artifacts import MojoExportRefusedError, export_mojo, is_secure_only_refusal

# The refusal h2o 3.46.0.12+ raises (h2o-py's enterprise gate): "<operation> requires H2O-3 Secure. Contact <email>".
REFUSAL = "download_mojo requires H2O-3 Secure. Contact sales@h2o.ai"


class _Model:
    def __init__(self, error: Exception):
        self.error = error

    def download_mojo(self, path: str, get_genmodel_jar: bool) -> str:
        raise self.error


def test_the_secure_only_refusal_is_recognized_and_nothing_else() -> None:
    assert is_secure_only_refusal(H2OValueError(REFUSAL))
    assert not is_secure_only_refusal(H2OValueError("Model not found"))
    assert not is_secure_only_refusal(OSError("No space left on device"))


def test_a_refusal_says_to_pin_the_last_open_source_client(tmp_path: Path) -> None:
    with pytest.raises(MojoExportRefusedError, match=r"pin h2o==3\.46\.0\.11"):
        export_mojo(_Model(H2OValueError(REFUSAL)), tmp_path)  # type: ignore[arg-type]


@pytest.mark.parametrize("error", [H2OValueError("Model not found"), OSError("No space left on device")])
def test_any_other_export_failure_is_reported_as_it_is(tmp_path: Path, error: Exception) -> None:
    with pytest.raises(type(error), match=str(error)):
        export_mojo(_Model(error), tmp_path)  # type: ignore[arg-type]
