"""Training targets of HigherHRNet (Cheng et al., CVPR 2020, Sec. 3.3) and associative
embedding (Newell et al., NeurIPS 2017, Sec. 3): Gaussian keypoint heatmaps and the
joint-index lists the tag (grouping) loss reads.

Keypoints passed here are already in *heatmap* pixels (input px / stride, see
`pose.augment.affine`). A keypoint takes part when its visibility v > 0 and it lies
inside the heatmap (0 <= x <= W-1, 0 <= y <= H-1 after rounding).
"""

from __future__ import annotations

import numpy as np


def _inside(keypoints: np.ndarray, height: int, width: int) -> np.ndarray:
    x = np.rint(keypoints[..., 0])
    y = np.rint(keypoints[..., 1])
    return (keypoints[..., 2] > 0) & (x >= 0) & (y >= 0) & (x < width) & (y < height)


def render_heatmaps(keypoints: np.ndarray, height: int, width: int, sigma: float) -> np.ndarray:
    """Gaussian heatmaps, one channel per joint, max over persons.

    Args:
        keypoints: (P, K, 3) float array, x and y in heatmap px, v the COCO visibility.
        height, width: heatmap size in px.
        sigma: Gaussian standard deviation in heatmap px (params ``targets.sigma``).

    Returns:
        (K, height, width) float32 in [0, 1]; a joint's peak value 1 lies at the
        pixel nearest to its continuous location (``exp(-d^2 / 2 sigma^2)`` of the
        distance from the rounded centre, as in the reference implementation).

    Raises ValueError on a wrong shape or a non-positive sigma.
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.ndim != 3 or kp.shape[-1] != 3:
        raise ValueError(f"keypoints must be (P, K, 3), got {kp.shape}")
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    num_joints = kp.shape[1]
    out = np.zeros((num_joints, height, width), dtype=np.float32)
    ok = _inside(kp, height, width)
    if not ok.any():
        return out
    radius = int(np.ceil(3 * sigma))
    offs = np.arange(-radius, radius + 1)
    g1 = np.exp(-(offs.astype(np.float64) ** 2) / (2 * sigma ** 2))
    patch = (g1[:, None] * g1[None, :]).astype(np.float32)  # (2r+1, 2r+1)
    pi, ki = np.nonzero(ok)
    cx = np.rint(kp[pi, ki, 0]).astype(np.int64)
    cy = np.rint(kp[pi, ki, 1]).astype(np.int64)
    # Scatter all patches at once with np.maximum.at over flat indices.
    ys = cy[:, None, None] + offs[None, :, None]
    xs = cx[:, None, None] + offs[None, None, :]
    ys, xs = np.broadcast_arrays(ys, xs)
    valid = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
    chan = np.broadcast_to(ki[:, None, None], ys.shape)
    vals = np.broadcast_to(patch[None], ys.shape)
    flat = (chan * height + ys) * width + xs
    np.maximum.at(out.reshape(-1), flat[valid], vals[valid])
    return out


def joint_indices(keypoints: np.ndarray, height: int, width: int, max_people: int) -> np.ndarray:
    """Joint-index targets of the associative-embedding (tag) loss.

    Args:
        keypoints: (P, K, 3) float array in heatmap px of the tag map's resolution.
        height, width: tag map size in px.
        max_people: rows in the output (params ``targets.max_people``); extra persons
            are dropped, in the given order.

    Returns:
        (max_people, K, 2) int64: ``[..., 0]`` is the flat index ``k*H*W + y*W + x``
        into the (K, H, W) tag map, ``[..., 1]`` is 1 when the joint is usable
        (v > 0 and inside the map) and 0 otherwise.
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    num_joints = kp.shape[1] if kp.ndim == 3 else 0
    out = np.zeros((max_people, num_joints, 2), dtype=np.int64)
    if kp.ndim != 3 or kp.shape[0] == 0:
        return out
    kp = kp[:max_people]
    ok = _inside(kp, height, width)
    x = np.clip(np.rint(kp[..., 0]), 0, width - 1).astype(np.int64)
    y = np.clip(np.rint(kp[..., 1]), 0, height - 1).astype(np.int64)
    k = np.arange(num_joints)[None, :]
    out[: kp.shape[0], :, 0] = np.where(ok, k * height * width + y * width + x, 0)
    out[: kp.shape[0], :, 1] = ok.astype(np.int64)
    return out
