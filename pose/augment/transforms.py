"""The training transform (what the model learns from) and its pieces.

`TrainTransform` is the entry point; params ``augment.crop`` picks one of two geometries.

``letterbox`` (the project's original crop). One sample goes through, in this order:

1. ``augmenter`` (albumentations, `KeypointParams(format="xy")`): random affine in
   image space (rotation, scale, translation; the random crop comes from the
   translation/scale pushing content off the canvas) and colour jitter. The same
   geometry is applied to the ignore mask.
2. horizontal flip with probability ``flip_prob`` (albumentations `HorizontalFlip`,
   which maps ``x -> W - 1 - x``) followed by the COCO left/right joint swap
   (``FLIP_INDEX``), see `hflip_keypoints`.
3. the deterministic letterbox affine (`pose.augment.affine.letterbox_affine`) into
   the square input canvas of the batch's input size, and division by the stride
   into each heatmap resolution.

``short_side`` (the reference's crop: HigherHRNet lib/dataset/transforms/transforms.py,
``RandomAffineTransform`` with ``SCALE_TYPE: short``, then ``RandomHorizontalFlip``): one
affine image px -> input px (`pose.augment.affine.short_side_crop_affine`) with a random
crop side ``U(min_scale, max_scale) * min(W, H)``, rotation ``U(-max_rotation, max_rotation)``
and centre shift ``U(-t, t)`` per axis, ``t = max_translate * crop side / 200`` image px
(``max_translate`` in the reference's units: 1/200 of the crop side, so the reference's 40 is
up to 20% of the crop, 102 input px at 512), then the flip composed in input px
(``x -> S - 1 - x``, a plain array flip of the canvas, with the joint swap). Image, keypoints
and ignore mask go through that one matrix (the mask divided by the stride per heatmap
resolution), so keypoints follow the pixels exactly; keypoints cut off by the crop get
``v = 0``. Colour jitter is applied to the canvas. Deliberate deviations from the reference:
the shift is drawn continuously (reference: ``np.random.randint``, whole image px, upper
bound excluded), the ignore mask is warped by nearest neighbour (reference: bilinear, then
``> 0.5``), and the image is warped bilinearly with a black border as ``to_canvas`` does.

Coordinate convention (params ``model.convention``, `pose.codec.Convention`): OpenCV and
albumentations map pixel *indices* (pixel ``i`` centred at ``i``, the ``project`` convention).
In a convention whose pixel ``i`` is centred at ``i + o`` (``reference``: ``o = 0.5``) the
keypoint mapping is a named switch (``Convention.keypoint_mapping``):

* ``centred`` (``project``): keypoints are mapped as ``M (p - o) + o``, so they stay on the
  pixels they label whatever the scale;
* ``raw`` (``reference``): keypoints are mapped as ``M p``, as the official
  ``RandomAffineTransform`` does (``lib/dataset/transforms/transforms.py``: ``_affine_joints``
  with the same matrix as the image); they sit ``M_lin o - o`` input px (``o (f - 1)`` at
  scale ``f``) off the pixels they label, which the test-time mapping ``M^-1 c`` undoes.

In both, the horizontal flip mirrors keypoints in the convention's continuous frame, ``x ->
S - 1 + 2 o - x`` (``x -> S - x`` in ``reference``): the exact mirror of the plain array flip of
the image, which the flip test undoes with a plain array flip. The official code flips
heatmap coordinates to ``out_size - 1 - x`` at each heatmap resolution, which puts the peak of
a flipped sample one heatmap pixel left of the mirrored image content; that is not reproduced.

`pose check-scales` verifies the deterministic part of whichever crop is active on the
real annotations (`pose.quality.scales`); the random warps map keypoints with the same
matrix as the image.

Params sections read: ``augment`` (`pose.params.AugmentSection`, handed in by `pose.train.data`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import albumentations as A
import cv2
import numpy as np

from pose.augment.affine import apply_affine, compose_affine, hflip_affine, letterbox_affine, short_side_crop_affine
from pose.codec import Convention, convention_rules
from pose.datasets.schema import FLIP_INDEX

if TYPE_CHECKING:
    from pose.params import AugmentSection

#: ImageNet statistics in RGB order, applied to [0, 1] pixel values.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def normalize_image(image_bgr: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 BGR -> (3, H, W) float32 RGB normalised by ImageNet mean/std."""
    rgb = image_bgr[..., ::-1].astype(np.float32) / 255.0
    return np.ascontiguousarray(((rgb - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1))


def hflip_keypoints(keypoints: np.ndarray, width: int, *, offset: float = 0.0) -> np.ndarray:
    """Horizontal flip of (P, K, 3) keypoints in an image ``width`` px wide.

    x becomes ``width - 1 + 2 offset - x``: with ``offset`` 0 albumentations' `HorizontalFlip`
    convention for pixel-index coordinates (``width - 1 - x``), with ``offset`` 0.5 the mirror of
    coordinates whose pixel ``i`` is centred at ``i + 0.5`` (``width - x``). Joint k moves to
    channel ``FLIP_INDEX[k]`` so a left wrist stays a left wrist of the mirrored person.
    Applying it twice is the identity. Returns a new float64 array.
    """
    kp = np.asarray(keypoints, dtype=np.float64).copy()
    kp[..., 0] = np.where(kp[..., 2] > 0, width - 1 + 2.0 * offset - kp[..., 0], kp[..., 0])
    return kp[:, list(FLIP_INDEX)]


#: Values of params ``augment.crop``.
CROPS = ("letterbox", "short_side")


def _color_jitter(strength: float) -> A.ColorJitter:
    c = float(strength)
    return A.ColorJitter(brightness=c, contrast=c, saturation=c, hue=c / 4, p=1.0 if c > 0 else 0.0)


def build_augmenter(aug: AugmentSection) -> A.Compose:
    """Random geometric + photometric albumentations pipeline of the ``letterbox`` crop, from
    the params ``augment`` section (`pose.params.AugmentSection`).

    Keys read: crop, max_rotation (deg), min_scale, max_scale, max_translate (fraction of
    the image size), color_jitter (strength in [0, 1]); KeyError when one is missing. Keypoints are passed in
    ``xy`` format (image px) and never removed, so indices stay aligned with joints.
    The ``short_side`` crop has no image-space augmenter (`TrainTransform` draws its one
    affine); calling this with ``crop: short_side`` raises ValueError.
    """
    if aug.crop != "letterbox":
        raise ValueError(f"params augment.crop {aug.crop!r}: build_augmenter is the letterbox crop's "
                         "image-space warp; use pose.augment.transforms.TrainTransform")
    return A.Compose(
        [
            A.Affine(
                scale=(float(aug.min_scale), float(aug.max_scale)),
                translate_percent=(-float(aug.max_translate), float(aug.max_translate)),
                rotate=(-float(aug.max_rotation), float(aug.max_rotation)),
                border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=1.0,
            ),
            _color_jitter(aug.color_jitter),
        ],
        keypoint_params=A.KeypointParams(format="xy", remove_invisible=False),
    )


_FLIP = A.Compose([A.HorizontalFlip(p=1.0)], keypoint_params=A.KeypointParams(format="xy", remove_invisible=False))


def augment_sample(image: np.ndarray, keypoints: np.ndarray, ignore: np.ndarray, augmenter: A.Compose | None,
                   flip: bool, seed: int, *, flip_offset: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps 1 and 2 of the training transform, in image space.

    Args:
        image: (H, W, 3) uint8 BGR.
        keypoints: (P, K, 3) float, image px, COCO visibility.
        ignore: (H, W) uint8, 1 where the loss must ignore the pixel (crowds, unannotated people).
        augmenter: from `build_augmenter`, or None for no random warp/colour.
        flip: apply the horizontal flip + joint swap.
        seed: seeds the augmenter, so a sample is a pure function of (data, seed).
        flip_offset: keypoints flip as ``W - 1 + 2 flip_offset - x`` (:func:`hflip_keypoints`;
            0: pixel indices, as the image; 0.5: the mirror of the ``raw`` mapping's
            coordinates, module docstring).

    Returns:
        (image (H, W, 3) uint8, keypoints (P, K, 3) float64, ignore (H, W) uint8). A
        keypoint moved outside the image gets v = 0.
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.ndim != 3 or kp.shape[-1] != 3:
        raise ValueError(f"keypoints must be (P, K, 3), got {kp.shape}")
    num_people, num_joints = kp.shape[:2]
    xy = kp[..., :2].reshape(-1, 2)
    if augmenter is not None:
        augmenter.set_random_seed(int(seed) % (2 ** 32))
        out = augmenter(image=image, mask=ignore, keypoints=xy)
        image, ignore, xy = out["image"], out["mask"], np.asarray(out["keypoints"], dtype=np.float64).reshape(-1, 2)
    kp = np.concatenate([xy.reshape(num_people, num_joints, 2), kp[..., 2:3]], axis=-1)
    if flip:
        out = _FLIP(image=image, mask=ignore, keypoints=kp[..., :2].reshape(-1, 2))
        image, ignore = out["image"], out["mask"]
        kp = hflip_keypoints(kp, image.shape[1], offset=flip_offset)
    h, w = image.shape[:2]
    outside = (kp[..., 0] < 0) | (kp[..., 1] < 0) | (kp[..., 0] > w - 1) | (kp[..., 1] > h - 1)
    kp[..., 2] = np.where(outside, 0, kp[..., 2])
    return image, kp, ignore


def to_canvas(image: np.ndarray, keypoints: np.ndarray, ignore: np.ndarray, input_size: int,
              strides: tuple[int, ...]) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Step 3: letterbox into the square input canvas and each heatmap resolution.

    Args:
        image: (H, W, 3) uint8 BGR; keypoints (P, K, 3) image px; ignore (H, W) uint8.
        input_size: canvas side S in input px (multiple of 32).
        strides: heatmap strides, e.g. (4, 2) for HigherHRNet's 1/4 and 1/2 outputs.

    Returns:
        canvas (S, S, 3) uint8 BGR; per stride keypoints (P, K, 3) in heatmap px;
        per stride loss weights (S/stride, S/stride) float32 (0 = ignore); the
        letterbox affine (2, 3) float64 image px -> input px.
    """
    h, w = image.shape[:2]
    m = letterbox_affine(w, h, input_size)
    canvas = cv2.warpAffine(image, m, (input_size, input_size), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    kp_in = np.array(keypoints, dtype=np.float64, copy=True)
    if kp_in.size:
        kp_in[..., :2] = apply_affine(m, kp_in[..., :2])
    kps, weights = [], []
    for stride in strides:
        size = input_size // stride
        k = kp_in.copy()
        k[..., :2] /= stride
        kps.append(k)
        ms = m / stride
        ign = cv2.warpAffine(ignore, ms, (size, size), flags=cv2.INTER_NEAREST,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        weights.append((ign < 1).astype(np.float32))
    return canvas, kps, weights, m


def draw_short_side_crop(rng: np.random.Generator, aug: AugmentSection, width: int, height: int,
                         input_size: int) -> np.ndarray:
    """Random ``short_side`` crop affine (2, 3) float64, image px -> input px.

    Draws, in the reference's order, ``scale ~ U(min_scale, max_scale)``, ``rotation ~
    U(-max_rotation, max_rotation)`` degrees and a centre shift ``~ U(-t, t)`` per axis with
    ``t = max_translate * scale * min(width, height) / 200`` image px (the params ``augment`` section,
    `pose.params.AugmentSection`;
    HigherHRNet ``RandomAffineTransform.__call__``), then builds
    `pose.augment.affine.short_side_crop_affine`. Raises ValueError when
    ``min_scale > max_scale`` or a value is negative (message names the key).
    """
    lo, hi = float(aug.min_scale), float(aug.max_scale)
    if not 0 < lo <= hi:
        raise ValueError(f"params augment.min_scale / max_scale: need 0 < min_scale <= max_scale, got {lo}, {hi}")
    max_rot, max_tr = float(aug.max_rotation), float(aug.max_translate)
    if max_rot < 0 or max_tr < 0:
        raise ValueError(f"params augment.max_rotation / max_translate must be >= 0, got {max_rot}, {max_tr}")
    scale = rng.uniform(lo, hi)
    rotation = rng.uniform(-max_rot, max_rot)
    t = max_tr * scale * min(width, height) / 200.0
    shift = rng.uniform(-t, t, size=2) if t > 0 else np.zeros(2)
    return short_side_crop_affine(width, height, input_size, scale=scale, rotation=rotation,
                                  shift=(float(shift[0]), float(shift[1])))


class TrainTransform:
    """The whole training transform of one sample: geometry (params ``augment.crop``), flip,
    colour jitter, and the mapping into each heatmap resolution (module docstring).

    Args:
        crop: ``letterbox`` | ``short_side``.
        augment: the params ``augment`` section (`pose.params.AugmentSection`: random warp, flip is
            decided by the caller, colour
            jitter), or None for no random warp or colour change (the deterministic crop:
            the letterbox, or the centre square of the short side).
        convention: params ``model.convention`` (``project`` | ``reference``) or a
            `pose.codec.Convention`: where pixel centres lie and how keypoints are mapped
            (``keypoint_mapping``; module docstring).

    Raises:
        ValueError: unknown ``crop`` or ``convention`` (the message names the params key).
    """

    def __init__(self, crop: str, augment: AugmentSection | None, *, convention: str | Convention):
        if crop not in CROPS:
            raise ValueError(f"params augment.crop: unknown crop {crop!r} ({' | '.join(CROPS)})")
        rules = convention_rules(convention)
        self.crop, self.augment = crop, augment
        #: ``o`` of the keypoint mapping ``M (p - o) + o`` (0 for ``raw``: ``M p``)
        self.offset = rules.map_offset
        #: the flip mirrors keypoints as ``S - 1 + 2 o - x`` with the pixel offset ``o``; on top of
        #: the pixel-index flip of shifted keypoints this is ``2 (pixel_offset - offset)`` more
        self.flip_offset = rules.pixel_offset - rules.map_offset
        self.augmenter = None
        if augment is not None and crop == "letterbox":
            self.augmenter = build_augmenter(augment)
        elif augment is not None and float(augment.color_jitter) > 0:
            self.augmenter = A.Compose([_color_jitter(augment.color_jitter)])

    def __call__(self, image: np.ndarray, keypoints: np.ndarray, ignore: np.ndarray, *, input_size: int,
                 strides: tuple[int, ...], flip: bool,
                 seed: int) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray], np.ndarray]:
        """Transform one sample.

        Args:
            image: (H, W, 3) uint8 BGR (any dtype cv2 warps works, e.g. float32 test ramps,
                when ``augment`` has no colour jitter).
            keypoints: (P, K, 3) float, image px, COCO visibility.
            ignore: (H, W) uint8, 1 where the loss ignores the pixel.
            input_size: canvas side S, input px (multiple of 32).
            strides: heatmap strides, e.g. (4, 2).
            flip: mirror the sample (joint channels swapped by ``FLIP_INDEX``).
            seed: seeds every random draw, so a sample is a pure function of (data, seed).

        Returns:
            canvas (S, S, 3) BGR; per stride keypoints (P, K, 3) in heatmap px (``v = 0`` for
            joints cut off by the crop); per stride loss weights (S/stride, S/stride) float32
            (0 = ignore); the affine (2, 3) float64 image px -> input px of the geometry
            (for ``letterbox`` only its final letterbox step, as `to_canvas`).
        """
        kp = np.array(keypoints, dtype=np.float64, copy=True)
        if kp.ndim != 3 or kp.shape[-1] != 3:
            raise ValueError(f"keypoints must be (P, K, 3), got {kp.shape}")
        kp[..., :2] -= self.offset  # to pixel-index coordinates (OpenCV's)
        if self.crop == "letterbox":
            image, kp, ignore = augment_sample(image, kp, ignore, self.augmenter, flip, seed,
                                               flip_offset=self.flip_offset)
            canvas, kps, weights, m = to_canvas(image, kp, ignore, input_size, strides)
            for stride, k in zip(strides, kps):
                k[..., :2] += self.offset / stride
            return canvas, kps, weights, m
        h, w = image.shape[:2]
        rng = np.random.default_rng(int(seed) % (2 ** 63))
        if self.augment is not None:
            m = draw_short_side_crop(rng, self.augment, w, h, input_size)
        else:
            m = short_side_crop_affine(w, h, input_size)
        if flip:
            m = compose_affine(hflip_affine(input_size), m)
        canvas = cv2.warpAffine(image, m, (input_size, input_size), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
        if self.augmenter is not None:
            self.augmenter.set_random_seed(int(rng.integers(2 ** 31)))
            canvas = self.augmenter(image=canvas)["image"]
        kp_in = kp.copy()
        if kp_in.size:
            kp_in[..., :2] = apply_affine(m, kp_in[..., :2])
            if flip:
                kp_in = kp_in[:, list(FLIP_INDEX)]
            outside = ((kp_in[..., 0] < 0) | (kp_in[..., 1] < 0) | (kp_in[..., 0] > input_size - 1)
                       | (kp_in[..., 1] > input_size - 1))
            kp_in[..., 2] = np.where(outside, 0, kp_in[..., 2])
            if flip:
                kp_in[..., 0] += 2.0 * self.flip_offset  # the mirror S - 1 + 2 o - x (module docstring)
            kp_in[..., :2] += self.offset  # back to the convention's coordinates
        kps, weights = [], []
        for stride in strides:
            size = input_size // stride
            k = kp_in.copy()
            k[..., :2] /= stride
            kps.append(k)
            ign = cv2.warpAffine(ignore, m / stride, (size, size), flags=cv2.INTER_NEAREST,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=0)
            weights.append((ign < 1).astype(np.float32))
        return canvas, kps, weights, m


def crop_affine(crop: str, width: int, height: int, input_size: int) -> np.ndarray:
    """The deterministic (no augmentation) image px -> input px affine (2, 3) float64 of params
    ``augment.crop``: the letterbox, or the centre square of the short side. Used by
    ``check_scales``. Raises ValueError for an unknown crop."""
    if crop == "letterbox":
        return letterbox_affine(width, height, input_size)
    if crop == "short_side":
        return short_side_crop_affine(width, height, input_size)
    raise ValueError(f"params augment.crop: unknown crop {crop!r} ({' | '.join(CROPS)})")
