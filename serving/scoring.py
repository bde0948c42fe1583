"""In-process MOJO scoring through h2o-genmodel on JPype, and the hot swap of the promoted model.

One JVM per process (JPype cannot restart one), started with the first model's ``h2o-genmodel.jar`` on the
classpath. Scoring is synchronous Java: callers run it on the service's bounded ``ThreadPoolExecutor``.
A swap builds the new model completely, then replaces one reference: a request holds the model it started
with, so no request fails or mixes two versions during a promotion.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jpype

from shardctl.registry import ModelRegistry, ModelVersion
from shardctl.stack.binaries import find_java_home

log = logging.getLogger(__name__)

_jvm_lock = threading.Lock()


class NoModelError(RuntimeError):
    """No model version is promoted for the served model name."""


class ModelLoadError(RuntimeError):
    """The promoted model's MOJO could not be loaded (missing file, wrong jar)."""


def ensure_jvm(genmodel_jar: str, java_home: str | None = None) -> None:
    """Start the process' JVM once, with ``genmodel_jar`` on the classpath (later jars are ignored)."""
    with _jvm_lock:
        if jpype.isJVMStarted():
            return
        home = find_java_home(java_home)
        os.environ["JAVA_HOME"] = str(home)
        jpype.startJVM(jpype.getDefaultJVMPath(), "-Xmx512m", classpath=[genmodel_jar], convertStrings=True)


@dataclass(frozen=True, slots=True)
class Score:
    """One scored row: the positive-class probability (binomial) or the value (regression), and the label."""

    score: float
    label: str | None


class LoadedModel:
    """A promoted version with its MOJO loaded; ``score`` is thread-safe (one genmodel wrapper per thread)."""

    def __init__(self, version: ModelVersion, java_home: str | None = None):
        ensure_jvm(version.genmodel_jar, java_home)
        self.version = version
        self.features = list(version.features)
        try:
            self._mojo = jpype.JClass("hex.genmodel.MojoModel").load(version.artifact_path)
        except jpype.JException as exc:
            raise ModelLoadError(f"cannot load MOJO {version.artifact_path} of {version.key}: {exc}") from exc
        self._category = str(self._mojo.getModelCategory().toString())
        self._local = threading.local()
        self._row_data = jpype.JClass("hex.genmodel.easy.RowData")
        self._double = jpype.JClass("java.lang.Double")

    @property
    def key(self) -> str:
        return self.version.key

    def _wrapper(self):
        wrapper = getattr(self._local, "wrapper", None)
        if wrapper is None:
            easy = jpype.JClass("hex.genmodel.easy.EasyPredictModelWrapper")
            config = (
                easy.Config()
                .setModel(self._mojo)
                .setConvertUnknownCategoricalLevelsToNa(True)
                .setConvertInvalidNumbersToNa(True)
            )
            wrapper = self._local.wrapper = easy(config)
        return wrapper

    def _row(self, features: Mapping[str, Any]):
        row = self._row_data()
        for name in self.features:
            value = features.get(name)
            if value is None:
                continue  # absent -> NA, as H2O treats a missing value
            if isinstance(value, str):
                row.put(name, value)
            else:
                row.put(name, self._double(float(value)))
        return row

    def score(self, rows: Sequence[Mapping[str, Any]]) -> list[Score]:
        """Score feature dicts (keys: the model's feature names; extra keys are ignored)."""
        wrapper = self._wrapper()
        out: list[Score] = []
        for features in rows:
            row = self._row(features)
            if self._category == "Binomial":
                p = wrapper.predictBinomial(row)
                out.append(Score(float(p.classProbabilities[1]), str(p.label)))
            elif self._category == "Regression":
                out.append(Score(float(wrapper.predictRegression(row).value), None))
            elif self._category == "Multinomial":
                p = wrapper.predictMultinomial(row)
                out.append(Score(float(max(p.classProbabilities)), str(p.label)))
            else:
                raise ModelLoadError(f"model category {self._category} is not served")
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
