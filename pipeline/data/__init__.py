"""The reader every other layer builds on: read specs, snapshot resolution (pinning), scan planning and filters, rows, the SQL transform, tensors, order, split, the loader and its workers and cache, the data gate and the quality profile.

Imports neither MLflow nor Dagster (``tests/test_layers.py`` holds it to that).
"""
