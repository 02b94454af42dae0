"""Geometric mapping between image pixels, network input pixels and heatmap pixels.

Conventions used everywhere in the project (training, `check_scales`, decoding):

* image px  -> input px: a 2x3 affine ``M`` (float64), ``p_in = M @ [x, y, 1]``.
* input px  -> heatmap px: divide by the stride (4 for the 1/4 head, 2 for the 1/2
  head), i.e. ``p_hm = p_in / stride``; the inverse multiplies. No half-pixel shift,
  so the decoder's inverse is exact.

The evaluation transform is a letterbox: the longer image side is scaled to the
square input size and the shorter side is centred with padding (HigherHRNet
resizes the short side; a letterbox keeps every batch square, which the curriculum
needs: one input size per batch).
"""

from __future__ import annotations

import numpy as np


def letterbox_affine(width: int, height: int, input_size: int) -> np.ndarray:
    """Affine (2, 3) float64 mapping image px of a ``width x height`` image into a
    square ``input_size`` canvas, longer side filling it, content centred.

    Raises ValueError when a size is not positive.
    """
    if width <= 0 or height <= 0 or input_size <= 0:
        raise ValueError(f"sizes must be positive, got width={width} height={height} input_size={input_size}")
    s = input_size / max(width, height)
    tx = (input_size - width * s) / 2.0
    ty = (input_size - height * s) / 2.0
    return np.array([[s, 0.0, tx], [0.0, s, ty]], dtype=np.float64)


def invert_affine(m: np.ndarray) -> np.ndarray:
    """Inverse of a (2, 3) affine as a (2, 3) float64 array. Raises numpy LinAlgError if singular."""
    full = np.vstack([np.asarray(m, dtype=np.float64), [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def compose_affine(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """Affine applying ``inner`` first, then ``outer``; both and the result (2, 3) float64."""
    a = np.vstack([np.asarray(outer, np.float64), [0, 0, 1]])
    b = np.vstack([np.asarray(inner, np.float64), [0, 0, 1]])
    return (a @ b)[:2]


def apply_affine(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map points (..., 2) with the (2, 3) affine ``m``; returns float64 of the same shape.

    Only the x, y columns are read, so pass ``keypoints[..., :2]``.
    """
    pts = np.asarray(points, dtype=np.float64)
    m = np.asarray(m, dtype=np.float64)
    return pts @ m[:, :2].T + m[:, 2]
