"""Ignore masks of the heatmap loss (HigherHRNet reference, `CocoKeypoints.get_mask`).

Pixels covered by crowd regions (``iscrowd: 1``, RLE) and by people without any
labelled keypoint (``num_keypoints == 0``, polygons) carry no keypoint supervision,
so the loss must not push their heatmaps to zero.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils


def ignore_mask(annotations: list[dict], height: int, width: int) -> np.ndarray:
    """Union of crowd and unannotated-person regions of one image.

    Args:
        annotations: COCO annotation dicts of the image (``segmentation`` as polygons
            or RLE, ``iscrowd``, ``num_keypoints``).
        height, width: image size in px.

    Returns:
        (height, width) uint8, 1 where the loss ignores the pixel, 0 elsewhere.

    Raises:
        ValueError naming the annotation id when a segmentation cannot be decoded.
    """
    out = np.zeros((height, width), dtype=np.uint8)
    for ann in annotations:
        crowd = bool(ann.get("iscrowd", 0))
        if not crowd and ann.get("num_keypoints", 0) > 0:
            continue
        seg = ann.get("segmentation")
        if not seg:
            continue
        try:
            if isinstance(seg, list):
                rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
            elif isinstance(seg.get("counts"), list):
                rle = mask_utils.frPyObjects(seg, height, width)
            else:
                rle = seg
            out |= mask_utils.decode(rle).astype(np.uint8)
        except Exception as exc:  # pycocotools raises bare Exceptions/TypeErrors
            raise ValueError(f"annotation id {ann.get('id')}: cannot decode field 'segmentation': {exc}") from exc
    return out
