"""Tessera's Dagster code location."""
