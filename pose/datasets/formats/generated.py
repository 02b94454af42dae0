"""GENERATED: the synthetic multi-person set of `pose.datasets.generated`, written directly in
COCO-17 layout (fetch calls `generate_dataset`; nothing is parsed). Evaluated with COCO's OKS AP.
"""

from __future__ import annotations

from pose.datasets.formats.base import DatasetFormat
from pose.datasets.schema import COCO_SIGMAS, KEYPOINT_NAMES, NUM_JOINTS

FORMAT = DatasetFormat(
    kind="generated", schema="coco17", keypoint_names=KEYPOINT_NAMES, sigmas=COCO_SIGMAS,
    sigmas_name="COCO_SIGMAS", to_coco=tuple(range(NUM_JOINTS)), parse=None, native_metrics=None,
    native_metric="COCO OKS AP (the set is COCO-17)", reference="pose.datasets.generated", domain="generated",
)
