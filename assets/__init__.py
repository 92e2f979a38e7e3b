"""Dagster definitions for icetrain: thin wrappers over ``pipeline`` and ``training``."""
