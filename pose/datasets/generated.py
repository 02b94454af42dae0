"""GENERATED (synthetic) multi-person keypoint data in COCO layout -- NOT real data.

Everything written by this module is drawn by the program: articulated stick-and-blob
"people" over random backgrounds. It exists so that the whole pipeline (fetch ->
validate -> train -> evaluate -> register) runs offline, fast and deterministically,
and so that a small CNN can actually learn something from it. Never report numbers
measured on it as results on a real benchmark; real data lives in the offline mirror
(``data.mirror`` in params.yaml, e.g. ``coco-mini``).

What a generated person looks like
----------------------------------
* The 17 COCO joints (`pose.datasets.schema.KEYPOINT_NAMES`) of a front-facing figure
  whose limb lengths are fixed proportions of its height ``H`` (torso 0.30 H, upper
  arm 0.17 H, forearm 0.15 H, thigh 0.245 H, shin 0.245 H, shoulders 0.26 H wide,
  hips 0.20 H wide, head radius 0.08 H; roughly the anthropometric ratios of
  Drillis & Contini, 1966), with random torso lean, limb angles, knee/elbow bends,
  head yaw and a lateral squash (turning).
* Limbs are thick lines (round caps), the torso a filled quadrilateral, the head a
  filled circle, in per-person clothing / skin colours.
* Every joint is then marked with a small filled disc in a fixed per-joint-type
  colour (`JOINT_COLOURS`, black rim when the disc is large enough), so the
  keypoint location is a visually distinctive point (the heatmap peak has
  something to find).
* Heights ``H`` are log-uniform in ``[min_person_height, max_person_height]`` so the
  COCO small / medium / large area ranges all occur.

Labels (COCO keypoint format, cocodataset.org/#format-data)
-----------------------------------------------------------
* Coordinates are image pixels with pixel centres at integer coordinates (OpenCV's
  drawing convention, no half-pixel shift), rounded to 1/100 px.
* ``v = 2``: joint inside the image and not covered by a figure drawn later;
  ``v = 1``: inside the image, but under a figure drawn later, or under a joint
  marker of the same figure drawn later (`MARKER_ORDER`) (occluded);
  ``v = 0`` and ``x = y = 0``: outside the image (``x < 0``, ``x > W-1``, ``y < 0`` or
  ``y > H-1``).
* ``segmentation``: polygons (OpenCV outer contours) of the whole figure silhouette
  (amodal: later figures do not cut it), clipped to the image; ``area``: pycocotools
  area of exactly that segmentation; ``bbox``: the silhouette's tight box, inside
  the image.
* A person with no joint inside the image is re-placed (and, if that keeps failing,
  neither drawn nor annotated), so every annotation has ``num_keypoints >= 1``.

Determinism: every image draws from its own ``numpy.random.default_rng((seed, split,
index))``, JPEGs are encoded by OpenCV at quality 95 with fixed settings (baseline,
no chroma subsampling: 4:4:4 keeps the small joint markers' colours) and JSON is
dumped with ``sort_keys=True``, so a re-run writes byte-identical files (same
OpenCV / libjpeg build).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from pose.datasets.schema import NUM_JOINTS, PERSON_CATEGORY

#: BGR colour of each joint type's marker (index = COCO joint index). A left joint and its
#: right counterpart share one colour: horizontal-flip augmentation (and flip test) mirrors
#: the image and swaps the left/right *labels* (`pose.datasets.schema.FLIP_INDEX`), but it
#: cannot swap pixel colours. With side-specific colours every flipped training sample
#: would show a "left" colour on a joint labelled right, so the model would learn two
#: contradicting rules and lose AP under flip test. With shared colours, left and right
#: are told apart as in real photos: by the figure's geometry (figures face the camera,
#: so a person's left side is on the image's right; a flip keeps that relation true).
_PAIR_COLOURS: tuple[tuple[int, int, int], ...] = (
    (0, 255, 255),    # eyes: yellow
    (0, 165, 255),    # ears: orange
    (0, 0, 255),      # shoulders: red
    (0, 255, 0),      # elbows: green
    (255, 255, 0),    # wrists: cyan
    (255, 0, 255),    # hips: magenta
    (255, 0, 0),      # knees: blue
    (60, 60, 200),    # ankles: brick
)
JOINT_COLOURS: tuple[tuple[int, int, int], ...] = ((255, 255, 255),) + tuple(  # nose: white
    c for c in _PAIR_COLOURS for _side in (0, 1))
assert len(JOINT_COLOURS) == NUM_JOINTS

#: Order in which joint markers are drawn (later ones cover earlier ones): ears, eyes,
#: nose, then the body joints.
MARKER_ORDER: tuple[int, ...] = (3, 4, 1, 2, 0) + tuple(range(5, NUM_JOINTS))

#: COCO area ranges (pycocotools COCOeval.Params.areaRng): small < 32^2 <= medium < 96^2 <= large.
AREA_SMALL = 32.0 ** 2
AREA_LARGE = 96.0 ** 2

_SKIN = ((180, 200, 240), (140, 170, 220), (90, 130, 190), (60, 90, 140), (40, 60, 100))
_SHIFT = 4  # OpenCV fixed-point bits for sub-pixel drawing
_SCALE = 1 << _SHIFT
_VAL_ID_OFFSET = 1_000_000


def _rot(v: np.ndarray, deg: float) -> np.ndarray:
    """Rotate 2-vector(s) ``v`` by ``deg`` degrees (image coordinates, y down: positive = clockwise on screen)."""
    a = math.radians(deg)
    c, s = math.cos(a), math.sin(a)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


def _pose(rng: np.random.Generator, height: float) -> np.ndarray:
    """Joint positions (17, 2) float64 of one figure of standing height ``height`` px,
    pelvis centre at the origin."""
    h = height
    lean = rng.normal(0.0, 8.0)
    if rng.random() < 0.08:  # lying / falling person
        lean += rng.choice([-1.0, 1.0]) * rng.uniform(50.0, 95.0)
    up = _rot(np.array([0.0, -1.0]), lean)
    right = _rot(np.array([1.0, 0.0]), lean)
    squash = rng.uniform(0.55, 1.0)  # lateral compression: the figure turns
    yaw = rng.uniform(-1.0, 1.0) * (1.0 - squash + 0.3)

    j = np.zeros((NUM_JOINTS, 2))
    pelvis = np.zeros(2)
    hip_half = 0.10 * h * squash
    sh_half = 0.13 * h * squash
    torso = 0.30 * h * rng.uniform(0.92, 1.08)
    shoulder_mid = pelvis + up * torso
    j[11] = pelvis + right * hip_half  # left_hip (front-facing: person's left = image right)
    j[12] = pelvis - right * hip_half
    j[5] = shoulder_mid + right * sh_half
    j[6] = shoulder_mid - right * sh_half

    head_c = shoulder_mid + up * (0.13 * h)
    face = right * (yaw * 0.015 * h)
    fs = 0.8 + 0.2 * squash  # the face squashes less than the body
    j[0] = head_c - up * (0.012 * h) + face                       # nose
    j[1] = head_c + up * (0.022 * h) + right * (0.03 * h * fs) + face  # left_eye
    j[2] = head_c + up * (0.022 * h) - right * (0.03 * h * fs) + face  # right_eye
    j[3] = head_c + up * (0.008 * h) + right * (0.072 * h * fs)  # left_ear
    j[4] = head_c + up * (0.008 * h) - right * (0.072 * h * fs)  # right_ear

    down = -up
    upper_arm, forearm = 0.17 * h, 0.15 * h
    thigh, shin = 0.245 * h, 0.245 * h
    for side, (s, e, w) in ((1.0, (5, 7, 9)), (-1.0, (6, 8, 10))):
        # positive angles swing the arm outwards (away from the body)
        a = rng.uniform(-25.0, 165.0)
        d = _rot(down, -side * a)
        j[e] = j[s] + d * upper_arm
        bend = rng.uniform(-30.0, 150.0)
        j[w] = j[e] + _rot(d, -side * bend * (1 if rng.random() < 0.5 else -1)) * forearm
    for side, (hp, k, an) in ((1.0, (11, 13, 15)), (-1.0, (12, 14, 16))):
        a = rng.uniform(-15.0, 55.0) if rng.random() < 0.8 else rng.uniform(-15.0, 100.0)
        d = _rot(down, -side * a)
        j[k] = j[hp] + d * thigh
        bend = rng.uniform(-70.0, 70.0)
        j[an] = j[k] + _rot(d, bend) * shin
    return j


def _draw_figure(img: np.ndarray, mask: np.ndarray, joints: np.ndarray, height: float,
                 rng: np.random.Generator) -> None:
    """Draw one figure into ``img`` (H, W, 3) uint8 BGR and its silhouette into
    ``mask`` (H, W) uint8 (value 1), both in place."""
    h = height
    top = tuple(int(c) for c in rng.integers(0, 256, 3))
    bottom = tuple(int(c) for c in rng.integers(0, 256, 3))
    sleeve = top if rng.random() < 0.6 else tuple(int(c) for c in rng.integers(0, 256, 3))
    skin = _SKIN[int(rng.integers(len(_SKIN)))]
    arm_t = max(1, int(round(0.08 * h)))
    leg_t = max(1, int(round(0.105 * h)))
    neck_t = max(1, int(round(0.065 * h)))

    def fx(p: np.ndarray) -> tuple[int, int]:
        return int(round(p[0] * _SCALE)), int(round(p[1] * _SCALE))

    def line(a: np.ndarray, b: np.ndarray, colour, t: int) -> None:
        cv2.line(img, fx(a), fx(b), colour, t, cv2.LINE_AA, _SHIFT)
        cv2.line(mask, fx(a), fx(b), 1, t, cv2.LINE_8, _SHIFT)

    def disc(c: np.ndarray, r: float, colour) -> None:
        rr = max(1, int(round(r * _SCALE)))
        cv2.circle(img, fx(c), rr, colour, -1, cv2.LINE_AA, _SHIFT)
        cv2.circle(mask, fx(c), rr, 1, -1, cv2.LINE_8, _SHIFT)

    # legs, torso, neck, arms, head: later parts cover earlier ones
    for a, b in ((11, 13), (13, 15), (12, 14), (14, 16)):
        line(joints[a], joints[b], bottom, leg_t)
    quad = np.array([fx(joints[k]) for k in (5, 6, 12, 11)], dtype=np.int32)
    cv2.fillConvexPoly(img, quad, top, cv2.LINE_AA, _SHIFT)
    cv2.fillConvexPoly(mask, quad, 1, cv2.LINE_8, _SHIFT)
    line(joints[5], joints[6], top, arm_t)
    line(joints[11], joints[12], bottom, leg_t)
    shoulder_mid = (joints[5] + joints[6]) / 2
    head_c = (joints[3] + joints[4]) / 2
    line(shoulder_mid, head_c, skin, neck_t)
    for a, b in ((5, 7), (6, 8)):
        line(joints[a], joints[b], sleeve, arm_t)
    for a, b in ((7, 9), (8, 10)):
        line(joints[a], joints[b], skin, max(1, arm_t - 1))
    disc(head_c, 0.08 * h, skin)

    # joint markers on top: the distinctive points the keypoints sit on
    for k in MARKER_ORDER:
        r = _marker_radius(k, h)
        if r >= 3.0:
            disc(joints[k], r + 1.0, (0, 0, 0))
        disc(joints[k], r, JOINT_COLOURS[k])


def _marker_radius(k: int, height: float) -> float:
    """Radius in px of joint ``k``'s marker on a figure ``height`` px tall (face markers are
    smaller: they sit close together)."""
    return max(1.5, (0.018 if k < 5 else 0.028) * height)


def _self_covered(joints: np.ndarray, height: float) -> np.ndarray:
    """(17,) bool: joint's centre lies under a marker of the same figure drawn after it."""
    order = np.asarray(MARKER_ORDER)
    p = joints[order]
    radius = np.array([_marker_radius(int(k), height) for k in order]) + 1.0  # + rim / anti-aliased fringe
    d = np.hypot(p[:, None, 0] - p[None, :, 0], p[:, None, 1] - p[None, :, 1])  # d[i, m]
    later = np.triu(np.ones((len(order), len(order)), bool), k=1)  # m drawn after i
    hit = (later & (d < radius[None, :])).any(axis=1)
    covered = np.zeros(NUM_JOINTS, bool)
    covered[order] = hit
    return covered


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """(height, width, 3) uint8 BGR background: gradient, smooth noise, rectangles, lines, pixel noise."""
    c0 = rng.uniform(0, 255, 3).astype(np.float32)
    c1 = rng.uniform(0, 255, 3).astype(np.float32)
    ang = rng.uniform(0, 2 * math.pi)
    t = (np.arange(height, dtype=np.float32)[:, None] * np.float32(math.sin(ang))
         + np.arange(width, dtype=np.float32)[None, :] * np.float32(math.cos(ang)))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0 + (c1 - c0) * t[..., None]
    kind = rng.random()
    if kind < 0.5:  # smooth colour noise (blobs)
        gh, gw = int(rng.integers(3, 9)), int(rng.integers(3, 9))
        blobs = rng.uniform(-60, 60, (gh, gw, 3)).astype(np.float32)
        img = img + cv2.resize(blobs, (width, height), interpolation=cv2.INTER_CUBIC)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(0, 12))):  # random rectangles
        x0, y0 = int(rng.integers(-width // 4, width)), int(rng.integers(-height // 4, height))
        w, h = int(rng.integers(8, width // 2)), int(rng.integers(8, height // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.rectangle(img, (x0, y0), (x0 + w, y0 + h), colour, -1)
    for _ in range(int(rng.integers(0, 6))):  # clutter lines
        p = rng.integers(0, [width, height], size=(2, 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.line(img, (int(p[0, 0]), int(p[0, 1])), (int(p[1, 0]), int(p[1, 1])), colour,
                 int(rng.integers(1, 4)))
    amp = int(rng.integers(0, 21))  # uniform pixel noise of +-amp grey levels
    if amp > 1:
        noise = rng.integers(-amp, amp + 1, img.shape, dtype=np.int16)
        noise += img
        img = np.clip(noise, 0, 255, out=noise).astype(np.uint8)
    return img


def _inside(p: np.ndarray, width: int, height: int) -> np.ndarray:
    return (p[:, 0] >= 0) & (p[:, 0] <= width - 1) & (p[:, 1] >= 0) & (p[:, 1] <= height - 1)


def _polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer contours of a binary mask as COCO polygons (each >= 3 points)."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        pts = c.reshape(-1, 2)
        if len(pts) >= 3:
            polys.append([float(v) for v in pts.reshape(-1)])
    return polys


def _segmentation(mask: np.ndarray) -> tuple[list[list[float]], float, list[float]]:
    """(polygons, area, bbox) of a non-empty binary mask; area is pycocotools' area of the polygons."""
    h, w = mask.shape
    polys = _polygons(mask)
    bx, by, bw, bh = cv2.boundingRect(mask)
    x0, y0, x1, y1 = bx, by, bx + bw - 1, by + bh - 1
    if not polys:  # 1-2 pixel wide blob: fall back to its box (a valid, non-degenerate polygon)
        polys = [[float(x0), float(y0), float(x1 + 1), float(y0), float(x1 + 1), float(y1 + 1),
                  float(x0), float(y1 + 1)]]
    rles = mask_utils.frPyObjects(polys, h, w)
    area = float(mask_utils.area(mask_utils.merge(rles)))
    if area <= 0:  # degenerate (collinear) contours
        polys = [[float(x0), float(y0), float(x1 + 1), float(y0), float(x1 + 1), float(y1 + 1),
                  float(x0), float(y1 + 1)]]
        area = float(mask_utils.area(mask_utils.merge(mask_utils.frPyObjects(polys, h, w))))
    bbox = [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)]
    return polys, area, bbox


def _make_image(rng: np.random.Generator, width: int, height: int, max_people: int,
                min_h: float, max_h: float) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One image (H, W, 3) uint8 BGR and its per-person label dicts (no ids yet)."""
    img = _background(rng, width, height)
    n = int(rng.integers(1, max_people + 1))
    people = []
    for _ in range(n):
        ph = float(math.exp(rng.uniform(math.log(min_h), math.log(max_h))))
        for _attempt in range(10):
            joints = _pose(rng, ph)
            lo, hi = joints.min(0), joints.max(0)
            centre = (lo + hi) / 2
            target = np.array([rng.uniform(0.05, 0.95) * (width - 1), rng.uniform(0.05, 0.95) * (height - 1)])
            joints = joints + (target - centre)
            if _inside(joints, width, height).any():
                break
        else:
            continue  # not drawn, not annotated
        people.append((joints, ph))

    masks = []
    for joints, ph in people:
        m = np.zeros((height, width), np.uint8)
        _draw_figure(img, m, joints, ph, rng)
        masks.append(m)

    labels = []
    later = np.zeros((height, width), bool)
    for idx in range(len(people) - 1, -1, -1):  # back to front: 'later' = union of figures drawn after
        joints, ph = people[idx]
        inside = _inside(joints, width, height)
        covered = _self_covered(joints, ph)
        kps = np.zeros((NUM_JOINTS, 3))
        for k in range(NUM_JOINTS):
            if not inside[k]:
                continue
            x, y = round(float(joints[k, 0]), 2), round(float(joints[k, 1]), 2)
            xi, yi = min(int(round(x)), width - 1), min(int(round(y)), height - 1)
            kps[k] = (x, y, 1 if (later[yi, xi] or covered[k]) else 2)
        m = masks[idx]
        polys, area, bbox = _segmentation(m)
        labels.append({
            "keypoints": [round(float(v), 2) if i % 3 != 2 else int(v) for i, v in enumerate(kps.reshape(-1))],
            "num_keypoints": int((kps[:, 2] > 0).sum()),
            "segmentation": polys,
            "area": area,
            "bbox": bbox,
            "person_height": round(ph, 2),
            "_joints": joints.copy(),  # unclipped (17, 2) positions; dropped before writing
        })
        later |= m.astype(bool)
    labels.reverse()
    return img, labels


def _area_bin(area: float) -> str:
    return "small" if area < AREA_SMALL else ("medium" if area < AREA_LARGE else "large")


def generate_dataset(out_dir: Path, *, seed: int, num_train: int, num_val: int, width: int, height: int,
                     max_people: int, min_person_height: float, max_person_height: float,
                     train_split: str = "train2017", val_split: str = "val2017") -> dict:
    """Write a GENERATED (synthetic) multi-person COCO-17 keypoint set in COCO layout.

    Writes ``out_dir/annotations/person_keypoints_<split>.json`` and
    ``out_dir/<split>/<12-digit id>.jpg`` (JPEG quality 95, BGR drawn by OpenCV) for
    the two splits. Each image holds 1..``max_people`` figures; figure heights (px)
    are log-uniform in [``min_person_height``, ``max_person_height``]. See the module
    docstring for the drawing and labelling rules. Deterministic by ``seed``.

    Args:
        out_dir: destination folder (created; existing files with the same names are overwritten).
        seed: RNG seed (params ``generated.seed``).
        num_train, num_val: number of images per split (>= 0).
        width, height: image size in px.
        max_people: most figures per image (>= 1).
        min_person_height, max_person_height: figure standing height range in px
            (0 < min <= max).
        train_split, val_split: split names (COCO: ``train2017`` / ``val2017``).

    Returns:
        ``{"generated": True, "seed": seed, "splits": {split: {"images": int,
        "annotations": int, "keypoints_visible": int, "keypoints_occluded": int,
        "area_histogram": {"small": int, "medium": int, "large": int},
        "person_height_min": float, "person_height_max": float}}}``.

    Raises:
        ValueError: on a non-positive size, ``max_people < 1``, negative counts or a
            bad height range, or equal split names.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive, got {width}x{height}")
    if max_people < 1:
        raise ValueError(f"max_people must be >= 1, got {max_people}")
    if num_train < 0 or num_val < 0:
        raise ValueError(f"image counts must be >= 0, got num_train={num_train} num_val={num_val}")
    if not (0 < min_person_height <= max_person_height):
        raise ValueError(f"need 0 < min_person_height <= max_person_height, got "
                         f"{min_person_height}, {max_person_height}")
    if train_split == val_split:
        raise ValueError(f"train and val split names must differ, got {train_split!r} twice")
    out_dir = Path(out_dir)
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"generated": True, "seed": int(seed), "splits": {}}
    ann_id = 0
    for code, (split, count) in enumerate(((train_split, num_train), (val_split, num_val))):
        img_dir = out_dir / split
        img_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        hist = {"small": 0, "medium": 0, "large": 0}
        n_vis = n_occ = 0
        heights = []
        for i in range(count):
            rng = np.random.default_rng((int(seed), code, i))
            img, labels = _make_image(rng, width, height, max_people, float(min_person_height),
                                      float(max_person_height))
            image_id = code * _VAL_ID_OFFSET + i + 1
            file_name = f"{image_id:012d}.jpg"
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95, cv2.IMWRITE_JPEG_OPTIMIZE, 0,
                                                 cv2.IMWRITE_JPEG_PROGRESSIVE, 0,
                                                 cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                                                 cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])
            if not ok:
                raise RuntimeError(f"OpenCV failed to encode {file_name}")
            (img_dir / file_name).write_bytes(buf.tobytes())
            images.append({"id": image_id, "file_name": file_name, "width": width, "height": height,
                           "license": 0})
            for lab in labels:
                lab.pop("_joints")
                ann_id += 1
                lab.update({"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0})
                annotations.append(lab)
                hist[_area_bin(lab["area"])] += 1
                v = np.asarray(lab["keypoints"][2::3])
                n_vis += int((v == 2).sum())
                n_occ += int((v == 1).sum())
                heights.append(lab["person_height"])
        doc = {
            "info": {"description": "GENERATED synthetic multi-person keypoint data (pose.datasets.generated); "
                                    "not real images", "version": "1", "year": 0, "contributor": "pose",
                     "date_created": "", "seed": int(seed)},
            "licenses": [{"id": 0, "name": "generated", "url": ""}],
            "images": images,
            "annotations": annotations,
            "categories": [PERSON_CATEGORY],
        }
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        (out_dir / "annotations" / f"person_keypoints_{split}.json").write_text(text, encoding="utf-8")
        summary["splits"][split] = {
            "images": len(images), "annotations": len(annotations),
            "keypoints_visible": n_vis, "keypoints_occluded": n_occ, "area_histogram": hist,
            "person_height_min": min(heights) if heights else None,
            "person_height_max": max(heights) if heights else None,
        }
    return summary


__all__ = ["generate_dataset", "JOINT_COLOURS", "MARKER_ORDER", "AREA_SMALL", "AREA_LARGE"]
