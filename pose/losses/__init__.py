"""Training losses of HigherHRNet: masked heatmap MSE per resolution + associative embedding.

Reference: github.com/HRNet/HigherHRNet-Human-Pose-Estimation, ``lib/core/loss.py``
(``MultiLossFactory`` with ``WITH_HEATMAPS_LOSS: [true, true]``, ``WITH_AE_LOSS:
[true, false]``) and ``lib/core/trainer.py`` (loss = sum of batch means).

Params sections read: ``loss`` (`pose.params.LossSection`, or a mapping of its keys).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from pose.codec import JOINTS_NAME, MASK_NAMES, OUTPUT_NAMES, OUTPUT_STRIDES, section_mapping
from pose.losses.associative import ae_loss
from pose.losses.heatmap import heatmap_loss

if TYPE_CHECKING:
    from pose.params import LossSection

__all__ = ["ae_loss", "heatmap_loss", "total_loss"]

_LOSS_KEYS = ("heatmap_weights", "foreground_weight", "push_weight", "pull_weight", "push_type", "push_margin")


def total_loss(outputs: Sequence[torch.Tensor], targets: Mapping[str, torch.Tensor],
               params_loss: LossSection | Mapping) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted training loss over all output strides (names and layout: `pose.codec`).

    ``loss = sum_s heatmap_weights[i] * mean_b heatmap_loss_s + push_weight * mean_b push
    + pull_weight * mean_b pull``, ``heatmap_loss_s`` with ``foreground_weight``; the tag
    (AE) loss uses the tags of the first (stride 4) output only.

    Args:
        outputs: model outputs, one per stride of `pose.codec.OUTPUT_STRIDES`:
            ``[(B, K + K*D, H/4, W/4), (B, K, H/2, W/2)]``.
        targets: a training batch (`pose.codec.Codec.encode`, batched) holding, per stride s,
            ``heatmap_<s>`` (B, K, H/s, W/s) float target heatmaps and ``mask_<s>`` (B, H/s, W/s)
            float / bool loss masks (0 = ignore), and ``joints`` (B, M, K, 2) int64 tag-loss
            indices at stride 4 (see :func:`pose.losses.associative.ae_loss`). Other keys
            (``image``) are ignored.
        params_loss: the params ``loss`` section (`pose.params.LossSection`, or a mapping of its keys):
            ``heatmap_weights`` (one per output, in
            output order), ``foreground_weight`` (see :func:`heatmap_loss`), ``push_weight``,
            ``pull_weight``, ``push_type`` and ``push_margin`` (see :func:`ae_loss`).

    Returns:
        ``(loss, components)``: ``loss`` a float32 scalar with gradient; ``components``
        maps each name of `pose.codec.LOSS_PARTS` (``heatmap_<s>`` weighted batch means,
        ``push``, ``pull`` weighted batch means) and ``"total"`` to detached float32 scalars.

    Raises:
        KeyError: if ``params_loss`` or ``targets`` lacks a key.
        ValueError: if the numbers of outputs and heatmap weights differ from the number of
            strides, or the first output carries no tag channels.
    """
    spec = section_mapping(params_loss)   # the section as written, or a mapping of its keys
    missing = [key for key in _LOSS_KEYS if key not in spec]
    if missing:
        raise KeyError(f"params 'loss' section lacks {missing}")
    missing = [key for key in (*OUTPUT_NAMES, *MASK_NAMES, JOINTS_NAME) if key not in targets]
    if missing:
        raise KeyError(f"training targets lack {missing} (pose.codec names)")
    weights = [float(wt) for wt in spec["heatmap_weights"]]
    n = len(OUTPUT_STRIDES)
    if len(outputs) != n or len(weights) != n:
        raise ValueError(f"need one output and heatmap weight per stride {OUTPUT_STRIDES}: outputs {len(outputs)}, "
                         f"weights {len(weights)}")
    k = targets[OUTPUT_NAMES[0]].shape[1]
    if outputs[0].shape[1] <= k:
        raise ValueError(f"first output has {outputs[0].shape[1]} channels, expected K={k} heatmaps plus tags")

    components: dict[str, torch.Tensor] = {}
    loss = outputs[0].new_zeros((), dtype=torch.float32)
    fg = float(spec["foreground_weight"])
    for name, mask_name, out, weight in zip(OUTPUT_NAMES, MASK_NAMES, outputs, weights):
        term = weight * heatmap_loss(out[:, :k], targets[name], targets[mask_name], foreground_weight=fg).mean()
        components[name] = term.detach()
        loss = loss + term
    push, pull = ae_loss(outputs[0][:, k:], targets[JOINTS_NAME], push_type=str(spec["push_type"]),
                         push_margin=float(spec["push_margin"]))
    push = float(spec["push_weight"]) * push.mean()
    pull = float(spec["pull_weight"]) * pull.mean()
    components["push"] = push.detach()
    components["pull"] = pull.detach()
    loss = loss + push + pull
    components["total"] = loss.detach()
    return loss, components
