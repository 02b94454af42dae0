"""benchmarks/ablation.py (variants, budget knobs, Markdown / JSON tables) and the single-model
bootstrap CI it prints (`pose.registry.bootstrap.bootstrap_ci`)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from pose.evaluate.coco import evaluate_results
from pose.registry import bootstrap as boot

ROOT = Path(__file__).resolve().parents[1]
K = 17


def _load_script():
    spec = importlib.util.spec_from_file_location("ablation_script", ROOT / "benchmarks" / "ablation.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ablation = _load_script()


def _synthetic(n_images: int, copies: int = 1, seed: int = 0) -> tuple[dict, list[dict]]:
    """``n_images`` images (1-3 large persons of 100-200 px, every joint labeled) and results with a
    per-image keypoint noise of 0-12 px plus some low-scoring false positives; ``copies``
    repeats the same images (new ids), so the point AP is unchanged and only N grows."""
    rng = np.random.default_rng(seed)
    base_imgs = []
    for _ in range(n_images):
        persons = []
        for _ in range(int(rng.integers(1, 4))):
            h = float(rng.uniform(100, 200))
            c = rng.uniform([100, 100], [540, 380])
            kp = c + rng.uniform(-0.5, 0.5, (K, 2)) * np.array([0.5 * h, h])
            persons.append((kp, h))
        base_imgs.append((persons, float(rng.uniform(0, 12)), rng.uniform(size=8)))
    gt = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "person"}]}
    res = []
    img_id = ann_id = 0
    for _ in range(copies):
        noise_rng = np.random.default_rng(seed + 1)   # same noise in every copy
        for persons, noise, u in base_imgs:
            img_id += 1
            gt["images"].append({"id": img_id, "width": 640, "height": 480, "file_name": f"{img_id}.jpg"})
            for j, (kp, h) in enumerate(persons):
                ann_id += 1
                x0, y0 = kp.min(axis=0)
                x1, y1 = kp.max(axis=0)
                gt["annotations"].append({
                    "id": ann_id, "image_id": img_id, "category_id": 1, "iscrowd": 0, "num_keypoints": K,
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "area": h * h,
                    "keypoints": np.concatenate([kp, np.full((K, 1), 2.0)], axis=1).reshape(-1).tolist()})
                pred = kp + noise_rng.normal(0, noise, (K, 2))
                res.append({"image_id": img_id, "category_id": 1, "score": float(0.5 + 0.5 * u[j]),
                            "keypoints": np.concatenate([pred, np.ones((K, 1))], axis=1).reshape(-1).tolist()})
                if u[4 + j] < 0.4:
                    fp = kp + noise_rng.normal(0, 30, (1, 2))
                    res.append({"image_id": img_id, "category_id": 1, "score": float(0.4 * u[4 + j]),
                                "keypoints": np.concatenate([fp, np.ones((K, 1))], axis=1).reshape(-1).tolist()})
    return gt, res


def test_bootstrap_ci_contains_point_ap_and_narrows_with_more_images():
    gt, res = _synthetic(16)
    point = evaluate_results(gt, res, per_keypoint=False)
    ci = boot.bootstrap_ci(gt, res, n_resamples=300, seed=0, metrics=("AP", "AR", "APM"))
    assert 0.1 < point["AP"] < 0.95                      # not a degenerate all-or-nothing model
    for m in ("AP", "AR"):
        lo, hi = ci[m]
        assert lo < point[m] < hi, (m, lo, point[m], hi)
    assert ci["APM"] == (None, None)                     # no medium person (area >= 100^2 px^2): COCO's -1
    big_gt, big_res = _synthetic(16, copies=4)
    assert evaluate_results(big_gt, big_res, per_keypoint=False)["AP"] == pytest.approx(point["AP"], abs=1e-9)
    big = boot.bootstrap_ci(big_gt, big_res, n_resamples=300, seed=0, metrics=("AP",))["AP"]
    # 4x the images: the interval shrinks about as 1 / sqrt(4)
    assert big[0] < point["AP"] < big[1]
    assert (big[1] - big[0]) < 0.7 * (ci["AP"][1] - ci["AP"][0])
    # deterministic by seed; a higher level widens the interval
    assert boot.bootstrap_ci(gt, res, n_resamples=300, seed=0, metrics=("AP",))["AP"] == ci["AP"]
    wide = boot.bootstrap_ci(gt, res, n_resamples=300, seed=0, level=0.99, metrics=("AP",))["AP"]
    assert wide[0] <= ci["AP"][0] and wide[1] >= ci["AP"][1]


def test_bootstrap_ci_rejects_bad_arguments():
    gt, res = _synthetic(2)
    with pytest.raises(ValueError, match="level"):
        boot.bootstrap_ci(gt, res, n_resamples=10, seed=0, level=1.0)
    with pytest.raises(ValueError, match="unknown metric"):
        boot.bootstrap_ci(gt, res, n_resamples=10, seed=0, metrics=("mAP",))
    assert boot.bootstrap_ci(gt, res, n_resamples=0, seed=0, metrics=("AP",)) == {"AP": (None, None)}


def test_variant_params_apply_overrides_and_budget_without_touching_params():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    before = json.dumps(params, sort_keys=True)
    p = ablation.variant_params(params, "single_scale", epochs_scale=0.5, max_steps_per_epoch=7)
    assert p["train"]["multi_scale"] is False and p["train"]["use_curriculum"] == params["train"]["use_curriculum"]
    assert p["train"]["max_steps_per_epoch"] == 7
    assert [s["epochs"] for s in p["train"]["curriculum"]] == [
        max(1, round(s["epochs"] * 0.5)) for s in params["train"]["curriculum"]]
    assert ablation.variant_params(params, "no_curriculum")["train"]["use_curriculum"] is False
    kept = ablation.variant_params(params, "curriculum")
    assert kept["train"] == params["train"]
    assert json.dumps(params, sort_keys=True) == before


def test_markdown_table_cells():
    ci = {m: (0.1, 0.3) for m in ablation.TABLE_METRICS}
    rows = [{"variant": "a", "metrics": {"AP": 0.2, "AP50": 0.5, "APM": -1.0, "APL": 0.25, "AR": 0.3},
             "ci": {**ci, "APM": (None, None)}, "steps": 4},
            {"variant": "b", "metrics": {m: 0.25 for m in ablation.TABLE_METRICS}, "ci": ci, "steps": 4,
             "dAP": {"delta": 0.05, "ci_low": -0.01, "ci_high": 0.1}}]
    lines = ablation.markdown_table(rows, "variant", (("steps", "steps"),)).splitlines()
    assert lines[0] == ("| variant | AP [95% CI] | AP50 [95% CI] | APM [95% CI] | APL [95% CI] | AR [95% CI] "
                        "| dAP vs a [95% CI] | steps |")
    assert lines[1] == "|---|---|---|---|---|---|---|---|"
    assert lines[2] == "| a | 0.200 [0.100, 0.300] | 0.500 [0.100, 0.300] | n/a | 0.250 [0.100, 0.300] " \
                       "| 0.300 [0.100, 0.300] | - | 4 |"
    assert "| +0.050 [-0.010, +0.100] | 4 |" in lines[3]


def test_missing_data_and_wrong_val_count_fail_with_one_line(tmp_path, capsys):
    assert ablation.main(["--data", str(tmp_path / "none"), "--variants", "curriculum"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not found" in err and "--num-val" in err
    ann = tmp_path / "gen" / "annotations"
    ann.mkdir(parents=True)
    (ann / "person_keypoints_val2017.json").write_text(json.dumps({"images": [{"id": 1}], "annotations": []}))
    assert ablation.main(["--data", str(tmp_path / "gen"), "--num-val", "5", "--variants", "curriculum"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds 1 validation images" in err
    with pytest.raises(SystemExit):
        ablation.main(["--variants", "curriculum", "--max-steps-per-epoch", "-1"])


@pytest.mark.slow
def test_tiny_ablation_end_to_end(tmp_path, monkeypatch, capsys):
    """Three variants of 4 steps on a generated set of 8 + 6 images, then both resize protocols."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["generated"].update(num_train=8, num_val=40)
    p["model"].update(width=8, stage_blocks=[1, 1, 1], stem_blocks=1, deconv_blocks=1)
    p["train"]["curriculum"] = [{"sizes": [128], "epochs": 1}, {"sizes": [128, 160], "epochs": 1}]
    p["train"].update(max_steps_per_epoch=0, workers=0, val_every=1, val_max_images=3, log_every=100, batch_size=4)
    p["evaluate"].update(input_size=128, flip_test=False)
    p["registry"]["bootstrap_samples"] = 50
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(p, sort_keys=False))
    out = tmp_path / "ablation.json"
    data = tmp_path / "gen"
    rc = ablation.main(["--params", str(params), "--data", str(data), "--num-val", "6",
                        "--max-steps-per-epoch", "2", "--work", str(tmp_path / "work"), "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| variant | AP [95% CI]" in printed and "| resize | AP [95% CI]" in printed
    rep = json.loads(out.read_text())
    val_json = json.loads((data / "annotations/person_keypoints_val2017.json").read_text())
    assert rep["complete"] is True and rep["num_val_images"] == 6 and len(val_json["images"]) == 6
    assert [r["variant"] for r in rep["variants"]] == ["curriculum", "no_curriculum", "single_scale"]
    assert {r["steps"] for r in rep["variants"]} == {4}          # same budget: 2 epochs x 2 steps
    assert rep["variants"][0].get("dAP") is None and rep["variants"][1]["dAP"]["delta"] is not None
    assert [r["resize"] for r in rep["resize"]] == ["letterbox", "short_side"]
    assert {r["checkpoint"] for r in rep["resize"]} == {"curriculum best.pt"}
    assert rep["resize"][0]["metrics"] == rep["variants"][0]["metrics"]   # letterbox = the variant's own evaluation
    for r in rep["variants"] + rep["resize"]:
        lo, hi = r["ci"]["AP"]
        assert lo <= r["metrics"]["AP"] <= hi
    for name in ("curriculum", "no_curriculum", "single_scale"):
        assert (tmp_path / "work" / name / "best.pt").exists()
    assert rep["markdown"]["variants"].count("\n") == 4 and rep["markdown"]["resize"].count("\n") == 3
