"""Writing and reading decision/outcome logs, reward definitions and joins, conversion to polars."""
