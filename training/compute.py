"""Setting up where training runs, in one place: seeds, device, precision and the process group.

``init_compute`` is nanoGPT's ``compute_init``: it seeds torch's global generator (weight
initialisation and dropout draw from it; data order and the split are seeded inside the
loader), picks the device, and joins the DDP process group when launched by torchrun.
Still nondeterministic: CUDA kernels without a deterministic implementation (we do not force
``torch.use_deterministic_algorithms``, which makes some models fail on GPU), and the order
of gradient all-reduces across ranks.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from pipeline.config.tree import ComputeSection
from pipeline.errors import ConfigError, IcetrainError

T = TypeVar("T")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Compute:
    """The device, precision and this process's place among the ranks."""

    device: torch.device
    precision: str
    rank: int = 0
    world_size: int = 1
    owns_process_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that records to MLflow and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self) -> AbstractContextManager[Any]:
        """Mixed precision for bf16/fp16; nothing for fp32."""
        if self.precision == "fp32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=_DTYPES[self.precision])

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling for fp16 (disabled, a pass-through, otherwise)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def share(self, make: Callable[[], T]) -> T:
        """Run ``make`` on rank 0 and give every rank its result (or raise its user error everywhere)."""
        if not self.distributed:
            return make()
        payload: list[Any] = [None]
        if self.is_main:
            try:
                payload = [("ok", make())]
            except IcetrainError as exc:
                payload = [("error", exc)]
        dist.broadcast_object_list(payload, src=0)
        status, value = payload[0]
        if status == "error":
            raise value
        return value

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """Every rank's 1-D tensor, concatenated in rank order (the tensor itself with one rank)."""
        if not self.distributed:
            return values
        parts: list[Any] = [None] * self.world_size
        dist.all_gather_object(parts, values.cpu())
        return torch.cat(parts)

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over ranks (the tensor itself when there is one rank)."""
        if self.distributed:
            values = values.clone()
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values


def init_compute(section: ComputeSection, seed: int) -> Compute:
    """Seed, pick the device, and join the process group torchrun set up (if any).

    Raises:
        ConfigError: CUDA was asked for but is missing, or the precision is not supported there.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(section.device, local_rank)
    check_precision(section.precision, device)
    owns = False
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        owns = True
    torch.manual_seed(seed)
    return Compute(device, section.precision, rank, world_size, owns)


def close_compute(compute: Compute) -> None:
    """Leave the process group if ``init_compute`` joined it."""
    if compute.owns_process_group and dist.is_initialized():
        dist.destroy_process_group()


def pick_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    """CUDA (this rank's GPU) when present or asked for, else CPU.

    Raises:
        ConfigError: CUDA was asked for but is not available, or has no such device.
    """
    available = torch.cuda.is_available()
    if requested == "auto":
        return torch.device(f"cuda:{local_rank % torch.cuda.device_count()}" if available else "cpu")
    if requested == "cpu":
        return torch.device("cpu")
    if not available:
        raise ConfigError(
            f"compute.device: {requested!r} was requested but no CUDA device is available; use cpu or auto"
        )
    index = int(requested.partition(":")[2] or local_rank % torch.cuda.device_count())
    if index >= torch.cuda.device_count():
        raise ConfigError(
            f"compute.device: {requested!r} does not exist; this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    return torch.device(f"cuda:{index}")


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse precisions the device cannot run.

    Raises:
        ConfigError: bf16 on a GPU without bf16 support.
    """
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"compute.precision: bf16 is not supported on {torch.cuda.get_device_name(device)}; use fp16 or fp32"
        )


__all__ = ["Compute", "close_compute", "init_compute", "pick_device"]
