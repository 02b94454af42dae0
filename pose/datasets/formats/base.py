"""What a dataset format declares (`DatasetFormat`) and the helpers format parsers share.

A format module (one per format, next to this file) defines one ``FORMAT = DatasetFormat(...)``;
`pose.datasets.formats.FORMATS` lists them. Nothing else in the package names a format: fetch,
ingest, the catalogue check, params.yaml's schema, the CLI and evaluation read this record.

Converted annotations (`annotation`) follow one convention for every format: COCO-17 keypoints
(17 x [x, y, v], image px, 0-based, COCO visibility 0 / 1 / 2), joints the format lacks at
``[0, 0, 0]``, and the format's own keypoints kept as ``native_keypoints`` (flat ``[x, y, v] * K``,
same conventions) with ``native_schema`` naming them. ``area`` is the native one when present,
else the box area; ``segmentation`` the native one when present, else the box as one polygon;
``iscrowd`` native or 0; ``category_id`` 1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pose.datasets.schema import NUM_JOINTS


class ConversionError(ValueError):
    """The native file does not have the expected structure (message names file and record)."""


#: values of `DatasetFormat.domain`
DOMAINS: tuple[str, ...] = ("photos", "generated")


@dataclass(frozen=True)
class DatasetFormat:
    """One dataset format: its keypoints, OKS sigmas, mapping to COCO-17, parser and native metric.

    Attributes:
        kind: the catalogue ``kind`` (params.yaml ``catalogue.<name>.kind``) and ``pose ingest --format``.
        schema: name of the native keypoint schema (catalogue ``native_schema``; ``coco17`` for COCO).
        keypoint_names: the K native joint names, in the dataset's order.
        sigmas: (K,) float64 OKS sigmas of the native joints (the format's reference evaluation).
        sigmas_name: the constant name params.yaml may use for ``sigmas`` (e.g. ``"CROWDPOSE_SIGMAS"``).
        to_coco: (K,) native index -> COCO-17 index, None where the joint has no COCO counterpart.
        parse: ``parse(native_file, images_dir) -> {"images": [...], "annotations": [...], "licenses": [...]}``
            (COCO-17 records as in the module docstring); None for formats already in COCO-17 layout.
            Raises ConversionError / FileNotFoundError naming the file and record.
        native_metrics: ``native_metrics(gt, results, sigmas) -> {name: value}``: the format's own
            evaluation of COCO-17 (or native) ``results`` against the converted ground truth ``gt``
            (a COCO dict), with the catalogue's ``native_sigmas``; None where COCO's OKS AP is the metric.
        native_metric: one line saying what ``native_metrics`` computes and how it relates to the
            dataset's official metric.
        reference: paper / release the format follows.
        domain: what its images are (:data:`DOMAINS`): ``photos`` (camera images, every real
            dataset) or ``generated`` (figures drawn by a program). A model records the domain of
            its training data (``train_data`` of the checkpoint, ONNX metadata), and ``pose
            predict`` / serving warn when a model trained on generated figures meets photos.
        exif_orientation: how the images' EXIF orientation tag is treated when they are read
            (`pose.io.EXIF_MODES`), the default of the catalogue's ``exif_orientation``:
            ``ignore`` for every format here, whose COCO-style annotations are made in the stored
            pixel frame (as the official HigherHRNet reads COCO: ``IMREAD_IGNORE_ORIENTATION``).
    """

    kind: str
    schema: str
    keypoint_names: tuple[str, ...]
    sigmas: np.ndarray
    sigmas_name: str
    to_coco: tuple[int | None, ...]
    parse: Callable[[Path, Path], dict] | None
    native_metrics: Callable[[dict, list, np.ndarray], dict] | None
    native_metric: str
    reference: str
    domain: str = "photos"
    exif_orientation: str = "ignore"

    def __post_init__(self):
        if self.domain not in DOMAINS:
            raise ValueError(f"format {self.kind}: domain {self.domain!r} is not one of {', '.join(DOMAINS)}")
        k = len(self.keypoint_names)
        if len(self.sigmas) != k or len(self.to_coco) != k:
            raise ValueError(f"format {self.kind}: {k} joints but {len(self.sigmas)} sigmas / "
                             f"{len(self.to_coco)} mapping entries")
        targets = [c for c in self.to_coco if c is not None]
        if len(set(targets)) != len(targets) or not all(0 <= c < NUM_JOINTS for c in targets):
            raise ValueError(f"format {self.kind}: to_coco must map to distinct COCO-17 indices")


# ----------------------------------------------------------------------------- shared helpers

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


def num(v: float) -> float | int:
    """A JSON number: an int when integral, else rounded to 6 decimals."""
    f = float(v)
    return int(f) if f.is_integer() else round(f, 6)


def flat(kps: np.ndarray) -> list:
    """(K, 3) keypoints as the flat COCO list (visibility as int)."""
    return [num(v) if i % 3 != 2 else int(v) for i, v in enumerate(np.asarray(kps).reshape(-1))]


def _clean_native(kps: np.ndarray) -> np.ndarray:
    kps = np.array(kps, dtype=np.float64)
    kps[kps[:, 2] <= 0] = 0.0
    return kps


def _box_polygon(bbox: list[float]) -> list[list[float]]:
    x, y, w, h = bbox
    return [[num(x), num(y), num(x + w), num(y), num(x + w), num(y + h), num(x), num(y + h)]]


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) in px of an image file, from its header (PIL)."""
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def read_json(path: Path) -> Any:
    """The parsed JSON file. Raises FileNotFoundError / ConversionError (invalid JSON) naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"native annotation file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConversionError(f"{path}: not valid JSON ({exc})") from exc


def annotation(fmt: DatasetFormat, ann_id: int, image_id: Any, native: np.ndarray, bbox: list[float],
               extra: dict | None = None) -> dict:
    """One converted COCO-17 annotation (module docstring) from native (K, 3) keypoints and an
    ``[x, y, w, h]`` box in image px; ``extra`` may carry native ``iscrowd`` / ``area`` /
    ``segmentation`` and any further fields to keep."""
    native = _clean_native(native)
    coco = map_keypoints(native, fmt.to_coco)
    bbox = [num(v) for v in bbox]
    extra = dict(extra or {})
    seg = extra.pop("segmentation", None)
    area = extra.pop("area", None)
    ann = {
        "id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": int(extra.pop("iscrowd", 0) or 0),
        "bbox": bbox, "keypoints": flat(coco), "num_keypoints": int((coco[:, 2] > 0).sum()),
        "area": float(area) if area is not None else float(bbox[2] * bbox[3]),
        "segmentation": seg if seg else _box_polygon(bbox),
        "native_schema": fmt.schema, "native_keypoints": flat(native),
    }
    ann.update(extra)
    return ann


def parse_coco_style(fmt: DatasetFormat, data: Any, native_json: Path, images_dir: Path,
                     visibility: Callable[[np.ndarray], np.ndarray] | None = None) -> dict:
    """Convert a COCO-style document with ``fmt``'s K keypoints per annotation (``images``,
    ``annotations`` with ``[x, y, w, h]`` boxes). Image sizes missing from the JSON are read from
    the files. ``visibility`` maps the native v column (K,) to COCO's (default: kept).

    Raises ConversionError (wrong keypoint count, missing fields, unknown image) and
    FileNotFoundError (an image the file names is not in ``images_dir``)."""
    if not isinstance(data, dict) or "annotations" not in data or "images" not in data:
        raise ConversionError(f"{native_json}: expected a COCO-style JSON object with images / annotations")
    k = len(fmt.keypoint_names)
    for cat in data.get("categories") or []:
        if "keypoints" in cat and len(cat["keypoints"]) != k:
            raise ConversionError(f"{native_json}: category {cat.get('name')!r} has {len(cat['keypoints'])} "
                                  f"keypoints, {fmt.schema} needs {k}")
    images = []
    for img in data.get("images", []):
        if "id" not in img or "file_name" not in img:
            raise ConversionError(f"{native_json}: image record without id / file_name: {img!r}")
        path = images_dir / img["file_name"]
        if not path.is_file():
            raise FileNotFoundError(f"{native_json}: image {img['file_name']!r} not found in {images_dir}")
        rec = dict(img)
        if not rec.get("width") or not rec.get("height"):
            rec["width"], rec["height"] = image_size(path)
        images.append(rec)
    known = {img["id"] for img in images}
    anns = []
    for a in data.get("annotations", []):
        if a.get("image_id") not in known:
            raise ConversionError(f"{native_json}: annotation {a.get('id')} refers to unknown image "
                                  f"{a.get('image_id')}")
        kps = a.get("keypoints")
        if kps is None or len(kps) != 3 * k:
            raise ConversionError(f"{native_json}: annotation {a.get('id')} has "
                                  f"{None if kps is None else len(kps)} keypoint values, expected {3 * k}")
        native = np.asarray(kps, dtype=np.float64).reshape(k, 3)
        if visibility is not None:
            native[:, 2] = visibility(native[:, 2])
        extra = {key: a[key] for key in ("iscrowd", "area", "segmentation") if key in a}
        bbox = a.get("bbox")
        if bbox is None or len(bbox) != 4:
            raise ConversionError(f"{native_json}: annotation {a.get('id')} has no [x, y, w, h] bbox")
        anns.append(annotation(fmt, int(a["id"]), a["image_id"], native, list(bbox), extra))
    return {"images": images, "annotations": anns, "licenses": data.get("licenses", [])}


def native_oks(fmt: DatasetFormat, gt: dict, results: list, sigmas: np.ndarray) -> dict:
    """``<kind>_AP`` ... ``<kind>_ARL`` and ``<kind>_joints``: COCO-style OKS AP of ``results`` in
    ``fmt``'s joint order with the native ``sigmas`` (`pose.evaluate.coco.native_oks_metrics`)."""
    from pose.evaluate.coco import native_oks_metrics

    return native_oks_metrics(gt, results, to_coco=fmt.to_coco, sigmas=sigmas, prefix=fmt.kind)


__all__ = ["DatasetFormat", "ConversionError", "map_keypoints", "annotation", "parse_coco_style", "read_json",
           "image_size", "num", "flat", "native_oks"]
