"""HigherHRNet: an HRNet backbone with a deconvolution head for bottom-up pose estimation.

Architecture (Cheng et al., "HigherHRNet: Scale-Aware Representation Learning for
Bottom-Up Human Pose Estimation", CVPR 2020, Sec. 3; HRNet: Sun et al., CVPR 2019):

* stem: two 3x3 stride-2 convolutions (3 -> 64 -> 64 channels) to 1/4 resolution;
* stage 1 (``layer1``): Bottleneck blocks, 64 -> 256 channels, 1/4 resolution;
* transitions + stages 2, 3, 4 with 2, 3, 4 parallel branches of widths
  ``W, 2W, 4W, 8W`` at 1/4, 1/8, 1/16, 1/32 resolution. Every stage is a chain of
  :class:`HighResolutionModule` (BasicBlocks per branch, then multi-resolution
  fusion). The last module of stage 4 only outputs the 1/4 branch;
* head (`pose.models.head`, shared by every backbone): ``final_layers[0]`` (1x1 conv) on
  the 1/4 features predicts ``K`` heatmaps and ``K * tag_dim`` associative-embedding tags;
  the deconvolution block concatenates the features with that prediction, upsamples x2
  (ConvTranspose2d 4x4 stride 2 + BN + ReLU, then BasicBlocks) and ``final_layers[1]``
  (1x1 conv) predicts ``K`` heatmaps at 1/2 resolution.

Module attribute names follow the reference implementation
(github.com/HRNet/HigherHRNet-Human-Pose-Estimation, ``lib/models/pose_higher_hrnet.py``)
so that an official state dict loads with ``strict=True`` for the same configuration
(``TAG_PER_JOINT: true``, ``FINAL_CONV_KERNEL: 1``, ``DECONV.CAT_OUTPUT: [true, ...]``,
``LOSS.WITH_AE_LOSS: [true, false, ...]``; our ``tag_dim=1``).

The output strides and channel layout are the model I/O contract of `pose.codec`
(``Codec.split_outputs`` splits heatmaps and tags); for ``tag_dim=1`` the layout is the official one.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn as nn

from pose.codec import section_mapping
from pose.models.head import BasicBlock, PoseNet, bn, conv3x3

#: Block counts of the published HigherHRNet (experiments/coco/higher_hrnet/w32_512_adam_lr1e-3.yaml:
#: ``STAGE1`` 4 Bottlenecks, ``NUM_BLOCKS`` 4 per branch, ``DECONV.NUM_BASIC_BLOCKS`` 4).
#: :meth:`HigherHRNet.from_params` takes ``stem_blocks`` and ``deconv_blocks`` from params
#: (``model.stem_blocks`` / ``model.deconv_blocks``) and keeps ``branch_blocks`` at the published value.
PUBLISHED_STEM_BLOCKS = 4  # Bottleneck blocks of stage 1 (``layer1``)
PUBLISHED_BRANCH_BLOCKS = 4  # BasicBlocks per branch in every HighResolutionModule
PUBLISHED_DECONV_BLOCKS = 4  # BasicBlocks after each deconvolution
STEM_CHANNELS = 64


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 residual block with 4x channel expansion (He et al. 2016)."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, kernel_size=1, bias=False)
        self.bn1 = bn(channels)
        self.conv2 = conv3x3(channels, channels, stride)
        self.bn2 = bn(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, kernel_size=1, bias=False)
        self.bn3 = bn(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _residual_layer(block: type[BasicBlock] | type[Bottleneck], in_channels: int,
                    channels: int, num_blocks: int) -> nn.Sequential:
    """``num_blocks`` residual blocks; the first one projects ``in_channels`` if needed."""
    if num_blocks < 1:
        raise ValueError(f"a residual layer needs at least 1 block, got {num_blocks}")
    out_channels = channels * block.expansion
    downsample = None
    if in_channels != out_channels:
        downsample = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
            bn(out_channels),
        )
    layers = [block(in_channels, channels, 1, downsample)]
    layers += [block(out_channels, channels) for _ in range(num_blocks - 1)]
    return nn.Sequential(*layers)


class HighResolutionModule(nn.Module):
    """One HRNet module: parallel branches of BasicBlocks, then multi-resolution fusion.

    Branch ``i`` runs at 1/(4 * 2**i) of the input resolution with ``channels[i]``
    channels. Fusion output ``i`` is ``relu(sum_j f_ij(x_j))`` where

    * ``j > i`` (lower resolution): 1x1 conv + BN + nearest upsampling by ``2**(j-i)``;
    * ``j == i``: identity;
    * ``j < i`` (higher resolution): ``i-j`` strided 3x3 convs + BN (ReLU between them,
      not after the last one); intermediate convs keep ``channels[j]`` channels.

    With ``multi_scale_output=False`` only output 0 (highest resolution) is produced.
    """

    def __init__(self, in_channels: Sequence[int], channels: Sequence[int], num_blocks: int,
                 multi_scale_output: bool = True) -> None:
        super().__init__()
        if len(in_channels) != len(channels) or len(channels) < 2:
            raise ValueError(
                f"need >= 2 branches with matching in/out widths, got {list(in_channels)} -> {list(channels)}")
        self.num_branches = len(channels)
        self.multi_scale_output = multi_scale_output
        self.branches = nn.ModuleList(
            _residual_layer(BasicBlock, cin, c, num_blocks) for cin, c in zip(in_channels, channels))

        num_outputs = self.num_branches if multi_scale_output else 1
        fuse_layers = []
        for i in range(num_outputs):
            row = []
            for j in range(self.num_branches):
                if j > i:
                    row.append(nn.Sequential(
                        nn.Conv2d(channels[j], channels[i], kernel_size=1, bias=False),
                        nn.BatchNorm2d(channels[i]),
                        nn.Upsample(scale_factor=2 ** (j - i), mode="nearest"),
                    ))
                elif j == i:
                    row.append(nn.Identity())  # official: None; no parameters either way
                else:
                    steps = []
                    for step in range(i - j):
                        last = step == i - j - 1
                        out_c = channels[i] if last else channels[j]
                        ops: list[nn.Module] = [
                            nn.Conv2d(channels[j], out_c, kernel_size=3, stride=2, padding=1, bias=False),
                            nn.BatchNorm2d(out_c),
                        ]
                        if not last:
                            ops.append(nn.ReLU(inplace=True))
                        steps.append(nn.Sequential(*ops))
                    row.append(nn.Sequential(*steps))
            fuse_layers.append(nn.ModuleList(row))
        self.fuse_layers = nn.ModuleList(fuse_layers)
        self.relu = nn.ReLU(inplace=True)
        self.out_channels = list(channels)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(xs) != self.num_branches:
            raise ValueError(f"expected {self.num_branches} inputs, got {len(xs)}")
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        fused = []
        for row in self.fuse_layers:
            y = row[0](xs[0])
            for j in range(1, self.num_branches):
                y = y + row[j](xs[j])
            fused.append(self.relu(y))
        return fused


def _transition(pre_channels: Sequence[int], cur_channels: Sequence[int]) -> nn.ModuleList:
    """Transition between stages: adapt existing branches, add one new lower-res branch.

    Existing branch ``i`` gets conv3x3 + BN + ReLU if its width changes, otherwise identity
    (official: None). A new branch is made from the last (lowest-resolution) previous
    branch by strided conv3x3 + BN + ReLU (one step per missing resolution level).
    """
    layers = []
    num_pre = len(pre_channels)
    for i, c in enumerate(cur_channels):
        if i < num_pre:
            if pre_channels[i] != c:
                layers.append(nn.Sequential(
                    nn.Conv2d(pre_channels[i], c, kernel_size=3, stride=1, padding=1, bias=False),
                    nn.BatchNorm2d(c),
                    nn.ReLU(inplace=True),
                ))
            else:
                layers.append(nn.Identity())
        else:
            steps = []
            for step in range(i + 1 - num_pre):
                cin = pre_channels[-1]
                cout = c if step == i - num_pre else cin
                steps.append(nn.Sequential(
                    nn.Conv2d(cin, cout, kernel_size=3, stride=2, padding=1, bias=False),
                    nn.BatchNorm2d(cout),
                    nn.ReLU(inplace=True),
                ))
            layers.append(nn.Sequential(*steps))
    return nn.ModuleList(layers)


def _apply_transition(transition: nn.ModuleList, ys: list[torch.Tensor]) -> list[torch.Tensor]:
    # existing branches take their own input, new branches grow from the lowest resolution
    return [t(ys[i] if i < len(ys) else ys[-1]) for i, t in enumerate(transition)]


def _stage(in_channels: Sequence[int], channels: Sequence[int], num_modules: int,
           num_blocks: int, multi_scale_output: bool) -> nn.Sequential:
    if num_modules < 1:
        raise ValueError(f"every stage needs at least 1 module, got {num_modules}")
    modules = []
    for m in range(num_modules):
        last = m == num_modules - 1
        modules.append(HighResolutionModule(
            in_channels if m == 0 else channels, channels, num_blocks,
            multi_scale_output=multi_scale_output or not last))
    return nn.Sequential(*modules)


class HigherHRNet(PoseNet):
    """HigherHRNet (HRNet-W``width`` backbone + deconvolution head) with associative embedding.

    All arguments are keyword-only and required (params.yaml ``model`` section, see
    :meth:`from_params`, which passes the published ``branch_blocks``). With the published
    block counts (:data:`PUBLISHED_STEM_BLOCKS` etc.) the state dict has the official key layout.

    Args:
        width: base channels ``W`` (branches have ``W, 2W, 4W, 8W``; published 32 / 48).
        num_joints: ``K`` keypoints (17 for COCO).
        tag_dim: associative-embedding tag dimension per joint (1 as published).
        stage_blocks: number of HighResolutionModules in stages 2, 3, 4 (published
            ``(1, 4, 3)``).
        stem_blocks: Bottleneck blocks in stage 1.
        branch_blocks: BasicBlocks per branch in every HighResolutionModule.
        deconv_blocks: BasicBlocks after each deconvolution of the head (`pose.models.head`).

    The outputs (one per stride of `pose.codec.OUTPUT_STRIDES`: 1/4 heatmaps + tags, 1/2
    heatmaps) are described in `pose.codec`.

    Raises:
        ValueError: on non-positive sizes or ``stage_blocks`` not of length 3.

    Weights are initialised as the reference ``init_weights``: conv / deconv weights
    ~ N(0, 0.001), biases 0, BatchNorm weight 1 and bias 0.
    """

    def __init__(self, *, width: int, num_joints: int, tag_dim: int, stage_blocks: Sequence[int],
                 stem_blocks: int, branch_blocks: int, deconv_blocks: int) -> None:
        super().__init__()
        stage_blocks = [int(b) for b in stage_blocks]
        if len(stage_blocks) != 3:
            raise ValueError(f"stage_blocks must give the modules of stages 2, 3, 4, got {stage_blocks}")
        for name, value in (("width", width), ("num_joints", num_joints), ("tag_dim", tag_dim),
                            ("stem_blocks", stem_blocks), ("branch_blocks", branch_blocks)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if deconv_blocks < 0:
            raise ValueError(f"deconv_blocks must be >= 0, got {deconv_blocks}")

        self.width = int(width)
        self.num_joints = int(num_joints)
        self.tag_dim = int(tag_dim)
        self.stage_blocks = tuple(stage_blocks)

        # stem: 1/4 resolution
        self.conv1 = nn.Conv2d(3, STEM_CHANNELS, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn1 = bn(STEM_CHANNELS)
        self.conv2 = nn.Conv2d(STEM_CHANNELS, STEM_CHANNELS, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn2 = bn(STEM_CHANNELS)
        self.relu = nn.ReLU(inplace=True)
        # stage 1
        self.layer1 = _residual_layer(Bottleneck, STEM_CHANNELS, STEM_CHANNELS, stem_blocks)
        stem_out = STEM_CHANNELS * Bottleneck.expansion

        w = self.width
        ch2, ch3, ch4 = [w, 2 * w], [w, 2 * w, 4 * w], [w, 2 * w, 4 * w, 8 * w]
        self.transition1 = _transition([stem_out], ch2)
        self.stage2 = _stage(ch2, ch2, stage_blocks[0], branch_blocks, multi_scale_output=True)
        self.transition2 = _transition(ch2, ch3)
        self.stage3 = _stage(ch3, ch3, stage_blocks[1], branch_blocks, multi_scale_output=True)
        self.transition3 = _transition(ch3, ch4)
        self.stage4 = _stage(ch4, ch4, stage_blocks[2], branch_blocks, multi_scale_output=False)

        # head (pose.models.head): heatmaps + tags at 1/4, heatmaps at 1/2 after the deconvolution
        self.build_head(w, int(deconv_blocks))
        self.reference_init()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """HRNet backbone: (B, 3, H, W) -> (B, W, H/4, W/4), the 1/4 branch of stage 4."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.layer1(x)
        ys = self.stage2(_apply_transition(self.transition1, [x]))
        ys = self.stage3(_apply_transition(self.transition2, ys))
        ys = self.stage4(_apply_transition(self.transition3, ys))
        return ys[0]

    @classmethod
    def from_params(cls, model_params: Mapping) -> HigherHRNet:
        """Build from params.yaml's ``model`` section: ``width``, ``num_joints``, ``tag_dim``,
        ``stage_blocks``, ``stem_blocks`` (Bottlenecks of ``layer1``, published 4) and
        ``deconv_blocks`` (BasicBlocks after the deconvolution, published ``NUM_BASIC_BLOCKS``
        4); BasicBlocks per branch stay at the published 4.

        Raises:
            KeyError: a required key is missing (no fallback values).
            ValueError: on invalid sizes.
        """
        spec = section_mapping(model_params)   # the section as written, or a checkpoint's stored dict
        missing = [key for key in ARCHITECTURE_KEYS if key not in spec]
        if missing:
            raise KeyError(f"params 'model' section lacks {missing}")
        return cls(width=int(spec["width"]), num_joints=int(spec["num_joints"]), tag_dim=int(spec["tag_dim"]),
                   stage_blocks=[int(b) for b in spec["stage_blocks"]],
                   stem_blocks=int(spec["stem_blocks"]), branch_blocks=PUBLISHED_BRANCH_BLOCKS,
                   deconv_blocks=int(spec["deconv_blocks"]))


