"""Columnar (pandas) views of a COCO keypoint annotation file, for validation.

Source of the format: the COCO data format spec, "Keypoint Detection" section
(cocodataset.org/#format-data): ``images[]`` carry ``id, file_name, width, height``;
``annotations[]`` carry ``id, image_id, category_id, iscrowd, area,
bbox = [x, y, width, height]`` (image px, top-left origin) and
``keypoints = [x1, y1, v1, ..., xK, yK, vK]`` with visibility ``v`` in
{0: not labeled, 1: labeled but not visible, 2: labeled and visible}, plus
``num_keypoints`` = number of joints with ``v > 0``.

Three tables are built, all with numpy over whole columns (no per-row Python work
beyond pulling the fields out of the parsed JSON), so ~150k annotations take a
few seconds:

* ``images``      one row per ``images[]`` entry (``image_row`` = its position).
* ``annotations`` one row per ``annotations[]`` entry (``ann_row`` = its position),
  joined with the declared size of its image.
* ``keypoints``   one row per annotation x joint (``K = 17`` COCO joints) for the
  annotations whose ``keypoints`` list has exactly ``3 K`` numbers.

The raw parsed JSON is kept (``CocoTables.raw``) so a cleaned file can be written
with exactly the offending entries removed.
"""

from __future__ import annotations

import contextlib
import gc
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pose.datasets.schema import KEYPOINT_NAMES, NUM_JOINTS

try:  # orjson is a project dependency (constraints.txt); stdlib json is the fallback.
    import orjson as _orjson
except ImportError:  # pragma: no cover - exercised only without orjson
    _orjson = None

LEFT_SHOULDER, RIGHT_SHOULDER = KEYPOINT_NAMES.index("left_shoulder"), KEYPOINT_NAMES.index("right_shoulder")
LEFT_HIP, RIGHT_HIP = KEYPOINT_NAMES.index("left_hip"), KEYPOINT_NAMES.index("right_hip")
NOSE, LEFT_EYE, RIGHT_EYE = (KEYPOINT_NAMES.index(n) for n in ("nose", "left_eye", "right_eye"))


class AnnotationFileError(ValueError):
    """The annotation file cannot be read as COCO JSON.

    Attributes: ``file`` (str path), ``line`` and ``column`` (1-based, ``None`` when
    the problem is not a syntax error) and ``reason`` (the parser's message).
    """

    def __init__(self, file: str, reason: str, line: int | None = None, column: int | None = None):
        where = f" at line {line}, column {column}" if line is not None else ""
        super().__init__(f"{file}: {reason}{where}")
        self.file, self.reason, self.line, self.column = file, reason, line, column


