"""COCO / CrowdPose keypoint evaluation, metrics files and evaluation plots."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from pose.datasets.formats import crowdpose as cp_format
from pose.datasets.schema import COCO_SIGMAS, KEYPOINT_NAMES, NUM_JOINTS
from pose.draw import draw_persons, overlay, overlay_grid
from pose.evaluate.coco import (
    METRIC_NAMES,
    _entries,
    _interpolated_ap,
    ap_by_area,
    area_ranges,
    crowdpose_metrics,
    evaluate_crowdpose,
    evaluate_keypoints,
    evaluate_results,
    load_ground_truth,
    load_results,
    run_cocoeval,
    write_metrics,
)
from pose.evaluate.plots import (
    ap_per_keypoint_plot,
    select_sample_images,
    write_eval_plots,
)

SHARED = Path(os.environ.get("POSE_SHARED_DATASETS",
                           Path(__file__).resolve().parents[1].parent / "shared" / "datasets"))
CROWDPOSE_FIXTURE = SHARED / "fixtures" / "crowdpose"
K = NUM_JOINTS
CROWDPOSE_SIGMAS = cp_format.SIGMAS
CROWDPOSE_SPLITS = cp_format.CROWDPOSE_SPLITS


@pytest.fixture(scope="module")
def val_json(coco_like) -> Path:
    """The val annotations of coco-mini when present, else of the generated set: these tests are
    about the metric code, not about real photos."""
    return coco_like / "annotations" / "person_keypoints_val2017.json"


def _num_persons(data: dict, lo: float = 0.0, hi: float = 1e10) -> int:
    """Labelled non-crowd persons with ``lo <= area <= hi`` (px^2; COCOeval's inclusive bounds)."""
    return sum(1 for a in data["annotations"] if a["num_keypoints"] > 0 and not a["iscrowd"]
               and lo <= a["area"] <= hi)


def _has_range(data: dict) -> dict[str, bool]:
    """METRIC_NAMES -> whether the ground truth has a person in that metric's area range (else
    pycocotools reports -1): APM / ARM medium (32^2..96^2), APL / ARL large, the others all."""
    medium, large = _num_persons(data, 32 ** 2, 96 ** 2) > 0, _num_persons(data, 96 ** 2) > 0
    return {n: medium if n in ("APM", "ARM") else large if n in ("APL", "ARL") else True for n in METRIC_NAMES}


def _crowdpose_native(gt: dict, results: list) -> dict:
    """The CrowdPose format's native metric with its own sigmas (what `pose evaluate` runs for it)."""
    return cp_format.native_metrics(gt, results, CROWDPOSE_SIGMAS)


def _evaluate(gt, results, *, area_bins=None, native=None, sigmas=COCO_SIGMAS) -> dict:
    return evaluate_keypoints(gt, results, sigmas=sigmas, oks_threshold=0.5, area_bins=area_bins, native=native)


def _gt_results(data: dict) -> list[dict]:
    return [{"image_id": a["image_id"], "category_id": 1, "keypoints": list(a["keypoints"]), "score": 1.0}
            for a in data["annotations"] if a["num_keypoints"] > 0 and not a["iscrowd"]]


def _perturbed(data: dict, seed: int = 0) -> list[dict]:
    """Ground truth as results with keypoints moved by N(0, (0.05 * person scale)^2) px (scale =
    sqrt(area)), random scores, and a false positive next to ~30% of the persons."""
    rng = np.random.default_rng(seed)
    area = {(a["image_id"], tuple(a["keypoints"])): a["area"] for a in data["annotations"]}
    out = []
    for r in _gt_results(data):
        kp = np.asarray(r["keypoints"], np.float64).reshape(K, 3)
        kp[:, :2] += rng.normal(0, 0.05 * np.sqrt(area[r["image_id"], tuple(r["keypoints"])]), (K, 2))
        kp[:, 2] = rng.uniform(0.1, 1, K)
        out.append({**r, "keypoints": kp.reshape(-1).tolist(), "score": float(rng.uniform(0.05, 1))})
        if rng.uniform() < 0.3:   # a false positive next to it
            fp = kp.copy()
            fp[:, :2] += rng.normal(0, 40, (1, 2))
            out.append({**r, "keypoints": fp.reshape(-1).tolist(), "score": float(rng.uniform(0, 0.5))})
    return out


def test_ground_truth_as_results_scores_one(capsys, val_json):
    data = json.loads(val_json.read_text())
    metrics = evaluate_results(val_json, _gt_results(data), sigmas=COCO_SIGMAS, oks_threshold=0.5)
    assert set(METRIC_NAMES) <= set(metrics)
    for name, present in _has_range(data).items():
        assert metrics[name] == (1.0 if present else -1.0), name
    assert set(metrics["per_keypoint_AP"]) == set(KEYPOINT_NAMES)
    assert all(v == 1.0 for v in metrics["per_keypoint_AP"].values())
    for name in ("keypoint_precision", "keypoint_recall", "keypoint_f1", "grouping_accuracy"):
        assert metrics[name] == 1.0, name
    data_images = len(data["images"])
    assert metrics["num_gt_persons"] == _num_persons(data) > 0 and metrics["num_images"] == data_images
    assert capsys.readouterr().out == ""          # pycocotools' prints are captured


def test_perturbed_results_equal_direct_pycocotools(val_json):
    data = json.loads(val_json.read_text())
    results = _perturbed(data)
    metrics = evaluate_results(val_json, results, per_keypoint=False)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(val_json))
        dt = gt.loadRes(json.loads(json.dumps(results)))
        ev = COCOeval(gt, dt, iouType="keypoints")
        ev.params.kpt_oks_sigmas = COCO_SIGMAS
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    for i, name in enumerate(METRIC_NAMES):
        assert abs(metrics[name] - ev.stats[i]) <= 1e-9, name
    assert 0.2 < metrics["AP"] < 0.95
    assert 0 < metrics["keypoint_precision"] < 1 and 0 < metrics["keypoint_recall"] < 1


