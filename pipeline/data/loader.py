"""The loader: a pinned Iceberg snapshot streamed into PyTorch batches, exactly and resumably.

Row groups are decoded in bulk (by threads of this process, or by worker processes, which
each decode whole shuffle blocks dealt round-robin and hand them over in shared memory, see
``pipeline.data.workers``); this process only cuts the blocks, which arrive in their canonical
order, into batches. So the sample order is a function of the
snapshot, seed, epoch, rank and world size alone, never of the number of workers.

Resume state (``state_dict``) is a few integers and ids: the epoch and how many batches this
rank has handed out in it. Restoring recomputes the epoch's blocks, re-decodes the block the
next row is in, and skips to it.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from pipeline.data.cache import FORMAT_VERSION as CACHE_FORMAT
from pipeline.data.cache import DecodedCache, default_cache_dir
from pipeline.data.order import Block, EpochPlan, block_permutation, locate, plan_epoch, unit_order
from pipeline.data.rows import RowProfile, RowSource, count_nulls, piece_tensors
from pipeline.data.specs import LoaderConfig
from pipeline.data.tensors import LabelVocabulary, NumericTarget, TensorLayout, model_inputs
from pipeline.data.workers import SlotLayout, decode_in_workers
from pipeline.errors import ConfigError, EmptyDataError, NullFeatureError, ResumeError

STATE_VERSION = 1
Batch = tuple[torch.Tensor, torch.Tensor]


class IcebergLoader(IterableDataset):
    """Batches of ``(features, labels)`` from one pinned snapshot.

    ``features`` is float32 ``[B, *feature_shape]`` (the image, or the numeric columns in
    ``data.features`` order); ``labels`` is int64 class indices (float32 for regression). When
    some features are categories, batches are ``(numeric, categories, labels)``: ``categories``
    is int64 ``[B, C]``, one column per categorical feature in ``layout.categorical`` order,
    each value an index of its column's vocabulary (0 missing, 1 unknown, 2.. the categories).

    Build it with ``pipeline.data.loading.open_loader``. Iterate it directly, or hand it to
    ``torchdata.stateful_dataloader.StatefulDataLoader(loader, batch_size=None)`` (it is an
    ``IterableDataset`` with ``state_dict``/``load_state_dict``); decode parallelism is set
    here with ``LoaderConfig.num_workers``, never on the outer DataLoader.

    Exactly once: per epoch every selected row is yielded once across all ranks, except the
    fewer than ``world_size`` rows dropped so that ranks get equal batches
    (``dropped_rows``). Call ``set_epoch`` before each epoch, as with ``DistributedSampler``.
    """

    def __init__(
        self,
        source: RowSource,
        layout: TensorLayout,
        vocabulary: LabelVocabulary,
        profile: RowProfile | Callable[[], RowProfile],
        config: LoaderConfig,
    ):
        """``profile`` may be a function that counts: the loader then counts only when something
        needs exact counts (``len``, ``profile``, ``state_dict``, resuming, several ranks or
        workers); a first epoch on one rank without them streams while counting."""
        super().__init__()
        self.source = source
        self.layout = layout
        self.vocabulary = vocabulary
        self._profile = profile if isinstance(profile, RowProfile) else None
        self._count = None if isinstance(profile, RowProfile) else profile
        self._streamed_rows: np.ndarray | None = None
        self._cache: DecodedCache | None = None
        self._cache_pid = 0
        self.config = config
        self.rank, self.world_size = _rank_and_world(config)
        self.block_rows = config.block_rows or _block_rows_for(layout, config)
        self.epoch = 0
        self._batches_done = 0
        self._pin = torch.cuda.is_available()

    @property
    def profile(self) -> RowProfile:
        """Exact rows per row group and what is known of the label (counted now if not yet)."""
        if self._profile is None:
            assert self._count is not None, "a loader in a worker process never counts"
            self._profile = self._count()
        return self._profile

    @property
    def counted(self) -> bool:
        """Whether the exact row counts are known yet (a lazily counting loader learns them in its first epoch)."""
        return self._profile is not None or self._streamed_rows is not None

    def _unit_rows(self) -> np.ndarray:
        return (
            self._streamed_rows if self._profile is None and self._streamed_rows is not None else self.profile.unit_rows
        )

    @property
    def plan_digest(self) -> str:
        """Identifies the rows this loader reads: snapshot, filter, SQL, split and per-row-group counts."""
        digest = hashlib.sha256()
        plan = self.source.plan
        for part in (
            plan.metadata.table_uuid,
            plan.pinned.snapshot_id,
            plan.row_filter,
            self.source.sql,
            self.layout,
            self.config.split,
            self.config.val_fraction,
            self.config.split_seed,
            self._unit_rows().tobytes(),
        ):
            digest.update(repr(part).encode())
        if plan.since_snapshot_id is not None:
            digest.update(f"since {plan.since_snapshot_id}".encode())
        return digest.hexdigest()[:16]

    def epoch_plan(self, epoch: int | None = None) -> EpochPlan:
        """This rank's blocks for ``epoch`` (the current one by default)."""
        return plan_epoch(
            self._unit_rows(),
            seed=self.config.seed,
            epoch=self.epoch if epoch is None else epoch,
            shuffle=self.config.shuffle,
            rank=self.rank,
            world_size=self.world_size,
            block_rows=self.block_rows,
        )

    @property
    def rows_per_epoch(self) -> int:
        """Rows this rank reads per epoch (the same on every rank)."""
        return int(self._unit_rows().sum()) // self.world_size

    @property
    def dropped_rows(self) -> int:
        """Rows left out per epoch so that every rank reads the same number (< world_size)."""
        return int(self._unit_rows().sum()) - self.rows_per_epoch * self.world_size

    def __len__(self) -> int:
        rows, size = self.rows_per_epoch, self.config.batch_size
        return rows // size if self.config.drop_last else -(-rows // size)

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` next; keeps a restored mid-epoch position if it is that epoch."""
        if epoch != self.epoch:
            self.epoch, self._batches_done = epoch, 0

    def state_dict(self) -> dict[str, Any]:
        """Where this rank is: small, versioned, and tied to the snapshot, seed and world size."""
        plan = self.source.plan
        return {
            "version": STATE_VERSION,
            "table": plan.pinned.table,
            "snapshot_id": str(plan.pinned.snapshot_id),
            "plan_digest": self.plan_digest,
            "seed": self.config.seed,
            "shuffle": self.config.shuffle,
            "batch_size": self.config.batch_size,
            "block_rows": self.block_rows,
            "rank": self.rank,
            "world_size": self.world_size,
            "epoch": self.epoch,
            "batches_done": self._batches_done,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position.

        Raises:
            ResumeError: the state is from another version, snapshot, data selection, seed,
                batch size, shuffle buffer, rank or world size.
        """
        if state.get("version") != STATE_VERSION:
            raise ResumeError(f"loader state version {state.get('version')} is not {STATE_VERSION}; cannot resume")
        mine = self.state_dict()
        labels = {
            "snapshot_id": "snapshot",
            "plan_digest": "data selection (filter, SQL, split or columns)",
            "seed": "seed",
            "shuffle": "shuffle setting",
            "batch_size": "batch size",
            "block_rows": "shuffle block size",
            "world_size": "number of ranks (data-parallel degree)",
            "rank": "rank",
        }
        for key, what in labels.items():
            if state.get(key) != mine[key]:
                raise ResumeError(
                    f"cannot resume after changing the {what}: saved {state.get(key)!r}, now {mine[key]!r}"
                )
        self.epoch, self._batches_done = int(state["epoch"]), int(state["batches_done"])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        if get_worker_info() is not None:
            raise ConfigError(
                "IcebergLoader decodes in its own workers: set LoaderConfig.num_workers, and num_workers=0 on the outer DataLoader"
            )
        if not self.counted and self._batches_done == 0 and self.world_size == 1 and self.config.num_workers == 0:
            chunks, remaining = self._streamed_chunks(), None
        else:
            epoch_plan = self.epoch_plan()
            skip_rows = self._batches_done * self.config.batch_size
            first_block, offset = locate(epoch_plan.blocks, skip_rows)
            remaining = epoch_plan.rows - skip_rows
            if self.config.drop_last:
                remaining -= remaining % self.config.batch_size
            chunks = self._chunks(epoch_plan.blocks[first_block:], offset)
        try:
            for features, labels in _cut(chunks, self.config.batch_size, remaining, self.config.drop_last):
                self._batches_done += 1
                batch = self._handed_out(features, labels)
                yield tuple(t.pin_memory() for t in batch) if self._pin else batch
        except NullFeatureError as exc:
            raise self._counted_nulls(exc) from exc
        self.epoch, self._batches_done = self.epoch + 1, 0

    def _handed_out(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(features, labels)``, or ``(numeric, categories, labels)`` when some features are categories."""
        return (*model_inputs(features, self.layout), labels)

    def _counted_nulls(self, exc: NullFeatureError) -> NullFeatureError:
        """The error with the number of null values in the whole selection, not one row group's."""
        pinned = self.source.plan.pinned
        total = count_nulls(self.source, exc.column, max(1, self.config.decode_threads))
        where = f"the rows selected from snapshot {pinned.snapshot_id} of {pinned.table!r}"
        fix = f'filter them out (data.filter: "{exc.column} is not null") or fill them in SQL (coalesce)'
        return NullFeatureError(f"feature column {exc.column!r} has {total} null values in {where}; {fix}", exc.column)

    def _chunks(self, blocks: tuple[Block, ...], offset: int) -> Iterator[Batch]:
        if not blocks:
            return iter(())
        if self.config.num_workers == 0:
            return self._local_chunks(blocks, offset)

        def decode(position: int) -> tuple[int, Callable[[np.ndarray, np.ndarray], None]]:
            block = blocks[position]
            parts = [self._piece(p.unit, p.start, p.stop) for p in block.pieces]
            return self.arranger(block, parts, offset if position == 0 else 0)

        target = np.float32 if isinstance(self.vocabulary, NumericTarget) else np.int64
        slot = SlotLayout(
            max(block.rows for block in blocks), self.layout.feature_shape, np.dtype(np.float32), np.dtype(target)
        )
        return decode_in_workers(min(self.config.num_workers, len(blocks)), len(blocks), slot, decode)

    def _local_chunks(self, blocks: tuple[Block, ...], offset: int) -> Iterator[Batch]:
        """Decode pieces a few ahead on threads (PyArrow decodes without the GIL), in order."""
        jobs = [(block, piece) for block in blocks for piece in block.pieces]
        ahead = self.config.decode_threads + 1
        with ThreadPoolExecutor(max_workers=self.config.decode_threads) as pool:
            pending: deque[Future[Batch]] = deque()
            next_job = 0
            parts: list[Batch] = []
            for block in blocks:
                for _ in block.pieces:
                    while next_job < len(jobs) and len(pending) < ahead:
                        _, piece = jobs[next_job]
                        pending.append(pool.submit(self._piece, piece.unit, piece.start, piece.stop))
                        next_job += 1
                    parts.append(pending.popleft().result())
                yield from self.arrange(block, parts, offset if block is blocks[0] else 0)
                parts = []

    def _streamed_chunks(self) -> Iterator[Batch]:
        """The epoch's blocks without counting first (one rank, rows known only once decoded).

        Row groups are decoded whole, in the epoch's order, and closed into blocks as their
        rows add up to ``block_rows``: exactly the blocks ``plan_epoch`` makes from exact
        counts on one rank, so the order is the same as a counted epoch's. The counts seen
        are kept, so later epochs (and ``len``) need no counting pass.
        """
        groups = self.source.plan.row_groups
        order = unit_order(len(groups), self.config.seed, self.epoch, self.config.shuffle).tolist()
        seen = np.zeros(len(groups), dtype=np.int64)
        ahead = self.config.decode_threads + 1
        with ThreadPoolExecutor(max_workers=self.config.decode_threads) as pool:
            pending: deque[Future[Batch]] = deque()
            parts: list[Batch] = []
            rows = blocks = 0
            for position, unit in enumerate(order):
                while len(pending) < ahead and position + len(pending) < len(order):
                    job = order[position + len(pending)]
                    pending.append(pool.submit(self._piece, job, 0, groups[job].num_rows))
                part = pending.popleft().result()
                seen[unit] = len(part[1])
                if not len(part[1]):
                    continue
                parts.append(part)
                rows += len(part[1])
                if rows >= self.block_rows:
                    yield from self.arrange(Block(blocks, (), 0), parts, 0)
                    parts, rows, blocks = [], 0, blocks + 1
            if parts:
                yield from self.arrange(Block(blocks, (), 0), parts, 0)
        if not seen.sum():
            pinned = self.source.plan.pinned
            raise EmptyDataError(
                f"snapshot {pinned.snapshot_id} of {pinned.table!r} has no rows after the SQL transform"
            )
        self._streamed_rows = seen

    def _piece(self, unit: int, start: int, stop: int) -> Batch:
        """Rows [start, stop) of row group ``unit``: from the decoded cache when it holds them, else decoded (and kept)."""
        cache = self._decoded_cache()
        if cache is None:
            return piece_tensors(self.source, self.layout, self.vocabulary, unit, start, stop)
        whole = cache.get(unit, self.layout.feature_shape)
        if whole is None:
            whole = piece_tensors(
                self.source, self.layout, self.vocabulary, unit, 0, self.source.plan.row_groups[unit].num_rows
            )
            cache.put(unit, *whole)
        return whole[0][start:stop], whole[1][start:stop]

    def _decoded_cache(self) -> DecodedCache | None:
        if self.config.cache_mb <= 0:
            return None
        if self._cache is None or self._cache_pid != os.getpid():
            root = Path(self.config.cache_dir) if self.config.cache_dir else default_cache_dir()
            self._cache, self._cache_pid = (
                DecodedCache(root, self.cache_key(), self.config.cache_mb).open(),
                os.getpid(),
            )
        return self._cache

    def cache_key(self) -> dict[str, Any]:
        """What decides the decoded rows: the decoded cache's key (no row counts: a lazy loader has none yet)."""
        plan = self.source.plan
        files = hashlib.sha256()
        for ref in plan.files:
            data = ref.task.file
            files.update(f"{ref.path}|{data.file_size_in_bytes}|{data.record_count}\n".encode())
            files.update(ref.deleted_positions.tobytes())
        files.update(repr([(g.file_index, g.row_group, g.first_row, g.num_rows) for g in plan.row_groups]).encode())
        return {
            "format": CACHE_FORMAT,
            "table_uuid": str(plan.metadata.table_uuid),
            "snapshot_id": str(plan.pinned.snapshot_id),
            "data": files.hexdigest(),
            "filter": repr(plan.row_filter),
            "sql": self.source.sql,
            "layout": repr(self.layout),
            "split": [self.source.split, self.source.val_fraction, self.source.split_seed, list(plan.split_key)],
            "targets": [type(self.vocabulary).__name__, repr(self.vocabulary.classes)],
        }

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_count"], state["_cache"] = None, None
        return state

    def arranger(
        self, block: Block, parts: list[Batch], offset: int
    ) -> tuple[int, Callable[[np.ndarray, np.ndarray], None]]:
        """The rows ``arrange`` yields, as their count and a function that writes them into given arrays.

        Decode workers write blocks straight into shared memory this way, without a copy in between.
        """
        features = np.concatenate([p[0].numpy() for p in parts]) if len(parts) > 1 else parts[0][0].numpy()
        labels = np.concatenate([p[1].numpy() for p in parts]) if len(parts) > 1 else parts[0][1].numpy()
        order = (
            block_permutation(len(labels), self.config.seed, self.epoch, self.rank, block.index)[offset:]
            if self.config.shuffle
            else None
        )

        def write(into_features: np.ndarray, into_labels: np.ndarray) -> None:
            if order is None:
                into_features[...], into_labels[...] = features[offset:], labels[offset:]
            else:  # mode 'raise' would gather into a temporary first
                np.take(features, order, axis=0, out=into_features, mode="wrap")
                np.take(labels, order, out=into_labels, mode="wrap")

        return len(labels) - offset, write

    def arrange(self, block: Block, parts: list[Batch], offset: int) -> Iterator[Batch]:
        """A block's rows in their epoch order (shuffled within the block), from ``offset`` on."""
        if not self.config.shuffle:
            for features, labels in parts:
                if offset >= len(labels):
                    offset -= len(labels)
                    continue
                yield features[offset:], labels[offset:]
                offset = 0
            return
        # NumPy's take gathers rows several times faster than torch's advanced indexing on CPU.
        features = np.concatenate([p[0].numpy() for p in parts]) if len(parts) > 1 else parts[0][0].numpy()
        labels = np.concatenate([p[1].numpy() for p in parts]) if len(parts) > 1 else parts[0][1].numpy()
        order = block_permutation(len(labels), self.config.seed, self.epoch, self.rank, block.index)[offset:]
        yield torch.from_numpy(np.take(features, order, axis=0)), torch.from_numpy(np.take(labels, order))

    def describe(self) -> dict[str, Any]:
        """The loader's settings and plan, for logging."""
        return {
            **asdict(self.config),
            "block_rows": self.block_rows,
            "rank": self.rank,
            "world_size": self.world_size,
            "rows_per_epoch": self.rows_per_epoch,
            "dropped_rows_per_epoch": self.dropped_rows,
            "row_groups": len(self.source.plan.row_groups),
        }


def _cut(chunks: Iterator[Batch], batch_size: int, rows: int | None, drop_last: bool = False) -> Iterator[Batch]:
    """Consecutive batches of ``batch_size`` rows (the last may be short) from a stream of chunks, ``rows`` in all.

    Full batches inside a chunk are views of it; only batches that straddle chunks are copied.
    ``rows=None``: every row the chunks hold (the last short batch dropped with ``drop_last``).
    """
    left: float = math.inf if rows is None else rows
    carry: list[Batch] = []
    carried = 0
    for features, labels in chunks:
        start, available = 0, len(labels)
        while start < available and left > 0:
            target = int(min(batch_size, left))
            take = min(target - carried, available - start)
            if carried == 0 and take == target:
                yield features[start : start + take], labels[start : start + take]
                left -= take
            else:
                carry.append((features[start : start + take], labels[start : start + take]))
                carried += take
                if carried == target:
                    yield torch.cat([c[0] for c in carry]), torch.cat([c[1] for c in carry])
                    left -= carried
                    carry, carried = [], 0
            start += take
        if left <= 0:
            return
    if carried and not drop_last:  # only when the total was not known: the chunks ran out mid-batch
        yield torch.cat([c[0] for c in carry]), torch.cat([c[1] for c in carry])


def _block_rows_for(layout: TensorLayout, config: LoaderConfig) -> int:
    """Rows of float32 features (and an int64 label) that fit the shuffle buffer's megabytes."""
    row_bytes = 4 * math.prod(layout.feature_shape) + 8
    return max(config.batch_size, config.buffer_mb * 2**20 // row_bytes)


def _rank_and_world(config: LoaderConfig) -> tuple[int, int]:
    if config.world_size is not None:
        return int(config.rank or 0), config.world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1