@contextlib.contextmanager
def gc_paused():
    """Pause the cyclic garbage collector: parsing a 150k-annotation file allocates
    millions of lists, and the collections they trigger make parsing ~5x slower.
    The parsed data holds no cycles, so nothing is lost by collecting afterwards."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def load_coco_json(path: Path) -> dict:
    """Parse a COCO annotation file.

    Returns the top-level dict. Raises `AnnotationFileError` (with the JSON parser's
    1-based line/column) when the file is missing, is not valid JSON, or its top
    level is not an object with list-valued ``images`` and ``annotations``.
    """
    path = Path(path)
    try:
        data_bytes = path.read_bytes()
    except OSError as exc:
        raise AnnotationFileError(str(path), f"cannot read annotation file: {exc.strerror or exc}") from None
    with gc_paused():
        return _parse(path, data_bytes)


def _parse(path: Path, data_bytes: bytes) -> dict:
    data: Any = None
    if _orjson is not None:
        try:
            data = _orjson.loads(data_bytes)
        except _orjson.JSONDecodeError:
            data = None  # re-parse with the stdlib for its line/column (and NaN tolerance)
    if data is None:
        try:
            data = json.loads(data_bytes.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise AnnotationFileError(str(path), f"not UTF-8 text: {exc.reason} at byte {exc.start}") from None
        except json.JSONDecodeError as exc:
            raise AnnotationFileError(str(path), f"invalid JSON: {exc.msg}", exc.lineno, exc.colno) from None
    if not isinstance(data, dict):
        raise AnnotationFileError(str(path), f"top level must be a JSON object, got {type(data).__name__}")
    for key in ("images", "annotations"):
        if not isinstance(data.get(key), list):
            raise AnnotationFileError(str(path), f"'{key}' must be a list (COCO format)")
    bad = [k for k in ("images", "annotations") if any(not isinstance(e, dict) for e in data[k])]
    if bad:
        raise AnnotationFileError(str(path), f"every entry of '{bad[0]}' must be a JSON object")
    return data


def _series(values: list, name: str) -> pd.Series:
    """Column from a list of JSON scalars: int64 when all are ints, float64 when all
    are numbers (``None`` -> NaN), object otherwise (ids of unexpected types stay
    visible in findings instead of being coerced)."""
    arr = np.asarray(values, dtype=object) if values else np.zeros(0, dtype=np.int64)
    if arr.dtype == object and len(arr):
        kinds = {type(v) for v in values}
        if kinds <= {int}:
            arr = np.asarray(values, dtype=np.int64)
        elif kinds <= {int, float, type(None)} and not kinds <= {type(None)}:
            arr = np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)
    return pd.Series(arr, name=name)


def _numeric(values: list) -> np.ndarray:
    """float64 array from JSON scalars; anything but an int or float (None, strings
    such as "640", bools) becomes NaN, so the suite reports it instead of a silent cast."""
    if set(map(type, values)) <= {int, float}:
        return np.asarray(values, dtype=np.float64)
    return np.array([float(v) if type(v) in (int, float) else np.nan for v in values], dtype=np.float64)


def _fixed_width(lists: list, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, width) float64 matrix from a list of lists; rows of another length or with
    non-numbers become NaN. Returns (matrix, lengths) with lengths -1 for non-lists
    and -2 for lists of the right length holding something other than numbers."""
    n = len(lists)
    lengths = np.fromiter((len(v) if isinstance(v, list) else -1 for v in lists), dtype=np.int64, count=n)
    out = np.full((n, width), np.nan, dtype=np.float64)
    good = np.flatnonzero(lengths == width)
    if len(good):
        rows = [lists[i] for i in good]
        try:
            arr = np.asarray(rows)  # dtype inferred: int/float only when every entry is a number
        except (TypeError, ValueError):
            arr = None
        if arr is not None and arr.dtype.kind in "if" and arr.shape == (len(good), width):
            out[good] = arr
        else:  # a non-number (string, bool, null, nested list) somewhere: check row by row (rare path)
            for i in good:
                if set(map(type, lists[i])) <= {int, float}:
                    out[i] = np.asarray(lists[i], dtype=np.float64)
                else:
                    lengths[i] = -2
    return out, lengths


@dataclass
class CocoTables:
    """The three tables of one annotation file (see module docstring) and the raw JSON."""

    path: Path
    raw: dict
    images: pd.DataFrame
    annotations: pd.DataFrame
    keypoints: pd.DataFrame
    #: (N_ann, K, 3) float64 keypoints of every annotation (NaN rows where the list is malformed).
    keypoint_array: np.ndarray


