"""Test support shared by the tests and the benchmarks: the HA fault harness, migration traffic and the
prediction-service launcher. Not part of the installed product (pyproject packages only shardctl, serving
and orchestration), and nothing in the product imports it."""
