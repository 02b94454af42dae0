"""Models: HigherHRNet with associative-embedding tags (official key layout)."""

from pose.models.hrnet import (
    HigherHRNet,
    build_model,
    count_flops,
    count_macs,
    count_params,
    init_weights,
    load_pretrained,
    split_heatmaps_tags,
)

__all__ = ["HigherHRNet", "build_model", "count_flops", "count_macs", "count_params", "init_weights",
           "load_pretrained", "split_heatmaps_tags"]
