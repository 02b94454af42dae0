"""Evaluation: COCO / CrowdPose keypoint metrics with pycocotools (``coco``), plots and their
CSV tables (``plots``), test-time efficiency: size, GFLOPs, latency, memory (``efficiency``), and
the ``pose evaluate`` command's two steps: scoring a checkpoint (``scoring``) and writing its
outputs (``outputs``)."""
