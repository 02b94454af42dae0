"""Skeleton overlays (OpenCV + NumPy): one colour per person, PNG writing and image grids.

A core module (no torch, no other pose layer but the schema and the atomic writer), used
by ``pose predict`` (``pose.predict``), video overlays, the evaluation plots
(``pose.evaluate.plots``) and the registry's compare reports. Keypoints are in image px.
Files are written atomically (``pose.io.atomic_write_bytes``); outputs are deterministic
for the same inputs (no timestamps in the PNGs).
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from pose.datasets.schema import SKELETON
from pose.io import atomic_write_bytes


def write_image(image_bgr: np.ndarray, out_png: Path | str) -> Path:
    """Encode an (H, W, 3) or (H, W) uint8 image as PNG and write it atomically. Returns
    the path. Raises ValueError when OpenCV cannot encode it."""
    ok, buf = cv2.imencode(".png", image_bgr)
    if not ok:
        raise ValueError(f"cannot encode image of shape {image_bgr.shape} as PNG")
    return atomic_write_bytes(out_png, buf.tobytes())


def person_colours(n: int) -> list[tuple[int, int, int]]:
    """``n`` well-separated BGR colours (golden-ratio hues), deterministic."""
    cols = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.85, 1.0)
        cols.append((int(b * 255), int(g * 255), int(r * 255)))
    return cols


def draw_persons(image_bgr: np.ndarray, persons: Sequence[dict], *, min_score: float = 0.0,
                 skeleton: Sequence[tuple[int, int]] = SKELETON, thickness: int | None = None,
                 colours: Sequence[tuple[int, int, int]] | None = None) -> np.ndarray:
    """Copy of the image with each person's skeleton in its own colour.

    Args:
        image_bgr: (H, W, 3) uint8.
        persons: ``{"keypoints": (K, 3) [x, y, score] image px, "score": float}`` (as
            ``predict_image`` returns; COCO results entries with a flat ``keypoints`` list
            work too).
        min_score: joints with score <= min_score are not drawn (nor their limbs); callers
            pass params ``predict.joint_threshold``.
        skeleton: limbs as joint index pairs (COCO-17's by default).
        thickness: line width in px (default: the longer image side / 300, at least 1).
        colours: BGR colour per person (default :func:`person_colours`).

    Returns the drawn (H, W, 3) uint8 image.
    """
    canvas = np.ascontiguousarray(np.asarray(image_bgr, dtype=np.uint8).copy())
    h, w = canvas.shape[:2]
    t = thickness or max(1, int(round(max(h, w) / 300)))
    colours = list(colours) if colours is not None else person_colours(len(persons))
    for person, colour in zip(persons, colours):
        kp = np.asarray(person["keypoints"], dtype=np.float64).reshape(-1, 3)
        ok = kp[:, 2] > min_score
        for a, b in skeleton:
            if a < len(kp) and b < len(kp) and ok[a] and ok[b]:
                cv2.line(canvas, (int(round(kp[a, 0])), int(round(kp[a, 1]))),
                         (int(round(kp[b, 0])), int(round(kp[b, 1]))), colour, t, cv2.LINE_AA)
        for x, y in kp[ok, :2]:
            cv2.circle(canvas, (int(round(x)), int(round(y))), t + 1, colour, -1, cv2.LINE_AA)
    return canvas


def overlay(image_bgr: np.ndarray, persons: Sequence[dict], out_png: Path | str, *, min_score: float) -> Path:
    """Draw persons (:func:`draw_persons`, joints scoring <= ``min_score`` hidden) and write
    the PNG. Returns its path."""
    return write_image(draw_persons(image_bgr, persons, min_score=min_score), out_png)


def overlay_grid(images: Sequence[np.ndarray], out_png: Path | str, *, columns: int | None = None,
                 cell: int = 256) -> Path:
    """Tile images (e.g. :func:`draw_persons` outputs; BGR uint8, any sizes, grey images
    allowed) into one PNG: each letterboxed into a ``cell x cell`` square, ``columns``
    per row (default ``ceil(sqrt(n))``). Returns the path.

    Raises ValueError on an empty list."""
    if not images:
        raise ValueError("overlay_grid needs at least one image")
    n = len(images)
    cols = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    grid = np.zeros((rows * cell, cols * cell, 3), dtype=np.uint8)
    for i, img in enumerate(images):
        img = np.asarray(img, dtype=np.uint8)
        if img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        h, w = img.shape[:2]
        s = cell / max(h, w)
        nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
        small = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
        r, c = divmod(i, cols)
        y0 = r * cell + (cell - nh) // 2
        x0 = c * cell + (cell - nw) // 2
        grid[y0:y0 + nh, x0:x0 + nw] = small
    return write_image(grid, out_png)


__all__ = ["draw_persons", "overlay", "overlay_grid", "person_colours", "write_image"]
