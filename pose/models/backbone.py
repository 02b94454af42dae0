"""ImageNet-pretrained HRNet backbones for HigherHRNet (params ``model.pretrained_backbone``).

The reference starts every HigherHRNet run from an ImageNet classification HRNet
(``MODEL.PRETRAINED: models/pytorch/imagenet/hrnet_w32-36af842e.pth`` in
experiments/coco/higher_hrnet/w32_512_adam_lr1e-3.yaml; ``init_weights`` of
lib/models/pose_higher_hrnet.py loads every key whose first module name is in
``PRETRAINED_LAYERS: ['*']`` and exists in the pose model). :func:`load_backbone` does the
same, with checks and a report.

Layouts read (parameter names are the same in both, the containers differ):

* **official** (github.com/HRNet/HRNet-Image-Classification, lib/models/cls_hrnet.py;
  ``hrnet_w32-36af842e.pth``, ``hrnet_w48-8ef0771d.pth``): a raw ``torch.save`` state dict with
  the backbone (``conv1, bn1, conv2, bn2, layer1, transition1-3, stage2-4``) and the
  classification head (``incre_modules, downsamp_modules, final_layer, classifier``).
* **timm** (``timm/models/hrnet.py``, model ``hrnet_w32``): the same module names (timm keeps
  the HRNet-Image-Classification structure; its stem ReLUs ``act1``/``act2`` and the fusion
  ReLU ``fuse_act`` have no parameters). Found as the hub's ``model.safetensors`` /
  ``pytorch_model.bin`` (raw state dict), as a timm ``train.py`` checkpoint
  ``{"state_dict", "state_dict_ema", "arch", "args", ...}`` (``state_dict`` is used, the
  argparse ``args`` are allowed by the weights-only unpickler), or from a ``features_only``
  model (no ``classifier``).

Classification and pose networks differ in two places, both *skipped* (reported, not
errors): the classification head, and the last stage-4 module, which in the classifier fuses
to all four branches (``multi_scale_output=True``) but in HigherHRNet only to the 1/4 branch
(``stage4.<last>.fuse_layers.{1,2,3}.*``). The pose head (``final_layers``, ``deconv_layers``)
keeps its initialisation. A model with fewer ``model.stem_blocks`` than the checkpoint loads the
first blocks and skips the rest. A backbone key present in both with another shape is an
error naming the key (usually ``model.width`` differs from the checkpoint's W).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

#: First module names of the HRNet backbone shared by classification and pose networks.
BACKBONE_MODULES = ("conv1", "bn1", "conv2", "bn2", "layer1", "transition1", "stage2", "transition2",
                    "stage3", "transition3", "stage4")
#: First module names of the ImageNet classification head (HRNet-Image-Classification, timm).
CLASSIFIER_MODULES = ("incre_modules", "downsamp_modules", "final_layer", "classifier")
#: First module names of the HigherHRNet pose head.
POSE_HEAD_MODULES = ("final_layers", "deconv_layers")
#: Prefixes stripped when the keys carry them (DataParallel / DDP, detection/pose frameworks).
_PREFIXES = ("module.", "backbone.", "module.backbone.", "model.")


def _first(key: str) -> str:
    return key.split(".", 1)[0]


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove a wrapper prefix (``module.``, ``backbone.`` ...) carried by the stem key."""
    if "conv1.weight" in state:
        return state
    for prefix in _PREFIXES:
        if prefix + "conv1.weight" in state:
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """Read a state dict from a checkpoint file, unwrapping the usual containers.

    Accepted: ``.safetensors`` (needs the ``safetensors`` package); anything else through
    ``torch.load(map_location="cpu", weights_only=True)`` (``argparse.Namespace`` allowed, as
    stored by timm's ``train.py``): a raw state dict, or a dict holding it under
    ``state_dict`` / ``model``. A ``module.`` / ``backbone.`` / ``model.`` key prefix is stripped.

    Returns:
        ``(state, container)``: str -> CPU tensor, and a short description of the container
        (``"safetensors"``, ``"state dict"``, ``"{'state_dict': ...}"`` ...).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file cannot be read or holds no state dict (message names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:  # pragma: no cover - safetensors is a pinned dependency
            raise ValueError(f"{path}: reading .safetensors needs the 'safetensors' package") from exc
        try:
            return _strip_prefix(dict(load_file(str(path), device="cpu"))), "safetensors"
        except Exception as exc:
            raise ValueError(f"{path}: cannot read safetensors file ({exc})") from exc
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: cannot load weights ({exc})") from exc
    container = "state dict"
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj, container = inner, f"{{'{key}': ...}}"
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: not a state dict (nor {{'state_dict': ...}} / {{'model': ...}})")
    return _strip_prefix(dict(obj)), container


@dataclass
class BackboneReport:
    """What :func:`load_backbone` did; key lists are sorted state-dict keys of the pose model
    (``loaded``, ``missing``, ``kept_initialised``) or of the checkpoint (``skipped_*``)."""

    path: str
    container: str
    layout: str  # "hrnet-classification" | "higherhrnet" | "hrnet-backbone"
    loaded: list[str] = field(default_factory=list)
    skipped_classifier: list[str] = field(default_factory=list)  # incre/downsamp/final_layer/classifier
    skipped_unused: list[str] = field(default_factory=list)  # backbone keys the pose model lacks
    skipped_other: list[str] = field(default_factory=list)  # keys of no known module (listed, not loaded)
    missing: list[str] = field(default_factory=list)  # backbone keys of the model not in the file
    kept_initialised: list[str] = field(default_factory=list)  # pose head keys

    def summary(self, max_keys: int = 8) -> str:
        """One multi-line, human-readable account (counts, then the first keys of each list)."""
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:max_keys]) + (", ..." if len(keys) > max_keys else "")

        lines = [f"pretrained backbone {self.path} ({self.layout}, {self.container}): loaded {len(self.loaded)} "
                 f"tensors; skipped {len(self.skipped_classifier)} classification-head, "
                 f"{len(self.skipped_unused)} unused, {len(self.skipped_other)} unknown; missing {len(self.missing)}; "
                 f"pose head kept initialised: {len(self.kept_initialised)}"]
        for name in ("skipped_unused", "skipped_other", "missing"):
            keys = getattr(self, name)
            if keys:
                lines.append(f"  {name.replace('_', ' ')}: {show(keys)}")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        """Counts and key lists, JSON-serialisable (for metrics / MLflow)."""
        return {"path": self.path, "container": self.container, "layout": self.layout,
                **{name: list(getattr(self, name)) for name in
                   ("loaded", "skipped_classifier", "skipped_unused", "skipped_other", "missing", "kept_initialised")}}


def load_backbone(model: nn.Module, path: str | Path) -> BackboneReport:
    """Copy the matching backbone tensors of an HRNet checkpoint into ``model`` (in place).

    A checkpoint key is loaded when its first module name is a backbone module
    (:data:`BACKBONE_MODULES`) and ``model`` has the same key with the same shape
    (parameters and BatchNorm buffers, ``num_batches_tracked`` included). Classification-head
    keys, backbone keys the pose model does not have (the classifier's multi-scale last stage-4
    fusion, extra ``layer1`` blocks) and keys of no known module are skipped and reported; the
    pose head keeps its initialisation. Works on the official and timm layouts (module
    docstring) and on a HigherHRNet checkpoint (its backbone part).

    Args:
        model: a :class:`pose.models.hrnet.HigherHRNet` (any width / block counts).
        path: checkpoint file (``.pth``, ``.pth.tar``, ``.bin``, ``.safetensors``).

    Returns:
        The :class:`BackboneReport`.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message names it and the params key).
        ValueError: unreadable file; a backbone key whose shape differs between checkpoint and
            model (the message names the key(s) and both shapes); no backbone key matched.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"params model.pretrained_backbone: file not found: {path}")
    state, container = read_state_dict(path)
    own = model.state_dict()
    firsts = {_first(k) for k in state}
    if firsts & set(CLASSIFIER_MODULES):
        layout = "hrnet-classification"
    elif firsts & set(POSE_HEAD_MODULES):
        layout = "higherhrnet"
    else:
        layout = "hrnet-backbone"
    report = BackboneReport(path=str(path), container=container, layout=layout)
    mismatched = []
    to_load = {}
    for key in sorted(state):
        first = _first(key)
        if first in CLASSIFIER_MODULES:
            report.skipped_classifier.append(key)
        elif first in POSE_HEAD_MODULES:
            report.skipped_unused.append(key)  # a pose checkpoint's head: never loaded as "backbone"
        elif first not in BACKBONE_MODULES:
            report.skipped_other.append(key)
        elif key not in own:
            report.skipped_unused.append(key)
        elif tuple(state[key].shape) != tuple(own[key].shape):
            mismatched.append(f"{key}: checkpoint {tuple(state[key].shape)} vs model {tuple(own[key].shape)}")
        else:
            to_load[key] = state[key]
    if mismatched:
        order = {k: i for i, k in enumerate(own)}  # the model's order: the first entry is the earliest layer
        mismatched.sort(key=lambda text: order[text.split(":", 1)[0]])
        shown = "; ".join(mismatched[:5]) + ("; ..." if len(mismatched) > 5 else "")
        raise ValueError(f"params model.pretrained_backbone {path}: {len(mismatched)} backbone tensor(s) differ in "
                         f"shape from the model ({shown}); model.width must equal the checkpoint's HRNet width")
    if not to_load:
        raise ValueError(f"params model.pretrained_backbone {path}: no backbone key matches the model "
                         f"(first keys of the file: {', '.join(sorted(state)[:5])})")
    with torch.no_grad():
        for key, value in to_load.items():
            own[key].copy_(value.to(own[key].dtype))
    report.loaded = sorted(to_load)
    report.missing = sorted(k for k in own if _first(k) in BACKBONE_MODULES and k not in to_load)
    report.kept_initialised = sorted(k for k in own if _first(k) in POSE_HEAD_MODULES)
    return report
