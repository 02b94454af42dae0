"""From aggregated maps to persons in image px, NumPy only (no torch): the settings of
params.yaml ``evaluate`` that decoding reads, the grouping (``pose.decode.group``), the
mapping back to image px (``pose.decode.preprocess.heatmap_to_image``), pose NMS and COCO
results entries. Shared by the torch path (``pose.decode.inference.predict_image``) and
the onnxruntime path (``pose.decode.onnx_backend``), so both return the same persons for
the same maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pose.datasets.schema import COCO_SIGMAS
from pose.decode.group import group_keypoints, oks_nms
from pose.decode.preprocess import RESIZE_MODES, heatmap_to_image

#: Keys of params.yaml ``evaluate`` that inference reads.
EVAL_KEYS = ("input_size", "resize", "flip_test", "test_scales", "detection_threshold", "tag_threshold",
             "max_people", "nms_kernel", "tie_break", "project2image", "adjust", "refine", "nms_oks")
#: Keys inference reads when present: ``convention_overrides`` (`pose.codec.with_overrides`; absent:
#: none, e.g. the settings stored with a model registered before it existed).
OPTIONAL_EVAL_KEYS = ("convention_overrides",)


def resolve_eval_params(eval_params: dict | None, **explicit) -> dict:
    """The inference settings: the :data:`EVAL_KEYS` of ``eval_params`` (params.yaml
    ``evaluate``; other keys ignored), each overridden by an ``explicit`` keyword that is
    not None.

    Raises ValueError naming the params key when a setting is missing, ``resize`` is not
    one of :data:`RESIZE_MODES` or ``nms_kernel`` is not an odd positive integer.
    """
    cfg = {k: v for k, v in (eval_params or {}).items() if k in EVAL_KEYS + OPTIONAL_EVAL_KEYS}
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


def decode_persons(heatmaps: np.ndarray, tags: np.ndarray, affine: np.ndarray, stride: float, *, cfg: dict,
                   convention: str) -> list[dict]:
    """Group one image's aggregated maps into persons in image px.

    Args:
        heatmaps: (K, Hg, Wg) float32 aggregated heatmaps on the decode grid.
        tags: (K, Hg, Wg, T * n) float32 tags on the same grid.
        affine: (2, 3) float64 image px -> base input px.
        stride: base input px per grid pixel (1 with ``project2image``, else 2).
        cfg: :func:`resolve_eval_params` output.
        convention: params ``model.convention`` of the model.

    Returns:
        Persons sorted by score (descending), each ``{"keypoints": (K, 3) float64 [x, y,
        score] in IMAGE px (x = y = 0 where the joint was not found), "score": float,
        "bbox": [x, y, w, h] image px}`` (:func:`keypoint_bbox`; the person contract of
        ``pose.codec``, what ``pose predict``, the video JSON Lines and serving return);
        the score is the mean of the K joint scores (associative embedding). With
        ``nms_oks < 1`` persons whose OKS (COCO sigmas; their mean for K != 17) with a
        higher-scoring person exceeds it are dropped (:func:`pose.decode.group.oks_nms`).

    Raises ValueError on bad shapes or an unknown convention.
    """
    persons, scores = group_keypoints(np.asarray(heatmaps, np.float32), np.asarray(tags, np.float32),
                                      detection_threshold=float(cfg["detection_threshold"]),
                                      tag_threshold=float(cfg["tag_threshold"]),
                                      max_people=int(cfg["max_people"]), nms_kernel=int(cfg["nms_kernel"]),
                                      tie_break=bool(cfg["tie_break"]), convention=convention,
                                      adjust=bool(cfg["adjust"]), refine=bool(cfg["refine"]))
    kps = heatmap_to_image(persons, affine, stride, convention=convention)
    num_joints = kps.shape[1]  # (N, K, 3), also for N = 0
    sigmas = COCO_SIGMAS if num_joints == len(COCO_SIGMAS) else np.full(num_joints, float(np.mean(COCO_SIGMAS)))
    order = oks_nms(kps, scores, sigmas, float(cfg["nms_oks"]))
    return [{"keypoints": kps[i], "score": float(scores[i]), "bbox": keypoint_bbox(kps[i])} for i in order]


def keypoint_bbox(keypoints: np.ndarray) -> list[float]:
    """``[x, y, w, h]`` (image px) around the joints of a (K, 3) ``[x, y, score]`` array that
    were found (score > 0); ``[0, 0, 0, 0]`` when none was. Bottom-up decoding has no box
    head: this is the box the persons of ``pose.codec`` carry."""
    kp = np.asarray(keypoints, dtype=np.float64).reshape(-1, 3)
    found = kp[kp[:, 2] > 0, :2]
    if not len(found):
        return [0.0, 0.0, 0.0, 0.0]
    lo, hi = found.min(axis=0), found.max(axis=0)
    return [float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])]


def person_json(person: dict) -> dict:
    """A person as JSON-able plain values (serving's answer, the video JSON Lines):
    ``{"keypoints": [[x, y, score] x K] image px, "score": float, "bbox": [x, y, w, h] image
    px}``; a flat ``[x1, y1, s1, ...]`` keypoint list is reshaped, a missing box is computed
    (:func:`keypoint_bbox`)."""
    kp = np.asarray(person["keypoints"], dtype=np.float64).reshape(-1, 3)
    box = person.get("bbox")
    return {"keypoints": kp.tolist(), "score": float(person["score"]),
            "bbox": [float(v) for v in box] if box is not None else keypoint_bbox(kp)}


def to_coco_results(persons: Sequence[dict], image_id: int, category_id: int = 1) -> list[dict]:
    """COCO keypoint results entries for one image: ``{"image_id", "category_id",
    "keypoints": [x1, y1, s1, ...] (3K floats, image px rounded to 1e-3, s = joint score),
    "score"}``."""
    return [{"image_id": int(image_id), "category_id": int(category_id),
             "keypoints": [round(float(v), 3) for v in np.asarray(p["keypoints"], np.float64).reshape(-1)],
             "score": float(p["score"])} for p in persons]
