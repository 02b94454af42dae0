"""COCO keypoint evaluation (OKS-based AP/AR with pycocotools, cocodataset.org/#keypoints-eval)
plus diagnostics, and CrowdPose's easy/medium/hard split (Li et al., CVPR 2019).

All coordinates are image px. pycocotools prints progress to stdout; every call into it
here runs with stdout captured, and the summary table is logged at DEBUG level.

Metrics of :func:`evaluate_results` (a flat dict of floats plus one nested dict):

* ``AP, AP50, AP75, APM, APL, AR, AR50, AR75, ARM, ARL``: ``COCOeval(iouType="keypoints")``
  ``stats[0..9]`` with ``params.kpt_oks_sigmas = sigmas`` (maxDets 20). -1 where the
  ground truth has no person in that area range (pycocotools' convention).
* ``per_keypoint_AP``: ``{joint name: AP}``. Persons are matched by COCOeval itself (full
  OKS, at each threshold t of 0.50:0.05:0.95, area "all", maxDets 20); for joint j a
  prediction matched to a person who labels j is a TP when the joint's own similarity
  ``exp(-d^2 / (2 s^2 k_j^2))`` (pycocotools' OKS term, s^2 = area) is >= t and a FP
  otherwise, one matched to a person not labeling j is ignored, an unmatched one is a FP;
  positives are the non-ignored persons labeling j. AP is interpolated exactly as
  ``COCOeval.accumulate`` does and averaged over t. (Masking the ground truth down to one
  joint instead would turn predictions of persons lacking that joint into false positives.)
* ``keypoint_precision / keypoint_recall / keypoint_f1``: persons are matched exactly as
  COCOeval matches them at OKS >= ``oks_threshold`` (area "all", maxDets 20, crowd/ignored
  ground truth handled by pycocotools). A predicted keypoint is present when its third
  value is > 0. TP: a present predicted keypoint of a matched person whose ground-truth
  joint is labeled (v > 0) and whose own similarity ``exp(-d^2 / (2 s^2 k_j^2))`` is
  >= ``oks_threshold``. FP: the other present keypoints at labeled joints of matched
  persons, and every present keypoint of unmatched (not ignored) predictions. Keypoints
  at joints the matched ground truth does not label cannot be judged and are left out.
  Recall = TP / labeled joints of the non-ignored ground-truth persons.
* ``grouping_accuracy``: among ground-truth persons matched at OKS >= 0.5, the share whose
  prediction's keypoints all come from that one person: every present predicted keypoint
  at a joint labeled in the matched person is at least as close (px) to that person's
  same joint as to the same joint of any other ground-truth person in the image. -1 when
  no person is matched.
* ``num_images, num_gt_persons`` (non-ignored), ``num_results``, ``oks_threshold``.

:func:`evaluate_keypoints` (what ``pose evaluate`` writes to eval.json) adds:

* ``AP_by_area / AR_by_area / num_gt_by_area``: ``{range: value}`` for person scales by
  ground-truth ``area`` (px^2): ``medium`` (32^2..96^2, = APM/ARM) and ``large``
  (96^2..1e5^2, = APL/ARL) as COCOeval defines them, plus the bins between the
  ``area_bins`` boundaries of sqrt(area) in px (``"0-32"``, ``"32-64"``, ..., ``"192+"``).
  COCOeval's rules per range: ground truth outside it is ignored, unmatched predictions
  outside it are ignored; bounds are inclusive on both ends. AP -1 where a range has no
  ground truth.
* the dataset format's native metric when the caller passes one (``native``; the evaluate
  stage takes it from the dataset's format, `pose.datasets.catalogue.evaluation`): for
  CrowdPose ``AP_easy, AP_medium, AP_hard, num_easy, num_medium, num_hard`` and
  ``crowdpose_AP, crowdpose_AP50, crowdpose_AP75, crowdpose_AR, crowdpose_AR50,
  crowdpose_AR75``, ``crowdpose_joints`` (:func:`crowdpose_metrics`); for other formats
  ``<kind>_AP`` ... ``<kind>_joints`` (:func:`native_oks_metrics`). The COCO keys above stay
  COCO's (so APM / APL, which CrowdPose lacks, remain comparable).

Empty results give AP = AR = 0 (not a crash). Results naming an image that is not in the
ground truth raise ValueError.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from pose.datasets.schema import COCO_SIGMAS, KEYPOINT_NAMES

log = logging.getLogger(__name__)

#: The ten COCO keypoint summary numbers, in ``COCOeval.stats`` order.
METRIC_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL")

_MAX_DETS = 20

#: pycocotools' upper area bound ("infinity") of its area ranges.
_AREA_MAX = 1e5 ** 2

#: COCOeval's keypoint area ranges: (label, low, high) in px^2.
COCO_AREA_RANGES: tuple[tuple[str, float, float], ...] = (("medium", 32.0 ** 2, 96.0 ** 2),
                                                          ("large", 96.0 ** 2, _AREA_MAX))


@contextlib.contextmanager
def _quiet():
    """Capture pycocotools' prints; the captured text is logged at DEBUG level."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        yield buf
    text = buf.getvalue().strip()
    if text:
        log.debug("pycocotools:\n%s", text)


