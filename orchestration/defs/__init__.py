"""The code location's definitions, one module per concern; ``orchestration/definitions.py`` merges them."""
