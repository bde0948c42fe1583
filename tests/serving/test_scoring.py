"""In-process MOJO scoring (h2o-genmodel through JPype) against H2O's own predictions, odd rows included."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import REGISTRY

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


@pytest.mark.req("JTBD-02.mojo-scoring")
def test_a_value_the_model_cannot_score_is_counted_by_feature_and_warned_once_per_interval(
    models, trained, caplog: pytest.LogCaptureFixture
) -> None:
    """Text in a numeric column scores as NA (as above) and is not silent: a counter labelled by the feature's
    name, and one warning per feature per interval (the second bad value within it adds to the count only)."""
    model = LoadedModel(models[0])

    def counted(feature: str) -> float:
        return REGISTRY.get_sample_value("tessera_unscorable_features_total", {"feature": feature}) or 0.0

    visits, spend = counted("visits"), counted("spend")
    with caplog.at_level(logging.WARNING, logger="serving.scoring"):
        model.score([dict(ODD_ROWS[1], visits="n/a"), dict(ODD_ROWS[0], visits=[3])])
    assert counted("visits") == visits + 2
    assert counted("spend") == spend  # None is a missing value, not an unscorable one
    warned = [r.getMessage() for r in caplog.records if "not a number" in r.getMessage()]
    assert len(warned) == 1, warned
    assert "'visits' got a str" in warned[0]
    assert models[0].key in warned[0]