def _coco_from_dict(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with _quiet():
        coco.createIndex()
    return coco


def load_ground_truth(gt_json: Path | str | COCO | dict) -> COCO:
    """A pycocotools COCO object from a JSON path, a dataset dict or an existing COCO.

    Raises FileNotFoundError for a missing file, ValueError for a file without
    ``images`` / ``annotations``."""
    if isinstance(gt_json, COCO):
        return gt_json
    if isinstance(gt_json, dict):
        data = gt_json
    else:
        path = Path(gt_json)
        if not path.exists():
            raise FileNotFoundError(f"{path}: ground-truth file not found")
        data = json.loads(path.read_text())
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise ValueError("ground truth must be a COCO dict with `images` and `annotations`")
    data = dict(data)
    data.setdefault("categories", [{"id": 1, "name": "person", "supercategory": "person"}])
    return _coco_from_dict(data)


def result_num_joints(coco_gt: COCO, sigmas: np.ndarray) -> int:
    """The number of joints K results must carry: ``len(sigmas)``, after checking that every
    ground-truth annotation has 3K keypoint values.

    Raises ValueError naming the first annotation whose keypoint count does not match."""
    k = len(sigmas)
    for ann in coco_gt.dataset["annotations"]:
        if len(ann.get("keypoints", [])) != 3 * k:
            raise ValueError(f"annotation {ann.get('id')} has {len(ann.get('keypoints', []))} keypoint values; "
                             f"{len(sigmas)} sigmas need {3 * k}")
    return k


def load_results(coco_gt: COCO, results: Sequence[dict] | Path | str, num_joints: int) -> COCO:
    """Results (a list of COCO keypoint entries or a JSON file of one) as a COCO object
    paired with ``coco_gt``. The caller's dicts are not modified.

    Raises ValueError on a malformed entry or an image id absent from the ground truth."""
    if isinstance(results, (str, Path)):
        results = json.loads(Path(results).read_text())
    results = list(results)
    img_ids = set(coco_gt.getImgIds())
    for r in results:
        for key in ("image_id", "category_id", "keypoints", "score"):
            if key not in r:
                raise ValueError(f"result entry lacks `{key}`: {str(r)[:120]}")
        if len(r["keypoints"]) != 3 * num_joints:
            raise ValueError(f"result for image {r['image_id']} has {len(r['keypoints'])} keypoint values, "
                             f"expected {3 * num_joints}")
        if r["image_id"] not in img_ids:
            raise ValueError(f"result names image {r['image_id']}, which is not in the ground truth")
    if not results:
        empty = {"images": coco_gt.dataset["images"], "categories": copy.deepcopy(coco_gt.dataset["categories"]),
                 "annotations": []}
        return _coco_from_dict(empty)
    with _quiet():
        return coco_gt.loadRes([dict(r) for r in results])


def run_cocoeval(coco_gt: COCO, coco_dt: COCO, sigmas: np.ndarray, img_ids: Sequence[int] | None = None,
                 summarize: bool = True, iou_thrs: Sequence[float] | None = None) -> COCOeval:
    """pycocotools' keypoint COCOeval with these (K,) OKS ``sigmas``, quietly: evaluate, accumulate
    and (``summarize``) summarize, so ``ev.stats`` holds the 10 numbers of :data:`METRIC_NAMES`.

    ``img_ids`` restricts the images; ``iou_thrs`` replaces the OKS thresholds (and keeps only the
    "all" area range), as the match diagnostics use it."""
    ev = COCOeval(coco_gt, coco_dt, iouType="keypoints")
    ev.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
    if img_ids is not None:
        ev.params.imgIds = list(img_ids)
    if iou_thrs is not None:
        ev.params.iouThrs = np.asarray(iou_thrs, dtype=np.float64)
        ev.params.areaRng = [ev.params.areaRng[0]]
        ev.params.areaRngLbl = [ev.params.areaRngLbl[0]]
    with _quiet():
        ev.evaluate()
        if summarize:
            ev.accumulate()
            ev.summarize()
    return ev


def _keypoint_array(anns: Sequence[dict], num_joints: int) -> np.ndarray:
    if not anns:
        return np.zeros((0, num_joints, 3))
    return np.asarray([a["keypoints"] for a in anns], dtype=np.float64).reshape(len(anns), num_joints, 3)


def _keypoint_similarity(pred: np.ndarray, gt: np.ndarray, area: float, sigmas: np.ndarray) -> np.ndarray:
    """Per-joint OKS term ``exp(-d^2 / (2 (area + eps) (2 sigma)^2))`` as pycocotools computes it."""
    d2 = ((pred[:, :2] - gt[:, :2]) ** 2).sum(axis=1)
    var = (2 * sigmas) ** 2
    return np.exp(-d2 / var / (area + np.spacing(1)) / 2)


def _entries(ev: COCOeval) -> list[dict]:
    """COCOeval's per-image records of area range "all" at the largest maxDets."""
    rng = ev.params.areaRng[0]
    return [e for e in ev.evalImgs
            if e is not None and list(e["aRng"]) == list(rng) and e["maxDet"] == ev.params.maxDets[-1]]


def _interpolated_ap(scores: np.ndarray, tp: np.ndarray, fp: np.ndarray, npig: int, rec_thrs: np.ndarray) -> float:
    """COCO's 101-point interpolated AP of one threshold (same steps as COCOeval.accumulate)."""
    if npig == 0:
        return -1.0
    order = np.argsort(-scores, kind="mergesort")
    tp_sum = np.cumsum(tp[order]).astype(np.float64)
    fp_sum = np.cumsum(fp[order]).astype(np.float64)
    if tp_sum.size == 0:
        return 0.0
    rc = tp_sum / npig
    pr = tp_sum / (fp_sum + tp_sum + np.spacing(1))
    pr = np.maximum.accumulate(pr[::-1])[::-1]  # precision envelope
    inds = np.searchsorted(rc, rec_thrs, side="left")
    q = np.where(inds < pr.size, pr[np.minimum(inds, pr.size - 1)], 0.0)
    return float(q.mean())


def _per_keypoint_ap(ev: COCOeval, coco_gt: COCO, coco_dt: COCO, sigmas: np.ndarray,
                     names: Sequence[str]) -> dict[str, float]:
    """Per-joint AP from COCOeval's own person matching at every OKS threshold t: a
    prediction matched to a person labeling joint j is a TP when that joint's similarity is
    >= t, else a FP; one matched to a person not labeling j is ignored; an unmatched one is
    a FP; positives are the non-ignored persons labeling j. AP as COCO interpolates it,
    averaged over t."""
    k = len(sigmas)
    thrs = ev.params.iouThrs
    rows = []  # (score, matched gt id per t (T,), ignore per t (T,), pred (K, 3))
    pos = np.zeros(k, dtype=np.int64)
    for e in _entries(ev):
        gts = coco_gt.loadAnns(e["gtIds"])
        for g, ig in zip(gts, e["gtIgnore"]):
            if not ig:
                pos += np.asarray(g["keypoints"], np.float64).reshape(k, 3)[:, 2] > 0
        for d_i, dt in enumerate(coco_dt.loadAnns(e["dtIds"])):
            rows.append((float(dt["score"]), e["dtMatches"][:, d_i].astype(np.int64),
                         e["dtIgnore"][:, d_i].astype(bool), np.asarray(dt["keypoints"], np.float64).reshape(k, 3)))
    out = {}
    scores = np.asarray([r[0] for r in rows], dtype=np.float64)
    for j, name in enumerate(names):
        aps = []
        for t, thr in enumerate(thrs):
            tp = np.zeros(len(rows), dtype=bool)
            fp = np.zeros(len(rows), dtype=bool)
            for i, (_, match, ignore, pred) in enumerate(rows):
                if ignore[t]:
                    continue
                g_id = int(match[t])
                if g_id == 0:
                    fp[i] = True
                    continue
                g = np.asarray(coco_gt.anns[g_id]["keypoints"], np.float64).reshape(k, 3)
                if g[j, 2] <= 0:
                    continue
                ks = _keypoint_similarity(pred[j:j + 1], g[j:j + 1], coco_gt.anns[g_id]["area"], sigmas[j:j + 1])
                tp[i] = ks[0] >= thr
                fp[i] = not tp[i]
            aps.append(_interpolated_ap(scores, tp, fp, int(pos[j]), ev.params.recThrs))
        valid = [a for a in aps if a > -1]
        out[name] = float(np.mean(valid)) if valid else -1.0
    return out


def _match_diagnostics(ev: COCOeval, coco_gt: COCO, coco_dt: COCO, sigmas: np.ndarray,
                       oks_threshold: float) -> dict:
    """Keypoint precision / recall / F1 at ``oks_threshold`` and grouping accuracy at 0.5,
    from COCOeval's own person matching (area "all", maxDets 20). Uses ``ev`` when it
    evaluated both thresholds, else one more matching run."""
    def index(run: COCOeval, thr: float) -> int | None:
        hit = np.flatnonzero(np.isclose(run.params.iouThrs, thr, rtol=0, atol=1e-9))
        return int(hit[0]) if hit.size else None

    if index(ev, oks_threshold) is None or index(ev, 0.5) is None:
        ev = run_cocoeval(coco_gt, coco_dt, sigmas, summarize=False, iou_thrs=sorted({0.5, oks_threshold}))
    t_kp, t_grp = index(ev, oks_threshold), index(ev, 0.5)
    k = len(sigmas)
    tp = fp = n_gt = 0
    matched = correct = 0
    for e in _entries(ev):
        gts = coco_gt.loadAnns(e["gtIds"])
        gt_kps = _keypoint_array(gts, k)
        n_gt += int(sum((gt_kps[i, :, 2] > 0).sum() for i, ig in enumerate(e["gtIgnore"]) if not ig))
        gt_index = {g["id"]: i for i, g in enumerate(gts)}
        for d_i, dt in enumerate(coco_dt.loadAnns(e["dtIds"])):
            pred = np.asarray(dt["keypoints"], np.float64).reshape(k, 3)
            present = pred[:, 2] > 0
            if not e["dtIgnore"][t_kp, d_i]:
                g_id = int(e["dtMatches"][t_kp, d_i])
                if g_id == 0:
                    fp += int(present.sum())
                else:
                    g = gt_kps[gt_index[g_id]]
                    judged = present & (g[:, 2] > 0)
                    sim = _keypoint_similarity(pred, g, coco_gt.anns[g_id]["area"], sigmas)
                    ok = judged & (sim >= oks_threshold)
                    tp += int(ok.sum())
                    fp += int(judged.sum() - ok.sum())
            g_id = int(e["dtMatches"][t_grp, d_i])
            if not e["dtIgnore"][t_grp, d_i] and g_id != 0:
                matched += 1
                correct += int(_grouped_correctly(pred, gt_kps, gt_index[g_id]))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / n_gt if n_gt else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"keypoint_precision": float(precision), "keypoint_recall": float(recall), "keypoint_f1": float(f1),
            "grouping_accuracy": float(correct / matched) if matched else -1.0}


