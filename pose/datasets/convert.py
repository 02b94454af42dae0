"""Converters from other pose benchmarks' native formats into the project's COCO-17 schema.

Supported inputs
----------------
* ``crowdpose``: CrowdPose (Li et al., CVPR 2019), COCO-style JSON with 14 keypoints
  (``crowdpose_{train,val,test,trainval}.json``); visibility already COCO-style (0/1/2).
* ``aic``: AI Challenger keypoints (Wu et al., arXiv:1711.06475), either the COCO-style
  JSON of mmpose's conversion (``aic_{train,val}.json``, visibility 0/1/2), or the
  original release (a JSON list of ``{image_id, human_annotations, keypoint_annotations}``,
  boxes ``[x1, y1, x2, y2]``, visibility 1 = visible, 2 = occluded, 3 = not labelled,
  mapped to COCO 2, 1, 0).
* ``mpii``: MPII Human Pose (Andriluka et al., CVPR 2014) in the JSON list format of
  HRNet / mmpose (``mpii_{train,val}.json``: ``image``, ``joints`` (16 x 2),
  ``joints_vis`` (16, 1 = annotated), ``center``, ``scale`` (person height / 200 px)).
  MPII coordinates are MATLAB 1-based: 1 is subtracted from joints and centre (as the
  HRNet reference code does). MPII has no boxes: the box is the person square of side
  ``200 * scale`` around the centre shifted down by ``15 * scale`` px (mmpose's
  convention), enlarged to hold every annotated joint and clipped to the image.

Joint mapping (0-based indices; "-" = the dataset lacks the joint: v = 0, x = y = 0)
-----------------------------------------------------------------------------------

=====  ================  =========  =====  ====
COCO   name              CrowdPose  AIC    MPII
=====  ================  =========  =====  ====
0      nose              -          -      -
1      left_eye          -          -      -
2      right_eye         -          -      -
3      left_ear          -          -      -
4      right_ear         -          -      -
5      left_shoulder     0          3      13
6      right_shoulder    1          0      12
7      left_elbow        2          4      14
8      right_elbow       3          1      11
9      left_wrist        4          5      15
10     right_wrist       5          2      10
11     left_hip          6          9      3
12     right_hip         7          6      2
13     left_knee         8          10     4
14     right_knee        9          7      1
15     left_ankle        10         11     5
16     right_ankle       11         8      0
=====  ================  =========  =====  ====

Deliberately *not* mapped: CrowdPose 12 ``head`` (top of head) and 13 ``neck``; AIC 12
``head_top`` and 13 ``neck``; MPII 6 ``pelvis``, 7 ``thorax``, 8 ``upper_neck``, 9
``head_top``. A head top is not a nose nor an ear, and a neck / thorax / pelvis is no
COCO joint, so none is copied into a COCO slot. They are preserved: every converted
annotation carries ``native_schema`` (e.g. ``"crowdpose14"``) and ``native_keypoints``
(the native flat ``[x, y, v] * K`` list, COCO visibility convention, 0-based px).

Other fields: ``area`` is the native ``area`` when present, else the box area;
``segmentation`` the native one when present, else the box as one polygon (so mask
code that rasterises segmentations works); ``iscrowd`` native or 0; ``category_id`` 1.
Categories are replaced by `pose.datasets.schema.PERSON_CATEGORY`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pose.datasets.schema import NUM_JOINTS, PERSON_CATEGORY

CROWDPOSE_KEYPOINT_NAMES: tuple[str, ...] = (
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "head", "neck",
)
#: CrowdPose OKS sigmas (crowdpose-api COCOeval, kpt_oks_sigmas; the COCO body sigmas + head, neck).
CROWDPOSE_SIGMAS = np.array([.79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89, .79, .79],
                            dtype=np.float64) / 10.0

AIC_KEYPOINT_NAMES: tuple[str, ...] = (
    "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow", "left_wrist",
    "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle", "head_top", "neck",
)
#: AI Challenger OKS sigmas (AI_Challenger_2017 keypoint_eval.py: delta = 2 * these).
AIC_SIGMAS = np.array([0.01388152, 0.01515228, 0.01057665, 0.01417709, 0.01497891, 0.01402144,
                       0.03909642, 0.03686941, 0.01981803, 0.03843971, 0.03412318, 0.02415081,
                       0.01291456, 0.01236173], dtype=np.float64)

MPII_KEYPOINT_NAMES: tuple[str, ...] = (
    "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle", "pelvis", "thorax",
    "upper_neck", "head_top", "right_wrist", "right_elbow", "right_shoulder", "left_shoulder",
    "left_elbow", "left_wrist",
)
#: MPII sigmas as used by mmpose for OKS on MPII (configs/_base_/datasets/mpii.py, "adapted from COCO").
MPII_SIGMAS = np.array([0.089, 0.083, 0.107, 0.107, 0.083, 0.089, 0.026, 0.026, 0.026, 0.026,
                        0.062, 0.072, 0.179, 0.179, 0.072, 0.062], dtype=np.float64)

#: native index -> COCO-17 index (None: not mapped), per dataset.
CROWDPOSE_TO_COCO: tuple[int | None, ...] = (5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, None, None)
AIC_TO_COCO: tuple[int | None, ...] = (6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, None, None)
MPII_TO_COCO: tuple[int | None, ...] = (16, 14, 12, 11, 13, 15, None, None, None, None, 10, 8, 6, 5, 7, 9)

SCHEMAS: dict[str, dict[str, Any]] = {
    "crowdpose": {"schema": "crowdpose14", "names": CROWDPOSE_KEYPOINT_NAMES, "sigmas": CROWDPOSE_SIGMAS,
                  "to_coco": CROWDPOSE_TO_COCO},
    "aic": {"schema": "aic14", "names": AIC_KEYPOINT_NAMES, "sigmas": AIC_SIGMAS, "to_coco": AIC_TO_COCO},
    "mpii": {"schema": "mpii16", "names": MPII_KEYPOINT_NAMES, "sigmas": MPII_SIGMAS, "to_coco": MPII_TO_COCO},
}

_MPII_PIXEL_STD = 200.0


class ConversionError(ValueError):
    """The native file does not have the expected structure (message names file and record)."""


def map_keypoints(native: np.ndarray, to_coco: tuple[int | None, ...]) -> np.ndarray:
    """Map native keypoints (K, 3) [x, y, v] to COCO-17 (17, 3) float64; unmapped COCO joints
    and joints with v = 0 get ``[0, 0, 0]``. Raises ValueError on a shape mismatch."""
    native = np.asarray(native, dtype=np.float64)
    if native.shape != (len(to_coco), 3):
        raise ValueError(f"expected native keypoints of shape ({len(to_coco)}, 3), got {native.shape}")
    out = np.zeros((NUM_JOINTS, 3))
    for i, c in enumerate(to_coco):
        if c is not None and native[i, 2] > 0:
            out[c] = native[i]
    return out


def _num(v: float) -> float | int:
    f = float(v)
    return int(f) if f.is_integer() else round(f, 6)


def _flat(kps: np.ndarray) -> list:
    return [_num(v) if i % 3 != 2 else int(v) for i, v in enumerate(np.asarray(kps).reshape(-1))]


def _clean_native(kps: np.ndarray) -> np.ndarray:
    kps = np.array(kps, dtype=np.float64)
    kps[kps[:, 2] <= 0] = 0.0
    return kps


def _box_polygon(bbox: list[float]) -> list[list[float]]:
    x, y, w, h = bbox
    return [[_num(x), _num(y), _num(x + w), _num(y), _num(x + w), _num(y + h), _num(x), _num(y + h)]]


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size  # (width, height)


def _annotation(ann_id: int, image_id: int, native: np.ndarray, spec: dict, bbox: list[float],
                extra: dict | None = None) -> dict:
    native = _clean_native(native)
    coco = map_keypoints(native, spec["to_coco"])
    bbox = [_num(v) for v in bbox]
    extra = dict(extra or {})
    seg = extra.pop("segmentation", None)
    area = extra.pop("area", None)
    ann = {
        "id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": int(extra.pop("iscrowd", 0) or 0),
        "bbox": bbox, "keypoints": _flat(coco), "num_keypoints": int((coco[:, 2] > 0).sum()),
        "area": float(area) if area is not None else float(bbox[2] * bbox[3]),
        "segmentation": seg if seg else _box_polygon(bbox),
        "native_schema": spec["schema"], "native_keypoints": _flat(native),
    }
    ann.update(extra)
    return ann


def _coco_style(data: dict, native_json: Path, images_dir: Path, spec: dict):
    cats = data.get("categories") or []
    k = len(spec["names"])
    for cat in cats:
        if "keypoints" in cat and len(cat["keypoints"]) != k:
            raise ConversionError(f"{native_json}: category {cat.get('name')!r} has {len(cat['keypoints'])} "
                                  f"keypoints, {spec['schema']} needs {k}")
    images = []
    for img in data.get("images", []):
        if "id" not in img or "file_name" not in img:
            raise ConversionError(f"{native_json}: image record without id / file_name: {img!r}")
        path = images_dir / img["file_name"]
        if not path.is_file():
            raise FileNotFoundError(f"{native_json}: image {img['file_name']!r} not found in {images_dir}")
        rec = dict(img)
        if not rec.get("width") or not rec.get("height"):
            rec["width"], rec["height"] = _image_size(path)
        images.append(rec)
    known = {img["id"] for img in images}
    anns = []
    for a in data.get("annotations", []):
        if a.get("image_id") not in known:
            raise ConversionError(f"{native_json}: annotation {a.get('id')} refers to unknown image {a.get('image_id')}")
        kps = a.get("keypoints")
        if kps is None or len(kps) != 3 * k:
            raise ConversionError(f"{native_json}: annotation {a.get('id')} has "
                                  f"{None if kps is None else len(kps)} keypoint values, expected {3 * k}")
        native = np.asarray(kps, dtype=np.float64).reshape(k, 3)
        extra = {key: a[key] for key in ("iscrowd", "area", "segmentation") if key in a}
        bbox = a.get("bbox")
        if bbox is None or len(bbox) != 4:
            raise ConversionError(f"{native_json}: annotation {a.get('id')} has no [x, y, w, h] bbox")
        anns.append(_annotation(int(a["id"]), a["image_id"], native, spec, list(bbox), extra))
    return images, anns


def _aic_raw(data: list, native_json: Path, images_dir: Path, spec: dict):
    images, anns = [], []
    ann_id = 0
    for n, rec in enumerate(sorted(data, key=lambda r: str(r.get("image_id")))):
        name = str(rec.get("image_id"))
        file_name = name if name.lower().endswith((".jpg", ".jpeg", ".png")) else f"{name}.jpg"
        path = images_dir / file_name
        if not path.is_file():
            raise FileNotFoundError(f"{native_json}: image {file_name!r} not found in {images_dir}")
        w, h = _image_size(path)
        image_id = n + 1
        images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
        boxes = rec.get("human_annotations") or {}
        for human, flat in sorted((rec.get("keypoint_annotations") or {}).items()):
            native = np.asarray(flat, dtype=np.float64).reshape(-1, 3)
            if native.shape[0] != len(spec["names"]):
                raise ConversionError(f"{native_json}: {name}/{human} has {native.shape[0]} keypoints, expected 14")
            native[:, 2] = np.select([native[:, 2] == 1, native[:, 2] == 2], [2, 1], 0)
            if human not in boxes:
                raise ConversionError(f"{native_json}: {name}/{human} has keypoints but no box")
            x1, y1, x2, y2 = (float(v) for v in boxes[human])
            ann_id += 1
            anns.append(_annotation(ann_id, image_id, native, spec, [x1, y1, x2 - x1, y2 - y1]))
    return images, anns


def _mpii(data: list, native_json: Path, images_dir: Path, spec: dict):
    names = sorted({str(rec.get("image", "")) for rec in data})
    if "" in names:
        raise ConversionError(f"{native_json}: a record has no 'image'")
    stems = [Path(n).stem for n in names]
    numeric = all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems)
    ids = {n: (int(Path(n).stem) if numeric else i + 1) for i, n in enumerate(names)}
    images, sizes = [], {}
    for n in names:
        path = images_dir / n
        if not path.is_file():
            raise FileNotFoundError(f"{native_json}: image {n!r} not found in {images_dir}")
        w, h = _image_size(path)
        sizes[n] = (w, h)
        images.append({"id": ids[n], "file_name": n, "width": w, "height": h})
    anns = []
    for i, rec in enumerate(data):
        joints = np.asarray(rec.get("joints", []), dtype=np.float64)
        vis = np.asarray(rec.get("joints_vis", []), dtype=np.float64).reshape(-1)
        if joints.shape != (16, 2) or vis.shape != (16,):
            raise ConversionError(f"{native_json}: record {i} ({rec.get('image')}) needs 16 joints and 16 "
                                  f"joints_vis, got {joints.shape} / {vis.shape}")
        native = np.zeros((16, 3))
        labelled = vis > 0
        native[labelled, :2] = joints[labelled] - 1.0  # MATLAB 1-based -> 0-based
        native[labelled, 2] = 2
        w, h = sizes[rec["image"]]
        cx, cy = (float(c) - 1.0 for c in rec["center"])
        scale = float(rec["scale"])
        cy += 15.0 * scale
        side = scale * _MPII_PIXEL_STD
        x0, y0, x1, y1 = cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2
        if labelled.any():
            x0, y0 = min(x0, native[labelled, 0].min()), min(y0, native[labelled, 1].min())
            x1, y1 = max(x1, native[labelled, 0].max()), max(y1, native[labelled, 1].max())
        x0, y0 = max(0.0, x0), max(0.0, y0)
        x1, y1 = min(float(w), x1), min(float(h), y1)
        extra = {"mpii_center": [_num(cx), _num(cy - 15.0 * scale)], "mpii_scale": _num(scale)}
        anns.append(_annotation(i + 1, ids[rec["image"]], native, spec, [x0, y0, x1 - x0, y1 - y0], extra))
    return images, anns


def convert(dataset: str, native_json: Path, images_dir: Path, out_json: Path) -> dict:
    """Convert one native annotation file into a COCO-17 keypoint JSON.

    Args:
        dataset: ``"crowdpose"``, ``"aic"`` or ``"mpii"``.
        native_json: the dataset's annotation file (formats in the module docstring).
        images_dir: folder holding the images the file names (checked to exist; sizes
            are read from them when the file lacks width / height).
        out_json: COCO JSON to write (``images``, ``annotations``, ``categories`` =
            [PERSON_CATEGORY], ``info``); keypoints are 17 x [x, y, v] in image px,
            0-based; see the module docstring for the mapping and extra fields.

    Returns:
        ``{"dataset", "schema", "images", "annotations", "coco_keypoints" (labelled COCO
        joints), "native_keypoints" (labelled native joints), "out_json"}``.

    Raises:
        ValueError: unknown ``dataset``.
        ConversionError: unexpected structure (wrong keypoint count, missing fields).
        FileNotFoundError: the native file or a referenced image is missing.
    """
    if dataset not in SCHEMAS:
        raise ValueError(f"unknown dataset {dataset!r}; converters exist for {', '.join(sorted(SCHEMAS))}")
    spec = SCHEMAS[dataset]
    native_json, images_dir, out_json = Path(native_json), Path(images_dir), Path(out_json)
    if not native_json.is_file():
        raise FileNotFoundError(f"native annotation file not found: {native_json}")
    data = json.loads(native_json.read_text(encoding="utf-8"))
    if dataset == "mpii":
        if not isinstance(data, list):
            raise ConversionError(f"{native_json}: MPII JSON must be a list of person records")
        images, anns = _mpii(data, native_json, images_dir, spec)
    elif dataset == "aic" and isinstance(data, list):
        images, anns = _aic_raw(data, native_json, images_dir, spec)
    else:
        if not isinstance(data, dict) or "annotations" not in data or "images" not in data:
            raise ConversionError(f"{native_json}: expected a COCO-style JSON object with images / annotations")
        images, anns = _coco_style(data, native_json, images_dir, spec)
    doc = {
        "info": {"description": f"{dataset} converted to COCO-17 by pose.datasets.convert",
                 "source_file": native_json.name, "native_schema": spec["schema"],
                 "native_keypoints": list(spec["names"])},
        "licenses": data.get("licenses", []) if isinstance(data, dict) else [],
        "images": images,
        "annotations": anns,
        "categories": [PERSON_CATEGORY],
    }
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(doc, sort_keys=True), encoding="utf-8")
    return {
        "dataset": dataset, "schema": spec["schema"], "images": len(images), "annotations": len(anns),
        "coco_keypoints": int(sum(a["num_keypoints"] for a in anns)),
        "native_keypoints": int(sum(sum(1 for v in a["native_keypoints"][2::3] if v > 0) for a in anns)),
        "out_json": str(out_json),
    }


__all__ = ["convert", "map_keypoints", "SCHEMAS", "ConversionError",
           "CROWDPOSE_KEYPOINT_NAMES", "CROWDPOSE_SIGMAS", "CROWDPOSE_TO_COCO",
           "AIC_KEYPOINT_NAMES", "AIC_SIGMAS", "AIC_TO_COCO",
           "MPII_KEYPOINT_NAMES", "MPII_SIGMAS", "MPII_TO_COCO"]