#: Keys of params ``model`` that define the HigherHRNet architecture (all required by
#: :meth:`HigherHRNet.from_params`).
ARCHITECTURE_KEYS = ("width", "num_joints", "tag_dim", "stage_blocks", "stem_blocks", "deconv_blocks")


def load_pretrained(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a checkpoint strictly into ``model`` (official HigherHRNet key layout accepted).

    The file is read by :func:`pose.models.backbone.read_state_dict` (``torch.load`` with
    ``weights_only=True``, or safetensors). It may be a raw state dict or ``{"state_dict": sd}``
    / ``{"model": sd}``; a ``"module."`` prefix (DataParallel / DDP) is stripped.

    Returns:
        ``model`` with the weights loaded.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file holds no state dict, or keys / shapes differ from the model's
            (the message lists missing, unexpected and mismatched keys).
    """
    from pose.models.backbone import read_state_dict

    path = Path(path)
    state, _ = read_state_dict(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                        for k in set(own) & set(state) if state[k].shape != own[k].shape)
    if missing or unexpected or mismatched:
        def _fmt(items: list[str]) -> str:
            shown = ", ".join(items[:20])
            return f"{len(items)} [{shown}{', ...' if len(items) > 20 else ''}]"
        raise ValueError(
            f"checkpoint {path} does not match the model: missing {_fmt(missing)}; "
            f"unexpected {_fmt(unexpected)}; shape mismatch {_fmt(mismatched)}")
    model.load_state_dict(state, strict=True)
    return model


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; BatchNorm running statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: int | Sequence[int], *,
               convention: str = "exact") -> int:
    """Multiply-accumulate operations (MACs) of one forward pass for a (1, 3, H, W) input.

    Counts Conv2d, ConvTranspose2d and Linear layers only (weights; BatchNorm, ReLU,
    additions, upsampling and biases are ignored). The forward runs on a ``meta``-device
    copy of the model, so nothing is computed and the model itself is untouched.

    Args:
        input_size: ``S`` (square) or ``(H, W)``; multiples of 32 for HigherHRNet.
        convention: ``"exact"``: a ConvTranspose2d costs input pixels x C_in x C_out x k^2
            MACs. ``"reference"``: as ``get_model_summary`` of the HRNet / HigherHRNet
            repositories (lib/utils/utils.py), which multiplies the weight size by the
            *output* pixels for every conv, overcounting a stride-2 deconvolution 4x; this
            reproduces the papers' tables (HigherHRNet-W32 @ 512: 47.9, W48 @ 640: 154.3).

    Raises:
        ValueError: on an unknown ``convention``.
    """
    if convention not in ("exact", "reference"):
        raise ValueError(f"convention must be 'exact' or 'reference', got {convention!r}")
    h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    meta_model = copy.deepcopy(model).to("meta").eval()
    total = 0

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Linear):
            total += output.numel() * module.in_features
            return
        kh, kw = module.kernel_size
        per_pixel = (module.in_channels // module.groups) * module.out_channels * kh * kw
        if isinstance(module, nn.ConvTranspose2d) and convention == "exact":
            total += inputs[0].numel() // module.in_channels * per_pixel
        else:
            total += output.numel() // module.out_channels * per_pixel

    handles = [m.register_forward_hook(hook) for m in meta_model.modules()
               if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    try:
        with torch.no_grad():
            meta_model(torch.zeros(1, 3, h, w, device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    return int(total)


def count_flops(model: nn.Module, input_size: int | Sequence[int], *,
                convention: str = "exact") -> float:
    """GFLOPs of one forward pass for a (1, 3, H, W) input, counting 1 multiply-add as 1 FLOP.

    This is the HRNet / HigherHRNet papers' convention (their "GFLOPs" are multiply-adds);
    multiply by 2 for the 1 MAC = 2 FLOPs convention. ``convention`` is passed to
    :func:`count_macs` (``"reference"`` reproduces the papers' numbers exactly).

    Returns:
        GFLOPs (= GMACs) as a float.
    """
    return count_macs(model, input_size, convention=convention) / 1e9
