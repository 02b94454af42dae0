"""MPII Human Pose (Andriluka et al., CVPR 2014) in the JSON list format of HRNet / mmpose
(``mpii_{train,val}.json``: ``image``, ``joints`` (16 x 2), ``joints_vis`` (16, 1 = annotated),
``center``, ``scale`` (person height / 200 px)).

MPII coordinates are MATLAB 1-based: 1 is subtracted from joints and centre (as the HRNet
reference code does). MPII has no boxes: the box is the person square of side ``200 * scale``
around the centre shifted down by ``15 * scale`` px (mmpose's convention), enlarged to hold every
annotated joint and clipped to the image. Image ids are the numeric file stems when all are
numeric and distinct, else 1.. in sorted file-name order; ``mpii_center`` / ``mpii_scale`` are kept.

Mapping: the 12 limb joints to COCO 5 .. 16; ``pelvis``, ``thorax``, ``upper_neck`` and
``head_top`` only in ``native_keypoints``.

Native metric: OKS AP in MPII's joint order with mmpose's MPII sigmas (``mpii_*`` keys).
MPII's own metric is PCKh (head-size normalised, needs the head boxes of the .mat release,
which the JSON lacks): not computed here.
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
    num,
    read_json,
)

KEYPOINT_NAMES: tuple[str, ...] = (
    "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle", "pelvis", "thorax",
    "upper_neck", "head_top", "right_wrist", "right_elbow", "right_shoulder", "left_shoulder",
    "left_elbow", "left_wrist",
)
#: MPII sigmas as used by mmpose for OKS on MPII (configs/_base_/datasets/mpii.py, "adapted from COCO").
SIGMAS = np.array([0.089, 0.083, 0.107, 0.107, 0.083, 0.089, 0.026, 0.026, 0.026, 0.026,
                   0.062, 0.072, 0.179, 0.179, 0.072, 0.062], dtype=np.float64)
TO_COCO: tuple[int | None, ...] = (16, 14, 12, 11, 13, 15, None, None, None, None, 10, 8, 6, 5, 7, 9)
#: px per unit of MPII's ``scale``
PIXEL_STD = 200.0


def parse(native_json: Path, images_dir: Path) -> dict:
    """MPII JSON list -> COCO-17 records (module docstring)."""
    data = read_json(native_json)
    if not isinstance(data, list):
        raise ConversionError(f"{native_json}: MPII JSON must be a list of person records")
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
        w, h = image_size(path)
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
        side = scale * PIXEL_STD
        x0, y0, x1, y1 = cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2
        if labelled.any():
            x0, y0 = min(x0, native[labelled, 0].min()), min(y0, native[labelled, 1].min())
            x1, y1 = max(x1, native[labelled, 0].max()), max(y1, native[labelled, 1].max())
        x0, y0 = max(0.0, x0), max(0.0, y0)
        x1, y1 = min(float(w), x1), min(float(h), y1)
        extra = {"mpii_center": [num(cx), num(cy - 15.0 * scale)], "mpii_scale": num(scale)}
        anns.append(annotation(FORMAT, i + 1, ids[rec["image"]], native, [x0, y0, x1 - x0, y1 - y0], extra))
    return {"images": images, "annotations": anns, "licenses": []}


def native_metrics(gt: dict, results: list, sigmas: np.ndarray) -> dict:
    """OKS AP in MPII's joint order with the given (16,) sigmas (`base.native_oks`): ``mpii_*`` keys."""
    return native_oks(FORMAT, gt, results, sigmas)


FORMAT = DatasetFormat(
    kind="mpii", schema="mpii16", keypoint_names=KEYPOINT_NAMES, sigmas=SIGMAS, sigmas_name="MPII_SIGMAS",
    to_coco=TO_COCO, parse=parse, native_metrics=native_metrics,
    native_metric="OKS AP with mmpose's MPII sigmas: mpii_* keys (MPII's own PCKh is not computed)",
    reference="Andriluka et al., CVPR 2014; human-pose.mpi-inf.mpg.de",
)
