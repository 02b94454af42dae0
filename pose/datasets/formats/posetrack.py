"""PoseTrack 2018 (Andriluka et al., CVPR 2018; posetrack.net): one COCO-style JSON per video
(``annotations/{train,val}/<video>.json``) with 17 keypoints per person, ``file_name`` relative to
the release root (``images/val/<video>/<frame>.jpg``), no image sizes, per-image ``is_labeled``,
``frame_id``, ``vid_id``, ``ignore_regions_x/y``, per-person ``track_id`` and ``bbox_head``.
Visibility is 0 (not labelled) / 1 (labelled; PoseTrack marks no occlusion), kept as COCO's
0 / 1.

Conversion: frames with ``is_labeled`` false (and any annotation on them) are dropped: an
unlabelled frame would teach "nobody here". Ignore regions are not converted (COCO's crowd
regions are their counterpart; predictions inside them count as false positives here).
``track_id`` and ``bbox_head`` are kept on each annotation.

Mapping: nose, ears and the 12 body joints to their COCO slots; ``head_bottom`` and
``head_top`` have no COCO counterpart (kept in ``native_keypoints``); COCO's eyes stay unlabelled.

Native metric: OKS AP in PoseTrack's joint order with mmpose's PoseTrack18 sigmas (COCO's, the
head joints taking the eyes' values): ``posetrack_*`` keys. PoseTrack's own metrics (poseval's
head-normalised mAP and MOTA for tracking) are not computed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pose.datasets.formats.base import ConversionError, DatasetFormat, native_oks, parse_coco_style, read_json

KEYPOINT_NAMES: tuple[str, ...] = (
    "nose", "head_bottom", "head_top", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
#: mmpose configs/_base_/datasets/posetrack18.py sigmas (COCO's values in this joint order).
SIGMAS = np.array([0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062,
                   0.107, 0.107, 0.087, 0.087, 0.089, 0.089], dtype=np.float64)
TO_COCO: tuple[int | None, ...] = (0, None, None, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16)


def parse(native_json: Path, images_dir: Path) -> dict:
    """One PoseTrack 2018 video JSON -> COCO-17 records of its labelled frames (module docstring);
    ``images_dir`` is the release root the ``file_name`` s are relative to."""
    data = read_json(native_json)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ConversionError(f"{native_json}: expected a PoseTrack JSON object with images / annotations")
    labelled = [img for img in data["images"] if img.get("is_labeled", True)]
    keep = {img.get("id") for img in labelled}
    anns = [a for a in data.get("annotations", []) if a.get("image_id") in keep]
    out = parse_coco_style(FORMAT, {**data, "images": labelled, "annotations": anns}, native_json, images_dir)
    by_id = {a["id"]: a for a in anns}
    for a in out["annotations"]:
        src = by_id[a["id"]]
        a.update({k: src[k] for k in ("track_id", "bbox_head") if k in src})
    return out


def native_metrics(gt: dict, results: list, sigmas: np.ndarray) -> dict:
    """OKS AP in PoseTrack's joint order with the given (17,) sigmas (`base.native_oks`): ``posetrack_*``."""
    return native_oks(FORMAT, gt, results, sigmas)


FORMAT = DatasetFormat(
    kind="posetrack", schema="posetrack17", keypoint_names=KEYPOINT_NAMES, sigmas=SIGMAS,
    sigmas_name="POSETRACK_SIGMAS", to_coco=TO_COCO, parse=parse, native_metrics=native_metrics,
    native_metric="OKS AP with mmpose's PoseTrack18 sigmas: posetrack_* keys (poseval mAP / MOTA not computed)",
    reference="Andriluka et al., CVPR 2018; posetrack.net",
)
