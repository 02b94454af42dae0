"""The model I/O contract, defined once: what the network outputs, how training targets are
encoded for it, and what decoding / serving return (issue 14, item 1).

Learned from mmpose's codecs (one object owns target encoding, the output layout and the
coordinate convention; ``mmpose/codecs/associative_embedding.py``) without their registry:
:class:`Codec` is a frozen dataclass built by :func:`codec_from_params` from the params
sections, and every consumer imports this module. It needs NumPy only (no torch), so the
ONNX runtime path can import it.

Outputs (HigherHRNet: Cheng et al., CVPR 2020, Sec. 3; associative embedding: Newell et al.,
NeurIPS 2017, Sec. 3)
---------------------------------------------------------------------------------------
The network returns a list of ``len(OUTPUT_STRIDES)`` maps, in the order of
:data:`OUTPUT_STRIDES` (input px per map px): first the 1/4 head, then the 1/2 head after
the deconvolution.

* stride 4, named ``heatmap_4``: ``(B, K + K*tag_dim, H/4, W/4)``; channels ``[0, K)`` are
  heatmaps, channel ``K + d*K + k`` is tag dimension ``d`` of joint ``k`` (``tag_dim`` blocks
  of ``K`` channels; for ``tag_dim = 1`` the official layout, ``TAG_PER_JOINT: true``);
* stride 2, named ``heatmap_2``: ``(B, K, H/2, W/2)`` heatmaps.

The name of an output is ``heatmap_<stride>`` (:data:`OUTPUT_NAMES`) everywhere: the keys
of the loss parts (`pose.losses.total_loss`), the steps CSV columns and MLflow metric names
(``data/plots/train_steps.csv``), the DVC plots and the docs. Its ignore mask in a training
batch is ``mask_<stride>`` (:data:`MASK_NAMES`), the tag-loss joint indices are ``joints``.
Input sides must be multiples of :data:`INPUT_MULTIPLE` (the backbone's lowest resolution).

Targets
-------
:meth:`Codec.encode` turns keypoints already in the heatmap px of each stride (see
`pose.augment.transforms.TrainTransform`) into the loss targets: Gaussian heatmaps per
stride (`pose.targets.heatmaps.render_heatmaps`, ``targets.sigma``, ``targets.subpixel``),
the tag-loss joint indices at the tag stride (`pose.targets.heatmaps.joint_indices`,
``targets.max_people``) and the per-stride loss masks.

Coordinate convention
---------------------
``model.convention`` (``project`` | ``reference``, `pose.targets.heatmaps`): the centre of
map pixel ``i`` lies at continuous coordinate ``i + Codec.pixel_offset``. Targets, decoding,
resampling and the flip test follow it. The flip test swaps joint channels with
:attr:`Codec.flip_index` (COCO-17, `pose.datasets.schema.FLIP_INDEX`).

Every other difference between the two modes is a named field of :class:`Convention`
(:data:`CONVENTION_RULES`, :func:`convention_rules`): ``reference`` follows the official
HigherHRNet code in each of them (training targets and the test protocol), ``project`` keeps
the choices that measured better (README, *Test protocol and coordinate convention*).

What decoding and serving return
--------------------------------
Test-time resize, flip and multi-scale aggregation and the grouping live in `pose.decode`
(`pose.decode.inference`, `pose.decode.group`), which read the strides and the channel
layout from here. Per image they return a list of persons, each::

    {"keypoints": [[x, y, score] x K],   # image px (the convention's continuous axis), score in [0, 1]
     "score": float,                      # person score (mean joint score)
     "bbox": [x, y, w, h]}                # image px, the box around the keypoints

with ``K`` joints in :data:`pose.datasets.schema.KEYPOINT_NAMES` order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pose.datasets.schema import FLIP_INDEX
from pose.targets.heatmaps import CONVENTIONS, joint_indices, pixel_offset, render_heatmaps

#: Values of :attr:`Convention.keypoint_mapping`.
KEYPOINT_MAPPINGS: tuple[str, ...] = ("centred", "raw")
#: Values of :attr:`Convention.input_affine`.
INPUT_AFFINES: tuple[str, ...] = ("float64", "float32")
#: Values of :attr:`Convention.assignment`.
ASSIGNMENTS: tuple[str, ...] = ("scipy", "munkres")
#: Values of :attr:`Convention.missing_joint`.
MISSING_JOINTS: tuple[str, ...] = ("zero", "origin")
#: Values of :attr:`Convention.peak_ties`.
PEAK_TIES: tuple[str, ...] = ("index", "torch")


@dataclass(frozen=True)
class Convention:
    """What a coordinate convention (params ``model.convention``) decides, one named field per
    difference between ``project`` and ``reference`` (README table *Test protocol and
    coordinate convention*, with the AP effect of each). Build one with
    :func:`convention_rules`; :func:`dataclasses.replace` makes a variant (ablations).

    Attributes:
        name: ``project`` | ``reference``: the params value (resampling and un-flipping of the
            maps follow :attr:`pixel_offset`, `pose.decode.inference`).
        pixel_offset: continuous coordinate of the centre of map pixel 0 (0.0 | 0.5;
            `pose.targets.heatmaps`): peak pixel ``rint(x)`` | ``int(x)``, decoded pixel
            ``i`` at ``i + pixel_offset``.
        keypoint_mapping: image px ``p`` <-> input px ``c`` for the pixel-index warp ``M``
            that ``cv2.warpAffine`` applies to the image. ``centred``: ``c = M (p - o) + o``,
            ``p = M^-1 (c - o) + o`` (``o`` = pixel_offset; keypoints stay on the pixels they
            label at any scale). ``raw``: ``c = M p``, ``p = M^-1 c``, the official code's
            (training targets: ``lib/dataset/transforms/transforms.py``; test:
            ``get_final_preds`` in ``lib/utils/transforms.py``); the two differ by
            ``o (1 - 1/f)`` image px at input scale ``f``.
        input_affine: the ``short_side`` test input affine (`pose.decode.preprocess.short_side_geometry`):
            ``float64`` exact, or ``float32``: three float32 points through
            ``cv2.getAffineTransform``, as the official ``get_affine_transform`` builds it
            (about 1e-6 relative, enough to move a pixel by one grey level).
        assignment: the per-joint assignment solver of the grouping (`pose.decode.group`):
            ``scipy`` (``linear_sum_assignment`` on the rectangular cost) or ``munkres``:
            the choice of the ``munkres`` package on the cost padded to square with 1e10
            columns, as the official ``lib/core/group.py`` calls it (the two differ only
            where several assignments have exactly the optimal cost).
        adjust_equal: the quarter-pixel ``adjust`` shift of a peak whose two neighbours on
            an axis are equal: 0.0 (project) | -0.25 (official ``else`` branch).
        keep_all_groups: False keeps the ``max_people`` best-scoring persons of an image;
            True every group, as the official parser (COCOeval scores the top 20).
        missing_joint: image px of a joint that was not found: ``zero`` ``(0, 0)`` or
            ``origin`` ``M^-1 (0, 0)``, the official mapping of the heatmap origin.
        peak_ties: order of NMS peaks with exactly equal values in the top-``k`` search
            (`pose.decode.group.top_k_peaks`): ``index`` (lower flat index first) or ``torch``,
            the order of the official ``torch.topk`` on CPU (`pose.decode.group.torch_topk_order`;
            maps with fewer than ``64 k`` pixels keep ``index``: torch's other path is not
            reproduced). Tied candidates meet the assignment solver in this order.
    """

    name: str
    pixel_offset: float
    keypoint_mapping: str
    input_affine: str
    assignment: str
    adjust_equal: float
    keep_all_groups: bool
    missing_joint: str
    peak_ties: str

    def __post_init__(self) -> None:
        for field, value, allowed in (("name", self.name, CONVENTIONS),
                                      ("keypoint_mapping", self.keypoint_mapping, KEYPOINT_MAPPINGS),
                                      ("input_affine", self.input_affine, INPUT_AFFINES),
                                      ("assignment", self.assignment, ASSIGNMENTS),
                                      ("missing_joint", self.missing_joint, MISSING_JOINTS),
                                      ("peak_ties", self.peak_ties, PEAK_TIES)):
            if value not in allowed:
                raise ValueError(f"Convention.{field} must be one of {', '.join(allowed)}; got {value!r}")
        if self.pixel_offset not in (0.0, 0.5):
            raise ValueError(f"Convention.pixel_offset must be 0.0 or 0.5, got {self.pixel_offset!r}")
        if self.adjust_equal not in (0.0, -0.25, 0.25):
            raise ValueError(f"Convention.adjust_equal must be 0.0, -0.25 or 0.25, got {self.adjust_equal!r}")

    @property
    def map_offset(self) -> float:
        """``o`` of the image px <-> input px mapping (:attr:`keypoint_mapping`): the pixel
        offset for ``centred``, 0 for ``raw``."""
        return self.pixel_offset if self.keypoint_mapping == "centred" else 0.0


#: The two conventions of params ``model.convention``, field by field (:class:`Convention`).
CONVENTION_RULES: dict[str, Convention] = {
    "project": Convention(name="project", pixel_offset=0.0, keypoint_mapping="centred", input_affine="float64",
                          assignment="scipy", adjust_equal=0.0, keep_all_groups=False, missing_joint="zero",
                          peak_ties="index"),
    "reference": Convention(name="reference", pixel_offset=0.5, keypoint_mapping="raw", input_affine="float32",
                            assignment="munkres", adjust_equal=-0.25, keep_all_groups=True, missing_joint="origin",
                            peak_ties="torch"),
}


#: Fields of :class:`Convention` that params ``evaluate.convention_overrides`` may set at test time
#: (everything but the name and the pixel offset, which the weights were trained in).
TEST_TIME_FIELDS: tuple[str, ...] = ("keypoint_mapping", "input_affine", "assignment", "adjust_equal",
                                     "keep_all_groups", "missing_joint", "peak_ties")


def with_overrides(convention: str | Convention, overrides: Mapping | None) -> str | Convention:
    """``convention`` with the test-time fields of ``overrides`` (params
    ``evaluate.convention_overrides``, e.g. ``{assignment: scipy}``) replaced; ``convention``
    itself when there are none (the params value stays a string).

    Raises ValueError naming the params key for a field that is not in
    :data:`TEST_TIME_FIELDS` or a value the field does not allow.
    """
    items = {k: v for k, v in dict(overrides or {}).items() if v is not None}
    if not items:
        return convention
    unknown = sorted(set(items) - set(TEST_TIME_FIELDS))
    if unknown:
        raise ValueError(f"evaluate.convention_overrides: unknown field(s) {', '.join(unknown)} "
                         f"(allowed: {', '.join(TEST_TIME_FIELDS)})")
    try:
        return replace(convention_rules(convention), **items)
    except ValueError as exc:
        raise ValueError(f"evaluate.convention_overrides: {exc}") from exc


def convention_rules(convention: str | Convention) -> Convention:
    """The :class:`Convention` of a params ``model.convention`` value, or ``convention``
    itself when it is one already (a variant built with :func:`dataclasses.replace`).

    Raises ValueError naming params ``model.convention`` on an unknown value.
    """
    if isinstance(convention, Convention):
        return convention
    rules = CONVENTION_RULES.get(convention) if isinstance(convention, str) else None
    if rules is None:
        raise ValueError(f"model.convention must be one of {', '.join(CONVENTIONS)}; got {convention!r}")
    return rules

#: Output strides of the network in output order: the 1/4 head (heatmaps + tags), then the
#: 1/2 head (heatmaps) after the one deconvolution block of HigherHRNet. The model builds its
#: head from this (`pose.models.hrnet`): one deconvolution (x2 upsampling) per further stride.
OUTPUT_STRIDES: tuple[int, ...] = (4, 2)
#: Input height and width must be multiples of this (HRNet's 4th branch runs at 1/32).
INPUT_MULTIPLE = 32
#: Names of the outputs (and of their heatmap targets and heatmap-loss parts), by stride.
OUTPUT_NAMES: tuple[str, ...] = tuple(f"heatmap_{s}" for s in OUTPUT_STRIDES)
#: Names of the per-output loss masks in a training batch.
MASK_NAMES: tuple[str, ...] = tuple(f"mask_{s}" for s in OUTPUT_STRIDES)
#: Name of the tag-loss joint indices in a training batch.
JOINTS_NAME = "joints"
#: The weighted loss parts, in order (`pose.losses.total_loss` also returns ``total``):
#: the steps CSV columns and the MLflow metric names of a training run.
LOSS_PARTS: tuple[str, ...] = (*OUTPUT_NAMES, "push", "pull")


def output_name(stride: int) -> str:
    """``heatmap_<stride>``: the one name of the output at ``stride``."""
    return f"heatmap_{int(stride)}"


def mask_name(stride: int) -> str:
    """``mask_<stride>``: the name of the loss mask of the output at ``stride``."""
    return f"mask_{int(stride)}"


def section_mapping(section: Any) -> Mapping:
    """A params section as a mapping: a dict (e.g. the ``model`` params a checkpoint stores), or a
    typed section of `pose.params` as params.yaml writes it (its ``as_dict``)."""
    if isinstance(section, Mapping):
        return section
    if hasattr(section, "as_dict"):
        return section.as_dict()
    if hasattr(section, "model_dump"):
        return section.model_dump(by_alias=True)
    raise TypeError(f"expected a params section (mapping or pose.params section), got {type(section).__name__}")


@dataclass(frozen=True)
class Codec:
    """The model I/O contract of one configuration (module docstring). Build it with
    :func:`codec_from_params`; every field is required (no defaults).

    Attributes:
        num_joints: ``K`` (params ``model.num_joints``).
        tag_dim: tag dimension per joint (params ``model.tag_dim``).
        convention: ``project`` | ``reference`` (params ``model.convention``).
        strides: output strides in output order (:data:`OUTPUT_STRIDES`).
        flip_index: joint permutation of a horizontal flip (length ``K``).
        sigma: Gaussian sigma in heatmap px (params ``targets.sigma``); None: cannot encode.
        subpixel: params ``targets.subpixel``; None: cannot encode.
        max_people: rows of the joint-index target (params ``targets.max_people``); None: cannot encode.
    """

    num_joints: int
    tag_dim: int
    convention: str
    strides: tuple[int, ...]
    flip_index: tuple[int, ...]
    sigma: float | None
    subpixel: bool | None
    max_people: int | None

    def __post_init__(self) -> None:
        if self.num_joints < 1 or self.tag_dim < 1:
            raise ValueError(f"num_joints and tag_dim must be >= 1, got {self.num_joints}, {self.tag_dim}")
        if self.convention not in CONVENTIONS:
            raise ValueError(f"model.convention must be one of {', '.join(CONVENTIONS)}; got {self.convention!r}")
        if not self.strides or any(s < 1 for s in self.strides) or any(
                a != 2 * b for a, b in zip(self.strides, self.strides[1:])):
            raise ValueError(f"strides must start at the tag stride and halve per output, got {self.strides}")
        if len(self.flip_index) != self.num_joints or sorted(self.flip_index) != list(range(self.num_joints)):
            raise ValueError(f"flip_index must be a permutation of the {self.num_joints} joints, got {self.flip_index}")

    # ------------------------------------------------------------------ layout
    @property
    def num_outputs(self) -> int:
        """Number of network outputs (= ``len(strides)``; params ``loss.heatmap_weights`` length)."""
        return len(self.strides)

    @property
    def tag_stride(self) -> int:
        """Stride of the output that carries the tags (the first one)."""
        return self.strides[0]

    @property
    def output_names(self) -> tuple[str, ...]:
        """``heatmap_<stride>`` per output, in output order."""
        return tuple(output_name(s) for s in self.strides)

    @property
    def mask_names(self) -> tuple[str, ...]:
        """``mask_<stride>`` per output, in output order."""
        return tuple(mask_name(s) for s in self.strides)

    @property
    def loss_parts(self) -> tuple[str, ...]:
        """Names of the weighted loss parts: one heatmap loss per output, then ``push``, ``pull``."""
        return (*self.output_names, "push", "pull")

    @property
    def output_channels(self) -> tuple[int, ...]:
        """Channels per output: ``K + K*tag_dim`` for the tag output, ``K`` for the others."""
        k = self.num_joints
        return (k + k * self.tag_dim,) + (k,) * (self.num_outputs - 1)

    @property
    def pixel_offset(self) -> float:
        """Continuous coordinate of the centre of map pixel 0 (0.0 ``project``, 0.5 ``reference``)."""
        return pixel_offset(self.convention)

    @property
    def rules(self) -> "Convention":
        """The :class:`Convention` of :attr:`convention`, field by field."""
        return convention_rules(self.convention)

    def map_size(self, input_size: int, stride: int) -> int:
        """Side in map px of the output at ``stride`` for an input side of ``input_size`` input px."""
        return int(input_size) // int(stride)

    # ------------------------------------------------------------------ outputs
    def split_tags(self, tag_output: Any) -> tuple[Any, Any]:
        """Split the tag output ``(B, K + K*tag_dim, h, w)`` into heatmaps ``(B, K, h, w)`` and
        tags ``(B, K, h, w, tag_dim)`` (torch tensor or NumPy array; views where possible).

        Raises:
            ValueError: if the channel count is not ``K + K*tag_dim``.
        """
        b, c, h, w = tag_output.shape
        k, d = self.num_joints, self.tag_dim
        if c != k + k * d:
            raise ValueError(f"expected {k + k * d} channels (K={k}, tag_dim={d}), got {c}")
        tags = tag_output[:, k:].reshape(b, d, k, h, w)
        permute = getattr(tags, "permute", None) or tags.transpose
        return tag_output[:, :k], permute(0, 2, 3, 4, 1)

    def check_outputs(self, outputs: Sequence[Any]) -> None:
        """Raise ValueError unless ``outputs`` has one 4-D map per stride with the channels of
        :attr:`output_channels` and sides halving from one output to the next."""
        if len(outputs) != self.num_outputs:
            raise ValueError(f"expected {self.num_outputs} outputs ({', '.join(self.output_names)}), "
                             f"got {len(outputs)}")
        for name, out, channels in zip(self.output_names, outputs, self.output_channels):
            if len(out.shape) != 4 or out.shape[1] != channels:
                raise ValueError(f"output {name} must be (B, {channels}, h, w), got {tuple(out.shape)}")
        for (a, b), (sa, sb) in zip(zip(outputs, outputs[1:]), zip(self.strides, self.strides[1:])):
            if tuple(b.shape[-2:]) != tuple(x * sa // sb for x in a.shape[-2:]):
                raise ValueError(f"output sides must scale with the strides {self.strides}: "
                                 f"{tuple(a.shape[-2:])} then {tuple(b.shape[-2:])}")

    def split_outputs(self, outputs: Sequence[Any]) -> list[tuple[Any, Any | None]]:
        """Per output, ``(heatmaps (B, K, h, w), tags (B, K, h, w, tag_dim) or None)``, in output
        order (only the tag output carries tags). Accepts torch tensors or NumPy arrays.

        Raises:
            ValueError: as :meth:`check_outputs`.
        """
        self.check_outputs(outputs)
        first = self.split_tags(outputs[0])
        return [first] + [(out, None) for out in outputs[1:]]

    # ------------------------------------------------------------------ targets
    def encode(self, keypoints: Sequence[np.ndarray], masks: Sequence[np.ndarray],
               input_size: int) -> dict[str, np.ndarray]:
        """Training targets of one sample (HigherHRNet Sec. 3.3; associative embedding Sec. 3).

        Args:
            keypoints: per stride, (P, K, 3) float keypoints (x, y in that stride's heatmap px,
                COCO visibility v), as `pose.augment.transforms.TrainTransform` returns them.
            masks: per stride, (S/stride, S/stride) float32 loss masks (0 = ignored pixel).
            input_size: square input side ``S`` in input px (a multiple of :data:`INPUT_MULTIPLE`).

        Returns:
            ``{heatmap_<s>: (K, S/s, S/s) float32 in [0, 1], mask_<s>: (S/s, S/s) float32 per
            stride s, joints: (max_people, K, 2) int64}`` (joints at the tag stride, see
            `pose.targets.heatmaps.joint_indices`).

        Raises:
            ValueError: when the codec was built without a ``targets`` section, or the numbers of
                keypoint arrays / masks differ from the number of outputs, or a mask has the wrong size.
        """
        if self.sigma is None or self.subpixel is None or self.max_people is None:
            raise ValueError("this codec was built without the params 'targets' section: it cannot encode targets")
        if len(keypoints) != self.num_outputs or len(masks) != self.num_outputs:
            raise ValueError(f"need keypoints and a mask per stride {self.strides}, got {len(keypoints)} keypoint "
                             f"arrays and {len(masks)} masks")
        out: dict[str, np.ndarray] = {}
        for stride, kp, mask in zip(self.strides, keypoints, masks):
            size = self.map_size(input_size, stride)
            if tuple(mask.shape) != (size, size):
                raise ValueError(f"mask at stride {stride} must be {(size, size)}, got {tuple(mask.shape)}")
            out[output_name(stride)] = render_heatmaps(kp, size, size, self.sigma, convention=self.convention,
                                                       subpixel=self.subpixel)
            out[mask_name(stride)] = mask
        size = self.map_size(input_size, self.tag_stride)
        out[JOINTS_NAME] = joint_indices(keypoints[0], size, size, self.max_people, convention=self.convention)
        return out


def codec_from_params(model_params: Any, targets_params: Any | None) -> Codec:
    """The :class:`Codec` of params.yaml's ``model`` section (``num_joints``, ``tag_dim``,
    ``convention``) and ``targets`` section (``sigma``, ``subpixel``, ``max_people``).

    Args:
        model_params: the ``model`` section (dict or `pose.params.ModelSection`).
        targets_params: the ``targets`` section (dict or `pose.params.TargetsSection`), or
            None for a codec that splits and decodes outputs but cannot encode targets
            (serving a model whose training targets are irrelevant).

    Raises:
        KeyError: a required key is missing (the message names the section and key).
        ValueError: a value is invalid (see :class:`Codec`).
    """
    model_spec = section_mapping(model_params)   # a section as written, or a checkpoint's stored dict
    missing = [key for key in ("num_joints", "tag_dim", "convention") if key not in model_spec]
    if missing:
        raise KeyError(f"params 'model' section lacks {missing}")
    num_joints = int(model_spec["num_joints"])
    sigma = subpixel = max_people = None
    if targets_params is not None:
        target_spec = section_mapping(targets_params)
        missing = [key for key in ("sigma", "subpixel", "max_people") if key not in target_spec]
        if missing:
            raise KeyError(f"params 'targets' section lacks {missing}")
        sigma, subpixel, max_people = (float(target_spec["sigma"]), bool(target_spec["subpixel"]),
                                         int(target_spec["max_people"]))
    if num_joints != len(FLIP_INDEX):
        raise ValueError(f"model.num_joints = {num_joints}: must be {len(FLIP_INDEX)} (COCO-17, the flip index)")
    return Codec(num_joints=num_joints, tag_dim=int(model_spec["tag_dim"]),
                 convention=str(model_spec["convention"]),
                 strides=OUTPUT_STRIDES, flip_index=tuple(int(i) for i in FLIP_INDEX), sigma=sigma,
                 subpixel=subpixel, max_people=max_people)


__all__ = ["ASSIGNMENTS", "CONVENTION_RULES", "Codec", "Convention", "INPUT_AFFINES", "INPUT_MULTIPLE", "JOINTS_NAME",
           "KEYPOINT_MAPPINGS", "LOSS_PARTS", "MASK_NAMES", "MISSING_JOINTS", "OUTPUT_NAMES", "OUTPUT_STRIDES",
           "TEST_TIME_FIELDS", "codec_from_params", "convention_rules", "mask_name", "output_name", "section_mapping",
           "with_overrides"]