def _grouped_correctly(pred: np.ndarray, gt_kps: np.ndarray, gi: int) -> bool:
    """Every present predicted joint labeled in person ``gi`` is at least as close to it as
    to any other labeled person's same joint."""
    judged = (pred[:, 2] > 0) & (gt_kps[gi, :, 2] > 0)
    if not judged.any():
        return True
    d = np.sqrt(((gt_kps[:, :, :2] - pred[None, :, :2]) ** 2).sum(axis=2))  # (G, K)
    d = np.where(gt_kps[:, :, 2] > 0, d, np.inf)
    return bool(np.all(d[gi, judged] <= d[:, judged].min(axis=0)))


def evaluate_results(gt_json: Path | str | COCO | dict, results: Sequence[dict] | Path | str,
                     sigmas: np.ndarray = COCO_SIGMAS, oks_threshold: float = 0.5, *,
                     per_keypoint: bool = True, keypoint_names: Sequence[str] | None = None) -> dict:
    """Score COCO keypoint results against ground truth (module docstring lists the keys).

    Args:
        gt_json: ground-truth COCO keypoints JSON (path, dict or COCO object).
        results: list of ``{"image_id", "category_id", "keypoints": 3K floats (image px),
            "score"}`` or a path to a JSON file of one.
        sigmas: (K,) OKS sigmas (COCO: ``pose.datasets.schema.COCO_SIGMAS``).
        oks_threshold: threshold of the keypoint precision/recall/F1 (params
            ``evaluate.oks_threshold``).
        per_keypoint: compute ``per_keypoint_AP``.
        keypoint_names: names of the per-keypoint entries (default COCO names for 17
            joints, else ``kp0, kp1, ...``).

    Returns a dict of floats (and ``per_keypoint_AP``: {name: float}).

    Raises FileNotFoundError / ValueError on missing or malformed ground truth or results.
    """
    sigmas = np.asarray(sigmas, dtype=np.float64)
    if not 0.0 < float(oks_threshold) <= 1.0:
        raise ValueError(f"oks_threshold must be in (0, 1], got {oks_threshold}")
    coco_gt = load_ground_truth(gt_json)
    k = result_num_joints(coco_gt, sigmas)
    coco_dt = load_results(coco_gt, results, k)
    ev = run_cocoeval(coco_gt, coco_dt, sigmas)
    metrics: dict = {name: float(v) for name, v in zip(METRIC_NAMES, ev.stats)}
    if keypoint_names is None:
        keypoint_names = KEYPOINT_NAMES if k == len(KEYPOINT_NAMES) else [f"kp{i}" for i in range(k)]
    if len(keypoint_names) != k:
        raise ValueError(f"{len(keypoint_names)} keypoint names for {k} joints")
    if per_keypoint:
        metrics["per_keypoint_AP"] = _per_keypoint_ap(ev, coco_gt, coco_dt, sigmas, keypoint_names)
    metrics.update(_match_diagnostics(ev, coco_gt, coco_dt, sigmas, float(oks_threshold)))
    anns = coco_gt.dataset["annotations"]
    metrics["num_images"] = len(coco_gt.getImgIds())
    metrics["num_gt_persons"] = sum(1 for a in anns if not a.get("iscrowd", 0) and a.get("num_keypoints", 0) > 0)
    metrics["num_results"] = len(coco_dt.dataset["annotations"])
    metrics["oks_threshold"] = float(oks_threshold)
    return metrics


