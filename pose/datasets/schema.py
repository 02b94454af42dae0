"""The project's keypoint schema: COCO-17 (Lin et al., ECCV 2014; cocodataset.org/#keypoints-eval).

All datasets are converted into this schema. Indices are 0-based positions in the
COCO `keypoints` list; `SKELETON` is 0-based (COCO's JSON uses 1-based).
"""

from __future__ import annotations

import numpy as np

KEYPOINT_NAMES: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
NUM_JOINTS = len(KEYPOINT_NAMES)

#: FLIP_INDEX[k] is the joint that k becomes after a horizontal flip (left <-> right).
FLIP_INDEX: tuple[int, ...] = (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)

#: Per-keypoint OKS sigmas of COCO (pycocotools COCOeval.Params.kpt_oks_sigmas).
COCO_SIGMAS = np.array(
    [0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62,
     1.07, 1.07, 0.87, 0.87, 0.89, 0.89], dtype=np.float64) / 10.0

#: Limbs as 0-based joint index pairs (COCO category `skeleton` minus one).
SKELETON: tuple[tuple[int, int], ...] = (
    (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6),
    (5, 7), (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
)

PERSON_CATEGORY = {
    "supercategory": "person", "id": 1, "name": "person",
    "keypoints": list(KEYPOINT_NAMES),
    "skeleton": [[a + 1, b + 1] for a, b in SKELETON],
}
