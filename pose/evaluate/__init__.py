"""Evaluation: COCO / CrowdPose keypoint metrics with pycocotools (``coco``), plots and their
CSV tables (``plots``), and test-time efficiency: size, GFLOPs, latency, memory (``efficiency``)."""
