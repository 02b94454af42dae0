"""Paired image-level bootstrap of COCO keypoint metrics (confidence intervals of AP differences).

Method
------
1. Each model's results are matched to the ground truth ONCE with pycocotools
   (``COCOeval(iouType="keypoints").evaluate()``: per image, per area range, greedy OKS
   matching at every threshold 0.50:0.05:0.95, maxDets 20, crowd / out-of-range persons
   ignored exactly as COCO does). :class:`MatchTable` keeps, per image and area range, the
   detection scores, the TP / FP flags per threshold and the number of non-ignored
   ground-truth persons.
2. A bootstrap sample draws ``N`` image ids with replacement from the ``N`` ground-truth
   images (the same draw for both models: a *paired* bootstrap). An image drawn ``c``
   times counts ``c`` times: its detections get weight ``c`` in the cumulative TP / FP
   sums and its persons count ``c`` times in the recall denominator.
3. AP / AR are then accumulated exactly as ``COCOeval.accumulate`` / ``summarize`` do
   (detections of all drawn images sorted by score with a stable sort, precision
   envelope, 101 recall points, mean over thresholds; AR = final recall averaged over
   thresholds). Weighting by ``c`` equals concatenating ``c`` copies of the image (copies
   of one detection are adjacent in the score order, and only the last point of such a
   run can change the interpolated precision), so with every image drawn once the
   numbers are pycocotools' own (tested).
4. The CI of ``metric(B) - metric(A)`` is the percentile interval of the resampled
   differences (``level`` = 0.95 -> 2.5th and 97.5th percentiles). Resamples in which a
   metric is undefined (no ground-truth person in that area range: COCO's -1) are skipped
   for that metric.
5. :func:`bootstrap_ci` gives the same percentile interval of one model's metric (not
   paired; ``benchmarks/ablation.py`` prints it beside each AP).

Matching once and re-accumulating is what makes a few hundred resamples cost well under a
second on COCO val sized data; re-running pycocotools per resample would not even be
correct, because ``COCOeval`` cannot count an image twice.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pose.datasets.schema import COCO_SIGMAS
from pose.evaluate.coco import load_ground_truth, load_results, result_num_joints, run_cocoeval

#: metrics computed by :func:`accumulate` (COCO's ten keypoint summary numbers)
BOOT_METRICS: tuple[str, ...] = ("AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL")
_AREAS = ("all", "medium", "large")


@dataclass
class _AreaTable:
    scores: np.ndarray          # (D,) detection scores, in global stable score order
    tp: np.ndarray              # (T, D) bool
    fp: np.ndarray              # (T, D) bool
    img: np.ndarray             # (D,) image index of each detection
    npig: np.ndarray            # (I,) non-ignored ground-truth persons per image


@dataclass
class MatchTable:
    """Per-image COCO matching of one model's results (see the module docstring)."""

    img_ids: list[int]
    iou_thrs: np.ndarray
    rec_thrs: np.ndarray
    areas: dict[str, list[_AreaTable]] = field(default_factory=dict)   # area -> one table per category
    #: (I, T) TP count per image at each threshold (area "all"); used to pick disagreeing images
    tp_per_image: np.ndarray | None = None


def match_table(gt, results, sigmas: np.ndarray = COCO_SIGMAS, img_ids: Sequence[int] | None = None) -> MatchTable:
    """Match ``results`` (list or JSON path) to ``gt`` (path, dict or COCO) once with pycocotools.

    ``img_ids`` restricts the evaluation to those images (default: every ground-truth image)."""
    sigmas = np.asarray(sigmas, dtype=np.float64)
    coco_gt = load_ground_truth(gt)
    if isinstance(results, (str, Path)):
        results = json.loads(Path(results).read_text())
    ids = sorted(set(img_ids)) if img_ids is not None else sorted(coco_gt.getImgIds())
    keep = set(ids)
    results = [r for r in results if r["image_id"] in keep]
    coco_dt = load_results(coco_gt, results, result_num_joints(coco_gt, sigmas))
    ev = run_cocoeval(coco_gt, coco_dt, sigmas, img_ids=ids, summarize=False)
    p = ev.params
    n_img, n_area, t = len(p.imgIds), len(p.areaRng), len(p.iouThrs)
    max_det = p.maxDets[-1]
    table = MatchTable(img_ids=list(p.imgIds), iou_thrs=np.asarray(p.iouThrs), rec_thrs=np.asarray(p.recThrs))
    tp_img = np.zeros((n_img, t), dtype=np.int64)
    for a, label in enumerate(p.areaRngLbl):
        if label not in _AREAS:
            continue
        per_cat = []
        for k in range(len(p.catIds)):
            scores, tps, fps, imgs = [], [], [], []
            npig = np.zeros(n_img, dtype=np.int64)
            for i in range(n_img):
                e = ev.evalImgs[k * n_area * n_img + a * n_img + i]
                if e is None:
                    continue
                s = np.asarray(e["dtScores"][:max_det], dtype=np.float64)
                dtm = np.asarray(e["dtMatches"])[:, :max_det]
                dtig = np.asarray(e["dtIgnore"])[:, :max_det].astype(bool)
                npig[i] = int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
                tp = np.logical_and(dtm != 0, ~dtig)
                scores.append(s)
                tps.append(tp)
                fps.append(np.logical_and(dtm == 0, ~dtig))
                imgs.append(np.full(s.shape[0], i, dtype=np.int64))
                if label == "all":
                    tp_img[i] += tp.sum(axis=1)
            if scores:
                s = np.concatenate(scores)
                order = np.argsort(-s, kind="mergesort")
                tab = _AreaTable(scores=s[order], tp=np.concatenate(tps, axis=1)[:, order],
                                 fp=np.concatenate(fps, axis=1)[:, order], img=np.concatenate(imgs)[order], npig=npig)
            else:
                tab = _AreaTable(scores=np.zeros(0), tp=np.zeros((t, 0), bool), fp=np.zeros((t, 0), bool),
                                 img=np.zeros(0, np.int64), npig=npig)
            per_cat.append(tab)
        table.areas[label] = per_cat
    table.tp_per_image = tp_img
    return table


