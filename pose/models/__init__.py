"""Models: pose networks (a backbone + the shared HigherHRNet head, `pose.models.head`) built by
`pose.models.factory` from params ``model`` (``model.backbone`` names one of
`pose.models.factory.BACKBONES`); HigherHRNet with the official key layout; ImageNet backbones.
The output layout is `pose.codec`'s.

Submodules are imported lazily: ``from pose.models import build_model`` works, and importing
``pose.models.factory`` for its backbone names (the params check does) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BackboneReport": "pose.models.backbone",
    "load_backbone": "pose.models.backbone",
    "read_state_dict": "pose.models.backbone",
    "BACKBONES": "pose.models.factory",
    "INIT_SCHEMES": "pose.models.factory",
    "build_model": "pose.models.factory",
    "build_training_model": "pose.models.factory",
    "init_weights": "pose.models.factory",
    "PoseNet": "pose.models.head",
    "ARCHITECTURE_KEYS": "pose.models.hrnet",
    "HigherHRNet": "pose.models.hrnet",
    "count_flops": "pose.models.hrnet",
    "count_macs": "pose.models.hrnet",
    "count_params": "pose.models.hrnet",
    "load_pretrained": "pose.models.hrnet",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pose.models' has no attribute {name!r}")
