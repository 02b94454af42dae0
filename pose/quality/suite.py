"""The annotation checks of ``pose validate``: a great-expectations suite over the tables of
`pose.quality.tables`, and the left/right swap heuristic.

Source of the rules: COCO data format spec (cocodataset.org/#format-data, "Keypoint
Detection"): ``bbox = [x, y, w, h]`` in image px, ``keypoints`` = 17 ``(x, y, v)`` triples with
``v`` in {0, 1, 2}, ``num_keypoints`` = count of ``v > 0``, crowd regions (``iscrowd = 1``)
carry no keypoints.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pose.datasets.schema import KEYPOINT_NAMES
from pose.quality.findings import fmt
from pose.quality.tables import (
    LEFT_EYE,
    LEFT_HIP,
    LEFT_SHOULDER,
    NOSE,
    RIGHT_EYE,
    RIGHT_HIP,
    RIGHT_SHOULDER,
    CocoTables,
)


def suspicious_lr_swaps(keypoints: np.ndarray, min_shoulder_reversal: float) -> np.ndarray:
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
        frontal = ((v[:, NOSE] == 2) & (v[:, LEFT_EYE] == 2) & (v[:, RIGHT_EYE] == 2)
                   & (x[:, NOSE] > lo) & (x[:, NOSE] < hi))
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


def _keypoints_len_text(n: int) -> str:
    """What a ``keypoints_len`` of the annotations table means (-1: no list, -2: not numbers)."""
    return "no list" if n == -1 else "non-numbers" if n == -2 else f"{n} values"


def check_specs(bbox_tolerance: float, min_labeled_keypoints: int, person_ids: list) -> list[dict]:
    """The annotation checks, one dict each: ``check`` name, ``table``, ``severity``, ``field``,
    ``exp`` (a great-expectations expectation) and ``msg`` (table row -> actionable message).

    Args:
        bbox_tolerance: px a bbox may extend past the image border (params ``validate``).
        min_labeled_keypoints: persons with 0 < labeled keypoints < this are warned about.
        person_ids: the person category ids of the file's ``categories``."""
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
             msg=lambda r: f"image id {fmt(r['image_id'])} is used by more than one images[] entry "
                           f"(this is images[{r['image_row']}]); give every image a unique id"),
        dict(check="image_file_name_present", table="images", severity="error", field="file_name",
             exp=E.ExpectColumnValuesToNotBeNull(column="file_name"),
             msg=lambda r: f"image {fmt(r['image_id'])} has no 'file_name'; add the image's file name"),
        dict(check="image_width_positive", table="images", severity="error", field="width",
             exp=E.ExpectColumnValuesToBeBetween(column="width", min_value=0, strict_min=True),
             msg=lambda r: f"image {fmt(r['image_id'])} declares width {fmt(r['width'])}; it must be > 0 px"),
        dict(check="image_height_positive", table="images", severity="error", field="height",
             exp=E.ExpectColumnValuesToBeBetween(column="height", min_value=0, strict_min=True),
             msg=lambda r: f"image {fmt(r['image_id'])} declares height {fmt(r['height'])}; it must be > 0 px"),
        dict(check="image_size_present", table="images", severity="error", field="width",
             exp=E.ExpectColumnValuesToNotBeNull(column="width"),
             msg=lambda r: f"image {fmt(r['image_id'])} has no numeric 'width'; add the decoded width in px"),
        dict(check="image_size_present", table="images", severity="error", field="height",
             exp=E.ExpectColumnValuesToNotBeNull(column="height"),
             msg=lambda r: f"image {fmt(r['image_id'])} has no numeric 'height'; add the decoded height in px"),
        # -------------------------------------------------------- annotations
        dict(check="annotation_id_present", table="annotations", severity="error", field="id",
             exp=E.ExpectColumnValuesToNotBeNull(column="annotation_id"),
             msg=lambda r: f"annotations[{r['ann_row']}] has no 'id'; add a unique integer id"),
        dict(check="annotation_id_unique", table="annotations", severity="error", field="id",
             exp=E.ExpectColumnValuesToBeUnique(column="annotation_id"),
             msg=lambda r: f"annotation id {fmt(r['annotation_id'])} is used by more than one annotations[] "
                           f"entry (this is annotations[{r['ann_row']}]); give every annotation a unique id"),
        dict(check="image_exists", table="annotations", severity="error", field="image_id",
             exp=E.ExpectColumnValuesToBeInSet(column="image_found", value_set=[True]),
             msg=lambda r: f"annotation {fmt(r['annotation_id'])} refers to image_id {fmt(r['image_id'])}, "
                           f"which is not in images[]; fix image_id or add the image"),
        dict(check="category_is_person", table="annotations", severity="error", field="category_id",
             exp=E.ExpectColumnValuesToBeInSet(column="category_id", value_set=list(person_ids)),
             msg=lambda r: f"annotation {fmt(r['annotation_id'])} has category_id {fmt(r['category_id'])}; "
                           f"a keypoint file holds only the person category ({', '.join(map(str, person_ids))})"),
        dict(check="category_is_person", table="annotations", severity="error", field="category_id",
             exp=E.ExpectColumnValuesToNotBeNull(column="category_id"),
             msg=lambda r: f"annotation {fmt(r['annotation_id'])} has no category_id; set it to the person "
                           f"category ({', '.join(map(str, person_ids))})"),
        dict(check="iscrowd_valid", table="annotations", severity="error", field="iscrowd",
             exp=E.ExpectColumnValuesToNotBeNull(column="iscrowd"),
             msg=lambda r: f"annotation {fmt(r['annotation_id'])} has a non-numeric iscrowd; use 0 or 1"),
        dict(check="iscrowd_valid", table="annotations", severity="error", field="iscrowd",
             exp=E.ExpectColumnValuesToBeInSet(column="iscrowd", value_set=[0, 1]),
             msg=lambda r: f"annotation {fmt(r['annotation_id'])} has iscrowd {fmt(r['iscrowd'])}; use 0 or 1"),
        dict(check="bbox_format", table="annotations", severity="error", field="bbox",
             exp=E.ExpectColumnValuesToBeInSet(column="bbox_len", value_set=[4]),
             msg=lambda r: f"annotation {fmt(r['annotation_id'])}: bbox must be 4 numbers [x, y, w, h] "
                           f"(got {'no list' if r['bbox_len'] < 0 else str(r['bbox_len']) + ' values'}); fix the bbox"),
        dict(check="bbox_positive", table="annotations", severity="error", field="bbox.w",
             exp=E.ExpectColumnValuesToBeBetween(column="bbox_w", min_value=0, strict_min=True),
             msg=lambda r: f"annotation {fmt(r['annotation_id'])} has bbox width {fmt(r['bbox_w'])}; "
                           f"it must be > 0 px: fix the box or drop the annotation"),
        dict(check="bbox_positive", table="annotations", severity="error", field="bbox.h",
             exp=E.ExpectColumnValuesToBeBetween(column="bbox_h", min_value=0, strict_min=True),
             msg=lambda r: f"annotation {fmt(r['annotation_id'])} has bbox height {fmt(r['bbox_h'])}; "
                           f"it must be > 0 px: fix the box or drop the annotation"),
        dict(check="bbox_inside_image", table="annotations", severity="error", field="bbox.x",
             exp=E.ExpectColumnValuesToBeBetween(column="bbox_x", min_value=-tol),
             msg=lambda r: f"annotation {fmt(r['annotation_id'])}: bbox x = {fmt(r['bbox_x'])} lies left of "
                           f"the image by more than {tol:g} px; clip the box to the image"),
        dict(check="bbox_inside_image", table="annotations", severity="error", field="bbox.y",
             exp=E.ExpectColumnValuesToBeBetween(column="bbox_y", min_value=-tol),
             msg=lambda r: f"annotation {fmt(r['annotation_id'])}: bbox y = {fmt(r['bbox_y'])} lies above "
                           f"the image by more than {tol:g} px; clip the box to the image"),
        dict(check="bbox_inside_image", table="annotations", severity="error", field="bbox.x+w",
             exp=E.ExpectColumnValuesToBeBetween(column="bbox_right_margin", min_value=-tol),
             msg=lambda r: f"annotation {fmt(r['annotation_id'])}: bbox right edge x + w = "
                           f"{fmt(r['bbox_x'] + r['bbox_w'])} exceeds the image width {fmt(r['img_width'])} "
                           f"by more than {tol:g} px; clip the box to the image"),
        dict(check="bbox_inside_image", table="annotations", severity="error", field="bbox.y+h",
             exp=E.ExpectColumnValuesToBeBetween(column="bbox_bottom_margin", min_value=-tol),
             msg=lambda r: f"annotation {fmt(r['annotation_id'])}: bbox bottom edge y + h = "
                           f"{fmt(r['bbox_y'] + r['bbox_h'])} exceeds the image height {fmt(r['img_height'])} "
                           f"by more than {tol:g} px; clip the box to the image"),
        dict(check="area_positive", table="annotations", severity="error", field="area",
             exp=E.ExpectColumnValuesToBeBetween(column="area", min_value=0, strict_min=True),
             msg=lambda r: f"annotation {fmt(r['annotation_id'])} has area {fmt(r['area'])}; it must be > 0 "
                           f"px^2 (segmentation area): recompute it or drop the annotation"),
        dict(check="area_positive", table="annotations", severity="error", field="area",
             exp=E.ExpectColumnValuesToNotBeNull(column="area"),
             msg=lambda r: f"annotation {fmt(r['annotation_id'])} has no numeric area; recompute it from the "
                           f"segmentation"),
        dict(check="keypoints_format", table="annotations", severity="error", field="keypoints",
             exp=E.ExpectColumnValuesToBeInSet(column="keypoints_len", value_set=[3 * len(KEYPOINT_NAMES)]),
             msg=lambda r: f"annotation {fmt(r['annotation_id'])}: keypoints must be {3 * len(KEYPOINT_NAMES)} "
                           f"numbers (x, y, v per COCO joint), got "
                           f"{_keypoints_len_text(r['keypoints_len'])}"),
        dict(check="num_keypoints_consistent", table="annotations", severity="error", field="num_keypoints",
             exp=E.ExpectColumnPairValuesToBeEqual(column_A="num_keypoints", column_B="n_labeled",
                                                   row_condition=f"keypoints_len == {3 * len(KEYPOINT_NAMES)}",
                                                   condition_parser="pandas"),
             msg=lambda r: f"annotation {fmt(r['annotation_id'])} has num_keypoints {fmt(r['num_keypoints'])} "
                           f"but {int(r['n_labeled'])} joints with v > 0; set num_keypoints = {int(r['n_labeled'])}"),
        dict(check="crowd_no_keypoints", table="annotations", severity="error", field="keypoints",
             exp=E.ExpectColumnValuesToBeInSet(column="n_labeled", value_set=[0], row_condition="iscrowd == 1",
                                               condition_parser="pandas"),
             msg=lambda r: f"crowd annotation {fmt(r['annotation_id'])} (iscrowd = 1) has {int(r['n_labeled'])} "
                           f"labeled keypoints; crowd regions carry none: set v = 0 or iscrowd = 0"),
        dict(check="few_keypoints", table="annotations", severity="warning", field="num_keypoints",
             exp=E.ExpectColumnValuesToNotBeInSet(column="n_labeled", value_set=few or [-1]),
             msg=lambda r: f"person {fmt(r['annotation_id'])} has only {int(r['n_labeled'])} labeled keypoint(s) "
                           f"(< {int(min_labeled_keypoints)}); check the labels or mark the person as ignore region"),
        dict(check="left_right_swap", table="annotations", severity="warning", field="keypoints",
             exp=E.ExpectColumnValuesToBeInSet(column="lr_swap_suspect", value_set=[False]),
             msg=lambda r: f"person {fmt(r['annotation_id'])} faces the camera (nose between visible eyes) but its "
                           f"left shoulder and left hip lie image-left of the right ones; left/right labels look "
                           f"swapped: check and swap left_* / right_* joints"),
        # ---------------------------------------------------------- keypoints
        dict(check="visibility_valid", table="keypoints", severity="error", field="keypoints.v",
             exp=E.ExpectColumnValuesToBeInSet(column="v", value_set=[0, 1, 2]),
             msg=lambda r: f"annotation {fmt(r['annotation_id'])}: {_joint(r)} has visibility {fmt(r['v'])}; "
                           f"COCO allows 0 (not labeled), 1 (occluded), 2 (visible)"),
        dict(check="keypoint_inside_image", table="keypoints", severity="error", field="keypoints.x",
             exp=E.ExpectColumnValuesToBeBetween(column="x", min_value=0, **labeled),
             msg=lambda r: f"annotation {fmt(r['annotation_id'])}: labeled {_joint(r)} at x = {fmt(r['x'])} lies "
                           f"left of the image; fix the coordinate or set v = 0"),
        dict(check="keypoint_inside_image", table="keypoints", severity="error", field="keypoints.y",
             exp=E.ExpectColumnValuesToBeBetween(column="y", min_value=0, **labeled),
             msg=lambda r: f"annotation {fmt(r['annotation_id'])}: labeled {_joint(r)} at y = {fmt(r['y'])} lies "
                           f"above the image; fix the coordinate or set v = 0"),
        dict(check="keypoint_inside_image", table="keypoints", severity="error", field="keypoints.x",
             exp=E.ExpectColumnValuesToBeBetween(column="x_right_margin", min_value=0, **labeled),
             msg=lambda r: f"annotation {fmt(r['annotation_id'])}: labeled {_joint(r)} at x = {fmt(r['x'])} lies "
                           f"beyond the image width {fmt(r['img_width'])}; fix the coordinate or set v = 0"),
        dict(check="keypoint_inside_image", table="keypoints", severity="error", field="keypoints.y",
             exp=E.ExpectColumnValuesToBeBetween(column="y_bottom_margin", min_value=0, **labeled),
             msg=lambda r: f"annotation {fmt(r['annotation_id'])}: labeled {_joint(r)} at y = {fmt(r['y'])} lies "
                           f"beyond the image height {fmt(r['img_height'])}; fix the coordinate or set v = 0"),
    ]
    return specs


