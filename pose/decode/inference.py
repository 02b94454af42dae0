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

Model output format (``pose.codec``, strides ``OUTPUT_STRIDES`` = (4, 2)): ``[out_quarter
(B, K + K*T, H/4, W/4), out_half (B, K, H/2, W/2)]``, heatmaps first then tags; tag channel
``K + t*K + k`` is tag dimension ``t`` of joint ``k`` (``T`` blocks of ``K`` channels).

One inference path: :class:`InferenceNet` is the network of one test scale as it runs
(normalised batch in, aggregated maps on the decode grid out: flip branch, head
aggregation, ``project2image``); :func:`multi_scale_maps` / :func:`predict_image` run it
with torch, ``pose.export.export_onnx`` exports it and ``pose.decode.onnx_backend`` runs
the export with onnxruntime. Preprocessing and the mapping back to image px are NumPy
(``pose.decode.preprocess``), grouping and person building too (``pose.decode.persons``),
shared by both backends.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from pose.codec import OUTPUT_STRIDES, Convention, convention_rules, with_overrides
from pose.datasets.schema import FLIP_INDEX
from pose.decode.deadline import checkpoint
from pose.decode.persons import (
    EVAL_KEYS,
    InferenceSettings,
    decode_persons,
    graph_projects,
    resolve_eval_params,
    to_coco_results,
)
from pose.decode.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RESIZE_MODES,
    SHORT_SIDE_MULTIPLE,
    SIZE_DIVISOR,
    InputGeometry,
    check_convention,
    check_image,
    check_input_multiple,
    heatmap_to_image,
    input_batch,
    input_geometry,
    scaled_input_size,
    short_side_geometry,
    to_input_tensor,
)
from pose.io import dataset_exif, read_image
from pose.targets.heatmaps import CONVENTIONS, pixel_offset

if TYPE_CHECKING:
    from pose.params import EvaluateSection

log = logging.getLogger(__name__)

__all__ = ["CONVENTIONS", "DecodeMaps", "EVAL_KEYS", "IMAGENET_MEAN", "IMAGENET_STD", "InferenceNet", "InputGeometry",
           "RESIZE_MODES", "SHORT_SIDE_MULTIPLE", "SIZE_DIVISOR", "aggregate_outputs", "heatmap_to_image",
           "inference_net", "input_geometry", "model_convention", "multi_scale_maps", "predict_dataset",
           "predict_image", "resize_maps", "scaled_input_size", "short_side_geometry", "to_coco_results",
           "to_input_tensor", "unflip_maps"]


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


def resize_maps(maps: torch.Tensor, height: int, width: int, *, convention: str) -> torch.Tensor:
    """Resample (B, C, h, w) maps covering the same input extent to (B, C, height, width),
    bilinear, on the tensor's device; identity when the size is unchanged.

    ``project``: output pixel ``(i, j)`` samples input location ``(i * h / height, j * w /
    width)``, border replicated. ``reference``: ``torch.nn.functional.interpolate(...,
    mode="bilinear", align_corners=False)``, the reference's resampling (its location is
    ``(j + 0.5) * w / width - 0.5``).

    Raises ValueError on an unknown convention.
    """
    check_convention(convention)
    h, w = maps.shape[-2:]
    if (h, w) == (height, width):
        return maps
    if pixel_offset(convention):  # reference
        if (height, width) == (2 * h, 2 * w):  # the 1/4 -> 1/2 head: the same values, and an exported graph
            # keeps the size dynamic (a size argument becomes a constant of the example input)
            return torch.nn.functional.interpolate(maps, scale_factor=2.0, mode="bilinear", align_corners=False)
        return torch.nn.functional.interpolate(maps, size=(int(height), int(width)), mode="bilinear",
                                               align_corners=False)
    dev = maps.device
    pos_y = torch.arange(height, device=dev, dtype=torch.float32) * (h / height)
    pos_x = torch.arange(width, device=dev, dtype=torch.float32) * (w / width)
    return _interp_axis(_interp_axis(maps, pos_y, maps.dim() - 2), pos_x, maps.dim() - 1)


