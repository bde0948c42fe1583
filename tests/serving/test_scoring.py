"""In-process MOJO scoring (h2o-genmodel through JPype) against H2O's own predictions, odd rows included."""

from __future__ import annotations

import pytest

from serving.scoring import LoadedModel
from tests.serving.conftest import ODD_ROWS, entity_features, entity_id


@pytest.mark.req("JTBD-02.mojo-scoring")
def test_missing_values_and_unseen_levels_score_as_h2o_scores_them(models, trained) -> None:
    for version, odd, expected in zip(models, trained.odd, trained.expected, strict=True):
        model = LoadedModel(version)
        got = model.score(ODD_ROWS)
        assert [s.score for s in got] == pytest.approx(odd, abs=1e-9)
        assert all(s.label in ("yes", "no") for s in got)
        # A non-number in a numeric column is NA too, like a missing one (EasyPredict's convertInvalidNumbersToNa).
        as_text = dict(ODD_ROWS[1], visits="n/a")
        assert model.score([as_text])[0].score == pytest.approx(odd[1], abs=1e-9)
        # Extra keys are ignored; ordinary rows match H2O's predict exactly.
        rows = [dict(entity_features(i), unrelated="x") for i in range(50)]
        assert [s.score for s in model.score(rows)] == pytest.approx(
            [expected[entity_id(i)] for i in range(50)], abs=1e-9
        )
