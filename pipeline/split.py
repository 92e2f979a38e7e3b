"""Deterministic train/validation split by row identity, not by position in a stream.

A row is identified by its data file and its position in that file, which never change
once written; so the split of a row is the same in every snapshot that contains it, for
any number of workers, ranks or row groups.
"""

from __future__ import annotations

import numpy as np

SPLITS = ("all", "train", "val")
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def validation_mask(file_salt: int, positions: np.ndarray, seed: int, fraction: float) -> np.ndarray:
    """True for rows that belong to the validation split (about ``fraction`` of them)."""
    if fraction <= 0:
        return np.zeros(len(positions), dtype=bool)
    mixed = _splitmix64(positions.astype(np.uint64) ^ np.uint64(file_salt) ^ np.uint64(seed * 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF))
    threshold = np.uint64(int(fraction * 2**64) if fraction < 1 else 2**64 - 1)
    return mixed < threshold


def split_mask(split: str, file_salt: int, positions: np.ndarray, seed: int, fraction: float) -> np.ndarray | None:
    """Rows of ``positions`` that belong to ``split``; None when every row does."""
    if split == "all" or fraction <= 0 and split == "train":
        return None
    in_val = validation_mask(file_salt, positions, seed, fraction)
    return in_val if split == "val" else ~in_val


def _splitmix64(values: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = (values + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return z ^ (z >> np.uint64(31))