def _upsample2(maps: torch.Tensor, *, convention: str) -> torch.Tensor:
    """Resample (B, C, h, w) maps to twice their size, each output pixel ``j`` sampling
    the location of its centre, ``(j + o) / 2 - o`` (bilinear, border replicated; ``o =
    pixel_offset(convention)``): :func:`resize_maps` for a factor of exactly 2 (``reference``:
    ``interpolate(align_corners=False)``; ``project``: ``j -> j / 2``) written with tensor
    ops only, so an exported graph keeps the height and width dynamic."""
    if pixel_offset(convention):  # reference: its own interpolate (bit for bit; scale_factor keeps it dynamic)
        return torch.nn.functional.interpolate(maps, scale_factor=2.0, mode="bilinear", align_corners=False)
    o = pixel_offset(convention)
    for dim in (maps.dim() - 2, maps.dim() - 1):
        n = maps.shape[dim]
        pos = (torch.arange(2 * n, device=maps.device, dtype=torch.float32) + o) / 2.0 - o
        maps = _interp_axis(maps, pos, dim)
    return maps


def unflip_maps(maps: torch.Tensor, stride: float, *, convention: str) -> torch.Tensor:
    """Map (B, C, H, W) maps computed on a horizontally flipped input back to the
    un-flipped frame (channels are not swapped here).

    ``project``: output pixel ``j`` samples ``(W * stride - 1) / stride - j`` of the flipped
    map (exact mirror of input px ``x -> S - 1 - x``; bilinear, border replicated).
    ``reference``: a plain array flip (``torch.flip``, as the reference; the exact mirror
    ``x -> S - x`` of its convention).

    Raises ValueError on an unknown convention.
    """
    if pixel_offset(check_convention(convention)):  # reference
        return torch.flip(maps, dims=[maps.dim() - 1])
    w = maps.shape[-1]
    pos = (w * stride - 1.0) / stride - torch.arange(w, device=maps.device, dtype=torch.float32)
    return _interp_axis(maps, pos, maps.dim() - 1)


