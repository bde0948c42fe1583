"""The model registry in the catalog: every trained version with its metrics, features and artifacts, which
version serving uses (the ``production`` alias), the out-of-time comparisons made before promotions, and every
promotion and rollback (what it replaced, on which figures).

It lives in ``shardctl`` because both sides use it: orchestration registers and promotes, the ``shardctl models``
command lists, promotes and rolls back, serving reads the promoted version and hot-swaps when a change is
announced on ``PROMOTION_CHANNEL``. The rules (who beats whom, where a rollback goes) are in ``promotion.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from shardctl.errors import ModelLifecycleError
from shardctl.store.connection import connect
from shardctl.store.promotion import (
    PROMOTE,
    ROLLBACK,
    Evaluation,
    Promotion,
    PromotionConflictError,
    PromotionError,
    conflict_message,
    rollback_target,
)

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
CREATE TABLE IF NOT EXISTS model_evaluations (
    id               bigserial   PRIMARY KEY,
    model_name       text        NOT NULL,
    candidate        integer     NOT NULL,
    serving          integer,
    metric           text        NOT NULL,
    candidate_score  double precision NOT NULL,
    serving_score    double precision,
    margin           double precision NOT NULL,
    passed           boolean     NOT NULL,
    rows             integer     NOT NULL,
    evaluated_at     timestamptz NOT NULL DEFAULT now(),
    details          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    FOREIGN KEY (model_name, candidate) REFERENCES model_versions (model_name, version),
    FOREIGN KEY (model_name, serving) REFERENCES model_versions (model_name, version)
);
CREATE INDEX IF NOT EXISTS model_evaluations_by_candidate ON model_evaluations (model_name, candidate, id);
CREATE TABLE IF NOT EXISTS model_promotions (
    id               bigserial   PRIMARY KEY,
    model_name       text        NOT NULL,
    alias            text        NOT NULL,
    version          integer     NOT NULL,
    replaces         integer,
    action           text        NOT NULL CHECK (action IN ('promote', 'rollback')),
    forced           boolean     NOT NULL DEFAULT false,
    metric           text,
    candidate_score  double precision,
    serving_score    double precision,
    promoted_at      timestamptz NOT NULL DEFAULT now(),
    note             text        NOT NULL DEFAULT '',
    FOREIGN KEY (model_name, version) REFERENCES model_versions (model_name, version),
    FOREIGN KEY (model_name, replaces) REFERENCES model_versions (model_name, version)
);
CREATE INDEX IF NOT EXISTS model_promotions_by_alias ON model_promotions (model_name, alias, id);
"""

# ``promote(replaces=UNCHECKED)``: replace whatever serves (tests and benchmarks that set the stage); every
# lifecycle path (the pipeline, ``shardctl models``) names the version it replaces instead.
UNCHECKED: object = object()


class ModelNotFoundError(ModelLifecycleError, LookupError):
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