def _area_metrics(tab: _AreaTable, counts: np.ndarray, rec_thrs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(precision (B, T, R), recall (B, T)) of one category / area for ``counts`` (B, I); -1 where undefined."""
    b, t, r = counts.shape[0], tab.tp.shape[0], rec_thrs.shape[0]
    precision = -np.ones((b, t, r))
    recall = -np.ones((b, t))
    npig = counts @ tab.npig                                     # (B,)
    d = tab.scores.shape[0]
    if d == 0:
        ok = npig > 0
        precision[ok] = 0.0
        recall[ok] = 0.0
        return precision, recall
    tp, fp = tab.tp.astype(np.float64), tab.fp.astype(np.float64)
    for bi in range(b):
        if npig[bi] == 0:
            continue
        w = counts[bi, tab.img].astype(np.float64)               # (D,) image multiplicity of each detection
        tp_sum = np.cumsum(tp * w, axis=1)                        # (T, D)
        fp_sum = np.cumsum(fp * w, axis=1)
        rc = tp_sum / npig[bi]
        pr = tp_sum / (fp_sum + tp_sum + np.spacing(1))
        pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # precision envelope
        recall[bi] = rc[:, -1]
        for ti in range(t):
            inds = np.searchsorted(rc[ti], rec_thrs, side="left")
            precision[bi, ti] = np.where(inds < d, pr[ti, np.minimum(inds, d - 1)], 0.0)
    return precision, recall


def _mean_valid(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    valid = x > -1
    n = valid.sum(axis=axes)
    s = np.where(valid, x, 0.0).sum(axis=axes)
    return np.where(n > 0, s / np.maximum(n, 1), -1.0)


def accumulate(table: MatchTable, counts: np.ndarray) -> dict[str, np.ndarray]:
    """COCO keypoint summary metrics for each row of ``counts`` ((B, I) or (I,) image multiplicities).

    Returns ``{metric: (B,) array}`` (-1 where undefined, as COCO)."""
    counts = np.atleast_2d(np.asarray(counts, dtype=np.int64))
    t50 = int(np.argmin(np.abs(table.iou_thrs - 0.5)))
    t75 = int(np.argmin(np.abs(table.iou_thrs - 0.75)))
    out: dict[str, np.ndarray] = {}
    for label, suffix in (("all", ""), ("medium", "M"), ("large", "L")):
        precs, recs = [], []
        for tab in table.areas[label]:
            p, r = _area_metrics(tab, counts, table.rec_thrs)
            precs.append(p)
            recs.append(r)
        prec = np.stack(precs, axis=-1)        # (B, T, R, K)
        rec = np.stack(recs, axis=-1)          # (B, T, K)
        out[f"AP{suffix}"] = _mean_valid(prec, (1, 2, 3))
        out[f"AR{suffix}"] = _mean_valid(rec, (1, 2))
        if label == "all":
            out["AP50"] = _mean_valid(prec[:, t50], (1, 2))
            out["AP75"] = _mean_valid(prec[:, t75], (1, 2))
            out["AR50"] = _mean_valid(rec[:, t50], (1,))
            out["AR75"] = _mean_valid(rec[:, t75], (1,))
    return out


def bootstrap_diff(gt, results_a, results_b, *, n_resamples: int, seed: int, level: float = 0.95,
                   sigmas: np.ndarray = COCO_SIGMAS, img_ids: Sequence[int] | None = None,
                   metrics: Sequence[str] = BOOT_METRICS) -> dict:
    """Paired image bootstrap of ``metric(B) - metric(A)`` on the same ground truth.

    Args:
        gt: ground truth (path, dict or COCO) both result sets are scored against.
        results_a, results_b: COCO keypoint results (lists or JSON paths).
        n_resamples: bootstrap resamples (params ``registry.bootstrap_samples``).
        seed: RNG seed (params ``registry.bootstrap_seed``).
        level: confidence level of the percentile interval.
        img_ids: evaluate on these images only (default: all ground-truth images).

    Returns ``{"n_images", "n_resamples", "level", "seed", "method", "metrics": {name: {"a", "b",
    "delta", "ci_low", "ci_high", "n_valid"}}, "per_image_tp": {"a": [...], "b": [...]}, "img_ids"}``;
    ``a`` / ``b`` are the full-sample values (pycocotools' numbers), ``ci_*`` None when fewer
    than 2 resamples define the metric.
    """
    ta = match_table(gt, results_a, sigmas, img_ids)
    tb = match_table(gt, results_b, sigmas, img_ids)
    n = len(ta.img_ids)
    ones = np.ones((1, n), dtype=np.int64)
    full_a, full_b = accumulate(ta, ones), accumulate(tb, ones)
    rng = np.random.default_rng(int(seed))
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=int(n_resamples)) if n else np.zeros((0, 0), np.int64)
    res_a, res_b = (accumulate(ta, counts), accumulate(tb, counts)) if n and n_resamples else ({}, {})
    alpha = (1.0 - float(level)) / 2.0
    out_metrics = {}
    for m in metrics:
        a, b = float(full_a[m][0]), float(full_b[m][0])
        entry = {"a": a, "b": b, "delta": (b - a) if a > -1 and b > -1 else None,
                 "ci_low": None, "ci_high": None, "n_valid": 0}
        if res_a:
            ok = (res_a[m] > -1) & (res_b[m] > -1)
            diffs = (res_b[m] - res_a[m])[ok]
            entry["n_valid"] = int(ok.sum())
            if diffs.size >= 2:
                entry["ci_low"] = float(np.quantile(diffs, alpha))
                entry["ci_high"] = float(np.quantile(diffs, 1.0 - alpha))
        out_metrics[m] = entry
    return {"n_images": n, "n_resamples": int(n_resamples), "level": float(level), "seed": int(seed),
            "method": "paired image bootstrap, percentile interval, COCO accumulation on pycocotools matches",
            "metrics": out_metrics, "img_ids": ta.img_ids,
            "per_image_tp": {"a": ta.tp_per_image[:, 0].tolist(), "b": tb.tp_per_image[:, 0].tolist()}}


def bootstrap_ci(gt, results, *, n_resamples: int, seed: int, level: float = 0.95,
                 sigmas: np.ndarray = COCO_SIGMAS, img_ids: Sequence[int] | None = None,
                 metrics: Sequence[str] = BOOT_METRICS) -> dict[str, tuple[float | None, float | None]]:
    """Image bootstrap percentile interval of each COCO keypoint metric of ONE result set.

    Same method as :func:`bootstrap_diff` (module docstring) without the pairing: the
    results are matched once (:func:`match_table`), ``n_resamples`` draws of ``N`` image
    ids with replacement from the ``N`` evaluated images are re-accumulated
    (:func:`accumulate`), and the interval is the ``(1 - level) / 2`` and ``(1 + level) / 2``
    quantiles of the resampled metric. For one ``seed`` the draws equal those of
    :func:`bootstrap_diff` on the same images.

    Args:
        gt: ground truth (path, dict or COCO).
        results: COCO keypoint results (list or JSON path), image px.
        n_resamples: bootstrap resamples (params ``registry.bootstrap_samples``).
        seed: RNG seed (params ``registry.bootstrap_seed``).
        level: confidence level, in (0, 1).
        sigmas: (K,) OKS sigmas.
        img_ids: evaluate on these images only (default: every ground-truth image).
        metrics: names from :data:`BOOT_METRICS`.

    Returns ``{metric: (low, high)}``; ``(None, None)`` where fewer than 2 resamples define
    the metric (e.g. no medium person in the ground truth: COCO's -1). The point value is
    not returned: it is pycocotools' own (``pose.evaluate.coco.evaluate_results``).

    Raises ValueError for a ``level`` outside (0, 1), a negative ``n_resamples`` or an
    unknown metric name; as :func:`match_table` for bad ground truth or results.
    """
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if int(n_resamples) < 0:
        raise ValueError(f"n_resamples must be >= 0, got {n_resamples}")
    unknown = [m for m in metrics if m not in BOOT_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; allowed: {', '.join(BOOT_METRICS)}")
    table = match_table(gt, results, sigmas, img_ids)
    n = len(table.img_ids)
    out: dict[str, tuple[float | None, float | None]] = {m: (None, None) for m in metrics}
    if n == 0 or int(n_resamples) == 0:
        return out
    rng = np.random.default_rng(int(seed))
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=int(n_resamples))
    res = accumulate(table, counts)
    alpha = (1.0 - float(level)) / 2.0
    for m in metrics:
        vals = res[m][res[m] > -1]
        if vals.size >= 2:
            out[m] = (float(np.quantile(vals, alpha)), float(np.quantile(vals, 1.0 - alpha)))
    return out
