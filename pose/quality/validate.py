"""Data validation of a COCO person-keypoint annotation file and its images.

Two kinds of checks, one report:

* **Annotation checks** run as a great-expectations (1.x) suite over the pandas
  tables of `pose.quality.tables` (ephemeral context, pandas data source, one
  expectation suite per table, ``result_format=COMPLETE`` with the id columns as
  ``unexpected_index_column_names``). Every unexpected row is mapped back to a
  finding naming its image / annotation id. GE also renders the Data Docs HTML site.
* **Image checks** (not GE): the file exists, decodes fully with Pillow
  (``ImageFile.LOAD_TRUNCATED_IMAGES = False``: a truncated JPEG is an error), its
  decoded size equals the declared ``width``/``height``, and no two images have
  the same content (sha256). Files are inspected in parallel threads; results are
  cached by content sha256 (and the sha256 by path + size + mtime) in a JSON file so
  an unchanged re-run decodes nothing.

Findings are dicts ``{severity: "error"|"warning", check, file, image_id,
annotation_id, field, message}`` (``joint``/``row``/``value``/``line``/``column``
added where they apply). ``file`` is the file to fix: the annotation JSON for
annotation findings, the image for image-file findings.

Source of the rules: COCO data format spec (cocodataset.org/#format-data,
"Keypoint Detection"): ``bbox = [x, y, w, h]`` in image px, ``keypoints`` = 17
``(x, y, v)`` triples with ``v`` in {0, 1, 2}, ``num_keypoints`` = count of
``v > 0``, crowd regions (``iscrowd = 1``) carry no keypoints.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pose.datasets.schema import KEYPOINT_NAMES
from pose.io import atomic_write_bytes
from pose.quality.tables import (
    LEFT_EYE, LEFT_HIP, LEFT_SHOULDER, NOSE, RIGHT_EYE, RIGHT_HIP, RIGHT_SHOULDER,
    AnnotationFileError, CocoTables, build_tables, gc_paused, load_coco_json,
)

try:
    import orjson as _orjson
except ImportError:  # pragma: no cover
    _orjson = None

log = logging.getLogger(__name__)

POLICIES = ("fail", "quarantine")
CACHE_VERSION = 1
#: Shoulders count as reversed when the right shoulder lies this fraction of the
#: torso length to the image-right of the left shoulder (see `suspicious_lr_swaps`).
LR_SWAP_MIN_SHOULDER_REVERSAL = 0.2


# --------------------------------------------------------------------------- utils

def _py(v: Any) -> Any:
    """numpy / pandas scalar -> JSON-serialisable Python scalar (NaN -> None)."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def _fmt(v: Any) -> str:
    v = _py(v)
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return repr(v) if isinstance(v, str) else str(v)


def _dumps(obj: Any) -> bytes:
    if _orjson is not None:
        return _orjson.dumps(obj, option=_orjson.OPT_INDENT_2 | _orjson.OPT_SERIALIZE_NUMPY)
    return json.dumps(obj, indent=2, default=_py).encode()


def _dumps_compact(obj: Any) -> bytes:
    if _orjson is not None:
        return _orjson.dumps(obj)
    return json.dumps(obj, separators=(",", ":")).encode()


def atomic_write_json(path: Path, obj: Any) -> None:
    """`atomic_write_bytes` of ``obj`` as indented JSON (numpy scalars allowed)."""
    atomic_write_bytes(path, _dumps(obj))


def _finding(severity: str, check: str, file: Any, message: str, *, image_id: Any = None,
             annotation_id: Any = None, field: str | None = None, **extra: Any) -> dict:
    out = {"severity": severity, "check": check, "file": None if file is None else str(file),
           "image_id": _py(image_id), "annotation_id": _py(annotation_id), "field": field, "message": message}
    out.update({k: _py(v) for k, v in extra.items()})
    return out


# ------------------------------------------------------------ left/right heuristic

