"""Decoding: heatmaps + associative-embedding tags -> persons (``group``), test-time
inference of a model on images (``inference``: the reference test protocol, flip and
multi-scale test, the coordinate convention of params ``model.convention``), and ``pose
predict`` (``predict``: model loading from a checkpoint or the MLflow registry, overlays,
results JSON). See each module for coordinate units."""

from pose.decode.group import (REFERENCE_JOINT_ORDER, default_joint_order, group_keypoints,
                               matching_cost, max_pool_nms, quarter_offsets, top_k_peaks)

__all__ = ["REFERENCE_JOINT_ORDER", "default_joint_order", "group_keypoints", "matching_cost",
           "max_pool_nms", "quarter_offsets", "top_k_peaks"]
