"""Decoding (core; this package and ``group``, ``preprocess``, ``persons``,
``onnx_backend`` import no torch): heatmaps + associative-embedding tags -> persons
(``group``), test-time input geometry and normalisation and the mapping back to image px
(``preprocess``), settings and person building shared by both backends (``persons``),
test-time inference with torch (``inference``: :class:`~pose.decode.inference.InferenceNet`,
the reference test protocol, flip and multi-scale test, the coordinate convention of params
``model.convention``) and with onnxruntime on an exported model (``onnx_backend``). Model
loading, files and overlays are services: ``pose.predict``, ``pose.export``. See each
module for coordinate units."""

from pose.decode.group import (
                               REFERENCE_JOINT_ORDER,
                               default_joint_order,
                               group_keypoints,
                               matching_cost,
                               max_pool_nms,
                               quarter_offsets,
                               top_k_peaks,
)

__all__ = ["REFERENCE_JOINT_ORDER", "default_joint_order", "group_keypoints", "matching_cost",
           "max_pool_nms", "quarter_offsets", "top_k_peaks"]
