"""CrowdPose (Li et al., CVPR 2019; github.com/Jeff-sjtu/CrowdPose): COCO-style JSON with 14 keypoints
(``crowdpose_{train,val,test,trainval}.json``, or mmpose's ``mmpose_crowdpose_*.json``), visibility
already COCO's 0 / 1 / 2, a ``crowdIndex`` per image.

Mapping: the 12 body joints (shoulders .. ankles) to COCO 5 .. 16; ``head`` (top of head) and
``neck`` have no COCO counterpart and are kept only in ``native_keypoints``.

Native metric: crowdpose-api's COCOeval (`pose.evaluate.coco.crowdpose_metrics`): OKS area =
0.53 x box, no area ranges, AP on the easy / medium / hard images by ``crowdIndex``
(`CROWDPOSE_SPLITS`); on the 14 joints when results and ground truth have them, else on the 12
shared body joints.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pose.datasets.formats.base import DatasetFormat, parse_coco_style, read_json

KEYPOINT_NAMES: tuple[str, ...] = (
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle", "head", "neck",
)
#: CrowdPose OKS sigmas (crowdpose-api COCOeval, kpt_oks_sigmas; the COCO body sigmas + head, neck).
SIGMAS = np.array([.79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89, .79, .79],
                  dtype=np.float64) / 10.0
TO_COCO: tuple[int | None, ...] = (5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, None, None)
#: crowdIndex bounds of the official split (crowdposetools ``get_type_result(first=0.2, second=0.8)``):
#: easy < 0.2 <= medium < 0.8 <= hard.
CROWDPOSE_SPLITS: tuple[float, float] = (0.2, 0.8)


def parse(native_json: Path, images_dir: Path) -> dict:
    """CrowdPose JSON -> COCO-17 records (`pose.datasets.formats.base.parse_coco_style`)."""
    return parse_coco_style(FORMAT, read_json(native_json), native_json, images_dir)


def native_metrics(gt: dict, results: list, sigmas: np.ndarray) -> dict:
    """`pose.evaluate.coco.crowdpose_metrics` with this format's mapping and the given (14,) sigmas."""
    from pose.evaluate.coco import crowdpose_metrics

    return crowdpose_metrics(gt, results, to_coco=TO_COCO, sigmas=sigmas, splits=CROWDPOSE_SPLITS)


FORMAT = DatasetFormat(
    kind="crowdpose", schema="crowdpose14", keypoint_names=KEYPOINT_NAMES, sigmas=SIGMAS,
    sigmas_name="CROWDPOSE_SIGMAS", to_coco=TO_COCO, parse=parse, native_metrics=native_metrics,
    native_metric="crowdpose-api AP (area 0.53 x box, easy / medium / hard by crowdIndex): crowdpose_* keys",
    reference="Li et al., CVPR 2019; github.com/Jeff-sjtu/CrowdPose",
)