def test_per_keypoint_accumulation_reproduces_cocoeval_ap(val_json):
    """The interpolation used for per-keypoint AP, fed COCOeval's own person matches,
    gives COCOeval's AP."""
    data = json.loads(val_json.read_text())
    gt = load_ground_truth(val_json)
    dt = load_results(gt, _perturbed(data, seed=1), K)
    ev = run_cocoeval(gt, dt, COCO_SIGMAS)
    entries = _entries(ev)
    scores = np.concatenate([np.asarray(e["dtScores"], np.float64) for e in entries])
    npig = int(sum(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0) for e in entries))
    aps = []
    for t in range(len(ev.params.iouThrs)):
        dtm = np.concatenate([e["dtMatches"][t] for e in entries])
        dtig = np.concatenate([e["dtIgnore"][t] for e in entries]).astype(bool)
        aps.append(_interpolated_ap(scores, (dtm > 0) & ~dtig, (dtm == 0) & ~dtig, npig, ev.params.recThrs))
    assert abs(np.mean(aps) - ev.stats[0]) < 1e-12


def test_empty_and_invalid_results(tmp_path, val_json):
    metrics = evaluate_results(val_json, [])
    data = json.loads(val_json.read_text())
    assert all(metrics[name] == (0.0 if present else -1.0) for name, present in _has_range(data).items())
    assert metrics["grouping_accuracy"] == -1.0 and metrics["num_results"] == 0
    path = tmp_path / "results.json"
    path.write_text("[]")
    assert evaluate_results(val_json, path)["AP"] == 0.0
    bad_image = [{"image_id": 123456789, "category_id": 1, "keypoints": [0.0] * 3 * K, "score": 1.0}]
    with pytest.raises(ValueError, match="not in the ground truth"):
        evaluate_results(val_json, bad_image)
    short = [{**_gt_results(data)[0], "keypoints": [0.0] * 6}]
    with pytest.raises(ValueError, match="keypoint values"):
        evaluate_results(val_json, short)
    with pytest.raises(FileNotFoundError):
        evaluate_results(tmp_path / "missing.json", [])


def _person(x0: float, y0: float, labeled=None) -> list[float]:
    kp = []
    for k in range(K):
        v = 2 if labeled is None or k in labeled else 0
        kp += [x0 + 3.0 * (k % 4) * 5, y0 + 10.0 * k, v] if v else [0.0, 0.0, 0]
    return kp


