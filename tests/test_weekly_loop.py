"""The weekly loop as a team lives it, on a tiny generated config in a temporary repo copy.

week 1      `python -m flows.retrain`: no model yet -> every stage through DVC, v1 registered and
            gated; it becomes champion (the test sets the AP floor rules to 0: a 2-step model scores
            AP ~0, and the floor itself is tested in tests/test_registry.py)
week 2      same data -> the run ends `NoNewData`; nothing trained, dvc.lock untouched
week 2 (b)  `--force` -> train and later stages run with `dvc repro --force` (the model file is rewritten,
            with the same bytes: registration happens once, v1 is reused)
week 3      a new ingest batch listed under `catalogue.generated.ingest` -> retrain, v2; the gate decides
            against the champion with rule results and a paired bootstrap CI
week 3 (b)  a batch of duplicate images -> nothing new: no version, no "retrain done"
review      `pose compare v1 v2`: a verdict with the paired CI and the recorded gate decision

Marked slow (3.5-7 minutes on 2 cores, depending on load); CI runs it. Timings per week are
printed (`pytest -s`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import sections
from repo_setup import BIN, make_repo_copy, pipeline_env, tiny_generated_params

pytestmark = pytest.mark.slow
BATCH = "incoming/week3"
DUPLICATES = "incoming/duplicates"


def weekly_params() -> dict:
    """The tiny generated config (tests/repo_setup.py) with the AP floor at 0."""
    return tiny_generated_params(floor=0.0)


def _flow(repo: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "flows.retrain", str(repo), *args], cwd=repo, env=pipeline_env(),
                          capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"flow {args} failed (exit {proc.returncode}):\n{out[-6000:]}"
    return out


def _make_batch(repo: Path, params: dict) -> Path:
    """A new batch as a labelling team delivers it: one COCO keypoint JSON + its images (4 new
    generated images, drawn with another seed so none duplicates a training image)."""
    from pose.datasets.generated import generate_dataset

    d = params["data"]
    tmp = repo / "incoming" / ".draw"
    generate_dataset(tmp, **{**params["generated"], "seed": 7, "num_train": 4, "num_val": 0},
                     train_split=d["train_split"], val_split=d["val_split"])
    batch = repo / BATCH
    (batch / "annotations").mkdir(parents=True)
    ann = f"person_keypoints_{d['train_split']}.json"
    shutil.move(tmp / "annotations" / ann, batch / "annotations" / ann)
    shutil.move(tmp / d["train_split"], batch / d["train_split"])
    shutil.rmtree(tmp)
    return batch


def _duplicate_batch(repo: Path, params: dict) -> Path:
    """A batch of copies of 3 training images with their annotations (all duplicates)."""
    d = params["data"]
    raw = repo / "data/raw/generated"
    ann = f"person_keypoints_{d['train_split']}.json"
    train = json.loads((raw / "annotations" / ann).read_text())
    batch = repo / DUPLICATES
    (batch / "annotations").mkdir(parents=True)
    (batch / d["train_split"]).mkdir()
    images = train["images"][:3]
    ids = {im["id"] for im in images}
    for im in images:
        shutil.copy(raw / d["train_split"] / im["file_name"], batch / d["train_split"] / im["file_name"])
    doc = {"images": images, "annotations": [a for a in train["annotations"] if a["image_id"] in ids],
           "categories": train["categories"]}
    (batch / "annotations" / ann).write_text(json.dumps(doc))
    return batch


def _versions(repo: Path, name: str) -> dict[int, object]:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    return {int(mv.version): client.get_model_version(name, mv.version)
            for mv in client.search_model_versions(f"name='{name}'")}


def _assert_gated(record: dict, version) -> None:
    """The gate decided from rule results stored as data (registration.json and tag ``promotion.rules``),
    and the decision follows them: promoted exactly when every rule passed."""
    assert version.tags.get("promotion.decision") == record["decision"], version.tags
    rules = record["rules"]
    assert rules and all(isinstance(r, dict) and isinstance(r.get("passed"), bool) for r in rules), rules
    assert [r["passed"] for r in json.loads(version.tags["promotion.rules"])] == [r["passed"] for r in rules]
    assert record["promoted"] == all(r["passed"] for r in rules), record


def test_weekly_loop(tmp_path):
    from pose.registry.tracking import registered_model_name

    timings: dict[str, float] = {}
    params = weekly_params()
    repo = make_repo_copy(tmp_path / "repo", params)
    name = registered_model_name(sections(params).registry, params["data"]["dataset"])

    t0 = time.perf_counter()
    out = _flow(repo)
    timings["week 1 (train + register)"] = time.perf_counter() - t0
    assert "Finished in state Completed" in out, out[-4000:]
    record1 = json.loads((repo / "data/registry/registration.json").read_text())
    versions = _versions(repo, name)
    assert list(versions) == [record1["version"]] == [1]
    _assert_gated(record1, versions[1])
    assert record1["promoted"] and "champion" in versions[1].aliases, record1["reason"]
    lock = (repo / "dvc.lock").read_text()
    model = repo / "data/models/last.pt"
    mtime = model.stat().st_mtime_ns

    t0 = time.perf_counter()
    out = _flow(repo)
    timings["week 2 (unchanged: NoNewData)"] = time.perf_counter() - t0
    assert "NoNewData" in out and "no new data" in out, out[-4000:]
    assert "Running stage" not in out
    assert (repo / "dvc.lock").read_text() == lock and model.stat().st_mtime_ns == mtime
    assert list(_versions(repo, name)) == [1]

    t0 = time.perf_counter()
    out = _flow(repo, "--force")
    timings["week 2b (--force: retrain same data)"] = time.perf_counter() - t0
    assert "forced retrain" in out, out[-4000:]
    assert model.stat().st_mtime_ns != mtime, "--force did not run the train stage"
    # equal training gives an equal checkpoint and evaluation: registration happens once (v1 reused)
    record2 = json.loads((repo / "data/registry/registration.json").read_text())
    assert record2["version"] == 1 and record2["new_version"] is False and list(_versions(repo, name)) == [1]
    assert "no new model version (already registered) (forced)" in out and "retrain done" not in out, out[-4000:]
    # fetch is not forced on unchanged data: its lock entry stays as week 1's
    assert yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["fetch"] == yaml.safe_load(lock)["stages"]["fetch"]

    _make_batch(repo, params)
    params["catalogue"]["generated"]["ingest"] = [BATCH]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    t0 = time.perf_counter()
    out = _flow(repo)
    timings["week 3 (new ingest batch: retrain + gate)"] = time.perf_counter() - t0
    assert "NEW DATA" in out and "Finished in state Completed" in out, out[-4000:]
    raw = repo / "data/raw/generated"
    batches = json.loads((raw / "ingest_record.json").read_text())["batches"]
    assert [b["added_images"] for b in batches] == [4], batches
    train = json.loads((raw / "annotations" / f"person_keypoints_{params['data']['train_split']}.json").read_text())
    assert len(train["images"]) == 12 + 4
    record3 = json.loads((repo / "data/registry/registration.json").read_text())
    versions = _versions(repo, name)
    assert record3["version"] == 2 and sorted(versions) == [1, 2] and record3["new_version"] is True
    _assert_gated(record3, versions[2])
    assert versions[2].tags["data.source_fingerprint"] != versions[1].tags["data.source_fingerprint"]
    assert record3["champion_before"] == 1 and record3["decision"] in ("promoted", "kept_champion")
    delta_rules = [r for r in record3["rules"] if r["kind"] == "min_delta"]
    assert delta_rules and all(r["applicable"] and r["champion"] is not None for r in delta_rules), record3["rules"]
    assert all(r["ci_low"] is not None and r["ci_high"] is not None for r in delta_rules), "no paired CI in the gate"

    # week 3 (b): a batch whose images are all duplicates adds nothing: no new version, not "retrain done"
    _duplicate_batch(repo, params)
    params["catalogue"]["generated"]["ingest"] = [BATCH, DUPLICATES]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    t0 = time.perf_counter()
    out = _flow(repo)
    timings["week 3b (duplicate batch: nothing new)"] = time.perf_counter() - t0
    assert "NEW DATA" in out and "retrain done" not in out and "no new model version" in out, out[-4000:]
    assert sorted(_versions(repo, name)) == [1, 2]
    assert json.loads((repo / "data/registry/registration.json").read_text())["version"] == 2

    t0 = time.perf_counter()
    proc = subprocess.run([str(BIN / "pose"), "compare", "v1", "v2", "--no-log"], cwd=repo, env=pipeline_env(),
                          capture_output=True, text=True)
    timings["pose compare v1 v2"] = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    first = proc.stdout.strip().splitlines()[0]
    assert "paired 95% CI" in first and ("better" in first or "No clear winner" in first), proc.stdout
    assert f"Recorded gate decision of B = v2: {record3['decision']}" in proc.stdout, proc.stdout

    print("\nweekly loop timings (s): " + ", ".join(f"{k}: {v:.1f}" for k, v in timings.items()))
