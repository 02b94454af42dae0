"""Test-time input geometry and normalisation, and the mapping of decoded points back to
image px: NumPy + OpenCV only (no torch), shared by the torch path
(``pose.decode.inference``) and the onnxruntime path (``pose.decode.onnx_backend``).

Reference: HigherHRNet's ``lib/utils/transforms.py`` (``get_multi_scale_size``,
``resize_align_multi_scale``, ``get_final_preds``); the coordinate convention and the
two resize modes are described in ``pose.decode.inference``.

Input resizing (params ``evaluate.resize``, :data:`RESIZE_MODES`), one image per batch:

* ``short_side`` (the reference protocol): the shorter image side becomes ``input_size``
  rounded up to a multiple of 64, the longer side keeps the aspect ratio and is rounded up
  to a multiple of 64 (:func:`short_side_geometry`).
* ``letterbox``: the longer side fills a square ``input_size`` canvas, content centred
  (``pose.augment.affine.letterbox_affine``; what training uses).
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

from pose.augment.affine import apply_affine, invert_affine, letterbox_affine
from pose.codec import INPUT_MULTIPLE, Convention, convention_rules
from pose.targets.heatmaps import CONVENTIONS

#: ImageNet channel statistics in RGB order, for images scaled to [0, 1]. Training and
#: inference both normalise with these (:func:`to_input_tensor`).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Letterbox inputs are multiples of this (``pose.codec.INPUT_MULTIPLE``: HRNet's lowest
#: branch is at 1/32); the sizes of the multi-scale test other than 1.0 are rounded to it.
SIZE_DIVISOR = INPUT_MULTIPLE

#: ``short_side`` input sides are rounded up to a multiple of this (the reference's 64).
SHORT_SIDE_MULTIPLE = 64

#: Values of params.yaml ``evaluate.resize``.
RESIZE_MODES: tuple[str, ...] = ("short_side", "letterbox")


class InputGeometry(NamedTuple):
    """One network input: ``width`` x ``height`` input px and the (2, 3) float64 affine
    image px -> input px."""

    width: int
    height: int
    affine: np.ndarray


def check_convention(convention: str | Convention) -> str | Convention:
    """``convention`` when it is one of ``pose.targets.heatmaps.CONVENTIONS`` or a
    `pose.codec.Convention` (a variant of one, e.g. for an ablation); raises ValueError
    naming params ``model.convention`` otherwise."""
    convention_rules(convention)  # raises on an unknown value
    return convention


def check_image(image_bgr: np.ndarray) -> np.ndarray:
    """``image_bgr`` as an array when it is an (H, W, 3) uint8 image; raises ValueError
    otherwise."""
    img = np.asarray(image_bgr)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 BGR, got {img.shape} {img.dtype}")
    return img


def float32_point_affine(width: int, height: int, out_w: int, out_h: int) -> np.ndarray:
    """The ``short_side`` affine (2, 3) float64 as the official ``get_affine_transform``
    (``lib/utils/transforms.py``, rotation 0, no shift) builds it from
    ``get_multi_scale_size``'s centre and scale: three float32 points (the centre
    ``(int(w/2 + 0.5), int(h/2 + 0.5))``, the point half a source width above it, and the
    third point of the right angle, computed in float32) and their images in the
    ``out_w`` x ``out_h`` input, through ``cv2.getAffineTransform``. The source width is
    ``w / 200 * 200`` (portrait) or ``out_w / out_h * h / 200 * 200`` (landscape), the
    reference's ``scale * 200`` in float64. It differs from the exact affine by about 1e-6
    relative, which moves some input pixels by one grey level (``Convention.input_affine``
    ``float32``, the ``reference`` convention).
    """
    w, h = int(width), int(height)
    cx, cy = int(w / 2.0 + 0.5), int(h / 2.0 + 0.5)
    src_w = (w / 200.0 if w < h else out_w / out_h * h / 200.0) * 200.0
    src = np.zeros((3, 2), np.float32)
    dst = np.zeros((3, 2), np.float32)
    src[0] = (cx, cy)
    src[1] = (cx + 0.0, cy + src_w * -0.5)
    dst[0] = (out_w * 0.5, out_h * 0.5)
    dst[1] = (out_w * 0.5 + 0.0, out_h * 0.5 + np.float32(out_w * -0.5))
    for pts in (src, dst):  # the right angle's third point, in float32 as the reference computes it
        d = pts[0] - pts[1]
        pts[2] = pts[1] + np.array([-d[1], d[0]], np.float32)
    return cv2.getAffineTransform(src, dst)


def short_side_geometry(width: int, height: int, input_size: int, scale: float = 1.0,
                        min_scale: float = 1.0, *, input_affine: str = "float64") -> InputGeometry:
    """The reference's test-time input of one scale (``lib/utils/transforms.py``:
    ``get_multi_scale_size`` for the size, ``get_affine_transform`` with rotation 0 for the
    affine), with the affine computed in float64 (``input_affine="float64"``, exact) or from
    float32 points as the reference builds it (``"float32"``, :func:`float32_point_affine`;
    ``Convention.input_affine``).

    With ``r64(x) = (x + 63) // 64 * 64`` (the reference's rounding: up to a multiple of 64
    for integer ``x``; a fractional ``x`` may land up to 1 px below it) and ``m =
    r64(min_scale * input_size)``: a landscape (or square) image gets height ``int(m *
    scale / min_scale)`` and width ``int(r64(m / h * w) * scale / min_scale)``; a portrait
    one the same with the sides swapped. The affine scales by
    ``out_h / h`` (landscape) or ``out_w / w`` (portrait) about the image point
    ``(int(w/2 + 0.5), int(h/2 + 0.5))``, which lands on the input centre.

    Raises ValueError on non-positive sizes or scales, ``scale < min_scale`` or an unknown
    ``input_affine``.
    """
    if input_affine not in ("float64", "float32"):
        raise ValueError(f"input_affine must be float64 or float32, got {input_affine!r}")
    if width <= 0 or height <= 0 or input_size <= 0:
        raise ValueError(f"sizes must be positive, got width={width} height={height} input_size={input_size}")
    if min_scale <= 0 or scale < min_scale:
        raise ValueError(f"test scales must be positive and >= the smallest one, got scale={scale} "
                         f"min_scale={min_scale}")
    w, h, q = int(width), int(height), SHORT_SIDE_MULTIPLE
    cx, cy = int(w / 2.0 + 0.5), int(h / 2.0 + 0.5)
    min_input = int((min_scale * input_size + q - 1) // q * q)
    if w < h:
        out_w = int(min_input * scale / min_scale)
        out_h = int(int((min_input / w * h + q - 1) // q * q) * scale / min_scale)
        f = out_w / w
    else:
        out_h = int(min_input * scale / min_scale)
        out_w = int(int((min_input / h * w + q - 1) // q * q) * scale / min_scale)
        f = out_h / h
    if input_affine == "float32":
        return InputGeometry(out_w, out_h, float32_point_affine(w, h, out_w, out_h))
    affine = np.array([[f, 0.0, out_w / 2.0 - f * cx], [0.0, f, out_h / 2.0 - f * cy]], dtype=np.float64)
    return InputGeometry(out_w, out_h, affine)


def scaled_input_size(input_size: int, scale: float) -> int:
    """Letterbox input side for a test scale: ``input_size`` itself for 1.0, otherwise
    ``round(input_size * scale / SIZE_DIVISOR) * SIZE_DIVISOR`` (at least SIZE_DIVISOR).
    Raises ValueError on a non-positive scale."""
    if scale <= 0:
        raise ValueError(f"test scale must be positive, got {scale}")
    if scale == 1.0:
        return int(input_size)
    return max(SIZE_DIVISOR, int(round(input_size * scale / SIZE_DIVISOR)) * SIZE_DIVISOR)


def input_geometry(width: int, height: int, *, resize: str, input_size: int, scale: float = 1.0,
                   min_scale: float = 1.0, convention: str | Convention | None = None) -> InputGeometry:
    """The network input of one test scale for a ``width`` x ``height`` image (module
    docstring): ``short_side`` -> :func:`short_side_geometry`, ``letterbox`` -> a square
    :func:`scaled_input_size` canvas (``min_scale`` unused).

    ``convention`` (params ``model.convention`` or a `pose.codec.Convention`) picks the
    ``short_side`` affine's precision (``Convention.input_affine``: the ``reference``
    convention builds it from float32 points as the official code); None: float64. The
    letterbox (not in the official code) is float64 in both.

    Raises ValueError on an unknown ``resize`` or convention, a letterbox ``input_size`` that
    is not a multiple of 32, or as the geometry functions.
    """
    if resize == "short_side":
        precision = convention_rules(convention).input_affine if convention is not None else "float64"
        return short_side_geometry(width, height, input_size, scale, min_scale, input_affine=precision)
    if resize == "letterbox":
        if int(input_size) % SIZE_DIVISOR:
            raise ValueError(f"evaluate.input_size must be a multiple of {SIZE_DIVISOR} with letterbox, "
                             f"got {input_size}")
        size = scaled_input_size(int(input_size), float(scale))
        return InputGeometry(size, size, letterbox_affine(width, height, size))
    raise ValueError(f"evaluate.resize must be one of {', '.join(RESIZE_MODES)}; got {resize!r}")


def check_input_multiple(geometry: InputGeometry, scale: float) -> None:
    """Raises ValueError (naming params ``evaluate.test_scales``) when an input side is not
    a multiple of :data:`SIZE_DIVISOR` (HRNet's lowest branch)."""
    if geometry.width % SIZE_DIVISOR or geometry.height % SIZE_DIVISOR:
        raise ValueError(f"evaluate.test_scales: scale {scale:g} gives a {geometry.width} x {geometry.height} input, "
                         f"not a multiple of {SIZE_DIVISOR} (HRNet's lowest branch); use scales whose ratio to "
                         f"the smallest keeps the sides multiples of {SIZE_DIVISOR}, e.g. [0.5, 1, 2]")


def to_input_tensor(image_bgr: np.ndarray, affine: np.ndarray, input_size: int | tuple[int, int],
                    border_value: int = 0) -> np.ndarray:
    """Warp an image into the network input and normalise it.

    Args:
        image_bgr: (H, W, 3) uint8 image in OpenCV's BGR order.
        affine: (2, 3) image px -> input px (e.g. ``letterbox_affine(W, H, input_size)``).
        input_size: side ``S`` of a square input, or ``(width, height)`` in input px.
        border_value: grey level of the padding before normalisation (0: black, as
            training pads).

    Returns:
        (3, height, width) float32 array, RGB channel order, ``(rgb / 255 -
        IMAGENET_MEAN) / IMAGENET_STD``, warped with ``cv2.warpAffine`` (bilinear).

    Raises ValueError on a non-(H, W, 3) uint8 image.
    """
    img = check_image(image_bgr)
    out_w, out_h = (int(input_size), int(input_size)) if np.isscalar(input_size) else map(int, input_size)
    warped = cv2.warpAffine(img, np.asarray(affine, dtype=np.float64), (out_w, out_h),
                            flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                            borderValue=(border_value,) * 3)
    rgb = warped[:, :, ::-1].astype(np.float32) / 255.0
    rgb = (rgb - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


def input_batch(image_bgr: np.ndarray, geometry: InputGeometry) -> np.ndarray:
    """The (1, 3, height, width) float32 network input of one image for ``geometry``
    (:func:`to_input_tensor`, black padding). Raises ValueError on a bad image."""
    return to_input_tensor(image_bgr, geometry.affine, (geometry.width, geometry.height))[None]


def heatmap_to_image(keypoints: np.ndarray, affine: np.ndarray, stride: float, *,
                     convention: str | Convention) -> np.ndarray:
    """Map (N, K, >=3) decoded keypoints from map pixel indices (maps at 1/``stride`` of the
    input) to image px, the inverse of the training targets' mapping
    (``pose.augment.transforms``; `pose.codec.Convention`): input px ``c = (index + o) *
    stride`` with the pixel offset ``o``, then image px

    * ``M^-1 (c - o) + o`` with the ``centred`` keypoint mapping (``project``: targets at
      ``M (p - o) + o``);
    * ``M^-1 c`` with the ``raw`` one (``reference``: targets at ``M p``), the official
      ``get_final_preds`` (``lib/utils/transforms.py``). The two differ by ``o (1 - 1 / f)``
      image px for an input scale ``f`` (0.6-0.75 px at input 192, 0.03 px for a 640 x 480
      COCO image at 512).

    ``affine`` is ``M``, the (2, 3) image px -> input px warp of the input (pixel indices,
    as ``cv2.warpAffine`` uses it).

    Returns (N, K, 3) float64 ``[x, y, score]``. Joints with score 0 (not found) get x = y = 0
    (``Convention.missing_joint`` ``zero``) or ``M^-1 (0, 0)`` (``origin``: the official code
    maps a missing joint's heatmap coordinates (0, 0) like any other). Raises ValueError on
    an unknown convention.
    """
    rules = convention_rules(convention)
    offset, mo = rules.pixel_offset, rules.map_offset
    kp = np.asarray(keypoints, dtype=np.float64)
    out = np.zeros(kp.shape[:-1] + (3,), dtype=np.float64)
    if kp.size == 0:
        return out
    inverse = invert_affine(affine)
    out[..., :2] = apply_affine(inverse, (kp[..., :2] + offset) * stride - mo) + mo
    out[..., 2] = kp[..., 2]
    missing = kp[..., 2] <= 0
    out[missing, :2] = inverse[:, 2] if rules.missing_joint == "origin" else 0.0
    return out


__all__ = ["CONVENTIONS", "IMAGENET_MEAN", "IMAGENET_STD", "InputGeometry", "RESIZE_MODES", "SHORT_SIDE_MULTIPLE",
           "SIZE_DIVISOR", "check_convention", "check_image", "check_input_multiple", "float32_point_affine",
           "heatmap_to_image",
           "input_batch", "input_geometry", "scaled_input_size", "short_side_geometry", "to_input_tensor"]