def _synthetic_gt() -> dict:
    persons = [(1, _person(50, 20)), (1, _person(300, 20)), (2, _person(100, 40, labeled=set(range(10))))]
    anns = []
    for i, (img, kp) in enumerate(persons, start=1):
        a = np.asarray(kp).reshape(K, 3)
        vis = a[:, 2] > 0
        x0, y0 = a[vis, 0].min(), a[vis, 1].min()
        w, h = a[vis, 0].max() - x0, a[vis, 1].max() - y0
        anns.append({"id": i, "image_id": img, "category_id": 1, "keypoints": kp, "num_keypoints": int(vis.sum()),
                     "bbox": [x0, y0, w, h], "area": float(w * h), "iscrowd": 0})
    return {"images": [{"id": 1, "width": 640, "height": 480}, {"id": 2, "width": 640, "height": 480},
                       {"id": 3, "width": 640, "height": 480}],
            "annotations": anns, "categories": [{"id": 1, "name": "person"}]}


def test_keypoint_precision_recall_and_grouping_accuracy_definitions():
    gt = _synthetic_gt()
    a, b, c = (np.asarray(x["keypoints"], np.float64).reshape(K, 3) for x in gt["annotations"])
    wrist = KEYPOINT_NAMES.index("left_wrist")
    a_pred = a.copy()
    a_pred[wrist] = b[wrist]                   # A's left wrist grabbed from person B
    c_pred = c.copy()
    c_pred[10:, :2] = [100.0, 40.0]            # joints C does not label: predicted, not judged
    c_pred[:, 2] = 1
    stray = a.copy()
    stray[:, :2] += 1000.0                     # on an image without persons: all FP
    res = [{"image_id": 1, "category_id": 1, "keypoints": a_pred.reshape(-1).tolist(), "score": 0.9},
           {"image_id": 1, "category_id": 1, "keypoints": b.reshape(-1).tolist(), "score": 0.8},
           {"image_id": 2, "category_id": 1, "keypoints": c_pred.reshape(-1).tolist(), "score": 0.7},
           {"image_id": 3, "category_id": 1, "keypoints": stray.reshape(-1).tolist(), "score": 0.1}]
    m = evaluate_results(gt, res)
    tp, gt_kps = 16 + 17 + 10, 17 + 17 + 10
    fp = 1 + 17
    assert m["keypoint_precision"] == pytest.approx(tp / (tp + fp))
    assert m["keypoint_recall"] == pytest.approx(tp / gt_kps)
    p, r = tp / (tp + fp), tp / gt_kps
    assert m["keypoint_f1"] == pytest.approx(2 * p * r / (p + r))
    assert m["grouping_accuracy"] == pytest.approx(2 / 3)    # A is matched but mixes in B's wrist
    assert m["per_keypoint_AP"]["left_wrist"] < m["per_keypoint_AP"]["nose"]


def _crowdpose_gt(crowd_indices: list[float]) -> dict:
    rng = np.random.default_rng(7)
    images, anns = [], []
    for i, ci in enumerate(crowd_indices, start=1):
        images.append({"id": i, "width": 400, "height": 400, "crowdIndex": ci, "file_name": f"{i}.jpg"})
        kp = np.zeros((14, 3))
        kp[:, 0] = rng.uniform(100, 200, 14)
        kp[:, 1] = rng.uniform(100, 300, 14)
        kp[:, 2] = 1
        x0, y0 = kp[:, 0].min(), kp[:, 1].min()
        anns.append({"id": i, "image_id": i, "category_id": 1, "keypoints": kp.reshape(-1).tolist(),
                     "num_keypoints": 14, "iscrowd": 0,
                     "bbox": [x0, y0, kp[:, 0].max() - x0, kp[:, 1].max() - y0]})  # no `area`, as in CrowdPose
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "person"}]}


