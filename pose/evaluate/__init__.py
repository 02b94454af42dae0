"""Evaluation: COCO / CrowdPose keypoint metrics with pycocotools (``coco``) and plots
(``plots``)."""