ID_COLUMNS = {
    "images": ["image_row", "image_id"],
    "annotations": ["ann_row", "annotation_id", "image_id"],
    "keypoints": ["kp_row", "ann_row", "annotation_id", "image_id", "joint"],
}
ROW_COLUMN = {"images": "image_row", "annotations": "ann_row", "keypoints": "kp_row"}


def frames_for_ge(t: CocoTables, lr_swap_min_shoulder_reversal: float) -> dict[str, pd.DataFrame]:
    """The tables plus the derived columns the suite reads (margins in image px);
    the columns are added to ``t``'s frames in place."""
    ann = t.annotations
    ann["bbox_right_margin"] = ann["img_width"] - (ann["bbox_x"] + ann["bbox_w"])
    ann["bbox_bottom_margin"] = ann["img_height"] - (ann["bbox_y"] + ann["bbox_h"])
    ann["lr_swap_suspect"] = suspicious_lr_swaps(t.keypoint_array, lr_swap_min_shoulder_reversal)
    kp = t.keypoints
    kp["x_right_margin"] = kp["img_width"] - kp["x"]
    kp["y_bottom_margin"] = kp["img_height"] - kp["y"]
    return {"images": t.images, "annotations": ann, "keypoints": kp}


__all__ = ["suspicious_lr_swaps", "check_specs", "ID_COLUMNS", "ROW_COLUMN", "frames_for_ge"]