def test_crowdpose_easy_medium_hard():
    gt = _crowdpose_gt([0.05, 0.5, 0.95])
    res = []
    for a in gt["annotations"]:
        kp = np.asarray(a["keypoints"], np.float64).reshape(14, 3)
        if a["image_id"] == 3:
            kp[:, :2] += 12.0                  # the hard image is predicted badly
        res.append({"image_id": a["image_id"], "category_id": 1, "keypoints": kp.reshape(-1).tolist(), "score": 1.0})
    m = evaluate_crowdpose(gt, res, sigmas=CROWDPOSE_SIGMAS, splits=CROWDPOSE_SPLITS)
    assert m["AP_easy"] == pytest.approx(1.0) and m["AP_medium"] == pytest.approx(1.0) and m["AP_hard"] < 0.9
    assert (m["num_easy"], m["num_medium"], m["num_hard"]) == (1, 1, 1)
    assert m["AP_hard"] < m["AP"] < 1.0
    del gt["images"][0]["crowdIndex"]
    with pytest.raises(ValueError, match="crowdIndex"):
        evaluate_crowdpose(gt, res, sigmas=CROWDPOSE_SIGMAS, splits=CROWDPOSE_SPLITS)


def test_write_metrics_is_atomic_sorted_json(tmp_path):
    path = tmp_path / "deep" / "metrics.json"
    write_metrics({"b": 1.0, "a": np.float64(0.5), "per_keypoint_AP": {"z": 1, "y": float("nan")}}, path)
    text = path.read_text()
    assert json.loads(text) == {"a": 0.5, "b": 1.0, "per_keypoint_AP": {"y": None, "z": 1}}
    assert text.index('"a"') < text.index('"b"') and text.index('"y"') < text.index('"z"')
    write_metrics({"AP": 0.25}, path)                  # replaces the file
    assert json.loads(path.read_text()) == {"AP": 0.25}
    assert sorted(p.name for p in path.parent.iterdir()) == ["metrics.json"]   # no temp files left


def test_plots(tmp_path):
    metrics = {"AP": 0.6, "per_keypoint_AP": {name: 0.5 + 0.02 * i for i, name in enumerate(KEYPOINT_NAMES)}}
    png = ap_per_keypoint_plot(metrics, tmp_path / "plots" / "ap.png")
    assert cv2.imread(str(png)) is not None
    image = np.full((120, 160, 3), 40, np.uint8)
    p1 = np.zeros((K, 3))
    p1[:, 0], p1[:, 1], p1[:, 2] = np.linspace(20, 60, K), np.linspace(10, 110, K), 1.0
    p2 = p1.copy()
    p2[:, 0] += 80
    p2[3, 2] = 0.0
    persons = [{"keypoints": p1, "score": 0.9}, {"keypoints": p2.reshape(-1).tolist(), "score": 0.5}]
    drawn = draw_persons(image, persons)
    assert drawn.shape == image.shape and (image == 40).all()                 # input untouched
    c1, c2 = drawn[10, 20].tolist(), drawn[10, 100].tolist()
    assert c1 != [40, 40, 40] and c2 != [40, 40, 40] and c1 != c2         # one colour per person
    out = overlay(image, persons, tmp_path / "overlay.png", min_score=0.0)
    assert cv2.imread(str(out)).shape == image.shape
    grid = overlay_grid([drawn, drawn[:, :80], drawn[..., 0]], tmp_path / "grid.png", cell=64)
    assert cv2.imread(str(grid)).shape == (128, 128, 3)
    with pytest.raises(ValueError):
        overlay_grid([], tmp_path / "empty.png")


