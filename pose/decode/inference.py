"""Test-time inference of HigherHRNet (Cheng et al., CVPR 2020, Sec. 3.4): input resizing,
heatmap aggregation of the 1/4 and 1/2 heads, flip test, multi-scale test, decoding, and
the mapping of persons back to image pixels. Reference: the official code's
``tools/valid.py``, ``lib/core/inference.py`` (``get_multi_stage_outputs``,
``aggregate_results``) and ``lib/utils/transforms.py`` (``get_multi_scale_size``,
``resize_align_multi_scale``, ``get_final_preds``).

Input resizing (params ``evaluate.resize``, :data:`RESIZE_MODES`), one image per batch:

* ``short_side`` (the reference protocol): the shorter image side becomes ``input_size``
  rounded up to a multiple of 64, the longer side keeps the aspect ratio and is rounded up
  to a multiple of 64; the image centre ``(int(w/2 + 0.5), int(h/2 + 0.5))`` maps to the
  input centre (:func:`short_side_geometry`).
* ``letterbox``: the longer side fills a square ``input_size`` canvas, content centred
  (``pose.augment.affine.letterbox_affine``; what training uses).

Multi-scale test (``evaluate.test_scales``), as the reference: each factor ``s`` rescales
the base size (``short_side``: the reference's ``get_multi_scale_size(image, input_size, s,
min(test_scales))``; ``letterbox``: ``input_size * s`` rounded to a multiple of 32), the
aggregated maps of every scale are resampled to the base grid and averaged, and the tags
of every scale are concatenated (the reference keeps only those of scale 1.0 when several
scales run: a deliberate deviation). The base grid is the base input itself with
``evaluate.project2image`` (the reference's ``TEST.PROJECT2IMAGE``, decode at stride 1) and
its 1/2 otherwise (stride 2).

Coordinate convention (params ``model.convention``; ``pose.targets.heatmaps``): the centre
of pixel ``i`` lies at coordinate ``i + o`` with ``o = pixel_offset(convention)``, at every
resolution; input px ``c`` is heatmap px ``c / t`` at stride ``t``, and image px ``p`` is
input px ``M (p - o) + o`` for the (pixel-index) warp ``M`` that ``cv2.warpAffine`` applies
to the image, as the training transform maps keypoints (``pose.augment.transforms``).
Following it:

* resampling between maps of one input (1/4 -> 1/2 heads; 1/2 -> input with
  ``project2image``): ``reference`` uses the reference's ``interpolate(mode="bilinear",
  align_corners=False)``; ``project`` samples output pixel ``j`` at ``j * w_in / w_out``
  (bilinear, border replicated). Across test scales each grid pixel samples the location of
  its centre through both inputs' affines (:func:`_to_grid`);
* flip test: the input is flipped as an array in both; the flipped branch's maps go back
  with a plain array flip in ``reference`` (exact there: it mirrors ``x -> S - x``) and by
  sampling ``(S - 1) / t - j`` in ``project`` (the mirror ``x -> S - 1 - x`` of input px);
  joints are swapped with ``flip_index``;
* decoding: grouped pixel indices leave heatmap px as ``(index + o) * t`` input px and go to
  image px through the inverse of the mapping above (:func:`heatmap_to_image`; the
  reference adds the 0.5 and applies ``M^-1`` directly, which differs by ``o (1 - 1/f)``
  image px at input scale ``f``).

Model output format: ``[out_quarter (B, K + K*T, H/4, W/4), out_half (B, K, H/2, W/2)]``,
heatmaps first then tags; tag channel ``K + t*K + k`` is tag dimension ``t`` of joint ``k``
(``T`` blocks of ``K`` channels, as ``pose.models.hrnet`` and ``pose.losses`` lay them out).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch

from pose.io import read_image
from pose.augment.affine import apply_affine, invert_affine, letterbox_affine
from pose.datasets.schema import COCO_SIGMAS, FLIP_INDEX
from pose.decode.group import group_keypoints, oks_nms
from pose.targets.heatmaps import CONVENTIONS, pixel_offset

log = logging.getLogger(__name__)

#: ImageNet channel statistics in RGB order, for images scaled to [0, 1]. Training and
#: inference both normalise with these (:func:`to_input_tensor`).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Letterbox inputs are multiples of this (HRNet's lowest branch is at 1/32); the sizes of
#: the multi-scale test other than 1.0 are rounded to it.
SIZE_DIVISOR = 32

#: ``short_side`` input sides are rounded up to a multiple of this (the reference's 64).
SHORT_SIDE_MULTIPLE = 64

#: Values of params.yaml ``evaluate.resize``.
RESIZE_MODES: tuple[str, ...] = ("short_side", "letterbox")

#: Keys of params.yaml ``evaluate`` that inference reads.
EVAL_KEYS = ("input_size", "resize", "flip_test", "test_scales", "detection_threshold", "tag_threshold",
             "max_people", "nms_kernel", "tie_break", "project2image", "adjust", "refine", "nms_oks")


class InputGeometry(NamedTuple):
    """One network input: ``width`` x ``height`` input px and the (2, 3) float64 affine
    image px -> input px."""

    width: int
    height: int
    affine: np.ndarray


def short_side_geometry(width: int, height: int, input_size: int, scale: float = 1.0,
                        min_scale: float = 1.0) -> InputGeometry:
    """The reference's test-time input of one scale (``lib/utils/transforms.py``:
    ``get_multi_scale_size`` for the size, ``get_affine_transform`` with rotation 0 for the
    affine), computed in float64 (the reference builds the affine in float32).

    With ``r64(x) = (x + 63) // 64 * 64`` (the reference's rounding: up to a multiple of 64
    for integer ``x``; a fractional ``x`` may land up to 1 px below it) and ``m =
    r64(min_scale * input_size)``: a landscape (or square) image gets height ``int(m *
    scale / min_scale)`` and width ``int(r64(m / h * w) * scale / min_scale)``; a portrait
    one the same with the sides swapped. The affine scales by
    ``out_h / h`` (landscape) or ``out_w / w`` (portrait) about the image point
    ``(int(w/2 + 0.5), int(h/2 + 0.5))``, which lands on the input centre.

    Raises ValueError on non-positive sizes or scales, or ``scale < min_scale``.
    """
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
    affine = np.array([[f, 0.0, out_w / 2.0 - f * cx], [0.0, f, out_h / 2.0 - f * cy]], dtype=np.float64)
    return InputGeometry(out_w, out_h, affine)


def scaled_input_size(input_size: int, scale: float) -> int:
    """Letterbox input side for a test scale: ``input_size`` itself for 1.0, otherwise
    ``round(input_size * scale / SIZE_DIVISOR) * SIZE_DIVISOR`` (at least SIZE_DIVISOR)."""
    if scale <= 0:
        raise ValueError(f"test scale must be positive, got {scale}")
    if scale == 1.0:
        return int(input_size)
    return max(SIZE_DIVISOR, int(round(input_size * scale / SIZE_DIVISOR)) * SIZE_DIVISOR)


def input_geometry(width: int, height: int, *, resize: str, input_size: int, scale: float = 1.0,
                   min_scale: float = 1.0) -> InputGeometry:
    """The network input of one test scale for a ``width`` x ``height`` image (module
    docstring): ``short_side`` -> :func:`short_side_geometry`, ``letterbox`` -> a square
    :func:`scaled_input_size` canvas (``min_scale`` unused).

    Raises ValueError on an unknown ``resize``, a letterbox ``input_size`` that is not a
    multiple of 32, or as the geometry functions.
    """
    if resize == "short_side":
        return short_side_geometry(width, height, input_size, scale, min_scale)
    if resize == "letterbox":
        if int(input_size) % SIZE_DIVISOR:
            raise ValueError(f"evaluate.input_size must be a multiple of {SIZE_DIVISOR} with letterbox, "
                             f"got {input_size}")
        size = scaled_input_size(int(input_size), float(scale))
        return InputGeometry(size, size, letterbox_affine(width, height, size))
    raise ValueError(f"evaluate.resize must be one of {', '.join(RESIZE_MODES)}; got {resize!r}")


def to_input_tensor(image_bgr: np.ndarray, affine: np.ndarray, input_size: int | tuple[int, int],
                    border_value: int = 0) -> np.ndarray:
    """Warp an image into the network input and normalise it.

    Args:
        image_bgr: (H, W, 3) uint8 image in OpenCV's BGR order.
        affine: (2, 3) image px -> input px (e.g. ``letterbox_affine(W, H, input_size)``).
        input_size: side ``S`` of a square input, or ``(width, height)`` in input px.
        border_value: grey level of the padding before normalisation (0: black).

    Returns:
        (3, height, width) float32 array, RGB channel order, ``(rgb / 255 -
        IMAGENET_MEAN) / IMAGENET_STD``, warped with ``cv2.warpAffine`` (bilinear).

    Raises ValueError on a non-(H, W, 3) uint8 image.
    """
    img = np.asarray(image_bgr)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 BGR, got {img.shape} {img.dtype}")
    out_w, out_h = (int(input_size), int(input_size)) if np.isscalar(input_size) else map(int, input_size)
    warped = cv2.warpAffine(img, np.asarray(affine, dtype=np.float64), (out_w, out_h),
                            flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                            borderValue=(border_value,) * 3)
    rgb = warped[:, :, ::-1].astype(np.float32) / 255.0
    rgb = (rgb - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


def _interp_axis(x: torch.Tensor, pos: torch.Tensor, dim: int) -> torch.Tensor:
    """Linear interpolation of ``x`` along ``dim`` at float positions ``pos`` (border clamped)."""
    n = x.shape[dim]
    pos = pos.clamp(0, n - 1)
    i0 = pos.floor().long().clamp(0, n - 1)
    i1 = (i0 + 1).clamp(max=n - 1)
    wgt = (pos - i0.to(pos.dtype)).to(x.dtype)
    shape = [1] * x.dim()
    shape[dim] = -1
    wgt = wgt.view(shape)
    return x.index_select(dim, i0) * (1 - wgt) + x.index_select(dim, i1) * wgt


def _check_convention(convention: str) -> str:
    pixel_offset(convention)  # raises on an unknown value
    return convention


def resize_maps(maps: torch.Tensor, height: int, width: int, *, convention: str) -> torch.Tensor:
    """Resample (B, C, h, w) maps covering the same input extent to (B, C, height, width),
    bilinear, on the tensor's device; identity when the size is unchanged.

    ``project``: output pixel ``(i, j)`` samples input location ``(i * h / height, j * w /
    width)``, border replicated. ``reference``: ``torch.nn.functional.interpolate(...,
    mode="bilinear", align_corners=False)``, the reference's resampling (its location is
    ``(j + 0.5) * w / width - 0.5``).

    Raises ValueError on an unknown convention.
    """
    _check_convention(convention)
    h, w = maps.shape[-2:]
    if (h, w) == (height, width):
        return maps
    if convention == "reference":
        return torch.nn.functional.interpolate(maps, size=(int(height), int(width)), mode="bilinear",
                                               align_corners=False)
    dev = maps.device
    pos_y = torch.arange(height, device=dev, dtype=torch.float32) * (h / height)
    pos_x = torch.arange(width, device=dev, dtype=torch.float32) * (w / width)
    return _interp_axis(_interp_axis(maps, pos_y, maps.dim() - 2), pos_x, maps.dim() - 1)


def unflip_maps(maps: torch.Tensor, stride: float, *, convention: str) -> torch.Tensor:
    """Map (B, C, H, W) maps computed on a horizontally flipped input back to the
    un-flipped frame (channels are not swapped here).

    ``project``: output pixel ``j`` samples ``(W * stride - 1) / stride - j`` of the flipped
    map (exact mirror of input px ``x -> S - 1 - x``; bilinear, border replicated).
    ``reference``: a plain array flip (``torch.flip``, as the reference; the exact mirror
    ``x -> S - x`` of its convention).

    Raises ValueError on an unknown convention.
    """
    if _check_convention(convention) == "reference":
        return torch.flip(maps, dims=[maps.dim() - 1])
    w = maps.shape[-1]
    pos = (w * stride - 1.0) / stride - torch.arange(w, device=maps.device, dtype=torch.float32)
    return _interp_axis(maps, pos, maps.dim() - 1)


def _split(outputs: Sequence[torch.Tensor], num_joints: int, tag_dim: int,
           convention: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Heatmaps (B, K, H/2, W/2) (mean of both heads) and tags (B, K*T, H/2, W/2)."""
    if len(outputs) != 2:
        raise ValueError(f"expected [out_quarter, out_half], got {len(outputs)} outputs")
    quarter, half = outputs
    need = num_joints + num_joints * tag_dim
    if quarter.dim() != 4 or quarter.shape[1] < need:
        raise ValueError(f"out_quarter must be (B, >= {need}, h, w), got {tuple(quarter.shape)}")
    if half.dim() != 4 or half.shape[1] < num_joints:
        raise ValueError(f"out_half must be (B, >= {num_joints}, H, W), got {tuple(half.shape)}")
    height, width = half.shape[-2:]
    q = resize_maps(quarter[:, :need].float(), height, width, convention=convention)
    heatmaps = (q[:, :num_joints] + half[:, :num_joints].float()) / 2.0
    return heatmaps, q[:, num_joints:need]


