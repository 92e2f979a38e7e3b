"""MLflow's side of lineage: run tags and params, the ``iceberg://`` dataset source, the model registry and the gates' reference snapshot.

May import ``pipeline.data``, ``pipeline.lake`` and ``pipeline.config``; never Dagster.
"""