def build_tables(data: dict, path: Path | str = "<memory>", *, keypoints_table: bool = True) -> CocoTables:
    """Build the ``images`` / ``annotations`` / ``keypoints`` tables from parsed COCO JSON.

    Args:
        data: the parsed file (see `load_coco_json`).
        path: where it came from (kept for findings).
        keypoints_table: ``False`` leaves ``keypoints`` empty (callers that only need
            ``keypoint_array`` save the 17-rows-per-annotation table).

    Returns:
        `CocoTables`. Columns (units are image px of the declared image size):

        images: ``image_row`` int64, ``image_id``, ``file_name`` str, ``width``,
        ``height`` float64 (NaN when missing / not a number), ``image_id_dup`` bool.

        annotations: ``ann_row`` int64, ``annotation_id``, ``image_id``,
        ``category_id``, ``iscrowd``, ``area``, ``bbox_x``, ``bbox_y``, ``bbox_w``,
        ``bbox_h`` float64 (NaN when ``bbox`` is not 4 numbers), ``bbox_len`` int64,
        ``num_keypoints`` float64, ``keypoints_len`` int64 (-1 when not a list, -2
        when it holds non-numbers), ``n_labeled`` int64 (joints with v > 0),
        ``image_found`` bool, ``img_width`` / ``img_height`` float64 (of the first
        image with that id; NaN when none), ``file_name``.

        keypoints: ``kp_row`` (position in this table), ``ann_row``, ``annotation_id``, ``image_id``, ``joint`` int64
        (0-based COCO index, `pose.datasets.schema.KEYPOINT_NAMES`), ``x``, ``y``,
        ``v`` float64, ``iscrowd``, ``img_width``, ``img_height``; only annotations
        whose ``keypoints`` has exactly 51 numbers.
    """
    imgs = data.get("images", [])
    anns = data.get("annotations", [])
    k = NUM_JOINTS

    images = pd.DataFrame({
        "image_row": np.arange(len(imgs), dtype=np.int64),
        "image_id": _series([e.get("id") for e in imgs], "image_id"),
        "file_name": pd.Series([e.get("file_name") for e in imgs], dtype=object),
        "width": _numeric([e.get("width") for e in imgs]),
        "height": _numeric([e.get("height") for e in imgs]),
    })
    images["image_id_dup"] = images["image_id"].duplicated(keep=False).to_numpy()

    n = len(anns)
    bbox, bbox_len = _fixed_width([a.get("bbox") for a in anns], 4)
    kps, kp_len = _fixed_width([a.get("keypoints") for a in anns], 3 * k)
    kp3 = kps.reshape(n, k, 3)
    labeled = np.nan_to_num(kp3[..., 2], nan=0.0) > 0
    annotations = pd.DataFrame({
        "ann_row": np.arange(n, dtype=np.int64),
        "annotation_id": _series([a.get("id") for a in anns], "annotation_id"),
        "image_id": _series([a.get("image_id") for a in anns], "image_id"),
        "category_id": _series([a.get("category_id") for a in anns], "category_id"),
        "iscrowd": _numeric([a.get("iscrowd", 0) for a in anns]),
        "area": _numeric([a.get("area") for a in anns]),
        "bbox_x": bbox[:, 0], "bbox_y": bbox[:, 1], "bbox_w": bbox[:, 2], "bbox_h": bbox[:, 3],
        "bbox_len": bbox_len,
        "num_keypoints": _numeric([a.get("num_keypoints") for a in anns]),
        "keypoints_len": kp_len,
        "n_labeled": labeled.sum(axis=1).astype(np.int64),
    })
    # Join the declared image size (first image row of each id).
    first = images.drop_duplicates("image_id", keep="first")
    idx = pd.Index(first["image_id"]).get_indexer(annotations["image_id"]) if len(first) else np.full(n, -1)
    found = idx >= 0
    annotations["image_found"] = found
    safe = np.where(found, idx, 0)
    if len(first):
        annotations["img_width"] = np.where(found, first["width"].to_numpy()[safe], np.nan)
        annotations["img_height"] = np.where(found, first["height"].to_numpy()[safe], np.nan)
        annotations["file_name"] = np.where(found, first["file_name"].to_numpy()[safe], None)
    else:
        annotations["img_width"] = np.full(n, np.nan)
        annotations["img_height"] = np.full(n, np.nan)
        annotations["file_name"] = np.full(n, None, dtype=object)

    ok_rows = np.flatnonzero(kp_len == 3 * k) if keypoints_table else np.zeros(0, dtype=np.int64)
    m = len(ok_rows)
    sub = kp3[ok_rows]
    keypoints = pd.DataFrame({
        "kp_row": np.arange(m * k, dtype=np.int64),
        "ann_row": np.repeat(ok_rows, k),
        "annotation_id": np.repeat(annotations["annotation_id"].to_numpy()[ok_rows], k),
        "image_id": np.repeat(annotations["image_id"].to_numpy()[ok_rows], k),
        "joint": np.tile(np.arange(k, dtype=np.int64), m),
        "x": sub[..., 0].reshape(-1), "y": sub[..., 1].reshape(-1), "v": sub[..., 2].reshape(-1),
        "iscrowd": np.repeat(annotations["iscrowd"].to_numpy()[ok_rows], k),
        "img_width": np.repeat(annotations["img_width"].to_numpy()[ok_rows], k),
        "img_height": np.repeat(annotations["img_height"].to_numpy()[ok_rows], k),
    })
    return CocoTables(Path(path), data, images, annotations, keypoints, kp3)


def load_tables(path: Path, *, keypoints_table: bool = True) -> CocoTables:
    """`load_coco_json` + `build_tables`. Raises `AnnotationFileError`."""
    data = load_coco_json(path)
    with gc_paused():
        return build_tables(data, path, keypoints_table=keypoints_table)
