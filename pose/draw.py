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


def draw_legend(image_bgr: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """Copy of the image with ``lines`` of text in its top-left corner, white on a dark box,
    scaled to the image (about 1/40 of the longer side per line, at least 10 px). Used to say
    on an overlay which thresholds decided what is drawn (:func:`thresholds_legend`).
    Returns the (H, W, 3) uint8 image."""
    canvas = np.ascontiguousarray(np.asarray(image_bgr, dtype=np.uint8).copy())
    lines = [str(t) for t in lines if str(t)]
    if not lines:
        return canvas
    h, w = canvas.shape[:2]
    font = cv2.FONT_HERSHEY_SIMPLEX
    line_px = max(10, int(round(max(h, w) / 40)))
    scale = cv2.getFontScaleFromHeight(font, int(line_px * 0.7), 1)
    sizes = [cv2.getTextSize(t, font, scale, 1)[0] for t in lines]
    while sizes and max(s[0] for s in sizes) + 8 > w and scale > 0.2:   # fit the image width
        scale *= 0.85
        sizes = [cv2.getTextSize(t, font, scale, 1)[0] for t in lines]
    box_w = min(w, max(s[0] for s in sizes) + 8)
    box_h = min(h, line_px * len(lines) + 6)
    region = canvas[:box_h, :box_w]
    region[:] = (region.astype(np.uint16) * 2 // 5).astype(np.uint8)   # darkened, still see-through
    for i, text in enumerate(lines):
        y = 3 + line_px * (i + 1) - max(1, line_px // 5)
        cv2.putText(canvas, text, (4, y), font, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return canvas


def thresholds_legend(*, min_person_score: float, min_joints: int, joint_threshold: float, drawn: int,
                      total: int) -> list[str]:
    """The legend lines of a ``pose predict`` overlay: which persons and joints are drawn, by
    which thresholds (params ``predict`` / the command's flags), and how many of the output's
    persons that is, e.g. ``["drawn 3 of 30 persons: confidence >= 0.40,", ">= 5 joints >
    0.20; joints <= 0.20 hidden"]``."""
    return [f"drawn {drawn} of {total} persons: confidence >= {min_person_score:.2f},",
            f">= {min_joints} joints > {joint_threshold:.2f}; joints <= {joint_threshold:.2f} hidden"]


def overlay(image_bgr: np.ndarray, persons: Sequence[dict], out_png: Path | str, *, min_score: float,
            legend: Sequence[str] = ()) -> Path:
    """Draw persons (:func:`draw_persons`, joints scoring <= ``min_score`` hidden), the
    ``legend`` lines (:func:`draw_legend`) and write the PNG. Returns its path."""
    return write_image(draw_legend(draw_persons(image_bgr, persons, min_score=min_score), legend), out_png)


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


__all__ = ["draw_legend", "draw_persons", "overlay", "overlay_grid", "person_colours", "thresholds_legend",
           "write_image"]
