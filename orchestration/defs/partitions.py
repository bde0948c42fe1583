"""The pipeline's calendar: one partition per day of raw events, from the configured start date."""

import dagster as dg

from shardctl.settings import load_settings

daily_partitions = dg.DailyPartitionsDefinition(start_date=load_settings().pipeline.start_date.isoformat())
