"""Data quality gates: annotation/image validation (`validate_dataset`) and the
geometric scale checks of the training transform (`check_scales`)."""

from pose.quality.scales import check_scales
from pose.quality.tables import AnnotationFileError, CocoTables, build_tables, load_coco_json, load_tables
from pose.quality.validate import check_image_files, suspicious_lr_swaps, validate_dataset

__all__ = [
    "AnnotationFileError", "CocoTables", "build_tables", "check_image_files", "check_scales",
    "load_coco_json", "load_tables", "suspicious_lr_swaps", "validate_dataset",
]