def evaluate_crowdpose(gt_json: Path | str | COCO | dict, results: Sequence[dict] | Path | str,
                       sigmas: np.ndarray, splits: tuple[float, float]) -> dict:
    """CrowdPose metrics with pycocotools, following the official crowdposetools:
    OKS area = ground-truth bbox ``w * h * 0.53`` (replaces ``area``), no area ranges, and
    AP on the easy / medium / hard images by the per-image ``crowdIndex`` of the ground
    truth (easy < splits[0] <= medium < splits[1] <= hard; CrowdPose's bounds:
    `pose.datasets.formats.crowdpose.CROWDPOSE_SPLITS`). ``sigmas``: (K,) OKS sigmas of the
    K joints of ``gt_json`` and ``results``.

    Returns ``{AP, AP50, AP75, AR, AR50, AR75, AP_easy, AP_medium, AP_hard, num_easy,
    num_medium, num_hard}`` (AP of an empty split: -1).

    Raises ValueError when an image lacks ``crowdIndex`` (not CrowdPose ground truth) or
    on malformed input; FileNotFoundError for a missing file.
    """
    sigmas = np.asarray(sigmas, dtype=np.float64)
    base = load_ground_truth(gt_json).dataset
    missing = [im["id"] for im in base["images"] if "crowdIndex" not in im]
    if missing:
        raise ValueError(f"{len(missing)} image(s) lack `crowdIndex` (e.g. id {missing[0]}): "
                         "not CrowdPose ground truth")
    anns = []
    for a in base["annotations"]:
        b = dict(a)
        b["area"] = float(a["bbox"][2] * a["bbox"][3] * 0.53)
        b.setdefault("iscrowd", 0)
        if "num_keypoints" not in b:
            b["num_keypoints"] = int((np.asarray(a["keypoints"]).reshape(-1, 3)[:, 2] > 0).sum())
        anns.append(b)
    coco_gt = _coco_from_dict({**base, "annotations": anns})
    k = result_num_joints(coco_gt, sigmas)
    coco_dt = load_results(coco_gt, results, k)
    ev = run_cocoeval(coco_gt, coco_dt, sigmas)
    out = {name: float(ev.stats[i]) for i, name in enumerate(METRIC_NAMES) if name in
           ("AP", "AP50", "AP75", "AR", "AR50", "AR75")}
    lo, hi = splits
    groups = {"easy": [], "medium": [], "hard": []}
    for im in base["images"]:
        ci = float(im["crowdIndex"])
        groups["easy" if ci < lo else "medium" if ci < hi else "hard"].append(im["id"])
    for name, ids in groups.items():
        out[f"num_{name}"] = len(ids)
        out[f"AP_{name}"] = float(run_cocoeval(coco_gt, coco_dt, sigmas, img_ids=ids).stats[0]) if ids else -1.0
    return out


