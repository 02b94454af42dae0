"""Test-time inference of HigherHRNet (Cheng et al., CVPR 2020, Sec. 3.4): heatmap
aggregation of the 1/4 and 1/2 heads, flip test, multi-scale test, decoding, and the
mapping of persons back to image pixels.

Coordinate chain (``pose.augment.affine``): image px --letterbox affine M--> input px
(square ``S x S``) --divide by the stride--> heatmap px, with pixel index ``i`` at
coordinate ``i`` (no half-pixel shift). Every resampling here respects that chain:

* resizing a map of width ``w_in`` to ``w_out`` (same input extent) samples output pixel
  ``j`` at input coordinate ``j * w_in / w_out`` (bilinear, border replicated). For 1/4 ->
  1/2 this is ``j / 2``: even pixels copy, odd pixels average two neighbours. The
  reference uses ``align_corners=False`` instead, which matches its half-pixel
  convention, not this project's.
* flipping: an input pixel ``x`` mirrors to ``S - 1 - x``, so heatmap pixel ``j`` of the
  un-flipped image corresponds to coordinate ``(S - 1) / stride - j`` of the flipped map
  (``W - 0.5 - j`` at stride 2). :func:`unflip_maps` samples there; a plain array flip
  (what the reference does) would be off by ``1 - 1/stride`` heatmap px here.

Model output format: ``[out_quarter (B, K + K*T, S/4, S/4), out_half (B, K, S/2, S/2)]``,
heatmaps first then tags; tag channel ``K + t*K + k`` is tag dimension ``t`` of joint ``k``
(``T`` blocks of ``K`` channels, as ``pose.models.hrnet`` and ``pose.losses`` lay them out).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from pose.io import read_image
from pose.augment.affine import apply_affine, invert_affine, letterbox_affine
from pose.datasets.schema import COCO_SIGMAS, FLIP_INDEX
from pose.decode.group import group_keypoints, oks_nms

log = logging.getLogger(__name__)

#: ImageNet channel statistics in RGB order, for images scaled to [0, 1]. Training and
#: inference both normalise with these (:func:`to_input_tensor`).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Input sizes of the multi-scale test (other than scale 1.0) are rounded to this multiple
#: (HRNet's lowest branch is at 1/32).
SIZE_DIVISOR = 32

#: Keys of params.yaml ``evaluate`` that inference reads.
EVAL_KEYS = ("input_size", "flip_test", "test_scales", "detection_threshold", "tag_threshold",
             "max_people", "adjust", "refine", "nms_oks")


def to_input_tensor(image_bgr: np.ndarray, affine: np.ndarray, input_size: int,
                    border_value: int = 0) -> np.ndarray:
    """Warp an image into the network input and normalise it.

    Args:
        image_bgr: (H, W, 3) uint8 image in OpenCV's BGR order.
        affine: (2, 3) image px -> input px (e.g. ``letterbox_affine(W, H, input_size)``).
        input_size: side ``S`` of the square input in px.
        border_value: grey level of the padding before normalisation (0: black).

    Returns:
        (3, S, S) float32 array, RGB channel order, ``(rgb / 255 - IMAGENET_MEAN) /
        IMAGENET_STD``. ``cv2.warpAffine`` (bilinear) uses the same pixel-centre
        convention as ``pose.augment.affine``.

    Raises ValueError on a non-(H, W, 3) uint8 image.
    """
    img = np.asarray(image_bgr)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 BGR, got {img.shape} {img.dtype}")
    warped = cv2.warpAffine(img, np.asarray(affine, dtype=np.float64), (int(input_size), int(input_size)),
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


def resize_maps(maps: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resample (B, C, h, w) maps covering the same input extent to (B, C, height, width):
    output pixel ``(i, j)`` samples input coordinate ``(i * h / height, j * w / width)``
    (bilinear, border replicated). Identity when the size is unchanged. Runs on the
    tensor's device."""
    h, w = maps.shape[-2:]
    if (h, w) == (height, width):
        return maps
    dev = maps.device
    pos_y = torch.arange(height, device=dev, dtype=torch.float32) * (h / height)
    pos_x = torch.arange(width, device=dev, dtype=torch.float32) * (w / width)
    return _interp_axis(_interp_axis(maps, pos_y, maps.dim() - 2), pos_x, maps.dim() - 1)


