"""Validation of what callers hand the store: feature-set names (writer, readers, export) and feature rows
(writer). A neutral module so the readers need not import the writer to check a name.

Rows are checked the way the writer's speed needs: C-level type-set checks and msgspec encoding on the
common path, a precise explanation only for a row that trips them.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime

import msgspec

from shardctl.store.errors import BadFeatureRowError

__all__ = ["CopyRow", "FeatureRow", "FeatureValue", "RowValidator", "validate_feature_set", "validate_rows"]

FeatureValue = float | int | str | bool | None
CopyRow = tuple[str, bytes, datetime]  # entity id, JSON-encoded features, event time: what COPY sends
_ALLOWED_VALUE_TYPES = frozenset({float, int, str, bool, type(None)})
_MAX_FEATURE_SET = 63
_STR_ONLY = frozenset({str})
_ENCODE = msgspec.json.encode


@dataclass(frozen=True, slots=True)
class FeatureRow:
    """One entity's feature values at ``event_ts`` (timezone-aware) for one feature set."""

    entity_id: str
    event_ts: datetime
    features: Mapping[str, FeatureValue]


def validate_feature_set(feature_set: object) -> str:
    """A usable feature-set name (it is stored in a column and shown in errors), else ``ValueError``."""
    if not isinstance(feature_set, str) or not feature_set or len(feature_set) > _MAX_FEATURE_SET:
        raise ValueError(f"feature_set must be a non-empty string of at most {_MAX_FEATURE_SET} characters")
    if not feature_set.isprintable():
        raise ValueError(f"feature_set {feature_set!r} has non-printable characters")
    return feature_set


def validate_rows(rows: Iterable[FeatureRow]) -> tuple[list[CopyRow], list[int]]:
    """Check every row; returns the rows as COPY tuples (features already JSON-encoded) and their hashes.

    Raises ``BadFeatureRowError`` for the first bad row (its position and entity id in the message).
    """
    return RowValidator().take(iter(rows), None)


class RowValidator:
    """Validates a batch chunk by chunk, remembering positions and ids across chunks (duplicates are bad).

    The common case runs on C-level checks (type sets, msgspec encoding); a row that trips one of them goes
    through ``_explain_bad_features``, which finds the exact problem or clears the row.
    """

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}
        self.index = 0

    def take(self, rows: Iterator[FeatureRow], limit: int | None) -> tuple[list[CopyRow], list[int]]:
        """Validate up to ``limit`` more rows (all with None); returns their COPY tuples and hashes."""
        out: list[CopyRow] = []
        hashes: list[int] = []
        seen = self.seen
        allowed, str_only, encode, md5, from_bytes = (
            _ALLOWED_VALUE_TYPES,
            _STR_ONLY,
            _ENCODE,
            hashlib.md5,
            int.from_bytes,
        )
        for index, row in enumerate(itertools.islice(rows, limit), start=self.index):
            if type(row) is not FeatureRow:
                got = type(row).__name__
                raise BadFeatureRowError(index, getattr(row, "entity_id", None), f"expected FeatureRow, got {got}")
            eid = row.entity_id
            if type(eid) is not str:
                raise BadFeatureRowError(index, eid, f"entity_id must be a string, got {type(eid).__name__}")
            if not eid or eid.isspace() or "\x00" in eid:
                raise BadFeatureRowError(index, eid, "entity_id must be a non-empty string without NUL characters")
            ts = row.event_ts
            if type(ts) is not datetime or ts.tzinfo is None or ts.utcoffset() is None:
                raise BadFeatureRowError(index, eid, f"event_ts must be a timezone-aware datetime, got {ts!r}")
            features = row.features
            if type(features) is not dict:
                if not isinstance(features, Mapping):
                    raise BadFeatureRowError(index, eid, f"features must be a mapping, got {type(features).__name__}")
                features = dict(features)
            values = list(features.values())
            if (
                not allowed.issuperset(map(type, values))
                or not str_only.issuperset(map(type, features))
                or "" in features
            ):
                _explain_bad_features(index, eid, features)
            try:
                encoded = encode(features)
                key = eid.encode()
            except UnicodeEncodeError as exc:
                raise BadFeatureRowError(index, eid, f"not valid Unicode: {exc}") from None
            # msgspec writes NaN/inf as null: more nulls than None values means a non-finite float (or the text
            # "null" inside a string: the slow check tells them apart). NUL in a string cannot be stored in jsonb.
            if encoded.count(b"null") != values.count(None) or b"\\u0000" in encoded:
                _explain_bad_features(index, eid, features)
            if eid in seen:
                raise BadFeatureRowError(index, eid, f"entity_id repeats row #{seen[eid]} of the same batch")
            seen[eid] = index
            out.append((eid, encoded, ts))
            hashes.append(from_bytes(md5(key).digest()[:8], "big"))  # shardctl.store.hashing.entity_hash, inlined
        self.index += len(out)
        return out, hashes


def _explain_bad_features(index: int, eid: str, features: Mapping) -> None:
    """Raise the precise error for a row the fast checks flagged; return if it is fine after all."""
    for key, value in features.items():
        if type(key) is not str or not key:
            raise BadFeatureRowError(index, eid, f"feature names must be non-empty strings, got {key!r}")
        kind = type(value)
        if kind not in _ALLOWED_VALUE_TYPES:
            raise BadFeatureRowError(
                index, eid, f"feature {key!r} has type {kind.__name__}; allowed: float, int, str, bool, None"
            )
        if (kind is float and not math.isfinite(value)) or (kind is str and "\x00" in value):
            raise BadFeatureRowError(index, eid, f"feature {key!r} has an unstorable value {value!r}")
