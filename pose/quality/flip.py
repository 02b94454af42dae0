"""Check 4 of `pose.quality.scales`: the horizontal flip of the training transform.

`FLIP_INDEX` must be an involution mapping ``left_*`` <-> ``right_*`` names (centre joints to
themselves); the flip applied twice is the identity, and once moves joint k to channel
``FLIP_INDEX[k]`` mirroring x about a fixed axis: ``x' = width - x`` (continuous) or
``x' = width - 1 - x`` (pixel index); the one found is reported.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pose.datasets.schema import FLIP_INDEX, KEYPOINT_NAMES, NUM_JOINTS


def hflip_spec(keypoints: np.ndarray, width: int) -> np.ndarray:
    """The flip as specified: x' = width - x (continuous coords) for labeled joints, channels
    swapped by FLIP_INDEX. (P, K, 3) -> (P, K, 3) float64; the reference :func:`flip_check`
    holds a flip implementation to."""
    kp = np.asarray(keypoints, dtype=np.float64).copy()
    kp[..., 0] = np.where(kp[..., 2] > 0, width - kp[..., 0], kp[..., 0])
    return kp[:, list(FLIP_INDEX)]


def flip_check(keypoints: np.ndarray, width: int, hflip=None) -> dict:
    """Check the horizontal flip ``hflip(keypoints, width)`` (None: the training transform's
    `pose.augment.transforms.hflip_keypoints`) on (P, K, 3) keypoints in a canvas ``width`` px wide.

    Returns a dict: ``ok``, ``involution`` (FLIP_INDEX[FLIP_INDEX[k]] == k),
    ``names_swap`` (left_/right_ names swap, others fixed), ``twice_identity``,
    ``channels_swap`` (v and y move to FLIP_INDEX[k] unchanged), ``mirror``
    ("width - x" | "width - 1 - x" | None when x' + x is not one of those
    constants), ``function`` (which flip was tested), ``violations`` (list of str).
    """
    if hflip is None:
        from pose.augment.transforms import hflip_keypoints

        fn, name = hflip_keypoints, "pose.augment.transforms.hflip_keypoints"
    else:
        fn, name = hflip, getattr(hflip, "__qualname__", str(hflip))
    fi = np.asarray(FLIP_INDEX)
    out: dict[str, Any] = {"function": name, "violations": []}
    out["involution"] = bool(len(fi) == NUM_JOINTS and np.array_equal(fi[fi], np.arange(NUM_JOINTS)))

    def mirrored(n: str) -> str:
        if n.startswith("left_"):
            return "right_" + n[5:]
        if n.startswith("right_"):
            return "left_" + n[6:]
        return n

    out["names_swap"] = all(KEYPOINT_NAMES[int(fi[k])] == mirrored(KEYPOINT_NAMES[k]) for k in range(NUM_JOINTS))
    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.size == 0:
        kp = np.array([[[10.0 + k, 20.0, 2.0] for k in range(NUM_JOINTS)]])
    once = np.asarray(fn(kp, width), dtype=np.float64)
    twice = np.asarray(fn(once, width), dtype=np.float64)
    out["twice_identity"] = bool(once.shape == kp.shape and np.allclose(twice, kp, atol=1e-9, equal_nan=True))
    moved = once[:, fi] if once.shape == kp.shape else None  # moved[:, k] = flipped joint that came from k
    lab = kp[..., 2] > 0
    if moved is not None:
        out["channels_swap"] = bool(np.array_equal(moved[..., 2], kp[..., 2])
                                    and np.allclose(moved[..., 1][lab], kp[..., 1][lab]))
        sums = (moved[..., 0] + kp[..., 0])[lab]
        mirror = None
        if sums.size and np.allclose(sums, width, atol=1e-9):
            mirror = "width - x"
        elif sums.size and np.allclose(sums, width - 1, atol=1e-9):
            mirror = "width - 1 - x"
        out["mirror"] = mirror
    else:
        out["channels_swap"], out["mirror"] = False, None
    for key in ("involution", "names_swap", "twice_identity", "channels_swap"):
        if not out[key]:
            out["violations"].append(f"flip: {key} failed for {name}")
    if out["mirror"] is None:
        out["violations"].append(f"flip: {name} does not mirror x about a fixed axis (width - x or width - 1 - x)")
    out["ok"] = not out["violations"]
    return out


__all__ = ["hflip_spec", "flip_check"]
