"""The pipeline's calendar: one partition per day of raw events, from the configured start date."""

import dagster as dg

from orchestration.settings import PipelineSettings

daily_partitions = dg.DailyPartitionsDefinition(start_date=PipelineSettings().start_date.isoformat())
