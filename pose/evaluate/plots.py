"""Evaluation figures: per-keypoint and per-person-scale AP bars (matplotlib, plus the
same numbers as CSV tables for DVC plots) and a grid of skeleton overlays on sample
validation images (drawn with ``pose.draw``).

Every file is written atomically (encoded in memory, temporary file, ``os.replace``), and
parent folders are created. Keypoints are in image px. Outputs are deterministic for the
same inputs (no timestamps in the PNGs), so DVC sees no change when nothing changed.

:func:`write_eval_plots` writes the evaluate stage's folder (``data/plots/eval/``)::

    per_keypoint_ap.png / per_keypoint_ap.csv   AP per joint (CSV: keypoint,AP)
    ap_per_scale.png / ap_per_scale.csv         AP per person scale (CSV: range,AP,AR,num_gt)
    overlays.png                                predictions on sample validation images
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pose.draw import draw_persons, overlay_grid
from pose.io import atomic_write_bytes, dataset_exif, read_image


def _write_png_bytes(data: bytes, out_png: Path | str) -> Path:
    return atomic_write_bytes(out_png, data)


def ap_per_keypoint_plot(metrics: dict, out_png: Path | str) -> Path:
    """Horizontal bar chart of ``metrics["per_keypoint_AP"]`` ({name: AP}) with the overall
    ``metrics["AP"]`` as a dashed line. Returns the PNG path.

    Raises KeyError when ``per_keypoint_AP`` is missing."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    per = metrics["per_keypoint_AP"]
    names = joint_order(per)
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
            overall = float(metrics["AP"])
            ax.axvline(overall, color="#C44E52", linestyle="--", label=f"overall AP {overall:.3f}")
            ax.legend(loc="lower right")
        ax.set_title("AP per keypoint")
        fig.tight_layout()
        data = _figure_png(fig)
    finally:
        plt.close(fig)
    return _write_png_bytes(data, out_png)


def _write_text(text: str, out: Path | str) -> Path:
    return _write_png_bytes(text.encode("utf-8"), out)


def _csv(header: Sequence[str], rows: Sequence[Sequence], out_csv: Path | str) -> Path:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([f"{v:.6f}" if isinstance(v, float) else v for v in row])
    return _write_text(buf.getvalue(), out_csv)


def joint_order(names) -> list[str]:
    """Joint names in COCO-17 order (``nose``, eyes, ears, shoulders, ... ankles,
    :data:`pose.datasets.schema.KEYPOINT_NAMES`), other names after them in their order
    (eval.json stores ``per_keypoint_AP`` with sorted keys)."""
    from pose.datasets.schema import KEYPOINT_NAMES

    rank = {n: i for i, n in enumerate(KEYPOINT_NAMES)}
    names = list(names)
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), names.index(n)))


def per_keypoint_ap_table(metrics: dict, out_csv: Path | str) -> Path:
    """``keypoint,AP`` rows of ``metrics["per_keypoint_AP"]`` in joint order (:func:`joint_order`)
    as CSV: the DVC plot of the evaluate stage. Raises KeyError when the key is missing."""
    per = metrics["per_keypoint_AP"]
    return _csv(["keypoint", "AP"], [(k, float(per[k])) for k in joint_order(per)], out_csv)


def scale_order(ranges) -> list[str]:
    """Person-scale range names in reading order: COCO's ``medium`` / ``large`` first, then the
    sqrt(area) bins by their lower bound (``0-32``, ``32-64``, ..., ``192+``), then any other name.
    (eval.json stores them with sorted keys, where ``128-192`` comes before ``32-64``.)"""
    def key(name: str):
        if name in ("medium", "large"):
            return (0, 0 if name == "medium" else 1, name)
        head = name.split("-")[0].rstrip("+")
        return (1, float(head), name) if head.replace(".", "", 1).isdigit() else (2, 0, name)

    return sorted(ranges, key=key)


def ap_per_scale_table(metrics: dict, out_csv: Path | str) -> Path:
    """``range,AP,AR,num_gt`` rows of ``metrics["AP_by_area"]`` (``medium`` / ``large``:
    COCO's APM / APL, then the sqrt(area) bins in size order, :func:`scale_order`) as CSV.
    AP / AR -1: no ground truth in that range (the DVC plot template
    ``.dvc/plots/bar_horizontal_ordered.json`` shows "no ground truth" instead of a bar).
    Raises KeyError when ``AP_by_area`` is missing."""
    ap = metrics["AP_by_area"]
    ar = metrics.get("AR_by_area", {})
    num = metrics.get("num_gt_by_area", {})
    return _csv(["range", "AP", "AR", "num_gt"],
                [(k, float(ap[k]), float(ar.get(k, -1.0)), int(num.get(k, 0))) for k in scale_order(ap)], out_csv)