# --------------------------------------------------------------------------- per-scale AP, CrowdPose schema
def test_ap_by_area_reproduces_apm_apl_and_bins_partition_persons(val_json):
    data = json.loads(val_json.read_text())
    results = _perturbed(data, seed=2)
    m = _evaluate(val_json, results, area_bins=[32, 64, 96, 128, 192])
    assert m["AP_by_area"]["medium"] == m["APM"] and m["AP_by_area"]["large"] == m["APL"]
    assert m["AR_by_area"]["medium"] == m["ARM"] and m["AR_by_area"]["large"] == m["ARL"]
    assert list(m["AP_by_area"]) == ["medium", "large", "0-32", "32-64", "64-96", "96-128", "128-192", "192+"]
    bins = {k: v for k, v in m["num_gt_by_area"].items() if k not in ("medium", "large")}
    assert sum(bins.values()) == m["num_gt_persons"] == _num_persons(data) > 0
    assert all((m["AP_by_area"][k] == -1.0) == (n == 0) for k, n in bins.items())
    coarse = ap_by_area(val_json, results, bins=[32, 96])       # bins on COCO's own bounds
    assert coarse["AP_by_area"]["32-96"] == m["APM"] and coarse["AP_by_area"]["96+"] == m["APL"]
    assert "AP_by_area" not in _evaluate(val_json, results)          # no bins: no keys
    assert area_ranges([64, 32])[0] == ("0-32", 0.0, 1024.0)
    with pytest.raises(ValueError):
        area_ranges([32, 32])


def _converted_crowdpose(tmp_path: Path) -> tuple[dict, dict]:
    from pose.datasets.convert import convert

    if not (CROWDPOSE_FIXTURE / "test_crowdpose.json").exists():
        pytest.skip(f"CrowdPose fixture not at {CROWDPOSE_FIXTURE}")
    convert("crowdpose", CROWDPOSE_FIXTURE / "test_crowdpose.json", CROWDPOSE_FIXTURE, tmp_path / "cp17.json")
    return (json.loads((tmp_path / "cp17.json").read_text()),
            json.loads((CROWDPOSE_FIXTURE / "test_crowdpose.json").read_text()))