def suspicious_lr_swaps(keypoints: np.ndarray, min_shoulder_reversal: float = LR_SWAP_MIN_SHOULDER_REVERSAL) -> np.ndarray:
    """Persons whose left/right torso labels look swapped.

    Definition (image x grows to the right). A person is in a *frontal view* when
    the nose and both eyes are visible (v = 2) and the nose's x lies strictly
    between the eyes' x. Facing the camera, the person's left side is on the
    image right, so correct labels have ``x(left_shoulder) > x(right_shoulder)``
    and ``x(left_hip) > x(right_hip)``. A swap is suspected when, in a frontal
    view with both shoulders and both hips labeled (v > 0),

    * the left shoulder lies *left* of the right shoulder in the image by more than
      ``min_shoulder_reversal x torso`` (torso = mean of the left and right
      shoulder-to-hip distances, px), **and**
    * the left hip lies left of the right hip (any amount).

    Args:
        keypoints: (N, 17, 3) float array, COCO order, image px; NaN rows allowed.
        min_shoulder_reversal: fraction of the torso length, dimensionless.

    Returns: (N,) bool.
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.ndim != 3 or kp.shape[0] == 0:
        return np.zeros(kp.shape[0] if kp.ndim else 0, dtype=bool)
    x, y, v = kp[..., 0], kp[..., 1], np.nan_to_num(kp[..., 2], nan=0.0)
    with np.errstate(invalid="ignore"):
        lo = np.minimum(x[:, LEFT_EYE], x[:, RIGHT_EYE])
        hi = np.maximum(x[:, LEFT_EYE], x[:, RIGHT_EYE])
        frontal = (v[:, NOSE] == 2) & (v[:, LEFT_EYE] == 2) & (v[:, RIGHT_EYE] == 2) & (x[:, NOSE] > lo) & (x[:, NOSE] < hi)
        torso_labeled = (v[:, [LEFT_SHOULDER, RIGHT_SHOULDER, LEFT_HIP, RIGHT_HIP]] > 0).all(axis=1)
        d_left = np.hypot(x[:, LEFT_SHOULDER] - x[:, LEFT_HIP], y[:, LEFT_SHOULDER] - y[:, LEFT_HIP])
        d_right = np.hypot(x[:, RIGHT_SHOULDER] - x[:, RIGHT_HIP], y[:, RIGHT_SHOULDER] - y[:, RIGHT_HIP])
        torso = 0.5 * (d_left + d_right)
        shoulders_reversed = (x[:, RIGHT_SHOULDER] - x[:, LEFT_SHOULDER]) > min_shoulder_reversal * torso
        hips_reversed = x[:, RIGHT_HIP] > x[:, LEFT_HIP]
        return frontal & torso_labeled & (torso > 0) & shoulders_reversed & hips_reversed


# ----------------------------------------------------------------- the GE suite

# Each check: (name, table, severity, field, expectation factory, message formatter).
# The formatter gets the table row (dict) of an unexpected record and returns an
# actionable message.

def _joint(r: dict) -> str:
    j = int(r["joint"])
    return f"{KEYPOINT_NAMES[j]} (joint {j})"


def _check_specs(bbox_tolerance: float, min_labeled_keypoints: int, person_ids: list) -> list[dict]:
    import great_expectations as gx

    E = gx.expectations
    tol = float(bbox_tolerance)
    few = list(range(1, int(min_labeled_keypoints)))
    labeled = {"row_condition": "v > 0", "condition_parser": "pandas"}
    specs = [
        # ------------------------------------------------------------- images
        dict(check="image_id_present", table="images", severity="error", field="id",
             exp=E.ExpectColumnValuesToNotBeNull(column="image_id"),
             msg=lambda r: f"images[{r['image_row']}] has no 'id'; add a unique integer id"),
        dict(check="image_id_unique", table="images", severity="error", field="id",
             exp=E.ExpectColumnValuesToBeUnique(column="image_id"),
             msg=lambda r: f"image id {_fmt(r['image_id'])} is used by more than one images[] entry "
                           f"(this is images[{r['image_row']}]); give every image a unique id"),
        dict(check="image_file_name_present", table="images", severity="error", field="file_name",
             exp=E.ExpectColumnValuesToNotBeNull(column="file_name"),
             msg=lambda r: f"image {_fmt(r['image_id'])} has no 'file_name'; add the image's file name"),
        dict(check="image_width_positive", table="images", severity="error", field="width",
             exp=E.ExpectColumnValuesToBeBetween(column="width", min_value=0, strict_min=True),
             msg=lambda r: f"image {_fmt(r['image_id'])} declares width {_fmt(r['width'])}; it must be > 0 px"),
        dict(check="image_height_positive", table="images", severity="error", field="height",
             exp=E.ExpectColumnValuesToBeBetween(column="height", min_value=0, strict_min=True),
             msg=lambda r: f"image {_fmt(r['image_id'])} declares height {_fmt(r['height'])}; it must be > 0 px"),
        dict(check="image_size_present", table="images", severity="error", field="width",
             exp=E.ExpectColumnValuesToNotBeNull(column="width"),
             msg=lambda r: f"image {_fmt(r['image_id'])} has no numeric 'width'; add the decoded width in px"),
        dict(check="image_size_present", table="images", severity="error", field="height",
             exp=E.ExpectColumnValuesToNotBeNull(column="height"),
             msg=lambda r: f"image {_fmt(r['image_id'])} has no numeric 'height'; add the decoded height in px"),
        # -------------------------------------------------------- annotations
        dict(check="annotation_id_present", table="annotations", severity="error", field="id",
             exp=E.ExpectColumnValuesToNotBeNull(column="annotation_id"),
             msg=lambda r: f"annotations[{r['ann_row']}] has no 'id'; add a unique integer id"),
        dict(check="annotation_id_unique", table="annotations", severity="error", field="id",
             exp=E.ExpectColumnValuesToBeUnique(column="annotation_id"),
             msg=lambda r: f"annotation id {_fmt(r['annotation_id'])} is used by more than one annotations[] "
                           f"entry (this is annotations[{r['ann_row']}]); give every annotation a unique id"),
        dict(check="image_exists", table="annotations", severity="error", field="image_id",
             exp=E.ExpectColumnValuesToBeInSet(column="image_found", value_set=[True]),
             msg=lambda r: f"annotation {_fmt(r['annotation_id'])} refers to image_id {_fmt(r['image_id'])}, "
                           f"which is not in images[]; fix image_id or add the image"),
        dict(check="category_is_person", table="annotations", severity="error", field="category_id",
             exp=E.ExpectColumnValuesToBeInSet(column="category_id", value_set=list(person_ids)),
             msg=lambda r: f"annotation {_fmt(r['annotation_id'])} has category_id {_fmt(r['category_id'])}; "
                           f"a keypoint file holds only the person category ({', '.join(map(str, person_ids))})"),
        dict(check="category_is_person", table="annotations", severity="error", field="category_id",
             exp=E.ExpectColumnValuesToNotBeNull(column="category_id"),
             msg=lambda r: f"annotation {_fmt(r['annotation_id'])} has no category_id; set it to the person "
                           f"category ({', '.join(map(str, person_ids))})"),
        dict(check="iscrowd_valid", table="annotations", severity="error", field="iscrowd",
             exp=E.ExpectColumnValuesToNotBeNull(column="iscrowd"),
             msg=lambda r: f"annotation {_fmt(r['annotation_id'])} has a non-numeric iscrowd; use 0 or 1"),
        dict(check="iscrowd_valid", table="annotations", severity="error", field="iscrowd",
             exp=E.ExpectColumnValuesToBeInSet(column="iscrowd", value_set=[0, 1]),
             msg=lambda r: f"annotation {_fmt(r['annotation_id'])} has iscrowd {_fmt(r['iscrowd'])}; use 0 or 1"),
        dict(check="bbox_format", table="annotations", severity="error", field="bbox",
             exp=E.ExpectColumnValuesToBeInSet(column="bbox_len", value_set=[4]),
             msg=lambda r: f"annotation {_fmt(r['annotation_id'])}: bbox must be 4 numbers [x, y, w, h] "
                           f"(got {'no list' if r['bbox_len'] < 0 else str(r['bbox_len']) + ' values'}); fix the bbox"),
        dict(check="bbox_positive", table="annotations", severity="error", field="bbox.w",
             exp=E.ExpectColumnValuesToBeBetween(column="bbox_w", min_value=0, strict_min=True),
             msg=lambda r: f"annotation {_fmt(r['annotation_id'])} has bbox width {_fmt(r['bbox_w'])}; "
                           f"it must be > 0 px: fix the box or drop the annotation"),
        dict(check="bbox_positive", table="annotations", severity="error", field="bbox.h",
             exp=E.ExpectColumnValuesToBeBetween(column="bbox_h", min_value=0, strict_min=True),
             msg=lambda r: f"annotation {_fmt(r['annotation_id'])} has bbox height {_fmt(r['bbox_h'])}; "
                           f"it must be > 0 px: fix the box or drop the annotation"),
        dict(check="bbox_inside_image", table="annotations", severity="error", field="bbox.x",
             exp=E.ExpectColumnValuesToBeBetween(column="bbox_x", min_value=-tol),
             msg=lambda r: f"annotation {_fmt(r['annotation_id'])}: bbox x = {_fmt(r['bbox_x'])} lies left of "
                           f"the image by more than {tol:g} px; clip the box to the image"),
        dict(check="bbox_inside_image", table="annotations", severity="error", field="bbox.y",
             exp=E.ExpectColumnValuesToBeBetween(column="bbox_y", min_value=-tol),
             msg=lambda r: f"annotation {_fmt(r['annotation_id'])}: bbox y = {_fmt(r['bbox_y'])} lies above "
                           f"the image by more than {tol:g} px; clip the box to the image"),
        dict(check="bbox_inside_image", table="annotations", severity="error", field="bbox.x+w",
             exp=E.ExpectColumnValuesToBeBetween(column="bbox_right_margin", min_value=-tol),
             msg=lambda r: f"annotation {_fmt(r['annotation_id'])}: bbox right edge x + w = "
                           f"{_fmt(r['bbox_x'] + r['bbox_w'])} exceeds the image width {_fmt(r['img_width'])} "
                           f"by more than {tol:g} px; clip the box to the image"),
        dict(check="bbox_inside_image", table="annotations", severity="error", field="bbox.y+h",
             exp=E.ExpectColumnValuesToBeBetween(column="bbox_bottom_margin", min_value=-tol),
             msg=lambda r: f"annotation {_fmt(r['annotation_id'])}: bbox bottom edge y + h = "
                           f"{_fmt(r['bbox_y'] + r['bbox_h'])} exceeds the image height {_fmt(r['img_height'])} "
                           f"by more than {tol:g} px; clip the box to the image"),
        dict(check="area_positive", table="annotations", severity="error", field="area",
             exp=E.ExpectColumnValuesToBeBetween(column="area", min_value=0, strict_min=True),
             msg=lambda r: f"annotation {_fmt(r['annotation_id'])} has area {_fmt(r['area'])}; it must be > 0 "
                           f"px^2 (segmentation area): recompute it or drop the annotation"),
        dict(check="area_positive", table="annotations", severity="error", field="area",
             exp=E.ExpectColumnValuesToNotBeNull(column="area"),
             msg=lambda r: f"annotation {_fmt(r['annotation_id'])} has no numeric area; recompute it from the segmentation"),
        dict(check="keypoints_format", table="annotations", severity="error", field="keypoints",
             exp=E.ExpectColumnValuesToBeInSet(column="keypoints_len", value_set=[3 * len(KEYPOINT_NAMES)]),
             msg=lambda r: f"annotation {_fmt(r['annotation_id'])}: keypoints must be {3 * len(KEYPOINT_NAMES)} "
                           f"numbers (x, y, v per COCO joint), got "
                           f"{'no list' if r['keypoints_len'] == -1 else 'non-numbers' if r['keypoints_len'] == -2 else str(r['keypoints_len']) + ' values'}"),
        dict(check="num_keypoints_consistent", table="annotations", severity="error", field="num_keypoints",
             exp=E.ExpectColumnPairValuesToBeEqual(column_A="num_keypoints", column_B="n_labeled",
                                                   row_condition=f"keypoints_len == {3 * len(KEYPOINT_NAMES)}",
                                                   condition_parser="pandas"),
             msg=lambda r: f"annotation {_fmt(r['annotation_id'])} has num_keypoints {_fmt(r['num_keypoints'])} "
                           f"but {int(r['n_labeled'])} joints with v > 0; set num_keypoints = {int(r['n_labeled'])}"),
        dict(check="crowd_no_keypoints", table="annotations", severity="error", field="keypoints",
             exp=E.ExpectColumnValuesToBeInSet(column="n_labeled", value_set=[0], row_condition="iscrowd == 1",
                                               condition_parser="pandas"),
             msg=lambda r: f"crowd annotation {_fmt(r['annotation_id'])} (iscrowd = 1) has {int(r['n_labeled'])} "
                           f"labeled keypoints; crowd regions carry none: set v = 0 or iscrowd = 0"),
        dict(check="few_keypoints", table="annotations", severity="warning", field="num_keypoints",
             exp=E.ExpectColumnValuesToNotBeInSet(column="n_labeled", value_set=few or [-1]),
             msg=lambda r: f"person {_fmt(r['annotation_id'])} has only {int(r['n_labeled'])} labeled keypoint(s) "
                           f"(< {int(min_labeled_keypoints)}); check the labels or mark the person as ignore region"),
        dict(check="left_right_swap", table="annotations", severity="warning", field="keypoints",
             exp=E.ExpectColumnValuesToBeInSet(column="lr_swap_suspect", value_set=[False]),
             msg=lambda r: f"person {_fmt(r['annotation_id'])} faces the camera (nose between visible eyes) but its "
                           f"left shoulder and left hip lie image-left of the right ones; left/right labels look "
                           f"swapped: check and swap left_* / right_* joints"),
        # ---------------------------------------------------------- keypoints
        dict(check="visibility_valid", table="keypoints", severity="error", field="keypoints.v",
             exp=E.ExpectColumnValuesToBeInSet(column="v", value_set=[0, 1, 2]),
             msg=lambda r: f"annotation {_fmt(r['annotation_id'])}: {_joint(r)} has visibility {_fmt(r['v'])}; "
                           f"COCO allows 0 (not labeled), 1 (occluded), 2 (visible)"),
        dict(check="keypoint_inside_image", table="keypoints", severity="error", field="keypoints.x",
             exp=E.ExpectColumnValuesToBeBetween(column="x", min_value=0, **labeled),
             msg=lambda r: f"annotation {_fmt(r['annotation_id'])}: labeled {_joint(r)} at x = {_fmt(r['x'])} lies "
                           f"left of the image; fix the coordinate or set v = 0"),
        dict(check="keypoint_inside_image", table="keypoints", severity="error", field="keypoints.y",
             exp=E.ExpectColumnValuesToBeBetween(column="y", min_value=0, **labeled),
             msg=lambda r: f"annotation {_fmt(r['annotation_id'])}: labeled {_joint(r)} at y = {_fmt(r['y'])} lies "
                           f"above the image; fix the coordinate or set v = 0"),
        dict(check="keypoint_inside_image", table="keypoints", severity="error", field="keypoints.x",
             exp=E.ExpectColumnValuesToBeBetween(column="x_right_margin", min_value=0, **labeled),
             msg=lambda r: f"annotation {_fmt(r['annotation_id'])}: labeled {_joint(r)} at x = {_fmt(r['x'])} lies "
                           f"beyond the image width {_fmt(r['img_width'])}; fix the coordinate or set v = 0"),
        dict(check="keypoint_inside_image", table="keypoints", severity="error", field="keypoints.y",
             exp=E.ExpectColumnValuesToBeBetween(column="y_bottom_margin", min_value=0, **labeled),
             msg=lambda r: f"annotation {_fmt(r['annotation_id'])}: labeled {_joint(r)} at y = {_fmt(r['y'])} lies "
                           f"beyond the image height {_fmt(r['img_height'])}; fix the coordinate or set v = 0"),
    ]
    return specs


ID_COLUMNS = {
    "images": ["image_row", "image_id"],
    "annotations": ["ann_row", "annotation_id", "image_id"],
    "keypoints": ["kp_row", "ann_row", "annotation_id", "image_id", "joint"],
}
ROW_COLUMN = {"images": "image_row", "annotations": "ann_row", "keypoints": "kp_row"}


def _frames_for_ge(t: CocoTables) -> dict[str, pd.DataFrame]:
    """The tables plus the derived columns the suite reads (margins in image px);
    the columns are added to ``t``'s frames in place."""
    ann = t.annotations
    ann["bbox_right_margin"] = ann["img_width"] - (ann["bbox_x"] + ann["bbox_w"])
    ann["bbox_bottom_margin"] = ann["img_height"] - (ann["bbox_y"] + ann["bbox_h"])
    ann["lr_swap_suspect"] = suspicious_lr_swaps(t.keypoint_array)
    kp = t.keypoints
    kp["x_right_margin"] = kp["img_width"] - kp["x"]
    kp["y_bottom_margin"] = kp["img_height"] - kp["y"]
    return {"images": t.images, "annotations": ann, "keypoints": kp}


