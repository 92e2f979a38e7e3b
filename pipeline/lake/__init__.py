"""The lake's write and housekeeping side: the catalog, ingest and its contract, refs, maintenance, expiry, doctor, diff.

May import ``pipeline.data`` (types and tensors rules), ``pipeline.config`` and ``pipeline.errors``; never MLflow or Dagster.
"""
