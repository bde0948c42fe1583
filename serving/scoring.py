"""In-process MOJO scoring through h2o-genmodel on JPype, and the hot swap of the promoted model.

One JVM per process (JPype cannot restart one), started with the first model's ``h2o-genmodel.jar`` on the
classpath. Scoring is synchronous Java: callers run it on the service's bounded ``ThreadPoolExecutor``.
A swap builds the new model completely, then replaces one reference: a request holds the model it started
with, so no request fails or mixes two versions during a promotion.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jpype

from serving.errors import NoModelError
from serving.metrics import UNSCORABLE_FEATURES
from shardctl.java import find_java_home
from shardctl.store.registry import ModelRegistry, ModelVersion

log = logging.getLogger(__name__)

_jvm_lock = threading.Lock()


class ModelLoadError(RuntimeError):
    """The promoted model's MOJO could not be loaded (missing file, wrong jar)."""


class UnscorableFeatures:
    """Counts feature values the model cannot score (``tessera_unscorable_features_total{feature}``) and logs a
    warning per feature at most once per ``interval_s``: a client sending text for a number gets an answer
    (NA, as EasyPredict scores it), the operator a figure and a line, and the log no flood."""

    def __init__(self, model_key: str, interval_s: float = 60.0):
        self._model_key = model_key
        self._interval_s = interval_s
        self._last_warned: dict[str, float] = {}
        self._since_warned: dict[str, int] = {}
        self._lock = threading.Lock()

    def record(self, feature: str, value: object) -> None:
        UNSCORABLE_FEATURES.labels(feature=feature).inc()
        now = time.monotonic()
        with self._lock:
            skipped = self._since_warned.get(feature, 0)
            last = self._last_warned.get(feature)
            if last is not None and now - last < self._interval_s:
                self._since_warned[feature] = skipped + 1
                return
            self._last_warned[feature] = now
            self._since_warned[feature] = 0
        log.warning(
            "model %s: feature %r got a %s, not a number: scored as NA (%d more since the last warning)",
            self._model_key,
            feature,
            type(value).__name__,
            skipped,
        )


def ensure_jvm(genmodel_jar: str, java_home: str | None = None) -> None:
    """Start the process' JVM once, with ``genmodel_jar`` on the classpath (later jars are ignored)."""
    with _jvm_lock:
        if jpype.isJVMStarted():
            return
        home = find_java_home(java_home)
        os.environ["JAVA_HOME"] = str(home)
        # -Xrs: the JVM installs no SIGTERM/SIGINT handler of its own. Without it, the SIGTERM that starts a
        # graceful drain also shut the JVM down at once, and every request still in flight failed to score.
        jpype.startJVM(jpype.getDefaultJVMPath(), "-Xmx512m", "-Xrs", classpath=[genmodel_jar], convertStrings=True)


@dataclass(frozen=True, slots=True)
class Score:
    """One scored row: the positive-class probability (binomial) or the value (regression), and the label."""

    score: float
    label: str | None


