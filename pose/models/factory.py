"""Build the pose network that params.yaml's ``model`` section describes: the one place that
lists the backbones (params ``model.backbone``; `pose.params` checks the value against
:data:`BACKBONES`) and applies initialisation and weights.

Adding a backbone: a module with a `pose.models.head.PoseNet` subclass (its ``features``
returns 1/4-resolution features, the head is shared) and a ``from_params(model_params)``
classmethod, and one entry in :data:`BACKBONES`. This module imports torch only when a
model is built.

Params sections read: ``model`` (`pose.params.ModelSection`, or the mapping of its keys a checkpoint
stores: `pose.codec.section_mapping`).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pose.codec import section_mapping

if TYPE_CHECKING:  # torch is imported when a model is built: the params check reads BACKBONES only
    from pose.models.backbone import BackboneReport
    from pose.models.head import PoseNet
    from pose.params import ModelSection

#: params ``model.backbone`` -> ``"module:Class"`` of its `pose.models.head.PoseNet` subclass
#: (imported when built, so an unused backbone costs nothing).
BACKBONES: dict[str, str] = {
    "hrnet": "pose.models.hrnet:HigherHRNet",  # HigherHRNet (Cheng et al., CVPR 2020): official key layout
}

#: Initialisation schemes of params ``model.init`` (:func:`init_weights`).
INIT_SCHEMES = ("reference", "kaiming")


def network_class(backbone: str) -> type[PoseNet]:
    """The `pose.models.head.PoseNet` subclass of a ``model.backbone`` name.

    Raises ValueError naming the key and the allowed names for an unknown backbone."""
    if backbone not in BACKBONES:
        raise ValueError(f"params model.backbone: unknown backbone {backbone!r} ({' | '.join(BACKBONES)})")
    module, name = BACKBONES[backbone].split(":")
    return getattr(importlib.import_module(module), name)


def build_model(model_params: ModelSection | Mapping) -> PoseNet:
    """Build the network of the params ``model`` section (`pose.params.ModelSection`, or the mapping of
    its keys a checkpoint stores: ``backbone`` and its architecture keys,
    see e.g. :meth:`pose.models.hrnet.HigherHRNet.from_params`), initialised as the reference.

    ``convention`` (params ``model.convention``), when present, is recorded as
    ``model.convention`` for decoding. If ``pretrained`` is a non-empty path the complete
    weights are loaded with :func:`pose.models.hrnet.load_pretrained`. ``pretrained_backbone``
    and ``init`` are not read here: :func:`build_training_model` applies them.

    Raises:
        KeyError: if a required key is missing (no fallback values).
        ValueError: on an unknown backbone or invalid sizes.
    """
    from pose.models.hrnet import load_pretrained

    spec = section_mapping(model_params)   # the section as written, or a checkpoint's stored dict
    if "backbone" not in spec:
        raise KeyError("params 'model' section lacks ['backbone']")
    model = network_class(str(spec["backbone"])).from_params(spec)
    if "convention" in spec:  # decoding reads it (pose.decode.inference.model_convention)
        model.convention = str(spec["convention"])
    pretrained = spec.get("pretrained") or ""
    if pretrained:
        load_pretrained(model, pretrained)
    return model


def build_training_model(model_params: ModelSection | Mapping, *,
                         verbose: bool) -> tuple[PoseNet, BackboneReport | None]:
    """The model a training run starts from, in the reference order (HigherHRNet
    ``tools/dist_train.py`` + ``pose_higher_hrnet.init_weights``): build, initialise
    (``model.init``), load the ImageNet backbone (``model.pretrained_backbone``, matching keys
    only, see :func:`pose.models.backbone.load_backbone`), then complete weights
    (``model.pretrained``, strict) when given.

    Args:
        model_params: the params ``model`` section (`pose.params.ModelSection`, or a mapping: keys of
            :func:`build_model` plus ``init``,
            ``pretrained``, ``pretrained_backbone``).
        verbose: print the backbone load report (loaded / skipped / missing) to stdout.

    Returns:
        ``(model, report)``: the network in train mode on the CPU and the
        :class:`pose.models.backbone.BackboneReport` (None without a backbone path).

    Raises:
        KeyError: a required key is missing. FileNotFoundError / ValueError: as
        :func:`pose.models.hrnet.load_pretrained` and :func:`pose.models.backbone.load_backbone`.
    """
    from pose.models.backbone import load_backbone
    from pose.models.hrnet import load_pretrained

    spec = section_mapping(model_params)
    for key in ("init", "pretrained", "pretrained_backbone"):
        if key not in spec:
            raise KeyError(f"params 'model' section lacks {key!r}")
    model = init_weights(build_model(dict(spec, pretrained="")), str(spec["init"]))
    report = None
    if spec["pretrained_backbone"]:
        report = load_backbone(model, spec["pretrained_backbone"])
        if verbose:
            print(report.summary(), flush=True)
    if spec["pretrained"]:
        load_pretrained(model, spec["pretrained"])
    return model.train(), report


def init_weights(model: PoseNet, scheme: str) -> PoseNet:
    """(Re-)initialise ``model`` in place for training from scratch; returns it.

    * ``reference``: what the constructor does, as in the reference code: every
      (de)convolution N(0, 0.001). It is meant for an ImageNet-pretrained backbone; from
      scratch, Adam's updates (~lr per weight) dwarf weights of size 0.001 behind
      BatchNorm, and the first few hundred steps are spent growing the weights.
    * ``kaiming``: He et al., "Delving Deep into Rectifiers", ICCV 2015 (normal,
      ``mode="fan_out"``, ReLU gain; the torchvision ResNet initialisation) for every
      convolution and deconvolution except the 1x1 prediction layers ``final_layers``,
      which keep N(0, 0.001) and zero bias so the first heatmaps and tags are ~0. On the
      generated set this halves the heatmap loss after 50 steps (CPU default run).

    BatchNorm layers are (weight 1, bias 0) in both. Raises ValueError for another scheme
    (params ``model.init``).
    """
    import torch.nn as nn

    if scheme not in INIT_SCHEMES:
        raise ValueError(f"params model.init: unknown scheme {scheme!r} ({' | '.join(INIT_SCHEMES)})")
    model.reference_init()
    if scheme == "kaiming":
        heads = {id(m) for m in model.final_layers}
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and id(m) not in heads:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model
