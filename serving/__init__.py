"""Tessera's prediction service (Litestar on Granian)."""
