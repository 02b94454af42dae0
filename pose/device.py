"""The compute device of this process (core: no other pose module needed)."""

from __future__ import annotations

import os

import torch


def pick_device() -> torch.device:
    """CUDA device of this rank (``LOCAL_RANK`` under ``torchrun``, else 0) when CUDA is
    present, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")