def _run_ge(frames: dict[str, pd.DataFrame], specs: list[dict], docs_build_dir: Path | None) -> list[tuple[dict, Any]]:
    """Run one suite per table in an ephemeral GE context; returns (spec, ExpectationValidationResult)
    pairs. Data Docs are built into ``docs_build_dir`` when given."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    site_names: list[str] = []
    if docs_build_dir is not None:
        for name in list(ctx.get_config().data_docs_sites or {}):
            try:
                ctx.delete_data_docs_site(name)
            except Exception:  # pragma: no cover - a GE version without a default site
                pass
        ctx.add_data_docs_site(site_name="pose_quality", site_config={
            "class_name": "SiteBuilder",
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                              "base_directory": str(Path(docs_build_dir).resolve())},
        })
        site_names = ["pose_quality"]
    source = ctx.data_sources.add_pandas("coco_tables")
    by_id: dict[str, dict] = {}
    pairs: list[tuple[dict, Any]] = []
    for table, frame in frames.items():
        table_specs = [s for s in specs if s["table"] == table]
        suite = gx.ExpectationSuite(name=f"coco_{table}")
        for i, s in enumerate(table_specs):
            exp = s["exp"]
            exp.meta = {"check": s["check"], "field": s["field"], "table": table, "key": f"{table}:{i}"}
            exp.severity = "critical" if s["severity"] == "error" else "warning"
            suite.add_expectation(exp)
            by_id[f"{table}:{i}"] = s
        suite = ctx.suites.add(suite)
        batch_def = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe("all")
        vdef = ctx.validation_definitions.add(gx.ValidationDefinition(name=f"validate_{table}", data=batch_def, suite=suite))
        checkpoint = ctx.checkpoints.add(gx.Checkpoint(
            name=f"checkpoint_{table}", validation_definitions=[vdef], actions=[],
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ID_COLUMNS[table],
                           "partial_unexpected_count": 20, "return_unexpected_index_query": False}))
        cp_result = checkpoint.run(batch_parameters={"dataframe": frame})
        for run_result in cp_result.run_results.values():
            for r in run_result.results:
                pairs.append((by_id[r.expectation_config.meta["key"]], r))
    try:
        if site_names:  # one build for the three stored validation results (not one per checkpoint)
            ctx.build_data_docs(site_names=site_names)
    finally:
        _release_context(ctx, source.name)
    return pairs


def _release_context(ctx: Any, source_name: str) -> None:
    """Let the context and the DataFrames its batches hold be freed: GE keeps the
    last context in a module-level project manager, which would otherwise pin the
    tables (hundreds of MB at COCO scale) until the next `get_context`."""
    try:
        ctx.data_sources.delete(source_name)
    except Exception:  # pragma: no cover - best effort
        log.debug("could not delete GE data source %s", source_name, exc_info=True)
    try:
        from great_expectations.data_context.data_context.context_factory import project_manager
        if getattr(project_manager, "_ProjectManager__project", None) is ctx:
            project_manager.set_project(None)
    except Exception:  # pragma: no cover - GE internals moved
        log.debug("could not reset the GE project manager", exc_info=True)
    gc.collect()  # GE's object graph has cycles: free it (and the batches' DataFrames) now


def _ge_findings(pairs: list[tuple[dict, Any]], frames: dict[str, pd.DataFrame], ann_file: Path) -> tuple[list[dict], list[dict]]:
    """Map each failed expectation's unexpected rows back to findings; also returns
    a per-expectation summary list."""
    findings: list[dict] = []
    summary: list[dict] = []
    for spec, r in pairs:
        table = spec["table"]
        res = r.result or {}
        exc = (r.exception_info or {}) if hasattr(r, "exception_info") else {}
        raised = bool(exc.get("raised_exception")) if isinstance(exc, dict) else False
        summary.append({"check": spec["check"], "table": table, "field": spec["field"],
                        "expectation": r.expectation_config.type, "severity": spec["severity"],
                        "success": bool(r.success), "element_count": _py(res.get("element_count")),
                        "unexpected_count": _py(res.get("unexpected_count"))})
        if r.success:
            continue
        if raised:
            findings.append(_finding("error", spec["check"], ann_file,
                                     f"expectation {r.expectation_config.type} on {table}.{spec['field']} could not be "
                                     f"evaluated: {exc.get('exception_message')}; check the column's type",
                                     field=spec["field"]))
            continue
        rows = [int(d[ROW_COLUMN[table]]) for d in res.get("unexpected_index_list") or []]
        frame = frames[table]
        sub = frame.iloc[rows]
        for rec in sub.to_dict("records"):
            extra = {"row": rec.get("ann_row", rec.get("image_row"))}
            if table == "keypoints":
                extra["joint"] = rec["joint"]
            findings.append(_finding(spec["severity"], spec["check"], ann_file, spec["msg"](rec),
                                     image_id=rec.get("image_id"), annotation_id=rec.get("annotation_id"),
                                     field=spec["field"], table=table, **extra))
    return findings, summary


# ---------------------------------------------------------------- image checks

def _load_cache(cache_path: Path | None) -> dict:
    empty = {"version": CACHE_VERSION, "files": {}, "decoded": {}}
    if cache_path is None or not Path(cache_path).is_file():
        return empty
    try:
        raw = Path(cache_path).read_bytes()
        data = _orjson.loads(raw) if _orjson is not None else json.loads(raw)
    except (OSError, ValueError):
        return empty  # a damaged cache is rebuilt, never trusted
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return empty
    data.setdefault("files", {})
    data.setdefault("decoded", {})
    return data


def _stat_and_hash(path: str, memo: dict | None) -> dict:
    """Stat one image file and get its sha256: from ``memo`` ({size, mtime_ns, sha256}
    cached for this path) when size and mtime are unchanged, else by reading it."""
    out: dict[str, Any] = {"path": path, "exists": False, "sha256": None, "error": None, "hashed": False}
    try:
        st = os.stat(path)
    except OSError:
        return out
    out.update(exists=True, size=st.st_size, mtime_ns=st.st_mtime_ns)
    if memo and memo.get("size") == st.st_size and memo.get("mtime_ns") == st.st_mtime_ns and memo.get("sha256"):
        out["sha256"] = memo["sha256"]
        return out
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except OSError as exc:
        out["error"] = f"cannot read: {exc.strerror or exc}"
        return out
    out.update(sha256=h.hexdigest(), hashed=True)
    return out


def _decode(path: str) -> dict:
    """Fully decode one image with Pillow; {width, height, error} (error None when it decodes)."""
    from PIL import Image

    out: dict[str, Any] = {"width": None, "height": None, "error": None}
    try:
        with Image.open(path) as im:
            out["width"], out["height"] = im.size
            im.load()  # decodes every scanline; a truncated file raises OSError
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError...
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def check_image_files(images: pd.DataFrame, images_dir: Path, *, workers: int = 2,
                      cache_path: Path | None = None) -> tuple[list[dict], dict]:
    """Image-file checks for the rows of an ``images`` table (`pose.quality.tables`).

    Checks, each an ``error`` finding: ``image_file_exists``, ``image_decodes``
    (full Pillow decode with truncated images refused), ``image_size_matches``
    (decoded size == declared width/height), ``image_duplicate`` (same sha256 as an
    earlier image row; the first is kept, the later ones are flagged).

    Args:
        images: the images table (``image_row, image_id, file_name, width, height``).
        images_dir: folder the ``file_name`` values are relative to.
        workers: threads for hashing/decoding (Pillow releases the GIL while decoding).
        cache_path: JSON cache {path -> (size, mtime_ns, sha256)}, {sha256 -> decode result};
            written atomically; ``None`` disables caching.

    Returns: (findings, stats) with stats counting files hashed / decoded / from cache.
    """
    from PIL import ImageFile

    images_dir = Path(images_dir)
    cache = _load_cache(cache_path)
    names = images["file_name"].to_numpy()
    has_name = np.array([isinstance(n, str) and n != "" for n in names], dtype=bool)
    prefix = os.path.join(str(images_dir), "")
    paths = np.array([prefix + n if ok else "" for n, ok in zip(names, has_name)], dtype=object)
    unique_paths = sorted(set(paths[has_name].tolist()))

    files, decoded = cache["files"], cache["decoded"]
    pool = ThreadPoolExecutor(max_workers=int(workers)) if workers and workers > 1 else None
    mapper = pool.map if pool is not None else map
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        # 1. stat + sha256 of every distinct path (sha256 memoised by path, size, mtime)
        chunks = [unique_paths[i:i + 512] for i in range(0, len(unique_paths), 512)]  # few tasks, little overhead
        results = [r for part in mapper(lambda ps: [_stat_and_hash(p, files.get(p)) for p in ps], chunks) for r in part]
        # 2. decode each distinct content once, unless an earlier run did
        todo: dict[str, str] = {}
        for r in results:
            if r["sha256"] is not None and r["sha256"] not in decoded and r["sha256"] not in todo:
                todo[r["sha256"]] = r["path"]
        fresh = dict(zip(todo, mapper(_decode, list(todo.values()))))
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
        if pool is not None:
            pool.shutdown()
    decoded.update(fresh)
    for r in results:
        if r["sha256"] is not None:
            r.update(decoded[r["sha256"]])
            files[r["path"]] = {"size": r["size"], "mtime_ns": r["mtime_ns"], "sha256": r["sha256"]}

    info = {r["path"]: r for r in results}
    stats = {"files": len(unique_paths), "hashed": sum(r["hashed"] for r in results), "decoded": len(fresh),
             "from_cache": sum(r["exists"] and r["sha256"] is not None and r["sha256"] not in fresh for r in results)}
    if cache_path is not None:
        atomic_write_bytes(Path(cache_path), _dumps_compact(cache))

    findings: list[dict] = []
    ids = images["image_id"].to_numpy()
    rows = images["image_row"].to_numpy()
    dw = images["width"].to_numpy()
    dh = images["height"].to_numpy()
    sha_col = np.empty(len(images), dtype=object)
    for i in range(len(images)):
        iid, row = ids[i], rows[i]
        if not has_name[i]:
            continue  # reported by the GE check image_file_name_present
        p = paths[i]
        r = info[p]
        if not r["exists"]:
            findings.append(_finding("error", "image_file_exists", p,
                                     f"image {_fmt(iid)}: file {p} does not exist; restore it or remove the image "
                                     f"and its annotations", image_id=iid, field="file_name", row=row))
            continue
        sha_col[i] = r["sha256"]
        if r["error"]:
            findings.append(_finding("error", "image_decodes", p,
                                     f"image {_fmt(iid)}: {p} does not decode completely ({r['error']}); re-download "
                                     f"or re-encode the file", image_id=iid, field="file_name", row=row))
            continue
        if np.isfinite(dw[i]) and np.isfinite(dh[i]) and (r["width"] != dw[i] or r["height"] != dh[i]):
            findings.append(_finding("error", "image_size_matches", p,
                                     f"image {_fmt(iid)}: declared {_fmt(dw[i])}x{_fmt(dh[i])} px but the file decodes "
                                     f"to {r['width']}x{r['height']} px; fix width/height in images[] (keypoints "
                                     f"and boxes are in the declared frame)",
                                     image_id=iid, field="width" if r["width"] != dw[i] else "height", row=row,
                                     decoded_width=r["width"], decoded_height=r["height"]))
    # Duplicates by content: vectorised group-by over the sha column.
    sha = pd.Series(sha_col)
    dup = sha.notna() & sha.duplicated(keep="first")
    if dup.any():
        first_of = sha[sha.notna()].drop_duplicates(keep="first")
        first_pos = dict(zip(first_of.to_numpy(), first_of.index.to_numpy()))
        for i in np.flatnonzero(dup.to_numpy()):
            j = int(first_pos[sha_col[i]])
            findings.append(_finding("error", "image_duplicate", paths[i],
                                     f"image {_fmt(ids[i])} ({names[i]}) has the same content (sha256 "
                                     f"{sha_col[i][:12]}...) as image {_fmt(ids[j])} ({names[j]}); remove the "
                                     f"duplicate and merge its annotations", image_id=ids[i], field="file_name",
                                     row=rows[i], duplicate_of=ids[j]))
    return findings, stats


# -------------------------------------------------------------------- quarantine

def _quarantine(t: CocoTables, findings: list[dict]) -> tuple[dict, dict]:
    """Drop every image / annotation named by an error finding.

    Image-level errors (table ``images`` or image-file checks) remove the image row
    and every annotation of that image id (unless another kept image row has the
    id); annotation-level errors remove the annotation. An id used twice removes
    every row carrying it (which one is right cannot be told). Returns (cleaned JSON,
    removed = {"images": [...], "annotations": [...]}) with the reasons (check names).
    """
    img_reasons: dict[int, list[str]] = {}
    ann_reasons: dict[int, list[str]] = {}
    for f in findings:
        if f["severity"] != "error" or f.get("row") is None:
            continue
        if f.get("table") in ("annotations", "keypoints"):
            ann_reasons.setdefault(int(f["row"]), []).append(f["check"])
        else:
            img_reasons.setdefault(int(f["row"]), []).append(f["check"])
    images, anns = t.images, t.annotations
    kept_img = ~images["image_row"].isin(list(img_reasons)).to_numpy()
    removed_ids = set(images.loc[~kept_img, "image_id"].tolist()) - set(images.loc[kept_img, "image_id"].tolist())
    cascade = anns["image_id"].isin(list(removed_ids)).to_numpy()
    for row in np.flatnonzero(cascade):
        ann_reasons.setdefault(int(row), []).append("image_removed")

    raw_imgs, raw_anns = t.raw["images"], t.raw["annotations"]
    removed = {
        "images": [{"row": r, "image_id": _py(images.at[r, "image_id"]), "file_name": raw_imgs[r].get("file_name"),
                    "reasons": sorted(set(c))} for r, c in sorted(img_reasons.items())],
        "annotations": [{"row": r, "annotation_id": _py(anns.at[r, "annotation_id"]),
                         "image_id": _py(anns.at[r, "image_id"]), "reasons": sorted(set(c))}
                        for r, c in sorted(ann_reasons.items())],
    }
    drop_img, drop_ann = set(img_reasons), set(ann_reasons)
    cleaned = dict(t.raw)
    cleaned["images"] = [e for i, e in enumerate(raw_imgs) if i not in drop_img]
    cleaned["annotations"] = [e for i, e in enumerate(raw_anns) if i not in drop_ann]
    return cleaned, removed


# ------------------------------------------------------------------------ docs

def _install_docs(build_dir: Path, docs_dir: Path) -> None:
    """Replace ``docs_dir`` by the freshly built site (refuses to delete a folder that
    is not empty and does not look like a GE site)."""
    docs_dir = Path(docs_dir)
    if docs_dir.exists():
        entries = list(docs_dir.iterdir())
        if entries and not (docs_dir / "index.html").exists():
            raise ValueError(f"docs_dir {docs_dir} is not empty and holds no Data Docs site; refusing to replace it")
        old = docs_dir.with_name(f".{docs_dir.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(docs_dir, old)
        os.replace(build_dir, docs_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        docs_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(build_dir, docs_dir)


# ------------------------------------------------------------------------- main

def validate_dataset(annotations: Path, images_dir: Path, *, on_error: str, bbox_tolerance: float,
                     min_labeled_keypoints: int, report_path: Path, docs_dir: Path | None,
                     cleaned_path: Path | None = None, workers: int = 2, cache_path: Path | None = None,
                     check_images: bool = True) -> dict:
    """Validate a COCO person-keypoint annotation file and its images; write a JSON report.

    Args:
        annotations: COCO keypoint JSON (cocodataset.org/#format-data).
        images_dir: folder holding the ``file_name`` of every image.
        on_error: ``"fail"`` (``ok`` is False when any error is found) or
            ``"quarantine"`` (errors are removed into ``cleaned_path``; ``ok`` True).
        bbox_tolerance: px a bbox may extend past the image border (params ``validate``).
        min_labeled_keypoints: persons with 0 < labeled keypoints < this are warned about.
        report_path: JSON report, written atomically (temp file + ``os.replace``).
        docs_dir: folder the great-expectations Data Docs HTML site is built into
            (replaced as a whole); ``None`` skips the docs.
        cleaned_path: annotation JSON downstream stages read. Without errors it is a
            byte-identical copy of ``annotations``; with ``quarantine`` the offending
            images/annotations are removed; with ``fail`` and errors (or an unreadable
            file) a stale one is deleted so nothing reads unvalidated data.
        workers: threads for the image checks.
        cache_path: JSON cache of the image checks (content sha256); ``None`` disables it.
        check_images: ``False`` skips the image-file checks (annotation checks only).

    Returns:
        The report dict: ``ok`` bool, ``policy``, ``summary`` (counts of images,
        annotations, labeled keypoints, errors, warnings, per check), ``expectations``
        (one row per GE expectation), ``findings`` (list of finding dicts, see the
        module docstring), ``removed`` ({"images": [...], "annotations": [...]} each
        with ``row``, ids and ``reasons``; empty unless quarantining), ``cleaned_path``,
        ``docs_dir``, ``timings_s``.

    Raises:
        ValueError: unknown ``on_error`` or a ``docs_dir`` that is a non-site folder.
        A malformed annotation file raises nothing: it becomes one ``json_parse``
        error finding with the parser's line and column, and ``ok`` is False.
    """
    if on_error not in POLICIES:
        raise ValueError(f"on_error must be one of {POLICIES}, got {on_error!r}")
    annotations, images_dir, report_path = Path(annotations), Path(images_dir), Path(report_path)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    report: dict[str, Any] = {
        "ok": False, "policy": on_error, "annotations": str(annotations), "images_dir": str(images_dir),
        "cleaned_path": None if cleaned_path is None else str(cleaned_path),
        "docs_dir": None if docs_dir is None else str(docs_dir),
        "params": {"bbox_tolerance": float(bbox_tolerance), "min_labeled_keypoints": int(min_labeled_keypoints)},
    }
    try:
        data = load_coco_json(annotations)
    except AnnotationFileError as exc:
        finding = _finding("error", "json_parse", exc.file, f"{exc.reason}" + (
            f" at line {exc.line}, column {exc.column}" if exc.line is not None else "") +
            "; fix the file (or re-download it) and re-run", field=None, line=exc.line, column=exc.column)
        report.update(summary={"images": 0, "annotations": 0, "errors": 1, "warnings": 0,
                               "by_check": {"json_parse": {"severity": "error", "count": 1}}},
                      expectations=[], findings=[finding], removed={"images": [], "annotations": []},
                      timings_s={"total": round(time.perf_counter() - t0, 3)})
        if cleaned_path is not None:
            Path(cleaned_path).unlink(missing_ok=True)
        atomic_write_json(report_path, _without_timings(report))
        return report
    timings["load"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    with gc_paused():
        tables = build_tables(data, annotations)
        frames = _frames_for_ge(tables)
    timings["tables"] = time.perf_counter() - t1

    person_ids = [c.get("id") for c in data.get("categories", []) if isinstance(c, dict) and c.get("name") == "person"]
    person_ids = person_ids or [1]
    t1 = time.perf_counter()
    specs = _check_specs(bbox_tolerance, min_labeled_keypoints, person_ids)
    build_dir = None
    if docs_dir is not None:
        Path(docs_dir).resolve().parent.mkdir(parents=True, exist_ok=True)
        build_dir = Path(tempfile.mkdtemp(prefix=f".{Path(docs_dir).name}.build-", dir=Path(docs_dir).resolve().parent))
    try:
        pairs = _run_ge(frames, specs, build_dir)
        if build_dir is not None:
            _install_docs(build_dir, Path(docs_dir))
            build_dir = None
    finally:
        if build_dir is not None:
            shutil.rmtree(build_dir, ignore_errors=True)
    timings["great_expectations"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    findings, expectation_summary = _ge_findings(pairs, frames, annotations)
    timings["findings"] = time.perf_counter() - t1

    image_stats: dict[str, int] = {}
    if check_images:
        t1 = time.perf_counter()
        img_findings, image_stats = check_image_files(tables.images, images_dir, workers=workers, cache_path=cache_path)
        for f in img_findings:
            f["table"] = "images"
        findings.extend(img_findings)
        timings["images"] = time.perf_counter() - t1

    errors = sum(f["severity"] == "error" for f in findings)
    warnings = len(findings) - errors
    by_check: dict[str, dict] = {}
    for f in findings:
        entry = by_check.setdefault(f["check"], {"severity": f["severity"], "count": 0})
        entry["count"] += 1
    removed: dict[str, list] = {"images": [], "annotations": []}
    t1 = time.perf_counter()
    if errors and on_error == "quarantine":
        cleaned, removed = _quarantine(tables, findings)
        if cleaned_path is not None:
            atomic_write_bytes(Path(cleaned_path), _dumps_compact(cleaned))
        ok = True
    elif errors:
        ok = False
        if cleaned_path is not None:
            Path(cleaned_path).unlink(missing_ok=True)
    else:
        ok = True
        if cleaned_path is not None:
            atomic_write_bytes(Path(cleaned_path), annotations.read_bytes())
    timings["write"] = time.perf_counter() - t1
    timings["total"] = time.perf_counter() - t0
    report.update(
        ok=ok,
        summary={"images": len(tables.images), "annotations": len(tables.annotations),
                 "labeled_keypoints": int(tables.annotations["n_labeled"].sum()),
                 "errors": errors, "warnings": warnings, "by_check": by_check,
                 "removed_images": len(removed["images"]), "removed_annotations": len(removed["annotations"]),
                 **{f"image_{k}": v for k, v in image_stats.items()}},
        expectations=expectation_summary, findings=findings, removed=removed,
        timings_s={k: round(v, 3) for k, v in timings.items()},
    )
    atomic_write_json(report_path, _without_timings(report))
    return report


def _without_timings(report: dict) -> dict:
    """The report as written to disk: wall-clock ``timings_s`` stay in the returned dict
    only, so the same data always gives a byte-identical report (DVC outputs compare by hash)."""
    return {k: v for k, v in report.items() if k != "timings_s"}


def main(argv: list[str] | None = None) -> int:
    """CLI: ``python -m pose.quality.validate --annotations A --images-dir D --report R
    [--docs DIR] [--cleaned C] [--cache F] [--params params.yaml]``. Policy and
    thresholds come from params ``validate``. Exit status 0 when ``ok``, 1 otherwise."""
    import yaml

    ap = argparse.ArgumentParser(prog="pose.quality.validate", description=main.__doc__)
    ap.add_argument("--annotations", type=Path, required=True)
    ap.add_argument("--images-dir", type=Path, required=True)
    ap.add_argument("--report", type=Path, required=True)
    ap.add_argument("--docs", type=Path, default=None)
    ap.add_argument("--cleaned", type=Path, default=None)
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--workers", type=int, default=2, help="threads for the image checks")
    args = ap.parse_args(argv)
    params = yaml.safe_load(args.params.read_text())
    v = params["validate"]
    report = validate_dataset(args.annotations, args.images_dir, on_error=v["on_error"],
                              bbox_tolerance=float(v["bbox_tolerance"]),
                              min_labeled_keypoints=int(v["min_labeled_keypoints"]), report_path=args.report,
                              docs_dir=args.docs, cleaned_path=args.cleaned, workers=args.workers, cache_path=args.cache)
    s = report["summary"]
    print(f"validate {args.annotations}: ok={report['ok']} errors={s['errors']} warnings={s['warnings']} "
          f"report={args.report}")
    for f in [f for f in report["findings"] if f["severity"] == "error"][:20]:
        print(f"  error {f['check']}: {f['message']}", file=sys.stderr)
    return 0 if report["ok"] else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
