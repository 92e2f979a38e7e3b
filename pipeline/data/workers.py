"""Decode worker processes that hand blocks over in reused shared memory.

Why not ``torch.utils.data.DataLoader`` workers: a tensor sent from a DataLoader worker is
copied into a fresh shared-memory file (created, sized, mapped and faulted in page by page)
for every block, which on a 2-core machine cost more than a third of the decode time, so
workers were slower than threads. Here each worker owns one shared-memory slot, made once per
epoch: it decodes its blocks (``i, i + N, i + 2N, ...``) and writes each block's rows, already
shuffled, straight into the slot; the trainer copies the block out (one memcpy), frees the
slot, and cuts batches. Blocks come out in their order, so the rows do not depend on N.
"""

from __future__ import annotations

import multiprocessing
import queue
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np
import torch

from pipeline.errors import IcetrainError

Batch = tuple[torch.Tensor, torch.Tensor]
Writer = tuple[int, Callable[[np.ndarray, np.ndarray], None]]
_POLL_S = 1.0
SLOTS = 2  # per worker: one being written while the trainer copies the other out


@dataclass(frozen=True)
class SlotLayout:
    """Where a block's features and targets sit in a slot (features first, then targets)."""

    rows: int
    feature_shape: tuple[int, ...]
    feature_dtype: np.dtype
    target_dtype: np.dtype

    @property
    def feature_bytes(self) -> int:
        return self.rows * int(np.prod(self.feature_shape)) * self.feature_dtype.itemsize

    @property
    def size(self) -> int:
        return max(1, self.feature_bytes + self.rows * self.target_dtype.itemsize)

    def views(self, buffer: memoryview, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """The first ``rows`` rows of features and targets in ``buffer``, as arrays over it."""
        features = np.ndarray((rows, *self.feature_shape), dtype=self.feature_dtype, buffer=buffer)
        targets = np.ndarray((rows,), dtype=self.target_dtype, buffer=buffer, offset=self.feature_bytes)
        return features, targets


class WorkerError(IcetrainError):
    """A decode worker process died without reporting an error (killed, out of memory)."""


def decode_in_workers(
    workers: int,
    blocks: int,
    layout: SlotLayout,
    decode: Callable[[int], Writer],
) -> Iterator[Batch]:
    """Blocks ``0 .. blocks-1`` decoded by ``workers`` processes, yielded in order as fresh tensors.

    Args:
        decode: decodes block ``position`` (at most ``layout.rows`` rows) and returns how
            many rows it has and a function that writes them, in order, into given feature
            and target arrays; called in the worker processes (forked, so it may close over
            the loader). Writing into the slot directly saves a copy of every block.

    An error raised by ``decode`` in a worker is raised here, as itself; a worker that dies
    raises ``WorkerError``. Workers and shared memory are cleaned up when the iterator ends,
    is closed or fails.
    """
    context = multiprocessing.get_context("fork")
    slots = [[SharedMemory(create=True, size=layout.size) for _ in range(SLOTS)] for _ in range(workers)]
    done = [context.Queue() for _ in range(workers)]
    free = [context.Semaphore(SLOTS) for _ in range(workers)]
    processes = [
        context.Process(
            target=_work,
            args=(i, workers, blocks, slots[i], layout, decode, done[i], free[i]),
            daemon=True,
            name=f"icetrain-decode-{i}",
        )
        for i in range(workers)
    ]
    try:
        for process in processes:
            process.start()
        for position in range(blocks):
            worker = position % workers
            rows = _receive(done[worker], processes[worker])
            features, targets = layout.views(slots[worker][position // workers % SLOTS].buf, rows)
            block = torch.from_numpy(features.copy()), torch.from_numpy(targets.copy())
            del features, targets
            free[worker].release()
            yield block
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()
        for channel in done:
            channel.close()
            channel.join_thread()
        for slot in (slot for mine in slots for slot in mine):
            slot.close()
            slot.unlink()


def _receive(channel: Any, process: Any) -> int:
    """The next block's row count from a worker, or its error raised here."""
    while True:
        try:
            kind, value = channel.get(timeout=_POLL_S)
        except queue.Empty:
            if not process.is_alive():
                raise WorkerError(
                    f"decode worker {process.name} stopped (exit code {process.exitcode}) before its next block"
                ) from None
            continue
        if kind == "error":
            raise value
        return int(value)


def _work(
    index: int,
    workers: int,
    blocks: int,
    slots: list[SharedMemory],
    layout: SlotLayout,
    decode: Callable[[int], Writer],
    done: Any,
    free: Any,
) -> None:
    """One worker: decode its blocks, each written into its next slot (inherited through fork) once the trainer has freed it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle; it stops the workers
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not a handler inherited from the trainer: stopping must stop
    # No torch.set_num_threads here: OpenMP is not fork-safe, and nothing a worker runs uses torch's thread pool.
    for number, position in enumerate(range(index, blocks, workers)):
        try:
            rows, write = decode(position)
            free.acquire()  # the trainer has copied out the block this slot held
            into_features, into_targets = layout.views(slots[number % SLOTS].buf, rows)
            write(into_features, into_targets)
            del into_features, into_targets
        except BaseException as exc:  # the trainer raises it; a worker has no one else to tell
            done.put(("error", _portable(exc)))
            return
        done.put(("rows", rows))


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling (icetrain's errors do), else an IcetrainError with its text."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return IcetrainError(f"{type(exc).__name__}: {exc}")