def area_ranges(bins: Sequence[float]) -> list[tuple[str, float, float]]:
    """Area ranges (label, low px^2, high px^2) between the ``bins`` boundaries of
    sqrt(area) in px: ``[32, 96]`` gives ``("0-32", 0, 1024), ("32-96", 1024, 9216),
    ("96+", 9216, 1e10)``. Raises ValueError on non-positive or repeated boundaries."""
    edges = sorted(float(b) for b in bins)
    if any(b <= 0 for b in edges) or len(set(edges)) != len(edges):
        raise ValueError(f"area bins must be distinct positive sqrt(area) px bounds, got {list(bins)}")
    edges = [0.0, *edges]
    out = [(f"{lo:g}-{hi:g}", lo ** 2, hi ** 2) for lo, hi in zip(edges[:-1], edges[1:])]
    out.append((f"{edges[-1]:g}+", edges[-1] ** 2, _AREA_MAX))
    return out


def _ap_by_area(coco_gt: COCO, coco_dt: COCO, sigmas: np.ndarray,
                ranges: Sequence[tuple[str, float, float]]) -> dict:
    """AP / AR (OKS 0.50:0.95, maxDets 20) and non-ignored ground-truth count per area range,
    from one COCOeval run with ``params.areaRng`` set to ``ranges`` (summarize's arithmetic)."""
    ev = COCOeval(coco_gt, coco_dt, iouType="keypoints")
    ev.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
    ev.params.areaRng = [[float(lo), float(hi)] for _, lo, hi in ranges]
    ev.params.areaRngLbl = [label for label, _, _ in ranges]
    with _quiet():
        ev.evaluate()
        ev.accumulate()
    prec = ev.eval["precision"]   # (T, R, K, A, M)
    rec = ev.eval["recall"]       # (T, K, A, M)
    persons = [a for a in coco_gt.dataset["annotations"]
               if not a.get("iscrowd", 0) and a.get("num_keypoints", 0) > 0]
    ap, ar, num = {}, {}, {}
    for i, (label, lo, hi) in enumerate(ranges):
        p, r = prec[:, :, :, i, -1], rec[:, :, i, -1]
        ap[label] = float(p[p > -1].mean()) if (p > -1).any() else -1.0
        ar[label] = float(r[r > -1].mean()) if (r > -1).any() else -1.0
        num[label] = sum(1 for a in persons if lo <= float(a["area"]) <= hi)
    return {"AP_by_area": ap, "AR_by_area": ar, "num_gt_by_area": num}


