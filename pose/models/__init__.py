"""Models: HigherHRNet with associative-embedding tags (official key layout) and ImageNet backbones."""

from pose.models.backbone import BackboneReport, load_backbone, read_state_dict
from pose.models.hrnet import (
    ARCHITECTURE_KEYS,
    HigherHRNet,
    build_model,
    build_training_model,
    count_flops,
    count_macs,
    count_params,
    init_weights,
    load_pretrained,
    split_heatmaps_tags,
)

__all__ = ["ARCHITECTURE_KEYS", "BackboneReport", "HigherHRNet", "build_model", "build_training_model", "count_flops",
           "count_macs", "count_params", "init_weights", "load_backbone", "load_pretrained", "read_state_dict",
           "split_heatmaps_tags"]
