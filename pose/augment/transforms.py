"""The training transform (what the model learns from) and its pieces.

One sample goes through, in this order:

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

`pose check-scales` verifies steps 2 and 3 on the real annotations; step 1 is a
label-preserving warp whose keypoints albumentations maps with the same matrix as
the image.
"""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np

from pose.augment.affine import apply_affine, letterbox_affine
from pose.datasets.schema import FLIP_INDEX

#: ImageNet statistics in RGB order, applied to [0, 1] pixel values.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def normalize_image(image_bgr: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 BGR -> (3, H, W) float32 RGB normalised by ImageNet mean/std."""
    rgb = image_bgr[..., ::-1].astype(np.float32) / 255.0
    return np.ascontiguousarray(((rgb - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1))


def hflip_keypoints(keypoints: np.ndarray, width: int) -> np.ndarray:
    """Horizontal flip of (P, K, 3) keypoints in an image ``width`` px wide.

    x becomes ``width - 1 - x`` (albumentations' `HorizontalFlip` convention for
    pixel-index coordinates) and joint k moves to channel ``FLIP_INDEX[k]`` so a left
    wrist stays a left wrist of the mirrored person. Applying it twice is the
    identity. Returns a new float64 array.
    """
    kp = np.asarray(keypoints, dtype=np.float64).copy()
    kp[..., 0] = np.where(kp[..., 2] > 0, width - 1 - kp[..., 0], kp[..., 0])
    return kp[:, list(FLIP_INDEX)]


def build_augmenter(aug: dict) -> A.Compose:
    """Random geometric + photometric albumentations pipeline from params ``augment``.

    Keys read: max_rotation (deg), min_scale, max_scale, max_translate (fraction of
    the image size), color_jitter (strength in [0, 1]). Keypoints are passed in
    ``xy`` format (image px) and never removed, so indices stay aligned with joints.
    """
    c = float(aug["color_jitter"])
    return A.Compose(
        [
            A.Affine(
                scale=(float(aug["min_scale"]), float(aug["max_scale"])),
                translate_percent=(-float(aug["max_translate"]), float(aug["max_translate"])),
                rotate=(-float(aug["max_rotation"]), float(aug["max_rotation"])),
                border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=1.0,
            ),
            A.ColorJitter(brightness=c, contrast=c, saturation=c, hue=c / 4, p=1.0 if c > 0 else 0.0),
        ],
        keypoint_params=A.KeypointParams(format="xy", remove_invisible=False),
    )


_FLIP = A.Compose([A.HorizontalFlip(p=1.0)], keypoint_params=A.KeypointParams(format="xy", remove_invisible=False))


def augment_sample(image: np.ndarray, keypoints: np.ndarray, ignore: np.ndarray, augmenter: A.Compose | None,
                   flip: bool, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps 1 and 2 of the training transform, in image space.

    Args:
        image: (H, W, 3) uint8 BGR.
        keypoints: (P, K, 3) float, image px, COCO visibility.
        ignore: (H, W) uint8, 1 where the loss must ignore the pixel (crowds, unannotated people).
        augmenter: from `build_augmenter`, or None for no random warp/colour.
        flip: apply the horizontal flip + joint swap.
        seed: seeds the augmenter, so a sample is a pure function of (data, seed).

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
        kp = hflip_keypoints(kp, image.shape[1])
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
