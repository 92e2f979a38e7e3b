"""The order of one epoch: which rows each rank reads, grouped into shuffle blocks.

Pure functions of (row counts, seed, epoch, rank, world size): nothing here depends on the
number of DataLoader workers, which only decide who decodes a block, never the order.

1. Row groups are permuted per epoch from ``(seed, epoch)`` (identity when not shuffling).
2. The epoch's rows, in that order, are cut into ``world_size`` equal contiguous ranges;
   the remainder (fewer than ``world_size`` rows) is dropped, so every rank gets the same
   number of rows and batches (DDP would hang otherwise).
3. A rank's range is grouped into blocks of at least ``block_rows`` rows; a block's rows are
   permuted from ``(seed, epoch, rank, block)``: the bounded shuffle buffer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Piece:
    """Rows [start, stop) of row group ``unit`` (counted after deletes, filter, split and SQL)."""

    unit: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Block:
    """Consecutive pieces whose rows are shuffled together."""

    index: int
    pieces: tuple[Piece, ...]
    first_row: int

    @property
    def rows(self) -> int:
        return sum(piece.rows for piece in self.pieces)


@dataclass(frozen=True)
class EpochPlan:
    """One rank's blocks for one epoch, and how many rows the equal split across ranks dropped."""

    blocks: tuple[Block, ...]
    rows: int
    dropped: int


def _generator(*keys: int) -> np.random.Generator:
    return np.random.Generator(
        np.random.PCG64(np.random.SeedSequence([k & 0xFFFFFFFF for k in keys] + [k >> 32 for k in keys]))
    )


def unit_order(num_units: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The order row groups are read in this epoch."""
    if not shuffle:
        return np.arange(num_units)
    return _generator(seed, epoch, 0xB10C).permutation(num_units)


def block_permutation(rows: int, seed: int, epoch: int, rank: int, block: int) -> np.ndarray:
    """The shuffle of one block's rows."""
    return _generator(seed, epoch, rank, block, 0x5EED).permutation(rows)


def plan_epoch(
    unit_rows: list[int] | np.ndarray,
    *,
    seed: int,
    epoch: int,
    shuffle: bool,
    rank: int,
    world_size: int,
    block_rows: int,
) -> EpochPlan:
    """The blocks ``rank`` reads in ``epoch``, given each row group's exact row count."""
    counts = np.asarray(unit_rows, dtype=np.int64)
    order = unit_order(len(counts), seed, epoch, shuffle)
    ordered = counts[order]
    total = int(ordered.sum())
    per_rank = total // world_size
    begin, end = rank * per_rank, (rank + 1) * per_rank
    starts = np.concatenate([[0], np.cumsum(ordered)[:-1]]) if len(ordered) else np.empty(0, np.int64)
    pieces = []
    for unit, unit_start, rows in zip(order.tolist(), starts.tolist(), ordered.tolist()):
        low, high = max(begin, unit_start), min(end, unit_start + rows)
        if high > low:
            pieces.append(Piece(unit, low - unit_start, high - unit_start))
    return EpochPlan(blocks=_group(pieces, block_rows), rows=per_rank, dropped=total - per_rank * world_size)


def _group(pieces: list[Piece], block_rows: int) -> tuple[Block, ...]:
    blocks, current, current_rows, first_row = [], [], 0, 0
    for piece in pieces:
        current.append(piece)
        current_rows += piece.rows
        if current_rows >= block_rows:
            blocks.append(Block(len(blocks), tuple(current), first_row))
            first_row += current_rows
            current, current_rows = [], 0
    if current:
        blocks.append(Block(len(blocks), tuple(current), first_row))
    return tuple(blocks)


def locate(blocks: tuple[Block, ...], row: int) -> tuple[int, int]:
    """The block holding the rank's ``row``-th row of the epoch and the offset in it; (len, 0) past the end."""
    for block in blocks:
        if row < block.first_row + block.rows:
            return block.index, row - block.first_row
    return len(blocks), 0