def test_crowdpose_native_metric_on_the_real_fixture(tmp_path):
    TO_COCO = cp_format.TO_COCO
    gt17, native = _converted_crowdpose(tmp_path)
    body = [i for i, c in enumerate(TO_COCO) if c is not None]
    # CrowdPose's sigmas of the 12 body joints are COCO's: the 12-joint evaluation uses CrowdPose's sigmas
    np.testing.assert_allclose(CROWDPOSE_SIGMAS[body], COCO_SIGMAS[[TO_COCO[i] for i in body]])
    res17 = [{"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
             for a in gt17["annotations"] if a["num_keypoints"] > 0]
    m = _evaluate(gt17, res17, native=_crowdpose_native)                  # the format's native metric
    assert m["crowdpose_joints"] == 12 and m["crowdpose_AP"] == pytest.approx(1.0)
    assert {"AP_easy", "AP_medium", "AP_hard", "num_easy", "num_medium", "num_hard"} <= set(m)
    assert m["num_easy"] + m["num_medium"] + m["num_hard"] == len(gt17["images"])
    assert m["AP"] == pytest.approx(1.0) and "APM" in m                    # COCO keys stay COCO's
    assert "crowdpose_AP" not in _evaluate(gt17, res17)                  # no native metric: none of its keys
    # a CrowdPose-14 model against native 14-joint ground truth: all 14 joints, head/neck count
    res14 = [{"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
             for a in native["annotations"] if a["num_keypoints"] > 0]
    assert _crowdpose_native(native, res14)["crowdpose_joints"] == 14
    assert _crowdpose_native(gt17, res14)["crowdpose_AP"] == pytest.approx(1.0)   # via native_keypoints
    off = []
    for r in res14:
        kp = np.asarray(r["keypoints"], np.float64).reshape(14, 3)
        kp[12:, :2] += 40.0                                                  # head and neck wrong
        off.append({**r, "keypoints": kp.reshape(-1).tolist()})
    assert _crowdpose_native(native, off)["crowdpose_AP"] < 0.9
    body_only = [{**r, "keypoints": np.asarray(r["keypoints"]).reshape(17, 3).reshape(-1).tolist()} for r in res17]
    assert _crowdpose_native(native, body_only)["crowdpose_AP"] == pytest.approx(1.0)   # 12 joints
    with pytest.raises(ValueError, match="native sigmas"):
        crowdpose_metrics(native, res14, to_coco=TO_COCO, sigmas=COCO_SIGMAS, splits=CROWDPOSE_SPLITS)


def test_crowdpose_native_metric_needs_crowd_index(val_json):
    with pytest.raises(ValueError, match="crowdIndex"):
        _evaluate(val_json, [], native=_crowdpose_native)


def test_native_metric_scores_converted_ground_truth_in_native_order():
    """AIC / MPII: OKS AP in the format's own joint order with its native sigmas; the ground
    truth's native-only joints (head top, neck, ...) are left out for COCO-17 results."""
    from pose.datasets.formats import FORMATS
    from pose.datasets.formats.base import annotation

    rng = np.random.default_rng(5)
    for kind in ("aic", "mpii"):
        fmt = FORMATS[kind]
        k = len(fmt.keypoint_names)
        anns = []
        for i in range(1, 5):
            nat = np.c_[rng.uniform(40, 200, (k, 2)), np.full(k, 2.0)]
            x0, y0 = nat[:, :2].min(0)
            x1, y1 = nat[:, :2].max(0)
            anns.append(annotation(fmt, i, i, nat, [x0, y0, x1 - x0, y1 - y0]))
        gt = {"images": [{"id": i, "width": 320, "height": 320} for i in range(1, 5)], "annotations": anns}
        res = [{"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0} for a in anns]
        m = fmt.native_metrics(gt, res, fmt.sigmas)
        assert m[f"{kind}_AP"] == pytest.approx(1.0) and m[f"{kind}_joints"] == 12, kind
        moved = []
        for r in res:
            kp = np.asarray(r["keypoints"], np.float64).reshape(K, 3)
            kp[:, :2] += rng.normal(0, 12, (K, 2)) * (kp[:, 2:] > 0)
            moved.append({**r, "keypoints": kp.reshape(-1).tolist()})
        assert fmt.native_metrics(gt, moved, fmt.sigmas)[f"{kind}_AP"] < 0.9, kind


def test_catalogue_sigmas_drive_evaluation(tmp_path, val_json):
    """`pose evaluate` scores with the dataset's catalogue ``sigmas`` (and its format's native
    metric with ``native_sigmas``): other sigmas, other AP on the same results."""
    import yaml
    from typer.testing import CliRunner

    from pose.cli import app
    from pose.datasets.catalogue import evaluation

    data = json.loads(val_json.read_text())
    results = tmp_path / "results.json"
    results.write_text(json.dumps(_perturbed(data, seed=4)))
    repo = Path(__file__).resolve().parents[1]
    p = yaml.safe_load((repo / "params.yaml").read_text())
    aps = {}
    for tag, sigmas in (("coco", "COCO_SIGMAS"), ("wide", [2 * float(s) for s in COCO_SIGMAS]),
                        ("narrow", [0.5 * float(s) for s in COCO_SIGMAS])):
        p["catalogue"]["generated"]["sigmas"] = sigmas
        p["data"]["dataset"] = "generated"
        pfile = tmp_path / f"params_{tag}.yaml"
        pfile.write_text(yaml.safe_dump(p))
        res = CliRunner().invoke(app, ["evaluate", "--annotations", str(val_json), "--results", str(results),
                                       "--out", str(tmp_path / f"{tag}.json"), "--params", str(pfile)])
        assert res.exit_code == 0, res.output
        aps[tag] = json.loads((tmp_path / f"{tag}.json").read_text())["AP"]
    assert aps["coco"] == pytest.approx(evaluate_results(val_json, results, sigmas=COCO_SIGMAS)["AP"])
    assert aps["narrow"] < aps["coco"] < aps["wide"]           # looser OKS, higher AP
    # native sigmas: the CrowdPose metric follows the entry's native_sigmas
    gt = _crowdpose_gt([0.1, 0.5, 0.9])
    res14 = []
    for a in gt["annotations"]:
        kp = np.asarray(a["keypoints"], np.float64).reshape(14, 3)
        kp[:, :2] += 5.0
        res14.append({"image_id": a["image_id"], "category_id": 1, "keypoints": kp.reshape(-1).tolist(), "score": 1.0})
    entry = {"kind": "crowdpose", "native_sigmas": "CROWDPOSE_SIGMAS"}
    sigmas, native = evaluation(entry)
    assert np.array_equal(sigmas, COCO_SIGMAS)
    base = native(gt, res14)["crowdpose_AP"]
    _, wide = evaluation({**entry, "native_sigmas": [3 * float(s) for s in CROWDPOSE_SIGMAS]})
    assert wide(gt, res14)["crowdpose_AP"] > base
    assert evaluation({"kind": "coco"})[1] is None               # COCO: OKS AP is the metric itself


# --------------------------------------------------------------------------- plot folder, tables
def test_write_eval_plots_tables_and_overlays_are_deterministic(tmp_path, val_json):
    data = json.loads(val_json.read_text())
    results = _perturbed(data, seed=3)
    metrics = _evaluate(val_json, results, area_bins=[32, 96])
    kw = dict(gt_json=val_json, results=results, images_dir=val_json.parents[1] / "val2017",
              overlay_count=4, overlay_min_score=0.1)
    written = write_eval_plots(metrics, tmp_path / "a", **kw)
    assert sorted(p.name for p in written) == ["ap_per_scale.csv", "ap_per_scale.png", "overlays.png",
                                               "per_keypoint_ap.csv", "per_keypoint_ap.png"]
    again = write_eval_plots(metrics, tmp_path / "b", **kw)
    for a, b in zip(written, again):
        assert a.read_bytes() == b.read_bytes(), a.name                  # no timestamps: DVC sees no change
        assert (a.stat().st_mode & 0o777) != 0o600                      # not mkstemp's private mode
    rows = (tmp_path / "a" / "per_keypoint_ap.csv").read_text().splitlines()
    assert rows[0] == "keypoint,AP" and len(rows) == K + 1 and rows[1].startswith("nose,")
    assert float(rows[1].split(",")[1]) == pytest.approx(metrics["per_keypoint_AP"]["nose"], abs=1e-6)
    scale = [r.split(",") for r in (tmp_path / "a" / "ap_per_scale.csv").read_text().splitlines()]
    assert scale[0] == ["range", "AP", "AR", "num_gt"]
    assert [r[0] for r in scale[1:]] == ["medium", "large", "0-32", "32-96", "96+"]
    assert float(scale[1][1]) == pytest.approx(metrics["APM"], abs=1e-6)
    assert int(scale[1][3]) == _num_persons(data, 32 ** 2, 96 ** 2)
    grid = cv2.imread(str(tmp_path / "a" / "overlays.png"))
    assert grid.shape == (640, 640, 3)                                   # 4 images: 2 x 2 cells of 320
    picked = select_sample_images(data, 4)
    per_image = {im["id"]: sum(1 for a in data["annotations"] if a["image_id"] == im["id"] and a["num_keypoints"] > 0
                               and not a["iscrowd"]) for im in data["images"]}
    assert picked[0]["id"] == min(per_image, key=lambda i: (-per_image[i], i))   # most people first
    assert write_eval_plots({"AP": 0.1}, tmp_path / "c") == []


# --------------------------------------------------------------------------- efficiency
TINY_MODEL = {"backbone": "hrnet", "width": 8, "num_joints": K, "tag_dim": 1, "stage_blocks": [1, 1, 1],
              "stem_blocks": 1, "deconv_blocks": 1, "convention": "project", "init": "kaiming",
              "pretrained_backbone": "", "pretrained": ""}


def _tiny_model(width: int = 8):
    import torch

    from pose.decode.inference import model_convention
    from pose.models import build_model

    torch.manual_seed(0)
    model = build_model({**TINY_MODEL, "width": width})
    try:
        model_convention(model)
    except ValueError:                   # build_model does not record model.convention yet
        model.convention = TINY_MODEL["convention"]
    return model


def test_measure_efficiency_reports_size_compute_latency_memory():
    from pose.evaluate.efficiency import measure_efficiency
    from pose.models import count_flops, count_params

    model = _tiny_model()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (96, 128, 3), dtype=np.uint8), rng.integers(0, 255, (80, 60, 3), dtype=np.uint8)]
    ev = dict(input_size=64, resize="letterbox", flip_test=True, test_scales=[1.0, 1.5], detection_threshold=0.1,
              tag_threshold=1.0, max_people=5, nms_kernel=5, tie_break=False, project2image=True, adjust=True,
              refine=True, nms_oks=1.0)
    eff = measure_efficiency(model, images, eval_params=ev, samples=3, warmup=1)
    assert eff["params"] == count_params(model) and eff["params_M"] == pytest.approx(eff["params"] / 1e6)
    assert eff["gflops"] == pytest.approx(count_flops(model, 64))
    assert eff["gflops_per_image"] == pytest.approx(2 * (count_flops(model, 64) + count_flops(model, 96)))
    assert 0 < eff["latency_ms_p50"] <= eff["latency_ms_p90"]
    assert eff["images_per_s"] == pytest.approx(1e3 / eff["latency_ms_mean"])
    assert eff["peak_memory_mb"] > 10 and eff["peak_memory_kind"] in ("rss", "rss_lifetime")
    assert eff["latency_samples"] == 3 and eff["device"] == "cpu"
    with pytest.raises(ValueError):
        measure_efficiency(model, [], eval_params=ev, samples=1, warmup=0)


# --------------------------------------------------------------------------- `pose evaluate` command
def test_evaluate_command_writes_deterministic_eval_json_plots_and_efficiency(tmp_path, val_json):
    import torch
    import yaml
    from typer.testing import CliRunner

    from pose.cli import app

    repo = Path(__file__).resolve().parents[1]
    p = yaml.safe_load((repo / "params.yaml").read_text())
    p["evaluate"].update(input_size=64, flip_test=False, latency_samples=2, latency_warmup=0, overlay_count=2)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(p))
    model = _tiny_model()
    ck = tmp_path / "best.pt"
    torch.save({"model": model.state_dict(), "model_params": json.dumps(TINY_MODEL)}, ck)
    data = json.loads(val_json.read_text())
    keep = {im["id"] for im in data["images"][:3]}
    data["images"] = [im for im in data["images"] if im["id"] in keep]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    gt = tmp_path / "val.json"
    gt.write_text(json.dumps(data))
    runner = CliRunner()
    images = val_json.parents[1] / "val2017"
    outs = []
    for run in ("a", "b"):
        d = tmp_path / run
        res = runner.invoke(app, ["evaluate", "--annotations", str(gt), "--checkpoint", str(ck),
                                  "--images", str(images),
                                  "--results-out", str(d / "results.json"), "--out", str(d / "eval.json"),
                                  "--efficiency", str(d / "efficiency.json"), "--plots-dir", str(d / "plots"),
                                  "--params", str(params)])
        assert res.exit_code == 0, res.output
        outs.append(d)
    a, b = outs
    for rel in ("eval.json", "results.json", "plots/per_keypoint_ap.csv", "plots/ap_per_scale.csv",
                "plots/per_keypoint_ap.png", "plots/ap_per_scale.png", "plots/overlays.png"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    metrics = json.loads((a / "eval.json").read_text())
    assert {"AP", "APM", "APL", "per_keypoint_AP", "AP_by_area", "num_gt_by_area"} <= set(metrics)
    assert not any("latency" in k or "memory" in k for k in metrics)             # timings live elsewhere
    eff = json.loads((a / "efficiency.json").read_text())
    assert {"params", "gflops", "latency_ms_p50", "latency_ms_p90", "peak_memory_mb"} <= set(eff)
    assert eff["input_size"] == 64 and eff["latency_samples"] == 2
    # rescoring the results file gives the same metrics; scored as CrowdPose, crowdIndex is needed
    res = runner.invoke(app, ["evaluate", "--annotations", str(gt), "--results", str(a / "results.json"),
                              "--out", str(tmp_path / "re.json"), "--params", str(params)])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "re.json").read_text()) == metrics
    res = runner.invoke(app, ["evaluate", "--annotations", str(gt), "--results", str(a / "results.json"),
                              "--out", str(tmp_path / "cp.json"), "--dataset", "crowdpose",
                              "--params", str(params)])
    assert res.exit_code == 1 and "crowdIndex" in res.output
    res = runner.invoke(app, ["evaluate", "--annotations", str(gt), "--results", str(a / "results.json"),
                              "--out", str(tmp_path / "x.json"), "--efficiency", str(tmp_path / "e.json"),
                              "--params", str(params)])
    assert res.exit_code == 1 and "--efficiency needs" in res.output
