"""Deterministic train/validation split by row identity, not by position in a stream.

A row is identified by the table's Iceberg identifier field(s) when it declares them: the
split of a row then never changes, in any snapshot that holds it, even after its data file is
rewritten (a copy-on-write delete, an overwrite, compaction). Without identifier fields a row
is identified by its data file and position, which is stable across snapshots only while the
file is not rewritten. Either way the split is the same for any number of workers, ranks or
row groups, and is computed in bulk (no per-row Python).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SPLITS = ("all", "train", "val")
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_GOLDEN = 0x9E3779B97F4A7C15
_BYTE_BASE = np.uint64(0x100000001B3)


def validation_mask_of_keys(keys: np.ndarray, seed: int, fraction: float) -> np.ndarray:
    """True for rows (given as uint64 identity hashes) that belong to the validation split."""
    if fraction <= 0:
        return np.zeros(len(keys), dtype=bool)
    mixed = _splitmix64(keys ^ np.uint64(seed * _GOLDEN & 0xFFFFFFFFFFFFFFFF))
    threshold = np.uint64(int(fraction * 2**64) if fraction < 1 else 2**64 - 1)
    return mixed < threshold


def position_keys(file_salt: int, positions: np.ndarray) -> np.ndarray:
    """Identity of rows without identifier fields: their data file (a salt) and position."""
    return positions.astype(np.uint64) ^ np.uint64(file_salt)


def identifier_keys(batch: pa.Table | pa.RecordBatch, columns: tuple[str, ...]) -> np.ndarray:
    """Identity of rows by the values of the table's identifier field(s), as uint64 hashes."""
    keys = np.zeros(batch.num_rows, dtype=np.uint64)
    for name in columns:
        keys = _splitmix64(keys * _BYTE_BASE ^ _column_hash(batch.column(name)))
    return keys


def split_mask(split: str, keys: np.ndarray, seed: int, fraction: float) -> np.ndarray | None:
    """Rows (by identity key) that belong to ``split``; None when every row does."""
    if split == "all" or (fraction <= 0 and split == "train"):
        return None
    in_val = validation_mask_of_keys(keys, seed, fraction)
    return in_val if split == "val" else ~in_val


def _column_hash(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    data_type = array.type
    if pa.types.is_dictionary(data_type):
        array = array.dictionary_decode()
        data_type = array.type
    if pa.types.is_boolean(data_type):
        array = pc.cast(array, pa.int64())
    elif pa.types.is_decimal(data_type):
        array = pc.cast(array, pa.string())
    elif pa.types.is_temporal(data_type):
        array = (
            pc.cast(array, pa.int64())
            if not pa.types.is_date32(data_type)
            else pc.cast(pc.cast(array, pa.int32()), pa.int64())
        )
    data_type = array.type
    if pa.types.is_integer(data_type):
        return _splitmix64(array.to_numpy(zero_copy_only=False).astype(np.int64).view(np.uint64))
    if (
        pa.types.is_string(data_type)
        or pa.types.is_binary(data_type)
        or pa.types.is_large_string(data_type)
        or pa.types.is_large_binary(data_type)
        or pa.types.is_fixed_size_binary(data_type)
    ):
        return _bytes_hash(array)
    if pa.types.is_floating(data_type):
        return _splitmix64(array.to_numpy(zero_copy_only=False).astype(np.float64).view(np.uint64))
    return _bytes_hash(pc.cast(array, pa.string()))


def _bytes_hash(array: pa.Array) -> np.ndarray:
    """FNV-style polynomial hash of each value's bytes, for all values at once."""
    if pa.types.is_fixed_size_binary(array.type):
        width = array.type.byte_width
        data = np.frombuffer(array.buffers()[1], dtype=np.uint8)[
            array.offset * width : (array.offset + len(array)) * width
        ]
        offsets = np.arange(0, (len(array) + 1) * width, width, dtype=np.int64)
    else:
        wide = pa.types.is_large_string(array.type) or pa.types.is_large_binary(array.type)
        raw_offsets = np.frombuffer(array.buffers()[1], dtype=np.int64 if wide else np.int32)[
            array.offset : array.offset + len(array) + 1
        ]
        data = (
            np.frombuffer(array.buffers()[2], dtype=np.uint8)
            if array.buffers()[2] is not None
            else np.zeros(0, np.uint8)
        )
        data = data[raw_offsets[0] : raw_offsets[-1]]
        offsets = raw_offsets.astype(np.int64) - raw_offsets[0]
    lengths = np.diff(offsets)
    if not len(array):
        return np.zeros(0, dtype=np.uint64)
    row_of_byte = np.repeat(np.arange(len(array)), lengths)
    place = np.arange(len(data), dtype=np.int64) - offsets[:-1][row_of_byte]
    longest = max(int(lengths.max()), 1)
    with np.errstate(over="ignore"):
        powers = np.cumprod(
            np.concatenate([[np.uint64(1)], np.full(longest - 1, _BYTE_BASE, dtype=np.uint64)]), dtype=np.uint64
        )
        terms = (data.astype(np.uint64) + np.uint64(1)) * powers[place]
        running = np.concatenate([[np.uint64(0)], np.cumsum(terms, dtype=np.uint64)])
        sums = running[offsets[1:]] - running[offsets[:-1]]
        return _splitmix64(sums ^ lengths.astype(np.uint64))


def _splitmix64(values: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = (values + np.uint64(_GOLDEN)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return z ^ (z >> np.uint64(31))
