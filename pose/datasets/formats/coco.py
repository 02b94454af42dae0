"""COCO keypoints (Lin et al., ECCV 2014; cocodataset.org/#keypoints-eval): the project's own schema.

Files are already COCO-17 (`pose.datasets.schema`): fetch copies them, nothing is parsed. The
metric is COCO's OKS AP (pycocotools) with `COCO_SIGMAS`, so there is no separate native metric.
"""

from __future__ import annotations

from pose.datasets.formats.base import DatasetFormat
from pose.datasets.schema import COCO_SIGMAS, KEYPOINT_NAMES, NUM_JOINTS

FORMAT = DatasetFormat(
    kind="coco", schema="coco17", keypoint_names=KEYPOINT_NAMES, sigmas=COCO_SIGMAS, sigmas_name="COCO_SIGMAS",
    to_coco=tuple(range(NUM_JOINTS)), parse=None, native_metrics=None,
    native_metric="COCO OKS AP (pycocotools COCOeval) is the metric itself",
    reference="Lin et al., ECCV 2014; cocodataset.org/#keypoints-eval",
)
