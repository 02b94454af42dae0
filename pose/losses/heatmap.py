"""Masked heatmap regression loss (HigherHRNet, Cheng et al. CVPR 2020, Sec. 3.3).

Reference: github.com/HRNet/HigherHRNet-Human-Pose-Estimation, ``lib/core/loss.py``
(``HeatmapLoss``).
"""

from __future__ import annotations

import torch


def heatmap_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, *,
                 foreground_weight: float) -> torch.Tensor:
    """Per-image masked, optionally foreground-weighted, mean squared error of heatmaps.

    ``loss[b] = mean_{k,y,x} (pred - target)^2 * mask[b, y, x] * (1 + foreground_weight *
    target[b, k, y, x])``: the mean runs over all ``K*H*W`` entries (masked pixels count
    in the denominator), as in the reference. ``foreground_weight = 0`` is the reference
    loss exactly; a positive weight up-weights the pixels under the Gaussians (at a peak
    by ``1 + foreground_weight``). Joints cover well under 1% of a heatmap, so with the
    plain MSE an all-zero prediction is a deep local minimum that a from-scratch model
    leaves only after many thousand images; weighting the foreground is the usual cure
    (cf. the background-down-weighted heatmap loss of DEKR, Geng et al. CVPR 2021), and
    it is what lets the CPU default run learn (params ``loss.foreground_weight``).

    Args:
        pred: (B, K, H, W) float predicted heatmaps (half / bfloat16 are computed in float32).
        target: (B, K, H, W) float ground-truth heatmaps (values in [0, 1]).
        mask: (B, H, W) float or bool; 0 where the loss is ignored (crowd / unlabeled
            people), 1 elsewhere.
        foreground_weight: extra weight (>= 0) per unit of target value (params
            ``loss.foreground_weight``); 0 = reference MSE.

    Returns:
        (B,) float32 tensor (float64 for float64 ``pred``), one loss per image.

    Raises:
        ValueError: if the shapes disagree or ``foreground_weight`` is negative.
    """
    if pred.dim() != 4 or pred.shape != target.shape:
        raise ValueError(f"pred and target must be equal (B, K, H, W) shapes, got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    b, _, h, w = pred.shape
    if mask.shape != (b, h, w):
        raise ValueError(f"mask must be (B, H, W) = {(b, h, w)}, got {tuple(mask.shape)}")
    if foreground_weight < 0:
        raise ValueError(f"foreground_weight must be >= 0, got {foreground_weight}")
    dtype = torch.promote_types(pred.dtype, torch.float32)  # bf16/fp16 -> fp32, fp64 kept
    target = target.to(dtype)
    weight = mask.to(dtype)[:, None]
    if foreground_weight:
        weight = weight * (1.0 + float(foreground_weight) * target)
    return ((pred.to(dtype) - target).square() * weight).mean(dim=(1, 2, 3))
