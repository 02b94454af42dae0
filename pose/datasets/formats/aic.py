"""AI Challenger keypoints (Wu et al., arXiv:1711.06475): 14 keypoints, either

* the COCO-style JSON of mmpose's conversion (``aic_{train,val}.json``, visibility 0 / 1 / 2), or
* the original release: a JSON list of ``{image_id, human_annotations, keypoint_annotations}``
  (boxes ``[x1, y1, x2, y2]``; visibility 1 = visible, 2 = occluded, 3 = not labelled, mapped to
  COCO 2, 1, 0); images are ``<image_id>.jpg``, image ids are 1.. in sorted ``image_id`` order.

Mapping: the 12 body joints to COCO 5 .. 16; ``head_top`` and ``neck`` only in ``native_keypoints``.

Native metric: COCO-style OKS AP (pycocotools) in AIC's joint order with AIC's sigmas
(``aic_*`` keys). Deviation: the challenge's keypoint_eval.py averages its own mAP over OKS
thresholds with the box area as scale; pycocotools' interpolated AP is used here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pose.datasets.formats.base import (
    ConversionError,
    DatasetFormat,
    annotation,
    image_size,
    native_oks,
    parse_coco_style,
    read_json,
)

KEYPOINT_NAMES: tuple[str, ...] = (
    "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow", "left_wrist",
    "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle", "head_top", "neck",
)
#: AI Challenger OKS sigmas (AI_Challenger_2017 keypoint_eval.py: delta = 2 * these).
SIGMAS = np.array([0.01388152, 0.01515228, 0.01057665, 0.01417709, 0.01497891, 0.01402144,
                   0.03909642, 0.03686941, 0.01981803, 0.03843971, 0.03412318, 0.02415081,
                   0.01291456, 0.01236173], dtype=np.float64)
TO_COCO: tuple[int | None, ...] = (6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, None, None)


def _parse_raw(data: list, native_json: Path, images_dir: Path) -> dict:
    images, anns = [], []
    ann_id = 0
    for n, rec in enumerate(sorted(data, key=lambda r: str(r.get("image_id")))):
        name = str(rec.get("image_id"))
        file_name = name if name.lower().endswith((".jpg", ".jpeg", ".png")) else f"{name}.jpg"
        path = images_dir / file_name
        if not path.is_file():
            raise FileNotFoundError(f"{native_json}: image {file_name!r} not found in {images_dir}")
        w, h = image_size(path)
        image_id = n + 1
        images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
        boxes = rec.get("human_annotations") or {}
        for human, values in sorted((rec.get("keypoint_annotations") or {}).items()):
            native = np.asarray(values, dtype=np.float64).reshape(-1, 3)
            if native.shape[0] != len(KEYPOINT_NAMES):
                raise ConversionError(f"{native_json}: {name}/{human} has {native.shape[0]} keypoints, expected 14")
            native[:, 2] = np.select([native[:, 2] == 1, native[:, 2] == 2], [2, 1], 0)
            if human not in boxes:
                raise ConversionError(f"{native_json}: {name}/{human} has keypoints but no box")
            x1, y1, x2, y2 = (float(v) for v in boxes[human])
            ann_id += 1
            anns.append(annotation(FORMAT, ann_id, image_id, native, [x1, y1, x2 - x1, y2 - y1]))
    return {"images": images, "annotations": anns, "licenses": []}


def parse(native_json: Path, images_dir: Path) -> dict:
    """AIC JSON (either layout, module docstring) -> COCO-17 records."""
    data = read_json(native_json)
    if isinstance(data, list):
        return _parse_raw(data, native_json, images_dir)
    return parse_coco_style(FORMAT, data, native_json, images_dir)


def native_metrics(gt: dict, results: list, sigmas: np.ndarray) -> dict:
    """OKS AP in AIC's joint order with the given (14,) sigmas (`base.native_oks`): ``aic_*`` keys."""
    return native_oks(FORMAT, gt, results, sigmas)


FORMAT = DatasetFormat(
    kind="aic", schema="aic14", keypoint_names=KEYPOINT_NAMES, sigmas=SIGMAS, sigmas_name="AIC_SIGMAS",
    to_coco=TO_COCO, parse=parse, native_metrics=native_metrics,
    native_metric="OKS AP with AIC's sigmas (pycocotools; the challenge's own mAP averages differently): aic_* keys",
    reference="Wu et al., arXiv:1711.06475",
)
