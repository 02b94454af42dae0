"""Training losses of HigherHRNet: masked heatmap MSE per resolution + associative embedding.

Reference: github.com/HRNet/HigherHRNet-Human-Pose-Estimation, ``lib/core/loss.py``
(``MultiLossFactory`` with ``WITH_HEATMAPS_LOSS: [true, true]``, ``WITH_AE_LOSS:
[true, false]``) and ``lib/core/trainer.py`` (loss = sum of batch means).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from pose.losses.associative import ae_loss
from pose.losses.heatmap import heatmap_loss

__all__ = ["ae_loss", "heatmap_loss", "total_loss"]

_LOSS_KEYS = ("heatmap_weights", "foreground_weight", "push_weight", "pull_weight", "push_type", "push_margin")


def total_loss(outputs: Sequence[torch.Tensor], heatmaps_targets: Sequence[torch.Tensor],
               masks: Sequence[torch.Tensor], joints: torch.Tensor | Sequence[torch.Tensor],
               params_loss: Mapping) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted training loss over all output resolutions.

    ``loss = sum_i heatmap_weights[i] * mean_b heatmap_loss_i + push_weight * mean_b push
    + pull_weight * mean_b pull``, ``heatmap_loss_i`` with ``foreground_weight``; the tag
    (AE) loss uses the tags of the first (1/4) output only.

    Args:
        outputs: model outputs ``[(B, K + K*D, H/4, W/4), (B, K, H/2, W/2), ...]``.
        heatmaps_targets: per resolution (B, K, h_i, w_i) float target heatmaps.
        masks: per resolution (B, h_i, w_i) float / bool loss masks (0 = ignore).
        joints: (B, M, K, 2) int64 tag-loss indices at the 1/4 resolution (see
            :func:`pose.losses.associative.ae_loss`); a list / tuple of per-resolution
            joint tensors is accepted and its first element used.
        params_loss: params.yaml ``loss`` section: ``heatmap_weights`` (one per output),
            ``foreground_weight`` (see :func:`heatmap_loss`), ``push_weight``, ``pull_weight``,
            ``push_type`` and ``push_margin`` (see :func:`ae_loss`).

    Returns:
        ``(loss, components)``: ``loss`` a float32 scalar with gradient; ``components``
        maps ``"heatmap_<i>"`` (weighted, batch mean), ``"push"``, ``"pull"`` (weighted,
        batch mean) and ``"total"`` to detached float32 scalars.

    Raises:
        KeyError: if ``params_loss`` lacks a key.
        ValueError: if the numbers of outputs, targets, masks and weights differ, or the
            first output carries no tag channels.
    """
    missing = [key for key in _LOSS_KEYS if key not in params_loss]
    if missing:
        raise KeyError(f"params 'loss' section lacks {missing}")
    weights = [float(wt) for wt in params_loss["heatmap_weights"]]
    n = len(outputs)
    if not (len(heatmaps_targets) == len(masks) == len(weights) == n) or n == 0:
        raise ValueError(f"need one target, mask and heatmap weight per output: outputs {n}, targets "
                         f"{len(heatmaps_targets)}, masks {len(masks)}, weights {len(weights)}")
    if isinstance(joints, (list, tuple)):
        joints = joints[0]
    k = heatmaps_targets[0].shape[1]
    if outputs[0].shape[1] <= k:
        raise ValueError(f"first output has {outputs[0].shape[1]} channels, expected K={k} heatmaps plus tags")

    components: dict[str, torch.Tensor] = {}
    loss = outputs[0].new_zeros((), dtype=torch.float32)
    fg = float(params_loss["foreground_weight"])
    for i, (out, target, mask, weight) in enumerate(zip(outputs, heatmaps_targets, masks, weights)):
        term = weight * heatmap_loss(out[:, :k], target, mask, foreground_weight=fg).mean()
        components[f"heatmap_{i}"] = term.detach()
        loss = loss + term
    push, pull = ae_loss(outputs[0][:, k:], joints, push_type=str(params_loss["push_type"]),
                         push_margin=float(params_loss["push_margin"]))
    push = float(params_loss["push_weight"]) * push.mean()
    pull = float(params_loss["pull_weight"]) * pull.mean()
    components["push"] = push.detach()
    components["pull"] = pull.detach()
    loss = loss + push + pull
    components["total"] = loss.detach()
    return loss, components
