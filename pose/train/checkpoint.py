"""Atomic, resumable checkpoints.

A checkpoint is a plain dict of tensors and Python scalars so it loads with
``torch.load(weights_only=True)`` (no pickled code runs on load). It is written to
a temp file in the same folder, fsynced, then renamed over the target: a kill at
any moment leaves either the previous complete file or the new complete file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch


def save_checkpoint(state: dict, path: Path) -> None:
    """Write ``state`` to ``path`` atomically (temp file + fsync + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by `save_checkpoint` with ``weights_only=True``.

    Raises FileNotFoundError when absent and RuntimeError naming the file when it
    cannot be read.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise RuntimeError(f"{path}: cannot load checkpoint ({exc})") from exc


def load_trained_model(path: Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild the model recorded in a training checkpoint and load its weights (eval mode).

    The checkpoint stores the ``model`` params section (``model_params``), so a
    checkpoint is self-describing. Raises as `load_checkpoint`.
    """
    import json

    from pose.models import build_model

    ck = load_checkpoint(path, map_location=device)
    model = build_model(json.loads(ck["model_params"]))
    model.load_state_dict(ck["model"])
    return model.to(device).eval()
