"""State-dict keys of the official HigherHRNet checkpoints, for layout checks.

Hand-derived from the module structure of the reference implementation
(github.com/HRNet/HigherHRNet-Human-Pose-Estimation, ``lib/models/pose_higher_hrnet.py``,
config ``experiments/coco/higher_hrnet/w32_512_adam_lr1e-3.yaml``: W=32, K=17,
TAG_PER_JOINT, stage modules 1/4/3, 4 blocks everywhere, 1 deconvolution with 4
BasicBlocks, FINAL_CONV_KERNEL 1). Not a copy of any checkpoint: a sample of keys that
exercise every naming rule, with the tensor shapes that rule implies.

Naming rules of the reference (all reproduced by :class:`pose.models.hrnet.HigherHRNet`):

* ``transitionN.i.0.*``: conv3x3 adapting existing branch ``i``; ``transitionN.i.0.0.*``:
  first strided conv of a new branch (nested ``Sequential``). Identity slots have no keys.
* ``stageN.m.branches.b.n.*``: BasicBlock ``n`` of branch ``b`` in module ``m``.
* ``stageN.m.fuse_layers.i.j.0``: 1x1 conv for ``j > i`` (then ``.1`` BN);
  ``stageN.m.fuse_layers.i.j.s.0``: strided conv step ``s`` for ``j < i``.
* the last module of stage 4 has only ``fuse_layers.0`` (``multi_scale_output=False``).
* ``deconv_layers.d.0.0``: ConvTranspose2d (weight ``(C_in, C_out, 4, 4)``), ``.0.1`` BN;
  ``deconv_layers.d.n.0.*`` (n >= 1): BasicBlock wrapped in a ``Sequential``.
* ``final_layers.0``: 1x1 conv with bias, ``K + K`` outputs; ``final_layers.1``: ``K``.
"""

from __future__ import annotations

#: Configuration the shapes below belong to (keyword arguments of HigherHRNet; the one
#: deconvolution is fixed by `pose.codec.OUTPUT_STRIDES`).
OFFICIAL_W32_CONFIG = {"width": 32, "num_joints": 17, "tag_dim": 1, "stage_blocks": (1, 4, 3),
                       "stem_blocks": 4, "branch_blocks": 4, "deconv_blocks": 4}

#: Parameter count of HigherHRNet-W32 (paper Table 2: 28.6M).
OFFICIAL_W32_PARAMS_M = 28.6

#: key -> shape for the W32 COCO model.
OFFICIAL_W32_KEY_SHAPES: dict[str, tuple[int, ...]] = {
    "conv1.weight": (64, 3, 3, 3),
    "bn1.running_var": (64,),
    "conv2.weight": (64, 64, 3, 3),
    "bn2.num_batches_tracked": (),
    "layer1.0.conv1.weight": (64, 64, 1, 1),
    "layer1.0.conv3.weight": (256, 64, 1, 1),
    "layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "layer1.0.downsample.1.running_mean": (256,),
    "layer1.3.bn3.bias": (256,),
    "transition1.0.0.weight": (32, 256, 3, 3),
    "transition1.0.1.weight": (32,),
    "transition1.1.0.0.weight": (64, 256, 3, 3),
    "transition1.1.0.1.running_var": (64,),
    "stage2.0.branches.0.0.conv1.weight": (32, 32, 3, 3),
    "stage2.0.branches.1.3.bn2.bias": (64,),
    "stage2.0.fuse_layers.0.1.0.weight": (32, 64, 1, 1),
    "stage2.0.fuse_layers.0.1.1.weight": (32,),
    "stage2.0.fuse_layers.1.0.0.0.weight": (64, 32, 3, 3),
    "stage2.0.fuse_layers.1.0.0.1.running_mean": (64,),
    "transition2.2.0.0.weight": (128, 64, 3, 3),
    "stage3.0.branches.2.0.conv1.weight": (128, 128, 3, 3),
    "stage3.3.fuse_layers.0.2.0.weight": (32, 128, 1, 1),
    "stage3.3.fuse_layers.2.0.0.0.weight": (32, 32, 3, 3),
    "stage3.3.fuse_layers.2.0.1.0.weight": (128, 32, 3, 3),
    "stage3.3.fuse_layers.2.1.0.0.weight": (128, 64, 3, 3),
    "transition3.3.0.0.weight": (256, 128, 3, 3),
    "stage4.0.fuse_layers.3.0.2.0.weight": (256, 32, 3, 3),
    "stage4.1.fuse_layers.3.2.0.1.bias": (256,),
    "stage4.2.branches.3.3.conv2.weight": (256, 256, 3, 3),
    "stage4.2.fuse_layers.0.3.0.weight": (32, 256, 1, 1),
    "final_layers.0.weight": (34, 32, 1, 1),
    "final_layers.0.bias": (34,),
    "final_layers.1.weight": (17, 32, 1, 1),
    "final_layers.1.bias": (17,),
    "deconv_layers.0.0.0.weight": (66, 32, 4, 4),
    "deconv_layers.0.0.1.running_var": (32,),
    "deconv_layers.0.1.0.conv1.weight": (32, 32, 3, 3),
    "deconv_layers.0.4.0.bn2.weight": (32,),
}

#: Keys the official layout does NOT have (identity slots, single-output last module).
OFFICIAL_W32_ABSENT_KEYS: tuple[str, ...] = (
    "transition2.0.0.weight",             # unchanged branch: None in the reference
    "stage2.0.fuse_layers.0.0.0.weight",  # i == j: None
    "stage4.2.fuse_layers.1.0.0.0.weight",  # last stage-4 module fuses only to branch 0
    "deconv_layers.0.0.0.bias",           # deconvolution has no bias
    "final_layers.2.weight",
)
