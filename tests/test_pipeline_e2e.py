"""End to end on the real COCO sample: `dvc repro` and the Prefect flow in temporary repo copies.

Marked slow (a few minutes on 2 cores); `make test` and CI still run them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO, SHARED, sections
from repo_setup import make_repo_copy

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
#: outputs holding wall-clock measurements (images/s, latency, GE Data Docs run timestamps),
#: equal only by chance between two runs
TIMED = {"data/metrics/train.json", "data/plots/train_steps.csv", "data/metrics/efficiency.json",
         "data/reports/data_docs"}
STAGES = ["check_params", "fetch", "validate", "check_scales", "train", "evaluate", "register"]


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(DO_NOT_TRACK="1", DVC_NO_ANALYTICS="1", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               GX_ANALYTICS_ENABLED="false")
    return env


def tiny_params() -> dict:
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["data"].update(dataset="coco-mini", mirror=str(SHARED))
    p["model"].update(width=8, stage_blocks=[1, 1, 1])
    p["train"].update(batch_size=4, workers=0, max_steps_per_epoch=3, warmup_steps=1, log_every=1,
                      curriculum=[{"sizes": [128], "epochs": 1}, {"sizes": [128, 160], "epochs": 1}])
    p["evaluate"].update(input_size=128, flip_test=False)
    p["serve"]["log_onnx"] = False  # the ONNX export (~30 s) has its own tests (tests/test_serving.py)
    for rule in p["registry"]["rules"]:  # a few-step model scores AP ~0: no absolute floor here
        rule.update({"min": 0.0} if "min" in rule else {})
    return p


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def repo_copies(tmp_path_factory, coco_mini) -> dict[str, Path]:
    """Two copies of the same working-tree snapshot: one for `dvc repro`, one for the flow."""
    return {name: make_repo_copy(tmp_path_factory.mktemp(name), tiny_params()) for name in ("repro", "flow")}


@pytest.fixture(scope="module")
def repro_repo(repo_copies) -> Path:
    repo = repo_copies["repro"]
    run([str(BIN / "dvc"), "repro"], repo)
    return repo


def test_dvc_repro_on_coco_mini(repro_repo):
    metrics = json.loads((repro_repo / "data/metrics/eval.json").read_text())
    results = json.loads((repro_repo / "data/eval/results.json").read_text())
    gt = json.loads((repro_repo / "data/validated/val.json").read_text())
    # eval.json holds what pycocotools' COCOeval says about results.json, key by key
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    assert results, "a 6-step model still returns candidate persons on 79 photos"
    coco_gt = COCO(str(repro_repo / "data/validated/val.json"))
    ev = COCOeval(coco_gt, coco_gt.loadRes(results), "keypoints")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    for i, key in enumerate(("AP", "AP50", "AP75", "APM", "APL", "AR")):
        assert metrics[key] == pytest.approx(ev.stats[i], abs=1e-9), key
    assert len(gt["images"]) == 79
    assert {r["image_id"] for r in results} <= {im["id"] for im in gt["images"]}
    train = json.loads((repro_repo / "data/metrics/train.json").read_text())
    assert train["steps"] == 6 and train["epochs"] == 2
    steps = (repro_repo / "data/plots/train_steps.csv").read_text().splitlines()
    assert len(steps) == 7 and {"128", "160"} >= {line.split(",")[2] for line in steps[1:]}
    manifest = (repro_repo / "data/raw/coco-mini/MANIFEST.sha256").read_text().splitlines()
    assert len(manifest) == 80 + 79 + 2


def test_registry_has_challenger_and_champion(repro_repo):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repro_repo / 'mlflow.db'}")
    from pose.registry.promotion import registered_model_name

    p = sections(tiny_params())
    name = registered_model_name(p.registry, p.data.dataset)
    assert name == "higherhrnet-coco-mini"
    versions = client.search_model_versions(f"name='{name}'")
    assert len(versions) == 1
    mv = client.get_model_version(name, versions[0].version)
    assert set(mv.aliases) == {"challenger", "champion"}
    assert mv.tags["promotion.decision"] == "promoted"
    rules = json.loads(mv.tags["promotion.rules"])
    assert rules and all(r["passed"] for r in rules if r["applicable"])
    run_ = client.get_run(mv.run_id)
    assert run_.data.params["data.dataset"] == "coco-mini"
    assert "AP" in run_.data.metrics
    assert len(client.get_metric_history(mv.run_id, "train/loss")) == 6
    record = json.loads((repro_repo / "data/registry/registration.json").read_text())
    assert record["version"] == int(mv.version) and record["promoted"] is True


def test_second_repro_is_a_noop(repro_repo):
    t0 = time.perf_counter()
    proc = run([str(BIN / "dvc"), "repro"], repro_repo)
    elapsed = time.perf_counter() - t0
    assert "Running stage" not in proc.stdout, proc.stdout
    assert "up to date" in proc.stdout
    assert elapsed < 60, f"no-op repro took {elapsed:.1f}s"
    status = run([str(BIN / "dvc"), "status"], repro_repo)
    assert "up to date" in status.stdout


def test_prefect_flow_leaves_the_same_dvc_lock(repro_repo, repo_copies):
    repo = repo_copies["flow"]
    proc = run([sys.executable, "-m", "flows.retrain", str(repo)], repo)
    assert "Finished in state Completed" in proc.stdout + proc.stderr
    flow_lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    repro_lock = yaml.safe_load((repro_repo / "dvc.lock").read_text())["stages"]
    # the same stages (dvc.lock's entry order depends on when each stage was first written)
    assert sorted(flow_lock) == sorted(repro_lock) == sorted(STAGES)
    for stage in STAGES:
        a, b = flow_lock[stage], repro_lock[stage]
        assert a["cmd"] == b["cmd"] and a.get("params") == b.get("params"), stage
        assert [d["path"] for d in a.get("deps", [])] == [d["path"] for d in b.get("deps", [])], stage
        if stage != "register":  # the registration record holds run ids, which differ by design
            assert a.get("deps") == b.get("deps"), stage
            outs_a = [o for o in a.get("outs", []) if o["path"] not in TIMED]
            outs_b = [o for o in b.get("outs", []) if o["path"] not in TIMED]
            assert outs_a == outs_b, stage
    status = run([str(BIN / "dvc"), "status"], repo)
    assert "up to date" in status.stdout
