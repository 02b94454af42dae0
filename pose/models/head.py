"""The HigherHRNet prediction head, shared by every backbone (Cheng et al., CVPR 2020, Sec. 3.2).

:class:`PoseNet` is the base class of the pose networks: a backbone subclass implements
:meth:`PoseNet.features` (``(B, 3, H, W) -> (B, C, H/4, W/4)`` features at the tag stride of
`pose.codec`) and calls :meth:`PoseNet.build_head`; the head and the forward pass over it are
here, so the outputs follow `pose.codec` whatever the backbone:

* ``final_layers[0]`` (1x1 conv) on the 1/4 features predicts ``K`` heatmaps and ``K * tag_dim``
  tags (`pose.codec`, channel layout);
* for every further stride of `pose.codec.OUTPUT_STRIDES` (HigherHRNet: one, 1/2), a
  deconvolution block concatenates the features with the previous prediction
  (``DECONV.CAT_OUTPUT: true``), upsamples x2 (ConvTranspose2d 4x4 stride 2 + BN + ReLU, then
  ``deconv_blocks`` BasicBlocks) and ``final_layers[i]`` (1x1 conv) predicts ``K`` heatmaps.

Attribute names (``final_layers``, ``deconv_layers``) are the reference's
(``lib/models/pose_higher_hrnet.py``), so official checkpoints load with ``strict=True``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from pose.codec import INPUT_MULTIPLE, OUTPUT_STRIDES

BN_MOMENTUM = 0.1


def bn(channels: int) -> nn.BatchNorm2d:
    """BatchNorm2d with the reference momentum 0.1."""
    return nn.BatchNorm2d(channels, momentum=BN_MOMENTUM)


def conv3x3(in_channels: int, out_channels: int, stride: int) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (He et al. 2016)."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn1 = bn(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(channels, channels, 1)
        self.bn2 = bn(channels)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class PoseNet(nn.Module):
    """Base class of the bottom-up pose networks: backbone features + the HigherHRNet head.

    Subclasses set ``num_joints`` / ``tag_dim``, build their backbone, call
    :meth:`build_head` and implement :meth:`features`. ``convention`` (params
    ``model.convention``) is recorded by `pose.models.factory.build_model` for decoding.
    """

    num_joints: int
    tag_dim: int

    def build_head(self, channels: int, deconv_blocks: int) -> None:
        """Create ``final_layers`` and ``deconv_layers`` on ``channels`` backbone channels.

        One deconvolution block (``deconv_blocks`` BasicBlocks after the ConvTranspose2d) per
        output after the first (`pose.codec.OUTPUT_STRIDES`). Raises ValueError when
        ``deconv_blocks`` < 0 or the strides do not halve.
        """
        if deconv_blocks < 0:
            raise ValueError(f"deconv_blocks must be >= 0, got {deconv_blocks}")
        if any(a != 2 * b for a, b in zip(OUTPUT_STRIDES, OUTPUT_STRIDES[1:])):
            raise ValueError(f"every deconvolution doubles the resolution: strides must halve, got {OUTPUT_STRIDES}")
        k = self.num_joints
        self.quarter_channels = k + k * self.tag_dim
        finals = [nn.Conv2d(channels, self.quarter_channels, kernel_size=1)]
        deconvs = []
        previous_out = self.quarter_channels
        for _ in OUTPUT_STRIDES[1:]:
            layers: list[nn.Module] = [nn.Sequential(
                nn.ConvTranspose2d(channels + previous_out, channels, kernel_size=4, stride=2, padding=1,
                                   output_padding=0, bias=False),
                bn(channels),
                nn.ReLU(inplace=True),
            )]
            layers += [nn.Sequential(BasicBlock(channels, channels)) for _ in range(deconv_blocks)]
            deconvs.append(nn.Sequential(*layers))
            finals.append(nn.Conv2d(channels, k, kernel_size=1))
            previous_out = k
        self.final_layers = nn.ModuleList(finals)
        self.deconv_layers = nn.ModuleList(deconvs)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone: (B, 3, H, W) -> (B, C, H/4, W/4) features (C: the ``channels`` of the head)."""
        raise NotImplementedError

    def reference_init(self) -> None:
        """The reference initialisation (``init_weights`` of lib/models/pose_higher_hrnet.py):
        every (de)convolution N(0, 0.001), biases 0, BatchNorm weight 1 and bias 0."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(m.weight, std=0.001)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Predict heatmaps and tags.

        Args:
            x: (B, 3, H, W) float image batch (ImageNet-normalised RGB); ``H`` and ``W``
                multiples of `pose.codec.INPUT_MULTIPLE` (normally square, ``H == W == S``).

        Returns:
            One tensor per stride of `pose.codec.OUTPUT_STRIDES`: ``heatmap_4`` (B, K + K*tag_dim,
            H/4, W/4) heatmaps then tags, ``heatmap_2`` (B, K, H/2, W/2) heatmaps (`pose.codec`).

        Raises:
            ValueError: if ``x`` is not (B, 3, H, W) or H, W are not multiples of INPUT_MULTIPLE.
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, H, W) input, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % INPUT_MULTIPLE or w % INPUT_MULTIPLE:
            raise ValueError(f"input height and width must be multiples of {INPUT_MULTIPLE}, got {h}x{w}")
        x = self.features(x)
        y = self.final_layers[0](x)
        outputs = [y]
        for deconv, final in zip(self.deconv_layers, self.final_layers[1:]):
            x = deconv(torch.cat((x, y), dim=1))
            y = final(x)
            outputs.append(y)
        return outputs
