"""icetrain's data library: catalogs, snapshots, pinned reads, tensors and lineage.

Nothing in this package imports Dagster; ``assets/`` wraps it for orchestration.
"""