def ap_by_area(gt_json: Path | str | COCO | dict, results: Sequence[dict] | Path | str,
               sigmas: np.ndarray = COCO_SIGMAS, bins: Sequence[float] = (32, 64, 96, 128, 192)) -> dict:
    """AP / AR / ground-truth count per person scale (module docstring: ``medium``,
    ``large`` and the :func:`area_ranges` of ``bins``). Returns ``{"AP_by_area": {label:
    AP}, "AR_by_area": {...}, "num_gt_by_area": {label: int}}``."""
    sigmas = np.asarray(sigmas, dtype=np.float64)
    coco_gt = load_ground_truth(gt_json)
    coco_dt = load_results(coco_gt, results, result_num_joints(coco_gt, sigmas))
    return _ap_by_area(coco_gt, coco_dt, sigmas, [*COCO_AREA_RANGES, *area_ranges(bins)])


def _is_native(kps: Sequence[float], to_coco: Sequence[int | None]) -> bool:
    """Whether a flat keypoint list is in the native layout: K joints, K != 17 (a 17-joint
    native format is told apart by ``native_keypoints`` only: 17 joints are read as COCO-17)."""
    return len(to_coco) != len(KEYPOINT_NAMES) and len(kps) == 3 * len(to_coco)


def _to_native(kps: Sequence[float], to_coco: Sequence[int | None]) -> np.ndarray:
    """(K, 3) keypoints in a format's native joint order from K native (:func:`_is_native`) or 17
    COCO values (through ``to_coco``: native index -> COCO index or None; unmapped joints get zeros)."""
    a = np.asarray(kps, dtype=np.float64).reshape(-1, 3)
    k = len(to_coco)
    if _is_native(kps, to_coco):
        return a
    if len(a) != len(KEYPOINT_NAMES):
        raise ValueError(f"{len(a)} keypoints: neither COCO-17 nor the native {k}")
    out = np.zeros((k, 3))
    for i, c in enumerate(to_coco):
        if c is not None:
            out[i] = a[c]
    return out


