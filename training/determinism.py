"""Seeds and devices, set in one place.

Data order and the train/validation split are seeded explicitly inside the loader
(``pipeline.order``, ``pipeline.split``); the global torch seed is set only because layer
initialisation and dropout draw from it. Still nondeterministic: CUDA kernels
that have no deterministic implementation (we do not force ``use_deterministic_algorithms``,
which would make some models fail on GPU).
"""

from __future__ import annotations

import torch

from pipeline.errors import ConfigError


def seed_everything(seed: int) -> None:
    """Seed torch's global RNG, which weight initialisation draws from."""
    torch.manual_seed(seed)


def pick_device(requested: str = "auto") -> torch.device:
    """CUDA when present (or asked for), else CPU.

    Raises:
        ConfigError: CUDA was asked for but is not available.
    """
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was requested but no CUDA device is available; use --device cpu or auto")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)