def aggregate_outputs(outputs: Sequence[torch.Tensor], num_joints: int, tag_dim: int,
                      flip_outputs: Sequence[torch.Tensor] | None = None,
                      flip_index: Sequence[int] = FLIP_INDEX, *,
                      convention: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine the model's two heads (and the flip branch) at 1/2 resolution (reference
    ``get_multi_stage_outputs``).

    Args:
        outputs: ``[out_quarter (B, K + K*T, H/4, W/4), out_half (B, K, H/2, W/2)]``.
        num_joints: K. tag_dim: T.
        flip_outputs: the same for the horizontally flipped input, or None.
        flip_index: joint permutation of a horizontal flip (default COCO-17).
        convention: ``project`` | ``reference`` (module docstring): how the 1/4 maps are
            upsampled and the flip branch is mirrored back.

    Returns:
        ``(heatmaps, tags)``: heatmaps (B, K, H/2, W/2) float32, the mean of the upsampled
        1/4 heatmaps and the 1/2 heatmaps (and of the un-flipped, joint-swapped flip branch);
        tags (B, K, H/2, W/2, T * n) float32, the 1/4 tags upsampled to 1/2 (n = 2 with the
        flip branch, its tags after the plain ones). Pixel indices of the 1/2 maps.

    Raises ValueError on unexpected output shapes, a flip_index of the wrong length or an
    unknown convention.
    """
    _check_convention(convention)
    heatmaps, tags = _split(outputs, num_joints, tag_dim, convention)
    b, _, h, w = heatmaps.shape
    tags = tags.reshape(b, tag_dim, num_joints, h, w).permute(0, 2, 3, 4, 1)  # (B, K, H, W, T)
    if flip_outputs is None:
        return heatmaps, tags.contiguous()
    if len(flip_index) != num_joints:
        raise ValueError(f"flip_index has {len(flip_index)} entries for {num_joints} joints")
    hm_f, tags_f = _split(flip_outputs, num_joints, tag_dim, convention)
    if hm_f.shape != heatmaps.shape:
        raise ValueError(f"flip outputs {tuple(hm_f.shape)} differ from outputs {tuple(heatmaps.shape)}")
    stride = 2.0  # the aggregated maps are at 1/2 of the input
    idx = torch.as_tensor(list(flip_index), device=heatmaps.device)
    hm_f = unflip_maps(hm_f, stride, convention=convention).index_select(1, idx)
    tags_f = unflip_maps(tags_f, stride, convention=convention).reshape(b, tag_dim, num_joints, h, w)
    tags_f = tags_f.index_select(2, idx)
    heatmaps = (heatmaps + hm_f) / 2.0
    tags = torch.cat([tags, tags_f.permute(0, 2, 3, 4, 1)], dim=-1)
    return heatmaps, tags.contiguous()


def _to_grid(maps: torch.Tensor, src: InputGeometry, base: InputGeometry, stride: int,
             grid_hw: tuple[int, int], convention: str) -> torch.Tensor:
    """Resample (B, C, h, w) maps at 1/2 of input ``src`` onto the base grid (``grid_hw``
    pixels at ``stride`` input px of input ``base``): each grid pixel samples the location
    of its centre in the source map (module docstring: pixel ``i`` centred at ``i + o``,
    image px ``p`` at input px ``M (p - o) + o``), bilinear, border replicated.

    For maps of the same input (scale 1.0) this is the reference's ``interpolate(...,
    align_corners=False)`` in ``reference`` and ``j -> j * w_in / w_out`` in ``project``.
    Across scales the reference interpolates to the base size, i.e. assumes input px scale
    by ``r`` about 0; with the keypoint mapping above they scale about ``o``, a difference of
    ``o (1 - r)`` scale px that is not reproduced (a deliberate deviation).
    """
    o = pixel_offset(convention)
    dev = maps.device
    ratio = src.affine[0, 0] / base.affine[0, 0]  # both affines are isotropic scale + shift
    pos = []
    for axis, n in ((1, grid_hw[0]), (0, grid_hw[1])):
        j = torch.arange(n, device=dev, dtype=torch.float64)
        base_idx = (j + o) * stride - o                                   # base input pixel index
        src_idx = ratio * (base_idx - base.affine[axis, 2]) + src.affine[axis, 2]
        pos.append(((src_idx + o) / 2.0 - o).to(torch.float32))           # index in the source 1/2 map
    if tuple(maps.shape[-2:]) == tuple(grid_hw) and all(
            torch.equal(p, torch.arange(n, device=dev, dtype=torch.float32)) for p, n in zip(pos, grid_hw)):
        return maps
    return _interp_axis(_interp_axis(maps, pos[0], maps.dim() - 2), pos[1], maps.dim() - 1)


class DecodeMaps(NamedTuple):
    """Aggregated maps of one image on the base grid.

    ``heatmaps`` (K, Hg, Wg) float32 and ``tags`` (K, Hg, Wg, T * n) float32 tensors (model
    device); ``affine`` (2, 3) float64 image px -> base input px; ``stride`` base input px
    per grid pixel (1 with ``project2image``, else 2)."""

    heatmaps: torch.Tensor
    tags: torch.Tensor
    affine: np.ndarray
    stride: int


def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@torch.no_grad()
def multi_scale_maps(model: torch.nn.Module, image_bgr: np.ndarray, *, input_size: int, resize: str,
                     test_scales: Sequence[float], flip_test: bool, project2image: bool, convention: str,
                     device: torch.device | str | None = None,
                     flip_index: Sequence[int] = FLIP_INDEX) -> DecodeMaps:
    """Run the model over the test scales (and flips) of one image (module docstring;
    reference ``tools/valid.py`` loop with ``get_multi_stage_outputs`` and
    ``aggregate_results``).

    Each scale's input (:func:`input_geometry`) is run with its horizontal flip in one
    batch when ``flip_test``; its aggregated 1/2 maps (:func:`aggregate_outputs`) are
    resampled to the base grid, heatmaps averaged over scales, tags concatenated along the
    last axis (scale order, plain before flip). With ``test_scales == [1.0]`` and
    ``project2image`` off this is exactly the single-scale 1/2-resolution result.

    Returns a :class:`DecodeMaps`. The model is run in eval mode (its mode is restored).

    Raises ValueError on an empty scale list, unknown ``resize`` / ``convention`` or
    unexpected model outputs.
    """
    if not test_scales:
        raise ValueError("evaluate.test_scales must not be empty")
    _check_convention(convention)
    scales = [float(s) for s in test_scales]
    dev = torch.device(device) if device is not None else _model_device(model)
    height, width = image_bgr.shape[:2]
    geo = dict(resize=resize, input_size=int(input_size), min_scale=min(scales))
    base = input_geometry(width, height, scale=1.0, **geo)
    stride = 1 if project2image else 2
    grid_hw = (base.height // stride, base.width // stride)
    was_training = model.training
    model.eval()
    try:
        hm_sum, tag_list = None, []
        for scale in scales:
            g = base if scale == 1.0 else input_geometry(width, height, scale=scale, **geo)
            if g.width % SIZE_DIVISOR or g.height % SIZE_DIVISOR:
                raise ValueError(f"evaluate.test_scales: scale {scale:g} gives a {g.width} x {g.height} input, not a "
                                 f"multiple of {SIZE_DIVISOR} (HRNet's lowest branch); use scales whose ratio to "
                                 f"the smallest keeps the sides multiples of {SIZE_DIVISOR}, e.g. [0.5, 1, 2]")
            x = torch.from_numpy(to_input_tensor(image_bgr, g.affine, (g.width, g.height))).to(dev)[None]
            batch = torch.cat([x, torch.flip(x, dims=[3])]) if flip_test else x
            outputs = model(batch)
            num_joints = int(outputs[1].shape[1])
            tag_dim = (int(outputs[0].shape[1]) - num_joints) // num_joints
            if tag_dim < 1:
                raise ValueError(f"out_quarter has {outputs[0].shape[1]} channels for {num_joints} joints: no tags")
            plain = [o[:1] for o in outputs]
            flipped = [o[1:] for o in outputs] if flip_test else None
            hm, tg = aggregate_outputs(plain, num_joints, tag_dim, flipped, flip_index, convention=convention)
            hm = _to_grid(hm, g, base, stride, grid_hw, convention)[0]
            tg = tg[0].permute(0, 3, 1, 2)  # (K, T*n, h, w)
            tg = _to_grid(tg, g, base, stride, grid_hw, convention).permute(0, 2, 3, 1)
            hm_sum = hm if hm_sum is None else hm_sum + hm
            tag_list.append(tg)
        heatmaps = hm_sum / len(scales)
        tags = torch.cat(tag_list, dim=-1)
    finally:
        model.train(was_training)
    return DecodeMaps(heatmaps, tags.contiguous(), base.affine, stride)


def heatmap_to_image(keypoints: np.ndarray, affine: np.ndarray, stride: float, *, convention: str) -> np.ndarray:
    """Map (N, K, >=3) decoded keypoints from map pixel indices (maps at 1/``stride`` of the
    input) to image px, the inverse of the training targets' mapping
    (``pose.augment.transforms``: image px ``p`` -> input px ``M (p - o) + o`` -> heatmap px
    ``/ stride``, ``o = pixel_offset(convention)``): input px ``c = (index + o) * stride``,
    image px ``M^-1 (c - o) + o``.

    ``affine`` is ``M``, the (2, 3) image px -> input px warp of the input (pixel indices,
    as ``cv2.warpAffine`` uses it). The reference's ``get_final_preds`` applies ``M^-1`` to
    ``c`` directly; the two differ by ``o (1 - 1 / f)`` image px for an input scale ``f``
    (0.03 px for a 640 x 480 COCO image at 512), a deliberate deviation that keeps decoding
    the exact inverse of the targets.

    Returns (N, K, 3) float64 ``[x, y, score]``; joints with score 0 (not found) get
    x = y = 0. Raises ValueError on an unknown convention.
    """
    offset = pixel_offset(convention)
    kp = np.asarray(keypoints, dtype=np.float64)
    out = np.zeros(kp.shape[:-1] + (3,), dtype=np.float64)
    if kp.size == 0:
        return out
    out[..., :2] = apply_affine(invert_affine(affine), (kp[..., :2] + offset) * stride - offset) + offset
    out[..., 2] = kp[..., 2]
    out[kp[..., 2] <= 0, :2] = 0.0
    return out


def model_convention(model: torch.nn.Module, convention: str | None = None) -> str:
    """The coordinate convention to decode ``model`` with: ``convention`` when given, else
    the model's ``convention`` attribute (``pose.models.build_model`` records params
    ``model.convention``, so a checkpoint is decoded in the convention it was trained in).

    Raises ValueError when neither says, or on an unknown value.
    """
    conv = convention if convention is not None else getattr(model, "convention", None)
    if conv is None:
        raise ValueError("the model does not record its coordinate convention: pass convention= "
                         f"(params model.convention: {' | '.join(CONVENTIONS)})")
    return _check_convention(str(conv))


def _resolve(eval_params: dict | None, **explicit) -> dict:
    cfg = {k: v for k, v in (eval_params or {}).items() if k in EVAL_KEYS}
    cfg.update({k: v for k, v in explicit.items() if v is not None})
    missing = [k for k in EVAL_KEYS if k not in cfg]
    if missing:
        raise ValueError(f"inference settings missing (params.yaml `evaluate`): {', '.join(missing)}")
    if cfg["resize"] not in RESIZE_MODES:
        raise ValueError(f"evaluate.resize must be one of {', '.join(RESIZE_MODES)}; got {cfg['resize']!r}")
    kernel = cfg["nms_kernel"]
    if isinstance(kernel, bool) or not isinstance(kernel, (int, np.integer)) or kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"evaluate.nms_kernel must be an odd positive integer (reference 5); got {kernel!r}")
    return cfg


def predict_image(model: torch.nn.Module, image_bgr: np.ndarray, *, eval_params: dict | None = None,
                  convention: str | None = None, input_size: int | None = None, resize: str | None = None,
                  flip_test: bool | None = None, test_scales: Sequence[float] | None = None,
                  detection_threshold: float | None = None, tag_threshold: float | None = None,
                  max_people: int | None = None, nms_kernel: int | None = None, tie_break: bool | None = None,
                  project2image: bool | None = None, adjust: bool | None = None, refine: bool | None = None,
                  nms_oks: float | None = None, device: torch.device | str | None = None) -> list[dict]:
    """Detect the persons of one image.

    Settings come from ``eval_params`` (params.yaml ``evaluate``), each overridable by its
    keyword; all of :data:`EVAL_KEYS` must be given one way or the other. The coordinate
    convention comes from ``convention`` or the model (:func:`model_convention`).

    Args:
        model: returns ``[out_quarter, out_half]`` (module docstring) for a (B, 3, H, W) input.
        image_bgr: (H, W, 3) uint8 BGR image (``cv2.imread``).
        device: where to run (default: the model's device).

    Returns:
        Persons sorted by score (descending), each ``{"keypoints": (K, 3) float64 [x, y,
        score] in IMAGE px (x = y = 0 where the joint was not found), "score": float}``;
        the score is the mean of the K joint scores (associative embedding). With
        ``nms_oks < 1`` persons whose OKS (COCO sigmas) with a higher-scoring person
        exceeds it are dropped (:func:`pose.decode.group.oks_nms`).

    Raises ValueError on missing or invalid settings, a bad image or unexpected model outputs.
    """
    cfg = _resolve(eval_params, input_size=input_size, resize=resize, flip_test=flip_test, test_scales=test_scales,
                   detection_threshold=detection_threshold, tag_threshold=tag_threshold, max_people=max_people,
                   nms_kernel=nms_kernel, tie_break=tie_break, project2image=project2image, adjust=adjust,
                   refine=refine, nms_oks=nms_oks)
    conv = model_convention(model, convention)
    img = np.asarray(image_bgr)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 BGR, got {img.shape} {img.dtype}")
    maps = multi_scale_maps(model, img, input_size=int(cfg["input_size"]), resize=str(cfg["resize"]),
                            test_scales=[float(s) for s in cfg["test_scales"]], flip_test=bool(cfg["flip_test"]),
                            project2image=bool(cfg["project2image"]), convention=conv, device=device)
    persons, scores = group_keypoints(maps.heatmaps.float().cpu().numpy(), maps.tags.float().cpu().numpy(),
                                      detection_threshold=float(cfg["detection_threshold"]),
                                      tag_threshold=float(cfg["tag_threshold"]),
                                      max_people=int(cfg["max_people"]), nms_kernel=int(cfg["nms_kernel"]),
                                      tie_break=bool(cfg["tie_break"]),
                                      adjust=bool(cfg["adjust"]), refine=bool(cfg["refine"]))
    kps = heatmap_to_image(persons, maps.affine, maps.stride, convention=conv)
    num_joints = kps.shape[1]  # (N, K, 3), also for N = 0
    sigmas = COCO_SIGMAS if num_joints == len(COCO_SIGMAS) else np.full(num_joints, float(np.mean(COCO_SIGMAS)))
    order = oks_nms(kps, scores, sigmas, float(cfg["nms_oks"]))
    return [{"keypoints": kps[i], "score": float(scores[i])} for i in order]


def to_coco_results(persons: Sequence[dict], image_id: int, category_id: int = 1) -> list[dict]:
    """COCO keypoint results entries for one image: ``{"image_id", "category_id",
    "keypoints": [x1, y1, s1, ...] (3K floats, image px rounded to 1e-3, s = joint score),
    "score"}``."""
    return [{"image_id": int(image_id), "category_id": int(category_id),
             "keypoints": [round(float(v), 3) for v in np.asarray(p["keypoints"], np.float64).reshape(-1)],
             "score": float(p["score"])} for p in persons]


def predict_dataset(model: torch.nn.Module, ann_file: Path | str, images_dir: Path | str,
                    eval_params: dict, device: torch.device | str | None = None, *,
                    convention: str | None = None) -> list[dict]:
    """Predict every image listed in a COCO annotation file.

    Args:
        ann_file: COCO JSON whose ``images`` (``id``, ``file_name``) are predicted, all of
            them, with or without persons (false positives count in COCO AP).
        images_dir: folder holding the ``file_name`` files.
        eval_params: params.yaml ``evaluate`` (all of :data:`EVAL_KEYS`).
        convention: coordinate convention, or None for the model's (:func:`model_convention`).

    Returns:
        COCO results entries (:func:`to_coco_results`), category 1, in image-id order.

    Raises FileNotFoundError for a missing annotation file or image, ValueError for an
    unreadable image or missing settings.
    """
    ann_file, images_dir = Path(ann_file), Path(images_dir)
    if not ann_file.exists():
        raise FileNotFoundError(f"{ann_file}: annotation file not found")
    cfg = _resolve(eval_params)
    conv = model_convention(model, convention)
    images = sorted(json.loads(ann_file.read_text()).get("images", []), key=lambda im: im["id"])
    results: list[dict] = []
    for n, im in enumerate(images):
        image = read_image(images_dir / im["file_name"], im["id"])
        persons = predict_image(model, image, eval_params=cfg, convention=conv, device=device)
        results.extend(to_coco_results(persons, im["id"]))
        if (n + 1) % 50 == 0:
            log.info("predicted %d/%d images", n + 1, len(images))
    return results