def _native_layout(base: dict, results: Sequence[dict], to_coco: Sequence[int | None]) -> tuple[list, list, list]:
    """Ground truth and results in the native joint order, restricted to the joints both sides
    have: (annotations, results, evaluated native joint indices).

    Ground truth: converted COCO-17 annotations through their ``native_keypoints`` (when of
    length 3K), native K-keypoint annotations as they are, else their mapped COCO joints.
    Results: native as they are, COCO-17 through ``to_coco`` (a 17-joint format's results are
    read as COCO-17). Unless both sides have all K joints, the joints with a COCO counterpart
    are evaluated. ``num_keypoints`` is recounted."""
    k = len(to_coco)
    gt_native, native_gt = [], True
    for a in base["annotations"]:
        native = a.get("native_keypoints")
        if native is not None and len(native) == 3 * k:
            gt_native.append(np.asarray(native, dtype=np.float64).reshape(k, 3))
        else:
            native_gt = native_gt and _is_native(a["keypoints"], to_coco)
            gt_native.append(_to_native(a["keypoints"], to_coco))
    res_native = [_to_native(r["keypoints"], to_coco) for r in results]
    native_res = all(_is_native(r["keypoints"], to_coco) for r in results)
    joints = list(range(k)) if native_gt and native_res else [i for i, c in enumerate(to_coco) if c is not None]
    anns = []
    for a, kp in zip(base["annotations"], gt_native):
        kp = kp[joints]
        anns.append({**a, "keypoints": kp.reshape(-1).tolist(), "num_keypoints": int((kp[:, 2] > 0).sum())})
    res = [{**r, "keypoints": kp[joints].reshape(-1).tolist()} for r, kp in zip(results, res_native)]
    return anns, res, joints


def _native_inputs(gt_json, results, to_coco: Sequence[int | None], sigmas: np.ndarray):
    """Ground truth dataset dict, native-order annotations, results and joint indices of a native
    metric (:func:`_native_layout`). Raises ValueError when ``sigmas`` and ``to_coco`` differ in length."""
    if len(sigmas) != len(to_coco):
        raise ValueError(f"{len(sigmas)} native sigmas for {len(to_coco)} native joints")
    base = load_ground_truth(gt_json).dataset
    if isinstance(results, (str, Path)):
        results = json.loads(Path(results).read_text())
    anns, res, joints = _native_layout(base, list(results), to_coco)
    return base, anns, res, joints


def crowdpose_metrics(gt_json: Path | str | COCO | dict, results: Sequence[dict] | Path | str, *,
                      to_coco: Sequence[int | None], sigmas: np.ndarray, splits: tuple[float, float]) -> dict:
    """CrowdPose evaluation (:func:`evaluate_crowdpose`: area = 0.53 x box, easy / medium /
    hard by ``crowdIndex`` with ``splits``) of COCO-17 or CrowdPose-14 results against
    CrowdPose ground truth in either layout, in CrowdPose's joint order (:func:`_native_layout`
    with ``to_coco``, `pose.datasets.formats.crowdpose.TO_COCO`). A COCO-17 model predicts
    no ``head`` (top of head) or ``neck``, so unless both sides have all 14 joints the
    evaluation runs on the 12 shared body joints (shoulders .. ankles) with their entries
    of ``sigmas`` ((14,), the catalogue's ``native_sigmas``).

    Returns ``{crowdpose_AP, crowdpose_AP50, crowdpose_AP75, crowdpose_AR, crowdpose_AR50,
    crowdpose_AR75, AP_easy, AP_medium, AP_hard, num_easy, num_medium, num_hard,
    crowdpose_joints}``. Raises ValueError as :func:`evaluate_crowdpose`, or when ``sigmas``
    and ``to_coco`` differ in length.
    """
    sigmas = np.asarray(sigmas, dtype=np.float64)
    base, anns, res, joints = _native_inputs(gt_json, results, to_coco, sigmas)
    m = evaluate_crowdpose({**base, "annotations": anns}, res, sigmas=sigmas[joints], splits=splits)
    out = {(k if k.startswith(("AP_", "num_")) else f"crowdpose_{k}"): v for k, v in m.items()}
    out["crowdpose_joints"] = len(joints)
    return out