def _split(outputs: Sequence[torch.Tensor], num_joints: int, tag_dim: int,
           convention: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Heatmaps (B, K, H/2, W/2) (mean of both heads) and tags (B, K*T, H/2, W/2)."""
    if len(outputs) != len(OUTPUT_STRIDES):
        raise ValueError(f"expected [out_quarter, out_half] (pose.codec.OUTPUT_STRIDES), got {len(outputs)} outputs")
    quarter, half = outputs
    need = num_joints + num_joints * tag_dim
    if quarter.dim() != 4 or quarter.shape[1] < need:
        raise ValueError(f"out_quarter must be (B, >= {need}, h, w), got {tuple(quarter.shape)}")
    if half.dim() != 4 or half.shape[1] < num_joints:
        raise ValueError(f"out_half must be (B, >= {num_joints}, H, W), got {tuple(half.shape)}")
    q = resize_maps(quarter[:, :need].float(), half.shape[-2], half.shape[-1], convention=convention)
    heatmaps = (q[:, :num_joints] + half[:, :num_joints].float()) / 2.0
    return heatmaps, q[:, num_joints:need]


def aggregate_outputs(outputs: Sequence[torch.Tensor], num_joints: int, tag_dim: int,
                      flip_outputs: Sequence[torch.Tensor] | None = None,
                      flip_index: Sequence[int] = FLIP_INDEX, *,
                      convention: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Aggregate the two heads (and the flip branch) of one test scale, as the reference's
    ``get_multi_stage_outputs`` with ``PROJECT2IMAGE`` off: at 1/2 of the input.

    Args:
        outputs: ``[out_quarter (B, K + K*T, H/4, W/4), out_half (B, K, H/2, W/2)]``.
        num_joints: K. tag_dim: T.
        flip_outputs: the same for the horizontally flipped input, or None.
        flip_index: joint permutation of a horizontal flip (default COCO-17's,
            ``pose.datasets.schema.FLIP_INDEX``).
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
    return _combine(_branches(outputs, num_joints, tag_dim, flip_outputs, flip_index, convention=convention))


def _combine(branches: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Heatmaps (B, K, H, W) averaged over the branches of :func:`_branches` (plain, flip),
    tags (B, K, H, W, T * n) concatenated in branch order; as the official
    ``aggregate_results`` (``(heatmaps[0] + heatmaps[1]) / 2.0``)."""
    if len(branches) == 1:
        return branches[0][0], branches[0][1].contiguous()
    (hm, tags), (hm_f, tags_f) = branches
    return (hm + hm_f) / 2.0, torch.cat([tags, tags_f], dim=-1).contiguous()


def _branches(outputs: Sequence[torch.Tensor], num_joints: int, tag_dim: int,
              flip_outputs: Sequence[torch.Tensor] | None, flip_index: Sequence[int], *,
              convention: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per branch (plain, then the un-flipped, joint-swapped flip branch when given): heatmaps
    (B, K, H/2, W/2), the mean of both heads, and tags (B, K, H/2, W/2, T); the official
    ``get_multi_stage_outputs`` lists (:func:`aggregate_outputs` documents the arguments)."""
    check_convention(convention)
    heatmaps, tags = _split(outputs, num_joints, tag_dim, convention)
    b, _, h, w = heatmaps.shape
    tags = tags.reshape(b, tag_dim, num_joints, h, w).permute(0, 2, 3, 4, 1)  # (B, K, H, W, T)
    if flip_outputs is None:
        return [(heatmaps, tags)]
    if len(flip_index) != num_joints:
        raise ValueError(f"flip_index has {len(flip_index)} entries for {num_joints} joints")
    hm_f, tags_f = _split(flip_outputs, num_joints, tag_dim, convention)
    if hm_f.shape != heatmaps.shape:
        raise ValueError(f"flip outputs {tuple(hm_f.shape)} differ from outputs {tuple(heatmaps.shape)}")
    stride = float(OUTPUT_STRIDES[-1])  # the aggregated maps are at the last head's stride, 1/2 of the input
    idx = torch.as_tensor(list(flip_index), device=heatmaps.device)
    hm_f = unflip_maps(hm_f, stride, convention=convention).index_select(1, idx)
    tags_f = unflip_maps(tags_f, stride, convention=convention).reshape(b, tag_dim, num_joints, h, w)
    tags_f = tags_f.index_select(2, idx)
    return [(heatmaps, tags), (hm_f, tags_f.permute(0, 2, 3, 4, 1))]


class InferenceNet(torch.nn.Module):
    """The network of one test scale as it is run and exported: normalised input batch in,
    aggregated maps on the decode grid out (module docstring; the reference's
    ``get_multi_stage_outputs`` + ``aggregate_results`` for one scale).

    ``forward(x)``: ``x`` (B, 3, H, W) float32 (:func:`pose.decode.preprocess.input_batch`,
    H and W multiples of 32) -> ``(heatmaps (B, K, Hg, Wg) float32, tags (B, K, Hg, Wg, T *
    n) float32)``: with ``flip_test`` the batch runs together with its horizontal flip
    (input flipped, maps un-flipped, joints swapped with ``flip_index``, n = 2, the flip
    branch's tags after the plain ones; else n = 1); the 1/4 head is resampled to 1/2 and
    averaged with the 1/2 head (:func:`aggregate_outputs`); with ``project2image`` the 1/2
    maps are resampled to the input (``Hg, Wg = H, W``, :attr:`stride` 1), else ``Hg, Wg =
    H/2, W/2`` (stride 2). All resampling follows ``convention``.

    ``predict_image`` / ``multi_scale_maps`` run this module and ``pose.export.export_onnx``
    exports it, so torch and onnxruntime compute the same graph. Combining several test
    scales happens outside (:func:`multi_scale_maps`).
    """

    def __init__(self, model: torch.nn.Module, *, num_joints: int | None, tag_dim: int | None, convention: str,
                 flip_test: bool, flip_index: Sequence[int], project2image: bool) -> None:
        super().__init__()
        if tag_dim is not None and tag_dim < 1:
            raise ValueError(f"tag_dim must be >= 1, got {tag_dim}")
        if flip_test and num_joints is not None and len(flip_index) != num_joints:
            raise ValueError(f"flip_index has {len(flip_index)} entries for {num_joints} joints")
        self.model = model
        self.num_joints = None if num_joints is None else int(num_joints)
        self.tag_dim = None if tag_dim is None else int(tag_dim)
        self.convention = check_convention(convention if isinstance(convention, Convention) else str(convention))
        self.flip_test = bool(flip_test)
        self.flip_index = tuple(int(i) for i in flip_index)
        self.project2image = bool(project2image)
        self.train(model.training)  # the wrapper is in the mode of the model it wraps

    @property
    def stride(self) -> int:
        """Input px per pixel of the output maps (1 with ``project2image``, else the last head's
        stride, ``pose.codec.OUTPUT_STRIDES[-1]`` = 2)."""
        return 1 if self.project2image else OUTPUT_STRIDES[-1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = x.shape[0]
        batch = torch.cat([x, torch.flip(x, dims=[3])]) if self.flip_test else x
        outputs = self.model(batch)
        num_joints, tag_dim = self.num_joints, self.tag_dim
        if num_joints is None or tag_dim is None:  # a model that does not say: read it off its outputs
            num_joints = int(outputs[-1].shape[1])
            tag_dim = (int(outputs[0].shape[1]) - num_joints) // num_joints
            if tag_dim < 1:
                raise ValueError(f"out_quarter has {outputs[0].shape[1]} channels for {num_joints} joints: no tags")
        plain = [o[:b] for o in outputs]
        flipped = [o[b:] for o in outputs] if self.flip_test else None
        branches = _branches(plain, num_joints, tag_dim, flipped, self.flip_index, convention=self.convention)
        if self.project2image:  # each branch projected, then averaged: the official order (float rounding)
            branches = [(_upsample2(hm, convention=self.convention), self._upsample_tags(tg)) for hm, tg in branches]
        return _combine(branches)

    def _upsample_tags(self, tags: torch.Tensor) -> torch.Tensor:
        """(B, K, h, w, T) tags -> (B, K, 2h, 2w, T) by :func:`_upsample2` (as 4-D channels)."""
        b, k, h, w, t = tags.shape
        x = tags.permute(0, 1, 4, 2, 3).reshape(b, k * t, h, w)
        return _upsample2(x, convention=self.convention).reshape(b, k, t, 2 * h, 2 * w).permute(0, 1, 3, 4, 2)


def inference_net(model: torch.nn.Module, *, flip_test: bool, project2image: bool, convention: str | None,
                  flip_index: Sequence[int] = FLIP_INDEX) -> InferenceNet:
    """:class:`InferenceNet` of a model: its ``num_joints`` and ``tag_dim`` attributes (a
    ``pose.models`` model has them; a model without them has them read off its outputs on
    each call) and, when ``convention`` is None, its recorded convention
    (:func:`model_convention`). ``flip_index`` is the joint permutation of the model's
    keypoints (COCO-17's by default: the models of this package predict COCO-17).
    Raises ValueError on an unknown or missing convention."""
    num_joints, tag_dim = getattr(model, "num_joints", None), getattr(model, "tag_dim", None)
    return InferenceNet(model, num_joints=num_joints if isinstance(num_joints, int) else None,
                        tag_dim=tag_dim if isinstance(tag_dim, int) else None,
                        convention=model_convention(model, convention), flip_test=flip_test,
                        flip_index=flip_index, project2image=project2image)


def _to_grid(maps: torch.Tensor, src: InputGeometry, base: InputGeometry, stride: int,
             grid_hw: tuple[int, int], convention: str) -> torch.Tensor:
    """Resample (B, C, h, w) maps at 1/2 of input ``src`` onto the base grid (``grid_hw``
    pixels at ``stride`` input px of input ``base``): each grid pixel samples the location
    of its centre in the source map (module docstring: pixel ``i`` centred at ``i + o``,
    image px ``p`` at input px ``M (p - o) + o``), bilinear, border replicated.

    For maps of the same input (scale 1.0) this is the reference's ``interpolate(...,
    align_corners=False)`` in ``reference`` and ``j -> j * w_in / w_out`` in ``project``.
    Across scales the reference interpolates to the base size, i.e. assumes input px scale
    by ``r`` about 0; with the ``centred`` keypoint mapping above they scale about ``o``, a
    difference of ``o (1 - r)`` scale px. The ``raw`` mapping (``reference``, image px ``p`` at
    input px ``M p``; `pose.codec.Convention.keypoint_mapping`) scales them about 0, as the
    reference, where the sizes of the scales are in ratio ``r``.
    """
    o = pixel_offset(convention)
    mo = convention_rules(convention).map_offset                         # o (centred) or 0 (raw)
    dev = maps.device
    ratio = src.affine[0, 0] / base.affine[0, 0]  # both affines are isotropic scale + shift
    pos = []
    for axis, n in ((1, grid_hw[0]), (0, grid_hw[1])):
        j = torch.arange(n, device=dev, dtype=torch.float64)
        base_idx = (j + o) * stride - mo                                  # base input px of the mapping
        src_idx = ratio * (base_idx - base.affine[axis, 2]) + src.affine[axis, 2]
        pos.append(((src_idx + mo) / 2.0 - o).to(torch.float32))          # index in the source 1/2 map
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
                     test_scales: Sequence[float], flip_test: bool, project2image: bool, convention: str | None,
                     device: torch.device | str | None = None,
                     flip_index: Sequence[int] = FLIP_INDEX) -> DecodeMaps:
    """Run the model over the test scales (and flips) of one image (module docstring;
    reference ``tools/valid.py`` loop with ``get_multi_stage_outputs`` and
    ``aggregate_results``).

    Each scale's input (:func:`input_geometry`) runs through :class:`InferenceNet` (with
    its horizontal flip in one batch when ``flip_test``): scale 1.0 straight onto the base
    grid, every other scale at 1/2 of its own input and then resampled onto the base grid
    (:func:`_to_grid`); heatmaps are averaged over scales, tags concatenated along the last
    axis (scale order, plain before flip). With ``test_scales == [1.0]`` and
    ``project2image`` off this is exactly the single-scale 1/2-resolution result.

    Args:
        model: a ``pose.models`` model, or an :class:`InferenceNet` (whose own flip /
            project2image / convention settings must then match the arguments).
        convention: params ``model.convention``, or None for the model's
            (:func:`model_convention`).

    Returns a :class:`DecodeMaps`. The model is run in eval mode (its mode is restored).

    Raises ValueError on an empty scale list, unknown ``resize`` / ``convention`` or
    unexpected model outputs.
    """
    if not test_scales:
        raise ValueError("evaluate.test_scales must not be empty")
    if isinstance(model, InferenceNet):
        net = model
        if (net.flip_test, net.project2image) != (bool(flip_test), bool(project2image)) or (
                convention is not None and convention_rules(convention).name != convention_rules(net.convention).name):
            raise ValueError("the InferenceNet's flip_test / project2image / convention differ from the arguments")
    else:
        net = inference_net(model, flip_test=flip_test, project2image=project2image, convention=convention,
                            flip_index=flip_index)
    conv = net.convention if convention is None else convention  # test-time fields may differ (input_affine)
    scales = [float(s) for s in test_scales]
    dev = torch.device(device) if device is not None else _model_device(net)
    height, width = image_bgr.shape[:2]
    geo = dict(resize=resize, input_size=int(input_size), min_scale=min(scales), convention=conv)
    base = input_geometry(width, height, scale=1.0, **geo)
    stride = net.stride
    grid_hw = (base.height // stride, base.width // stride)
    half_net = net if not net.project2image else InferenceNet(
        net.model, num_joints=net.num_joints, tag_dim=net.tag_dim, convention=conv, flip_test=net.flip_test,
        flip_index=net.flip_index, project2image=False)
    was_training = net.model.training
    net.eval()
    try:
        hm_sum, tag_list = None, []
        for scale in scales:
            checkpoint(f"test scale {scale:g}")   # a served request past its deadline stops here
            g = base if scale == 1.0 else input_geometry(width, height, scale=scale, **geo)
            check_input_multiple(g, scale)
            x = torch.from_numpy(input_batch(image_bgr, g)).to(dev)
            if scale == 1.0:
                hm, tg = net(x)
                hm, tg = hm[0], tg[0]
            else:
                hm, tg = half_net(x)
                hm = _to_grid(hm, g, base, stride, grid_hw, conv)[0]
                tg = tg[0].permute(0, 3, 1, 2)  # (K, T*n, h, w)
                tg = _to_grid(tg, g, base, stride, grid_hw, conv).permute(0, 2, 3, 1)
            hm_sum = hm if hm_sum is None else hm_sum + hm
            tag_list.append(tg)
        heatmaps = hm_sum / len(scales)
        tags = torch.cat(tag_list, dim=-1)
    finally:
        net.train(was_training)
    return DecodeMaps(heatmaps, tags.contiguous(), base.affine, stride)


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
    return check_convention(conv if isinstance(conv, Convention) else str(conv))


def predict_image(model: torch.nn.Module, image_bgr: np.ndarray, *,
                  eval_params: EvaluateSection | InferenceSettings | dict | None = None,
                  convention: str | None = None, input_size: int | None = None, resize: str | None = None,
                  flip_test: bool | None = None, test_scales: Sequence[float] | None = None,
                  detection_threshold: float | None = None, tag_threshold: float | None = None,
                  max_people: int | None = None, nms_kernel: int | None = None, tie_break: bool | None = None,
                  project2image: bool | None = None, adjust: bool | None = None, refine: bool | None = None,
                  nms_oks: float | None = None, device: torch.device | str | None = None,
                  off_domain: bool = False) -> list[dict]:
    """Detect the persons of one image.

    Settings come from ``eval_params`` (the params ``evaluate`` section, `pose.params.EvaluateSection`,
    or `pose.decode.persons.InferenceSettings`, or settings stored with a model), each overridable by its
    keyword; all of :data:`EVAL_KEYS` must be given one way or the other. The coordinate
    convention comes from ``convention`` or the model (:func:`model_convention`). With
    ``project2image`` and ``project_maps`` every map is resampled to the input (the reference);
    with ``project2image`` alone the network stops at the 1/2 maps and only the joints are
    projected (``pose.decode.persons.project_joints``).

    Args:
        model: a ``pose.models`` model (``[out_quarter, out_half]`` for a (B, 3, H, W)
            input, module docstring), or an :class:`InferenceNet` built with the same
            flip setting and ``project2image = pose.decode.persons.graph_projects(settings)``.
        image_bgr: (H, W, 3) uint8 BGR image (``cv2.imread``).
        device: where to run (default: the model's device).
        off_domain: the model was trained on generated figures and the image is a photo (the
            calibrated ``confidence``, :func:`pose.decode.persons.person_confidence`).

    Returns:
        Persons sorted by score (descending), each ``{"keypoints": (K, 3) float64 [x, y,
        score] in IMAGE px (x = y = 0 where the joint was not found), "score": float, "bbox",
        "confidence", "inside"}`` (:func:`pose.decode.persons.decode_persons`).

    Raises ValueError on missing or invalid settings, a bad image or unexpected model outputs.
    """
    cfg = resolve_eval_params(eval_params, input_size=input_size, resize=resize, flip_test=flip_test,
                              test_scales=test_scales, detection_threshold=detection_threshold,
                              tag_threshold=tag_threshold, max_people=max_people, nms_kernel=nms_kernel,
                              tie_break=tie_break, project2image=project2image, adjust=adjust, refine=refine,
                              nms_oks=nms_oks)
    conv = with_overrides(model_convention(model, convention), cfg.convention_overrides)
    img = check_image(image_bgr)
    maps = multi_scale_maps(model, img, input_size=int(cfg.input_size), resize=str(cfg.resize),
                            test_scales=[float(s) for s in cfg.test_scales], flip_test=bool(cfg.flip_test),
                            project2image=graph_projects(cfg), convention=conv, device=device)
    checkpoint("decoding")
    return decode_persons(maps.heatmaps.float().cpu().numpy(), maps.tags.float().cpu().numpy(), maps.affine,
                          maps.stride, cfg=cfg, convention=conv, image_size=(img.shape[1], img.shape[0]),
                          off_domain=off_domain)


def predict_dataset(model: torch.nn.Module, ann_file: Path | str, images_dir: Path | str,
                    eval_params: EvaluateSection | InferenceSettings | dict, device: torch.device | str | None = None,
                    *,
                    convention: str | None = None) -> list[dict]:
    """Predict every image listed in a COCO annotation file.

    Args:
        ann_file: COCO JSON whose ``images`` (``id``, ``file_name``) are predicted, all of
            them, with or without persons (false positives count in COCO AP).
        images_dir: folder holding the ``file_name`` files.
        eval_params: the params ``evaluate`` section (`pose.params.EvaluateSection`), or
            `pose.decode.persons.InferenceSettings` (all of :data:`EVAL_KEYS`).
        convention: coordinate convention, or None for the model's (:func:`model_convention`).

    Returns:
        COCO results entries (:func:`to_coco_results`), category 1, in image-id order.

    Raises FileNotFoundError for a missing annotation file or image, ValueError for an
    unreadable image or missing settings.
    """
    ann_file, images_dir = Path(ann_file), Path(images_dir)
    if not ann_file.exists():
        raise FileNotFoundError(f"{ann_file}: annotation file not found")
    cfg = resolve_eval_params(eval_params)
    conv = model_convention(model, convention)
    coco = json.loads(ann_file.read_text())
    exif = dataset_exif(coco, ann_file)  # the frame the annotations were made in (pose.io)
    images = sorted(coco.get("images", []), key=lambda im: im["id"])
    results: list[dict] = []
    for n, im in enumerate(images):
        image = read_image(images_dir / im["file_name"], im["id"], exif=exif)
        persons = predict_image(model, image, eval_params=cfg, convention=conv, device=device)
        results.extend(to_coco_results(persons, im["id"]))
        if (n + 1) % 50 == 0:
            log.info("predicted %d/%d images", n + 1, len(images))
    return results
