"""Figures of the review reports and model cards: training curves of one or more runs, and
side-by-side pose overlays (ground truth | A | B)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pose.codec import OUTPUT_NAMES

#: per-step training curves plotted first (MLflow metrics ``train/<curve>``), in this order
CURVES = ("loss", *OUTPUT_NAMES, "push", "pull", "lr")


def _plt():
    """matplotlib.pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(series: dict[str, dict[str, tuple[list, list]]], out_png: Path) -> Path | None:
    """One panel per curve (``loss``, ``lr``, ...), one line per run label. ``series``:
    ``{label: {curve: (steps, values)}}``. Returns the PNG path, None when there is no data."""
    curves = [c for c in CURVES if any(c in s and s[c][0] for s in series.values())]
    curves += sorted({c for s in series.values() for c in s if c not in curves and c not in ("images_per_s",)})
    if not curves:
        return None
    plt = _plt()
    cols = min(3, len(curves))
    rows = int(np.ceil(len(curves) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), dpi=100, squeeze=False)
    styles = ["-", "--", ":", "-."]
    try:
        for ax, c in zip(axes.ravel(), curves):
            for i, (label, s) in enumerate(series.items()):
                if c in s and s[c][0]:
                    ax.plot(s[c][0], s[c][1], styles[i % len(styles)], marker="." if len(s[c][0]) < 30 else None,
                            label=label)
            ax.set_title(c)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            if c != "lr" and all(v > 0 for s in series.values() if c in s for v in s[c][1]):
                ax.set_yscale("log")
            ax.legend(fontsize=7)
        for ax in axes.ravel()[len(curves):]:
            ax.axis("off")
        fig.tight_layout()
        out_png = Path(out_png)
        out_png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_png, format="png")
    finally:
        plt.close(fig)
    return out_png


def steps_csv_series(path: Path) -> dict[str, tuple[list, list]]:
    """``{column: (steps, values)}`` of a ``train_steps.csv``."""
    import csv

    out: dict[str, tuple[list, list]] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            for k, v in row.items():
                if k in ("step", "epoch") or v in ("", None):
                    continue
                s = out.setdefault(k, ([], []))
                s[0].append(int(row["step"]))
                s[1].append(float(v))
    return out


def _panel(image: np.ndarray, persons: list[dict], title: str, empty: str | None = None) -> np.ndarray:
    """``image`` (H, W, 3) uint8 BGR with ``persons`` drawn, scaled to 320 px on its long side,
    under a 24 px title bar; without persons, ``empty`` (e.g. "no person above min_person_score = 0.4")
    is written across the image on a white band, so an empty panel is not a bare photo."""
    import cv2

    from pose.draw import draw_persons

    canvas = draw_persons(image, persons)
    scale = 320.0 / max(canvas.shape[:2])
    canvas = cv2.resize(canvas, (max(1, int(canvas.shape[1] * scale)), max(1, int(canvas.shape[0] * scale))))
    if not persons and empty:
        font, size = cv2.FONT_HERSHEY_SIMPLEX, 0.42
        (tw, th), _ = cv2.getTextSize(empty, font, size, 1)
        size *= min(1.0, (canvas.shape[1] - 12) / max(tw, 1))
        (tw, th), _ = cv2.getTextSize(empty, font, size, 1)
        y = canvas.shape[0] // 2
        cv2.rectangle(canvas, (0, y - th - 8), (canvas.shape[1] - 1, y + 8), (255, 255, 255), -1)
        cv2.putText(canvas, empty, (max(4, (canvas.shape[1] - tw) // 2), y), font, size, (0, 0, 200), 1, cv2.LINE_AA)
    bar = np.full((24, canvas.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, title[:48], (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([bar, canvas])


def side_by_side(image: np.ndarray, panels: list[tuple], out_png: Path) -> Path:
    """Write ``image`` ((H, W, 3) uint8 BGR) drawn once per ``(title, persons[, empty text])`` panel,
    side by side, as a PNG (atomic write). ``persons``: COCO-style dicts with ``keypoints`` (x, y,
    v/score triples, image px) and ``score``; a panel without persons shows its empty text
    (:func:`_panel`). Returns ``out_png``; raises ValueError when PNG encoding fails."""
    from pose.draw import write_image

    tiles = [_panel(image, panel[1], panel[0], panel[2] if len(panel) > 2 else None) for panel in panels]
    h = max(t.shape[0] for t in tiles)
    tiles = [np.vstack([t, np.full((h - t.shape[0], t.shape[1], 3), 255, np.uint8)]) for t in tiles]
    sep = np.full((h, 6, 3), 255, np.uint8)
    row = tiles[0]
    for t in tiles[1:]:
        row = np.hstack([row, sep, t])
    return write_image(row, out_png)


__all__ = ["CURVES", "plot_training_curves", "steps_csv_series", "side_by_side"]
