"""The model registry in the catalog: every trained version with its metrics, features and artifacts,
and which version serving uses (the ``production`` alias).

It lives in ``shardctl`` because both sides use it: orchestration registers and promotes, serving reads the
promoted version and hot-swaps when a promotion is announced on ``PROMOTION_CHANNEL``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

PROMOTION_CHANNEL = "tessera_model_promoted"
PRODUCTION = "production"

SCHEMA = """
CREATE TABLE IF NOT EXISTS model_versions (
    model_name     text        NOT NULL,
    version        integer     NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    algorithm      text        NOT NULL,
    feature_set    text        NOT NULL,
    features       jsonb       NOT NULL,
    metrics        jsonb       NOT NULL,
    artifact_path  text        NOT NULL,
    genmodel_jar   text        NOT NULL,
    details        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (model_name, version)
);
CREATE TABLE IF NOT EXISTS model_aliases (
    model_name  text        NOT NULL,
    alias       text        NOT NULL,
    version     integer     NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_name, alias),
    FOREIGN KEY (model_name, version) REFERENCES model_versions (model_name, version)
);
"""


class ModelNotFoundError(LookupError):
    """The named model version is not in the registry."""


@dataclass(frozen=True)
class ModelVersion:
    model_name: str
    version: int
    created_at: datetime
    algorithm: str
    feature_set: str
    features: list[str]
    metrics: dict[str, float]
    artifact_path: str
    genmodel_jar: str
    details: dict[str, Any]

    @property
    def key(self) -> str:
        """A short identity for logs, cache keys and responses: ``name:version``."""
        return f"{self.model_name}:{self.version}"


def is_better(candidate: dict[str, float], current: dict[str, float] | None, metric: str = "auc") -> bool:
    """Promotion rule: a candidate wins when there is no current model, or its ``metric`` is strictly higher
    (for metrics where lower is better, such as logloss, pass the negated value)."""
    if current is None or metric not in current:
        return True
    if metric not in candidate:
        raise ValueError(f"candidate has no {metric!r} metric (has {sorted(candidate)})")
    return candidate[metric] > current[metric]


class ModelRegistry:
    """Registry operations on the catalog database; each call opens a short connection."""

    def __init__(self, catalog_dsn: str):
        self.dsn = catalog_dsn

    def ensure_schema(self) -> None:
        with psycopg.connect(self.dsn) as conn:
            conn.execute(SCHEMA)

    def register(
        self,
        model_name: str,
        *,
        algorithm: str,
        feature_set: str,
        features: list[str],
        metrics: dict[str, float],
        artifact_path: str,
        genmodel_jar: str,
        details: dict[str, Any] | None = None,
    ) -> ModelVersion:
        """Record a new version (the next integer for this model) whose artifacts are already in place."""
        return self.register_published(
            model_name,
            lambda _version: (artifact_path, genmodel_jar),
            algorithm=algorithm,
            feature_set=feature_set,
            features=features,
            metrics=metrics,
            details=details,
        )

    def register_published(
        self,
        model_name: str,
        publish: Callable[[int], tuple[str, str]],
        *,
        algorithm: str,
        feature_set: str,
        features: list[str],
        metrics: dict[str, float],
        details: dict[str, Any] | None = None,
    ) -> ModelVersion:
        """Record the next version of ``model_name``; ``publish(version)`` puts its artifacts where that number
        says and returns (MOJO path, genmodel jar path). The one place versions are numbered: the number, the
        artifacts' place and the row are decided under one lock, so concurrent trainers cannot swap them. If
        ``publish`` raises, nothing is recorded."""
        with psycopg.connect(self.dsn) as conn, conn.cursor(row_factory=dict_row) as cur:
            # Serialize version numbering per model without a sequence per model (released at commit).
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"model_versions:{model_name}",))
            cur.execute(
                "SELECT coalesce(max(version), 0) + 1 AS next FROM model_versions WHERE model_name = %s", (model_name,)
            )
            version = int(cur.fetchone()["next"])  # type: ignore[index]
            artifact_path, genmodel_jar = publish(version)
            cur.execute(
                """
                INSERT INTO model_versions (model_name, version, algorithm, feature_set, features, metrics,
                                            artifact_path, genmodel_jar, details)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
                RETURNING *
                """,
                (
                    model_name,
                    version,
                    algorithm,
                    feature_set,
                    Jsonb(features),
                    Jsonb(metrics),
                    artifact_path,
                    genmodel_jar,
                    Jsonb(details or {}),
                ),
            )
            return ModelVersion(**cur.fetchone())  # type: ignore[arg-type]

    def get(self, model_name: str, version: int) -> ModelVersion:
        with psycopg.connect(self.dsn) as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute("SELECT * FROM model_versions WHERE model_name = %s AND version = %s", (model_name, version))
            row = cur.fetchone()
        if row is None:
            raise ModelNotFoundError(f"model {model_name!r} has no version {version}")
        return ModelVersion(**row)

    def versions(self, model_name: str) -> list[ModelVersion]:
        with psycopg.connect(self.dsn) as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute("SELECT * FROM model_versions WHERE model_name = %s ORDER BY version", (model_name,))
            return [ModelVersion(**r) for r in cur.fetchall()]

    def current(self, model_name: str, alias: str = PRODUCTION) -> ModelVersion | None:
        """The version serving should use, or None if none was promoted."""
        with psycopg.connect(self.dsn) as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                """
                SELECT v.* FROM model_aliases a
                JOIN model_versions v USING (model_name, version)
                WHERE a.model_name = %s AND a.alias = %s
                """,
                (model_name, alias),
            )
            row = cur.fetchone()
        return ModelVersion(**row) if row else None

    def promote(self, model_name: str, version: int, alias: str = PRODUCTION) -> ModelVersion:
        """Point ``alias`` at ``version`` and announce it (NOTIFY is delivered at commit)."""
        promoted = self.get(model_name, version)
        with psycopg.connect(self.dsn) as conn:
            conn.execute(
                """
                INSERT INTO model_aliases (model_name, alias, version) VALUES (%s, %s, %s)
                ON CONFLICT (model_name, alias) DO UPDATE SET version = EXCLUDED.version, updated_at = now()
                """,
                (model_name, alias, version),
            )
            conn.execute("SELECT pg_notify(%s, %s)", (PROMOTION_CHANNEL, promoted.key))
        return promoted

    def promote_if_better(self, model_name: str, version: int, metric: str = "auc") -> bool:
        """Promote ``version`` when it beats the current production version on ``metric``."""
        candidate = self.get(model_name, version)
        current = self.current(model_name)
        if current is not None and current.version == version:
            return False
        if not is_better(candidate.metrics, current.metrics if current else None, metric):
            return False
        self.promote(model_name, version)
        return True