class LoadedModel:
    """A promoted version with its MOJO loaded; ``score`` is thread-safe.

    Rows go to the MOJO's own ``score0(double[], double[])`` as numeric arrays (categorical levels mapped to
    their index once, at load), not through ``EasyPredictModelWrapper``'s ``RowData``: every Java call made
    through JPype releases and re-takes the GIL, and a scoring thread that must win the GIL back from a busy
    event loop waits up to a switch interval each time. A ``RowData`` row costs a dozen such calls, a numeric
    row two, which measured 5-row calls under a busy loop at 5.4 ms instead of 48 ms. The semantics are
    EasyPredict's with ``convertUnknownCategoricalLevelsToNa`` and ``convertInvalidNumbersToNa``: an absent
    value, an unknown level or a non-number in a numeric column is NA.
    """

    def __init__(self, version: ModelVersion, java_home: str | None = None):
        ensure_jvm(version.genmodel_jar, java_home)
        self.version = version
        self.features = list(version.features)
        try:
            mojo = jpype.JClass("hex.genmodel.MojoModel").load(version.artifact_path)
        except jpype.JException as exc:
            raise ModelLoadError(f"cannot load MOJO {version.artifact_path} of {version.key}: {exc}") from exc
        self._mojo = mojo
        self._category = str(mojo.getModelCategory().toString())
        if self._category not in ("Binomial", "Regression", "Multinomial"):
            raise ModelLoadError(f"model category {self._category} of {version.key} is not served")
        n_columns = int(mojo.getNumCols())
        names = [str(name) for name in mojo.getNames()][:n_columns]
        domains = mojo.getDomainValues()
        self._n_columns = n_columns
        self._columns = [(name, i) for i, name in enumerate(names)]
        self._levels: dict[int, dict[str, float]] = {
            i: {str(level): float(j) for j, level in enumerate(domains[i])}
            for i in range(n_columns)
            if domains[i] is not None
        }
        response = domains[int(mojo.getResponseIdx())] if self._category != "Regression" else None
        self._labels = [str(level) for level in response] if response is not None else []
        self._preds_size = int(mojo.getPredsSize())
        self._doubles = jpype.JArray(jpype.JDouble)
        self._local = threading.local()
        self.unscorable = UnscorableFeatures(version.key)

    @property
    def key(self) -> str:
        return self.version.key

    def _row(self, features: Mapping[str, Any]) -> list[float]:
        row = [math.nan] * self._n_columns
        for name, i in self._columns:
            value = features.get(name)
            if value is None:
                continue
            levels = self._levels.get(i)
            if levels is not None:
                row[i] = levels.get(str(value), math.nan)
            else:
                try:
                    row[i] = float(value)
                except (TypeError, ValueError):
                    self.unscorable.record(name, value)  # not a number: NA, counted and logged
        return row

    def score(self, rows: Sequence[Mapping[str, Any]]) -> list[Score]:
        """Score feature dicts (keys: the model's feature names; extra keys are ignored)."""
        preds = getattr(self._local, "preds", None)
        if preds is None:
            preds = self._local.preds = self._doubles(self._preds_size)
        out: list[Score] = []
        for features in rows:
            p = [float(x) for x in self._mojo.score0(self._doubles(self._row(features)), preds)]
            if self._category == "Binomial":
                out.append(Score(p[2], self._labels[int(p[0])]))
            elif self._category == "Regression":
                out.append(Score(p[0], None))
            else:
                out.append(Score(max(p[1:]), self._labels[int(p[0])]))
        return out


class ModelHolder:
    """The currently served model; ``refresh`` follows the registry's promoted version (called on NOTIFY)."""

    def __init__(self, registry: ModelRegistry, model_name: str, java_home: str | None = None):
        self._registry = registry
        self._model_name = model_name
        self._java_home = java_home
        self._current: LoadedModel | None = None
        self._swap_lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def current(self) -> LoadedModel | None:
        return self._current

    def require(self) -> LoadedModel:
        model = self._current
        if model is None:
            raise NoModelError(f"no version of model {self._model_name!r} is promoted yet")
        return model

    def refresh(self, _payload: str | None = None) -> LoadedModel | None:
        """Load the promoted version if it differs from the served one; keep serving the old one on error."""
        with self._swap_lock:
            try:
                promoted = self._registry.current(self._model_name)
            except Exception:
                log.exception("cannot read the model registry; keeping %s", self._current and self._current.key)
                return self._current
            if promoted is None or (self._current and self._current.version.version == promoted.version):
                return self._current
            try:
                loaded = LoadedModel(promoted, self._java_home)
            except Exception:
                log.exception("cannot load %s; keeping %s", promoted.key, self._current and self._current.key)
                return self._current
            self._current = loaded  # one reference swap: in-flight requests keep the model they hold
            log.info("serving model %s", loaded.key)
            return loaded
