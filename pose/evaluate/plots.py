"""Evaluation figures: per-keypoint AP bars (matplotlib) and skeleton overlays (OpenCV).

Every PNG is written atomically (encoded in memory, temporary file, ``os.replace``), and
parent folders are created. Keypoints are in image px.
"""

from __future__ import annotations

import colorsys
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from pose.datasets.schema import SKELETON


def _write_png_bytes(data: bytes, out_png: Path | str) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return out


def _write_image(image_bgr: np.ndarray, out_png: Path | str) -> Path:
    ok, buf = cv2.imencode(".png", image_bgr)
    if not ok:
        raise ValueError(f"cannot encode image of shape {image_bgr.shape} as PNG")
    return _write_png_bytes(buf.tobytes(), out_png)


def person_colours(n: int) -> list[tuple[int, int, int]]:
    """``n`` well-separated BGR colours (golden-ratio hues), deterministic."""
    cols = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.85, 1.0)
        cols.append((int(b * 255), int(g * 255), int(r * 255)))
    return cols


def ap_per_keypoint_plot(metrics: dict, out_png: Path | str) -> Path:
    """Horizontal bar chart of ``metrics["per_keypoint_AP"]`` ({name: AP}) with the overall
    ``metrics["AP"]`` as a dashed line. Returns the PNG path.

    Raises KeyError when ``per_keypoint_AP`` is missing."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    per = metrics["per_keypoint_AP"]
    names = list(per.keys())
    values = [max(float(per[n]), 0.0) for n in names]
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(names) + 1.2), dpi=100)
    try:
        ax.barh(range(len(names)), values, color="#4C72B0")
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names)
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("AP (OKS 0.50:0.95)")
        if "AP" in metrics and float(metrics["AP"]) >= 0:
            ax.axvline(float(metrics["AP"]), color="#C44E52", linestyle="--", label=f"overall AP {float(metrics['AP']):.3f}")
            ax.legend(loc="lower right")
        ax.set_title("AP per keypoint")
        fig.tight_layout()
        import io

        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return _write_png_bytes(buf.getvalue(), out_png)


def draw_persons(image_bgr: np.ndarray, persons: Sequence[dict], *, min_score: float = 0.0,
                 skeleton: Sequence[tuple[int, int]] = SKELETON, thickness: int | None = None) -> np.ndarray:
    """Copy of the image with each person's skeleton in its own colour.

    Args:
        image_bgr: (H, W, 3) uint8.
        persons: ``{"keypoints": (K, 3) [x, y, score] image px, "score": float}`` (as
            ``predict_image`` returns; COCO results entries with a flat ``keypoints`` list
            work too).
        min_score: joints with score <= min_score are not drawn (nor their limbs).

    Returns the drawn (H, W, 3) uint8 image.
    """
    canvas = np.ascontiguousarray(np.asarray(image_bgr, dtype=np.uint8).copy())
    h, w = canvas.shape[:2]
    t = thickness or max(1, int(round(max(h, w) / 300)))
    for person, colour in zip(persons, person_colours(len(persons))):
        kp = np.asarray(person["keypoints"], dtype=np.float64).reshape(-1, 3)
        ok = kp[:, 2] > min_score
        for a, b in skeleton:
            if a < len(kp) and b < len(kp) and ok[a] and ok[b]:
                cv2.line(canvas, (int(round(kp[a, 0])), int(round(kp[a, 1]))),
                         (int(round(kp[b, 0])), int(round(kp[b, 1]))), colour, t, cv2.LINE_AA)
        for x, y in kp[ok, :2]:
            cv2.circle(canvas, (int(round(x)), int(round(y))), t + 1, colour, -1, cv2.LINE_AA)
    return canvas


def overlay(image_bgr: np.ndarray, persons: Sequence[dict], out_png: Path | str, *, min_score: float = 0.0) -> Path:
    """Draw persons (:func:`draw_persons`) and write the PNG. Returns its path."""
    return _write_image(draw_persons(image_bgr, persons, min_score=min_score), out_png)


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
    return _write_image(grid, out_png)