class ModelRegistry:
    """Registry operations on the catalog database; each call opens a short connection."""

    def __init__(self, catalog_dsn: str):
        self.dsn = catalog_dsn

    def ensure_schema(self) -> None:
        with connect(self.dsn) as conn:
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
        with connect(self.dsn) as conn, conn.cursor(row_factory=dict_row) as cur:
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
        with connect(self.dsn) as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute("SELECT * FROM model_versions WHERE model_name = %s AND version = %s", (model_name, version))
            row = cur.fetchone()
        if row is None:
            raise ModelNotFoundError(f"model {model_name!r} has no version {version}")
        return ModelVersion(**row)

    def versions(self, model_name: str) -> list[ModelVersion]:
        with connect(self.dsn) as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute("SELECT * FROM model_versions WHERE model_name = %s ORDER BY version", (model_name,))
            return [ModelVersion(**r) for r in cur.fetchall()]

    def current(self, model_name: str, alias: str = PRODUCTION) -> ModelVersion | None:
        """The version serving should use, or None if none was promoted."""
        with connect(self.dsn) as conn, conn.cursor(row_factory=dict_row) as cur:
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

    def promote(
        self,
        model_name: str,
        version: int,
        alias: str = PRODUCTION,
        *,
        replaces: int | object | None = UNCHECKED,
        evaluation: Evaluation | None = None,
        forced: bool = False,
        note: str = "",
        action: str = PROMOTE,
    ) -> Promotion:
        """Point ``alias`` at ``version`` as a compare-and-set: it must still point at ``replaces`` (None: at
        nothing), else ``PromotionConflictError`` and nothing changes. The change, its record (with the
        evaluation's figures) and the announcement (NOTIFY, delivered at commit) are one transaction."""
        self.get(model_name, version)  # an unknown version fails before anything is locked
        with connect(self.dsn) as conn, conn.cursor(row_factory=dict_row) as cur:
            # One promotion of an alias at a time: the read below and the write after it cannot interleave.
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"model_aliases:{model_name}:{alias}",))
            cur.execute("SELECT version FROM model_aliases WHERE model_name = %s AND alias = %s", (model_name, alias))
            row = cur.fetchone()
            serving = row["version"] if row else None
            if replaces is not UNCHECKED and serving != replaces:
                raise PromotionConflictError(conflict_message(model_name, serving, replaces))  # type: ignore[arg-type]
            if serving == version:
                raise PromotionError(f"version {version} of {model_name} already serves as {alias}")
            cur.execute(
                """
                INSERT INTO model_aliases (model_name, alias, version) VALUES (%s, %s, %s)
                ON CONFLICT (model_name, alias) DO UPDATE SET version = EXCLUDED.version, updated_at = now()
                """,
                (model_name, alias, version),
            )
            cur.execute(
                """
                INSERT INTO model_promotions (model_name, alias, version, replaces, action, forced, metric,
                                              candidate_score, serving_score, note)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                RETURNING *
                """,
                (
                    model_name,
                    alias,
                    version,
                    serving,
                    action,
                    forced,
                    evaluation.metric if evaluation else None,
                    evaluation.candidate_score if evaluation else None,
                    evaluation.serving_score if evaluation else None,
                    note,
                ),
            )
            record = Promotion(**cur.fetchone())  # type: ignore[arg-type]
            cur.execute("SELECT pg_notify(%s, %s)", (PROMOTION_CHANNEL, f"{model_name}:{version}"))
        return record

    def rollback(self, model_name: str, alias: str = PRODUCTION) -> Promotion:
        """Serve the previously promoted version again (``NothingToRollBackError`` if there is none), as a
        compare-and-set against the version serving when the history was read."""
        current = self.current(model_name, alias)
        serving = current.version if current else None
        target = rollback_target(self.promotions(model_name, alias), serving)
        return self.promote(model_name, target, alias, replaces=serving, action=ROLLBACK)

    def promotions(self, model_name: str, alias: str = PRODUCTION) -> list[Promotion]:
        """Every promotion and rollback of ``alias``, oldest first."""
        with connect(self.dsn) as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "SELECT * FROM model_promotions WHERE model_name = %s AND alias = %s ORDER BY id", (model_name, alias)
            )
            return [Promotion(**r) for r in cur.fetchall()]

    def record_evaluation(
        self,
        model_name: str,
        *,
        candidate: int,
        serving: int | None,
        metric: str,
        candidate_score: float,
        serving_score: float | None,
        margin: float,
        passed: bool,
        rows: int,
        details: dict[str, Any] | None = None,
    ) -> Evaluation:
        """Keep a comparison of ``candidate`` with the ``serving`` version (both scored on the same rows)."""
        with connect(self.dsn) as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                """
                INSERT INTO model_evaluations (model_name, candidate, serving, metric, candidate_score,
                                               serving_score, margin, passed, rows, details)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                RETURNING *
                """,
                (
                    model_name,
                    candidate,
                    serving,
                    metric,
                    candidate_score,
                    serving_score,
                    margin,
                    passed,
                    rows,
                    Jsonb(details or {}),
                ),
            )
            return Evaluation(**cur.fetchone())  # type: ignore[arg-type]

    def evaluations(self, model_name: str, candidate: int | None = None) -> list[Evaluation]:
        """Comparisons kept for ``model_name`` (of one candidate, if given), oldest first."""
        with connect(self.dsn) as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                """
                SELECT * FROM model_evaluations
                WHERE model_name = %s AND (%s::integer IS NULL OR candidate = %s) ORDER BY id
                """,
                (model_name, candidate, candidate),
            )
            return [Evaluation(**r) for r in cur.fetchall()]