def native_oks_metrics(gt_json: Path | str | COCO | dict, results: Sequence[dict] | Path | str, *,
                       to_coco: Sequence[int | None], sigmas: np.ndarray, prefix: str) -> dict:
    """COCO-style OKS AP / AR (pycocotools, the ground truth's ``area``, maxDets 20) in a
    format's native joint order with its native ``sigmas`` ((K,)), both sides brought into that
    order as :func:`crowdpose_metrics` does (all K joints when both sides have them, else the
    joints with a COCO counterpart). This is how mmpose scores AIC and MPII with OKS.

    Returns ``{<prefix>_AP, <prefix>_AP50, ..., <prefix>_ARL}`` (:data:`METRIC_NAMES`) and
    ``<prefix>_joints``. Raises ValueError on mismatched lengths or malformed input."""
    sigmas = np.asarray(sigmas, dtype=np.float64)
    base, anns, res, joints = _native_inputs(gt_json, results, to_coco, sigmas)
    coco_gt = _coco_from_dict({**base, "annotations": anns})
    coco_dt = load_results(coco_gt, res, len(joints))
    ev = run_cocoeval(coco_gt, coco_dt, sigmas[joints])
    out = {f"{prefix}_{name}": float(ev.stats[i]) for i, name in enumerate(METRIC_NAMES)}
    out[f"{prefix}_joints"] = len(joints)
    return out


def evaluate_keypoints(gt_json: Path | str | COCO | dict, results: Sequence[dict] | Path | str,
                       sigmas: np.ndarray, oks_threshold: float, *, area_bins: Sequence[float] | None,
                       native: Callable[[dict, list], dict] | None) -> dict:
    """Everything eval.json holds: :func:`evaluate_results` with ``sigmas`` ((17,), the
    dataset's catalogue ``sigmas``), the per-scale AP of :func:`ap_by_area` (when
    ``area_bins`` is given) and the dataset format's native metric.

    Args:
        area_bins: sqrt(area) px boundaries of the per-scale bins (params
            ``evaluate.area_bins``); None: no ``*_by_area`` keys.
        native: ``native(gt dataset dict, results) -> {metric: value}`` (the dataset's format
            with its native sigmas: `pose.datasets.catalogue.evaluation`), or None.

    Raises ValueError as :func:`evaluate_results` or the native metric (e.g. CrowdPose
    ground truth without ``crowdIndex``).
    """
    sigmas = np.asarray(sigmas, dtype=np.float64)
    coco_gt = load_ground_truth(gt_json)
    if isinstance(results, (str, Path)):
        results = json.loads(Path(results).read_text())
    results = list(results)
    metrics = evaluate_results(coco_gt, results, sigmas=sigmas, oks_threshold=oks_threshold)
    if area_bins is not None:
        coco_dt = load_results(coco_gt, results, result_num_joints(coco_gt, sigmas))
        metrics.update(_ap_by_area(coco_gt, coco_dt, sigmas, [*COCO_AREA_RANGES, *area_ranges(area_bins)]))
    if native is not None:
        metrics.update(native(coco_gt.dataset, results))
    return metrics


def write_metrics(metrics: dict, path: Path | str) -> Path:
    """Write ``metrics`` as JSON (sorted keys, indented) atomically: a temporary file in the
    same folder, then ``os.replace``. Creates parent folders. Returns the path.

    Raises TypeError for values JSON cannot encode (NaN/inf are written as JSON null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_finite(metrics), indent=2, sort_keys=True, allow_nan=False) + "\n"
    from pose.io import atomic_write_text

    return atomic_write_text(path, text)


def _finite(obj):
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if np.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
