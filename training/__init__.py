"""Models and the training loop, in plain PyTorch (no Dagster imports)."""