def _figure_png(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def ap_per_scale_plot(metrics: dict, out_png: Path | str) -> Path:
    """Bar chart of AP per person scale (``metrics["AP_by_area"]``): COCO's medium / large
    ranges and the sqrt(area) bins, each bar labelled with its ground-truth count; ranges
    without ground truth are marked "no GT". Returns the PNG path.

    Raises KeyError when ``AP_by_area`` is missing."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ap = metrics["AP_by_area"]
    num = metrics.get("num_gt_by_area", {})
    labels = scale_order(ap)
    coco = {"medium": "APM (32-96)", "large": "APL (96+)"}
    names = [coco.get(k, k) for k in labels]
    values = [max(float(ap[k]), 0.0) for k in labels]
    colours = ["#DD8452" if k in coco else "#4C72B0" for k in labels]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.8 * len(labels) + 1.5), 3.8), dpi=100)
    try:
        ax.bar(range(len(labels)), values, color=colours)
        for i, k in enumerate(labels):
            text = f"n={int(num.get(k, 0))}" if float(ap[k]) >= 0 else "no GT"
            ax.text(i, values[i] + 0.02, text, ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(names, rotation=30, ha="right")
        ax.set_ylim(0, 1.1)
        ax.set_ylabel("AP (OKS 0.50:0.95)")
        ax.set_xlabel("person scale: sqrt(area) px")
        ax.set_title("AP per person scale")
        fig.tight_layout()
        data = _figure_png(fig)
    finally:
        plt.close(fig)
    return _write_png_bytes(data, out_png)


def select_sample_images(gt: dict, count: int) -> list[dict]:
    """Up to ``count`` image records of a COCO dict for overlays, deterministic: images with
    labeled persons first (most persons first, then by id), then the others by id."""
    persons: dict[int, int] = {}
    for a in gt.get("annotations", []):
        if not a.get("iscrowd", 0) and a.get("num_keypoints", 0) > 0:
            persons[a["image_id"]] = persons.get(a["image_id"], 0) + 1
    images = sorted(gt.get("images", []), key=lambda im: (-persons.get(im["id"], 0), im["id"]))
    return images[:max(0, int(count))]


def overlay_samples(gt_json: Path | str | dict, results: Sequence[dict], images_dir: Path | str,
                    out_png: Path | str, *, count: int, min_score: float, cell: int = 320) -> Path | None:
    """Grid of predictions on sample ground-truth images (:func:`select_sample_images`):
    ground-truth skeletons in thin white, every predicted person with score > ``min_score``
    in its own colour (joints with score <= ``min_score`` hidden), highest score first.
    Returns the PNG path, or None when ``count`` is 0 or the ground truth has no images.

    Raises FileNotFoundError / ValueError for a missing or unreadable image."""
    import json

    gt = json.loads(Path(gt_json).read_text()) if not isinstance(gt_json, dict) else gt_json
    picked = select_sample_images(gt, count)
    if not picked:
        return None
    by_image: dict[int, list[dict]] = {}
    for r in results:
        if float(r["score"]) > min_score:
            by_image.setdefault(r["image_id"], []).append(r)
    gt_by_image: dict[int, list[dict]] = {}
    for a in gt.get("annotations", []):
        if a.get("num_keypoints", 0) > 0:
            gt_by_image.setdefault(a["image_id"], []).append({"keypoints": a["keypoints"], "score": 1.0})
    tiles = []
    for im in picked:
        image = read_image(Path(images_dir) / im["file_name"], im["id"], exif=dataset_exif(gt))
        gts = gt_by_image.get(im["id"], [])
        canvas = draw_persons(image, gts, colours=[(255, 255, 255)] * len(gts))
        preds = sorted(by_image.get(im["id"], []), key=lambda r: -float(r["score"]))
        canvas = draw_persons(canvas, preds, min_score=min_score)
        tiles.append(canvas)
    return overlay_grid(tiles, out_png, cell=cell)


def write_eval_plots(metrics: dict, out_dir: Path | str, *, gt_json: Path | str | dict | None = None,
                     results: Sequence[dict] | None = None, images_dir: Path | str | None = None,
                     overlay_count: int = 0, overlay_min_score: float = 0.0) -> list[Path]:
    """The evaluate stage's plot folder (module docstring): per-keypoint AP (when
    ``per_keypoint_AP`` is in ``metrics``), per-scale AP (when ``AP_by_area`` is), and
    ``overlays.png`` when ground truth, results and images are given and ``overlay_count``
    > 0. Returns the written paths."""
    out_dir = Path(out_dir)
    written = []
    if metrics.get("per_keypoint_AP"):
        written += [ap_per_keypoint_plot(metrics, out_dir / "per_keypoint_ap.png"),
                    per_keypoint_ap_table(metrics, out_dir / "per_keypoint_ap.csv")]
    if metrics.get("AP_by_area"):
        written += [ap_per_scale_plot(metrics, out_dir / "ap_per_scale.png"),
                    ap_per_scale_table(metrics, out_dir / "ap_per_scale.csv")]
    if gt_json is not None and results is not None and images_dir is not None and overlay_count > 0:
        png = overlay_samples(gt_json, results, images_dir, out_dir / "overlays.png", count=overlay_count,
                              min_score=overlay_min_score)
        if png is not None:
            written.append(png)
    return written
