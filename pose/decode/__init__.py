"""Decoding: heatmaps + associative-embedding tags -> persons (``group``), test-time
inference of a model on images (``inference``), and ``pose predict`` (``predict``: model
loading from a checkpoint or the MLflow registry, overlays, results JSON). See each module
for coordinate units."""

from pose.decode.group import (REFERENCE_JOINT_ORDER, default_joint_order, group_keypoints,
                               matching_cost, max_pool_nms, top_k_peaks)

__all__ = ["REFERENCE_JOINT_ORDER", "default_joint_order", "group_keypoints", "matching_cost",
           "max_pool_nms", "top_k_peaks"]
