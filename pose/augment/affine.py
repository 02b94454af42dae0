"""Geometric mapping between image pixels, network input pixels and heatmap pixels.

Conventions used everywhere in the project (training, `check_scales`, decoding):

* image px  -> input px: a 2x3 affine ``M`` (float64), ``p_in = M @ [x, y, 1]``.
* input px  -> heatmap px: divide by the stride (4 for the 1/4 head, 2 for the 1/2
  head), i.e. ``p_hm = p_in / stride``; the inverse multiplies. No half-pixel shift,
  so the decoder's inverse is exact.

Two square crops map an image into the training canvas (params ``augment.crop``):

* ``letterbox`` (`letterbox_affine`): the longer image side is scaled to the square
  input size and the shorter side is centred with padding; the whole image is seen.
* ``short_side`` (`short_side_crop_affine`): the reference's crop (HigherHRNet
  lib/dataset/transforms/transforms.py, ``RandomAffineTransform`` with ``SCALE_TYPE: short``):
  a square of side ``scale * min(W, H)`` image px around the image centre (plus a shift) is
  rotated and resized to the input; the longer side is cut.
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


def short_side_crop_affine(width: int, height: int, input_size: int, *, scale: float = 1.0,
                           rotation: float = 0.0, shift: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Affine (2, 3) float64 mapping image px into a square ``input_size`` crop whose side is
    ``scale * min(width, height)`` image px, centred on ``(width / 2 + shift[0], height / 2 + shift[1])``
    and rotated by ``rotation`` degrees about the canvas centre.

    As ``_get_affine_matrix`` of HigherHRNet lib/dataset/transforms/transforms.py with
    ``SCALE_TYPE: short`` (its ``scale * 200`` px box): the crop centre maps to
    ``(input_size / 2, input_size / 2)``; a positive ``rotation`` turns the content
    counter-clockwise on screen (the reference negates its angle the same way). The defaults
    give the deterministic centre crop (``check_scales``). ``scale > 1`` takes in more of the
    image (persons get smaller), as the reference's ``aug_scale``.

    Raises ValueError when a size or ``scale`` is not positive.
    """
    if width <= 0 or height <= 0 or input_size <= 0 or not scale > 0:
        raise ValueError(f"sizes and scale must be positive, got width={width} height={height} "
                         f"input_size={input_size} scale={scale}")
    side = float(scale) * min(width, height)
    s = input_size / side
    cx, cy = width / 2.0 + float(shift[0]), height / 2.0 + float(shift[1])
    half = input_size / 2.0
    theta = np.deg2rad(-float(rotation))
    cos, sin = np.cos(theta), np.sin(theta)
    # p_in = R (s (p - c)) + half, R = [[cos, -sin], [sin, cos]] (y axis down)
    lin = s * np.array([[cos, -sin], [sin, cos]], dtype=np.float64)
    t = np.array([half, half]) - lin @ np.array([cx, cy])
    return np.concatenate([lin, t[:, None]], axis=1)


def hflip_affine(input_size: int) -> np.ndarray:
    """Affine (2, 3) float64 of a horizontal flip of a canvas ``input_size`` px wide in pixel-index
    coordinates, ``x -> input_size - 1 - x`` (a plain array flip, as the reference's
    ``RandomHorizontalFlip`` of the image)."""
    return np.array([[-1.0, 0.0, input_size - 1.0], [0.0, 1.0, 0.0]], dtype=np.float64)


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