def unflip_maps(maps: torch.Tensor, stride: float) -> torch.Tensor:
    """Map (B, C, H, W) maps computed on a horizontally flipped input back to the
    un-flipped frame: output pixel ``j`` samples ``(W * stride - 1) / stride - j`` of the
    flipped map (exact mirror of input px ``x -> S - 1 - x``; bilinear, border replicated).
    Channels are not swapped here."""
    w = maps.shape[-1]
    pos = (w * stride - 1.0) / stride - torch.arange(w, device=maps.device, dtype=torch.float32)
    return _interp_axis(maps, pos, maps.dim() - 1)


def _split(outputs: Sequence[torch.Tensor], num_joints: int, tag_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Heatmaps (B, K, S/2, S/2) (mean of both heads) and tags (B, K*T, S/2, S/2)."""
    if len(outputs) != 2:
        raise ValueError(f"expected [out_quarter, out_half], got {len(outputs)} outputs")
    quarter, half = outputs
    need = num_joints + num_joints * tag_dim
    if quarter.dim() != 4 or quarter.shape[1] < need:
        raise ValueError(f"out_quarter must be (B, >= {need}, h, w), got {tuple(quarter.shape)}")
    if half.dim() != 4 or half.shape[1] < num_joints:
        raise ValueError(f"out_half must be (B, >= {num_joints}, H, W), got {tuple(half.shape)}")
    height, width = half.shape[-2:]
    q = resize_maps(quarter[:, :need].float(), height, width)
    heatmaps = (q[:, :num_joints] + half[:, :num_joints].float()) / 2.0
    return heatmaps, q[:, num_joints:need]


def aggregate_outputs(outputs: Sequence[torch.Tensor], num_joints: int, tag_dim: int,
                      flip_outputs: Sequence[torch.Tensor] | None = None,
                      flip_index: Sequence[int] = FLIP_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine the model's two heads (and the flip branch) at 1/2 resolution.

    Args:
        outputs: ``[out_quarter (B, K + K*T, S/4, S/4), out_half (B, K, S/2, S/2)]``.
        num_joints: K. tag_dim: T.
        flip_outputs: the same for the horizontally flipped input, or None.
        flip_index: joint permutation of a horizontal flip (default COCO-17).

    Returns:
        ``(heatmaps, tags)``: heatmaps (B, K, S/2, S/2) float32, the mean of the upsampled
        1/4 heatmaps and the 1/2 heatmaps (and of the un-flipped, joint-swapped flip branch);
        tags (B, K, S/2, S/2, T * n) float32, the 1/4 tags upsampled to 1/2 (n = 2 with the
        flip branch, its tags after the plain ones). Heatmap px of the 1/2 maps.

    Raises ValueError on unexpected output shapes or a flip_index of the wrong length.
    """
    heatmaps, tags = _split(outputs, num_joints, tag_dim)
    b, _, h, w = heatmaps.shape
    tags = tags.reshape(b, tag_dim, num_joints, h, w).permute(0, 2, 3, 4, 1)  # (B, K, H, W, T)
    if flip_outputs is None:
        return heatmaps, tags.contiguous()
    if len(flip_index) != num_joints:
        raise ValueError(f"flip_index has {len(flip_index)} entries for {num_joints} joints")
    hm_f, tags_f = _split(flip_outputs, num_joints, tag_dim)
    if hm_f.shape != heatmaps.shape:
        raise ValueError(f"flip outputs {tuple(hm_f.shape)} differ from outputs {tuple(heatmaps.shape)}")
    stride = 2.0  # the aggregated maps are at 1/2 of the input
    idx = torch.as_tensor(list(flip_index), device=heatmaps.device)
    hm_f = unflip_maps(hm_f, stride).index_select(1, idx)
    tags_f = unflip_maps(tags_f, stride).reshape(b, tag_dim, num_joints, h, w).index_select(2, idx)
    heatmaps = (heatmaps + hm_f) / 2.0
    tags = torch.cat([tags, tags_f.permute(0, 2, 3, 4, 1)], dim=-1)
    return heatmaps, tags.contiguous()


def scaled_input_size(input_size: int, scale: float) -> int:
    """Input side for a test scale: ``input_size`` itself for 1.0, otherwise
    ``round(input_size * scale / SIZE_DIVISOR) * SIZE_DIVISOR`` (at least SIZE_DIVISOR)."""
    if scale <= 0:
        raise ValueError(f"test scale must be positive, got {scale}")
    if scale == 1.0:
        return int(input_size)
    return max(SIZE_DIVISOR, int(round(input_size * scale / SIZE_DIVISOR)) * SIZE_DIVISOR)


def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@torch.no_grad()
def multi_scale_maps(model: torch.nn.Module, image_bgr: np.ndarray, *, input_size: int,
                     test_scales: Sequence[float], flip_test: bool,
                     device: torch.device | str | None = None,
                     flip_index: Sequence[int] = FLIP_INDEX) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Run the model over the test scales (and flips) of one image.

    Each scale ``s`` letterboxes the image into a ``scaled_input_size(input_size, s)``
    input; its aggregated 1/2 maps are resampled to the base 1/2 size ``input_size / 2``
    (letterbox inputs of different sizes are proportional, so base heatmap px ``j``
    corresponds to ``j * S_s / S`` of scale ``s``). Heatmaps are averaged over scales,
    tags concatenated along the last axis (scale order, plain before flip). With
    ``test_scales == [1.0]`` this is exactly the single-scale result. (The official
    HigherHRNet keeps only the tags of scale 1.0 when several scales run; here every
    scale's tags are kept, so the tag distance uses all of them.)

    Returns:
        ``(heatmaps (K, S/2, S/2) float32, tags (K, S/2, S/2, T * n) float32, affine)``:
        tensors on the model's device, ``affine`` the (2, 3) float64 image px -> base
        input px letterbox. The model is run in eval mode (its mode is restored).

    Raises ValueError on an empty scale list or unexpected model outputs.
    """
    if not test_scales:
        raise ValueError("test_scales must not be empty")
    dev = torch.device(device) if device is not None else _model_device(model)
    height, width = image_bgr.shape[:2]
    base_affine = letterbox_affine(width, height, int(input_size))
    base_hw = (int(input_size) // 2, int(input_size) // 2)
    was_training = model.training
    model.eval()
    try:
        hm_sum, tag_list = None, []
        for scale in test_scales:
            size = scaled_input_size(int(input_size), float(scale))
            affine = letterbox_affine(width, height, size)
            x = torch.from_numpy(to_input_tensor(image_bgr, affine, size)).to(dev)[None]
            batch = torch.cat([x, torch.flip(x, dims=[3])]) if flip_test else x
            outputs = model(batch)
            num_joints = int(outputs[1].shape[1])
            tag_dim = (int(outputs[0].shape[1]) - num_joints) // num_joints
            if tag_dim < 1:
                raise ValueError(f"out_quarter has {outputs[0].shape[1]} channels for {num_joints} joints: no tags")
            plain = [o[:1] for o in outputs]
            flipped = [o[1:] for o in outputs] if flip_test else None
            hm, tg = aggregate_outputs(plain, num_joints, tag_dim, flipped, flip_index)
            hm = resize_maps(hm, *base_hw)[0]
            tg = tg[0].permute(0, 3, 1, 2)  # (K, T*n, h, w)
            tg = resize_maps(tg, *base_hw).permute(0, 2, 3, 1)
            hm_sum = hm if hm_sum is None else hm_sum + hm
            tag_list.append(tg)
        heatmaps = hm_sum / len(test_scales)
        tags = torch.cat(tag_list, dim=-1)
    finally:
        model.train(was_training)
    return heatmaps, tags, base_affine


def heatmap_to_image(keypoints: np.ndarray, affine: np.ndarray, stride: float = 2.0) -> np.ndarray:
    """Map (N, K, >=3) decoded keypoints from heatmap px (1/``stride`` of the input) to
    image px through the inverse of ``affine`` (image px -> input px). Returns (N, K, 3)
    float64 ``[x, y, score]``; joints with score 0 (not found) get x = y = 0."""
    kp = np.asarray(keypoints, dtype=np.float64)
    out = np.zeros(kp.shape[:-1] + (3,), dtype=np.float64)
    if kp.size == 0:
        return out
    out[..., :2] = apply_affine(invert_affine(affine), kp[..., :2] * stride)
    out[..., 2] = kp[..., 2]
    out[kp[..., 2] <= 0, :2] = 0.0
    return out


def _resolve(eval_params: dict | None, **explicit) -> dict:
    cfg = {k: v for k, v in (eval_params or {}).items() if k in EVAL_KEYS}
    cfg.update({k: v for k, v in explicit.items() if v is not None})
    missing = [k for k in EVAL_KEYS if k not in cfg]
    if missing:
        raise ValueError(f"inference settings missing (params.yaml `evaluate`): {', '.join(missing)}")
    return cfg


def predict_image(model: torch.nn.Module, image_bgr: np.ndarray, *, eval_params: dict | None = None,
                  input_size: int | None = None, flip_test: bool | None = None,
                  test_scales: Sequence[float] | None = None, detection_threshold: float | None = None,
                  tag_threshold: float | None = None, max_people: int | None = None,
                  adjust: bool | None = None, refine: bool | None = None, nms_oks: float | None = None,
                  device: torch.device | str | None = None) -> list[dict]:
    """Detect the persons of one image.

    Settings come from ``eval_params`` (params.yaml ``evaluate``), each overridable by its
    keyword; all of :data:`EVAL_KEYS` must be given one way or the other.

    Args:
        model: returns ``[out_quarter, out_half]`` (module docstring) for a (B, 3, S, S) input.
        image_bgr: (H, W, 3) uint8 BGR image (``cv2.imread``).
        device: where to run (default: the model's device).

    Returns:
        Persons sorted by score (descending), each ``{"keypoints": (K, 3) float64 [x, y,
        score] in IMAGE px (x = y = 0 where the joint was not found), "score": float}``;
        the score is the mean of the K joint scores (associative embedding). With
        ``nms_oks < 1`` persons whose OKS (COCO sigmas) with a higher-scoring person
        exceeds it are dropped (:func:`pose.decode.group.oks_nms`).

    Raises ValueError on missing settings, a bad image or unexpected model outputs.
    """
    cfg = _resolve(eval_params, input_size=input_size, flip_test=flip_test, test_scales=test_scales,
                   detection_threshold=detection_threshold, tag_threshold=tag_threshold,
                   max_people=max_people, adjust=adjust, refine=refine, nms_oks=nms_oks)
    img = np.asarray(image_bgr)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 BGR, got {img.shape} {img.dtype}")
    heatmaps, tags, affine = multi_scale_maps(model, img, input_size=int(cfg["input_size"]),
                                              test_scales=[float(s) for s in cfg["test_scales"]],
                                              flip_test=bool(cfg["flip_test"]), device=device)
    persons, scores = group_keypoints(heatmaps.float().cpu().numpy(), tags.float().cpu().numpy(),
                                      detection_threshold=float(cfg["detection_threshold"]),
                                      tag_threshold=float(cfg["tag_threshold"]),
                                      max_people=int(cfg["max_people"]),
                                      adjust=bool(cfg["adjust"]), refine=bool(cfg["refine"]))
    kps = heatmap_to_image(persons, affine, stride=2.0)
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
                    eval_params: dict, device: torch.device | str | None = None) -> list[dict]:
    """Predict every image listed in a COCO annotation file.

    Args:
        ann_file: COCO JSON whose ``images`` (``id``, ``file_name``) are predicted, all of
            them, with or without persons (false positives count in COCO AP).
        images_dir: folder holding the ``file_name`` files.
        eval_params: params.yaml ``evaluate`` (all of :data:`EVAL_KEYS`).

    Returns:
        COCO results entries (:func:`to_coco_results`), category 1, in image-id order.

    Raises FileNotFoundError for a missing annotation file or image, ValueError for an
    unreadable image or missing settings.
    """
    ann_file, images_dir = Path(ann_file), Path(images_dir)
    if not ann_file.exists():
        raise FileNotFoundError(f"{ann_file}: annotation file not found")
    cfg = _resolve(eval_params)
    images = sorted(json.loads(ann_file.read_text()).get("images", []), key=lambda im: im["id"])
    results: list[dict] = []
    for n, im in enumerate(images):
        image = read_image(images_dir / im["file_name"], im["id"])
        persons = predict_image(model, image, eval_params=cfg, device=device)
        results.extend(to_coco_results(persons, im["id"]))
        if (n + 1) % 50 == 0:
            log.info("predicted %d/%d images", n + 1, len(images))
    return results
