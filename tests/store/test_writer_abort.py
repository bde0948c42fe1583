"""A shard's stream aborted while its merge had failed on the server: the failure is logged (shard,
host:port/db), not suppressed, and never raised over the batch's own error."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from psycopg.types.json import set_json_dumps

from shardctl.settings import TesseraSettings
from shardctl.store.errors import describe_dsn
from shardctl.store.writer.streaming import open_stream
from tests.store.conftest import T0


@pytest.mark.req("JTBD-03.writer")
def test_aborting_a_stream_whose_merge_failed_logs_why(
    settings: TesseraSettings, feature_set: str, caplog: pytest.LogCaptureFixture
) -> None:
    dsn = settings.shard_dsns()[0]
    # Logical shard 999 stages (the staging table has no check) and fails the merge on the table's CHECK.
    rows = [(999, f"abort{i}", b'{"visits": 1}', T0) for i in range(20)]
    conn = psycopg.connect(dsn)
    set_json_dumps(lambda encoded: encoded, conn)  # rows come JSON-encoded, as the writer's pools pass them
    try:
        with ThreadPoolExecutor(1) as pool:
            stream = open_stream(conn, 0, feature_set, rows, fresh_fast_path=False, executor=pool, sub_batch=20)
            stream.send(rows, feature_set)  # a full sub-batch: staged, then merged on the pool's thread
            with caplog.at_level(logging.WARNING, logger="shardctl.store.writer.streaming"):
                stream.abort()  # raises nothing: the batch's own error is the one on its way up
    finally:
        conn.close()
    warned = [r for r in caplog.records if "aborting its write failed" in r.getMessage()]
    assert len(warned) == 1, caplog.text
    assert warned[0].levelno == logging.WARNING
    assert f"shard 0 ({describe_dsn(dsn)})" in warned[0].getMessage()
    assert "check constraint" in warned[0].getMessage()
