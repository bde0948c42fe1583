"""The feature writer, in parts: ``feature_writer`` (the batch loop and its guarantees), ``batch`` (one attempt
on one epoch, step by step), ``streaming`` (one shard's open transaction and COPY), ``commit`` (all shards
merge, then commit, or all roll back).
Row validation is ``shardctl.store.validation``, shared with the readers and the export."""

from shardctl.store.errors import BadFeatureRowError, FeatureWriteError, PartialCommitError
from shardctl.store.validation import FeatureRow
from shardctl.store.writer.feature_writer import FeatureWriter, WriteReport

__all__ = [
    "BadFeatureRowError",
    "FeatureRow",
    "FeatureWriteError",
    "FeatureWriter",
    "PartialCommitError",
    "WriteReport",
]
