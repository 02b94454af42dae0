"""Masked heatmap regression loss (HigherHRNet, Cheng et al. CVPR 2020, Sec. 3.3).

Reference: github.com/HRNet/HigherHRNet-Human-Pose-Estimation, ``lib/core/loss.py``
(``HeatmapLoss``).
"""

from __future__ import annotations

import torch


def heatmap_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-image masked mean squared error of predicted heatmaps.

    ``loss[b] = mean_{k,y,x} (pred - target)^2 * mask[b, y, x]``: the mean runs over all
    ``K*H*W`` entries (masked pixels count in the denominator), as in the reference.

    Args:
        pred: (B, K, H, W) float predicted heatmaps (half / bfloat16 are computed in float32).
        target: (B, K, H, W) float ground-truth heatmaps (values in [0, 1]).
        mask: (B, H, W) float or bool; 0 where the loss is ignored (crowd / unlabeled
            people), 1 elsewhere.

    Returns:
        (B,) float32 tensor (float64 for float64 ``pred``), one loss per image.

    Raises:
        ValueError: if the shapes disagree.
    """
    if pred.dim() != 4 or pred.shape != target.shape:
        raise ValueError(f"pred and target must be equal (B, K, H, W) shapes, got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    b, _, h, w = pred.shape
    if mask.shape != (b, h, w):
        raise ValueError(f"mask must be (B, H, W) = {(b, h, w)}, got {tuple(mask.shape)}")
    dtype = torch.promote_types(pred.dtype, torch.float32)  # bf16/fp16 -> fp32, fp64 kept
    diff = pred.to(dtype) - target.to(dtype)
    return (diff.square() * mask.to(dtype)[:, None]).mean(dim=(1, 2, 3))
