"""Model registry: run content, servable model, promotion gate with bootstrap CIs, force / rollback,
race safety of concurrent promotions, compare reports, data fingerprints and notifications.

Registrations use a tiny random-weight checkpoint and synthetic results made from a validation
ground truth (perturbed keypoints), so the gate sees controlled APs: the real coco-mini sample
when ../shared is present, else a generated set with medium and large persons (the rules check
APM and APL; what is scored is the ground truth, not the photos).
All tests share one SQLite registry (creating one costs seconds); each test uses its own
registered model name.
"""

from __future__ import annotations

import contextlib
import copy
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import COCO_MINI, register_sections
from test_pipeline_e2e import tiny_params
from typer.testing import CliRunner

from pose.datasets.schema import COCO_SIGMAS, NUM_JOINTS
from pose.evaluate.coco import evaluate_results, write_metrics
from pose.params import CatalogueEntry, flatten
from pose.registry import bootstrap as boot
from pose.registry.rules import Rule, RuleError, evaluate_rules, gate_passed, parse_rules, rules_from_tags
from pose.registry.tracking import registered_model_name

K = NUM_JOINTS


def _base_sections():
    """params.yaml as typed sections (tests tweak a section with ``model_copy``)."""
    from conftest import REPO, sections

    from pose.params import load_params

    return sections(load_params(REPO / "params.yaml"))


@pytest.fixture(scope="module")
def eval_root(tmp_path_factory) -> Path:
    """COCO-layout folder whose val split the registrations are scored on (module docstring)."""
    if (COCO_MINI / "annotations" / "person_keypoints_val2017.json").exists():
        return COCO_MINI
    from pose.datasets.generated import generate_dataset

    out = tmp_path_factory.mktemp("registry_eval") / "coco-mini"   # the mirror layout of data.dataset
    generate_dataset(out, seed=5, num_train=1, num_val=60, width=640, height=480, max_people=1,
                     min_person_height=60, max_person_height=470)
    return out


def val_json(root: Path) -> Path:
    return root / "annotations" / "person_keypoints_val2017.json"


# ----------------------------------------------------------------------------- helpers

def synth_results(gt: dict, *, noise_medium: float, noise_large: float, seed: int, fp_rate: float = 0.3) -> list[dict]:
    """Ground-truth persons with Gaussian keypoint noise (px) by COCO area range, plus false positives."""
    rng = np.random.default_rng(seed)
    out = []
    for a in gt["annotations"]:
        if a.get("iscrowd") or a.get("num_keypoints", 0) == 0:
            continue
        noise = noise_medium if a["area"] <= 96 ** 2 else noise_large
        kp = np.asarray(a["keypoints"], np.float64).reshape(K, 3)
        kp[:, :2] += rng.normal(0, noise, (K, 2))
        kp[:, 2] = rng.uniform(0.2, 1.0, K) * (kp[:, 2] > 0)   # unlabeled joints: not predicted
        out.append({"image_id": a["image_id"], "category_id": 1, "keypoints": kp.reshape(-1).tolist(),
                    "score": float(rng.uniform(0.3, 1.0))})
        if rng.uniform() < fp_rate:
            fp = kp.copy()
            fp[:, :2] += rng.normal(0, 40, (1, 2))
            out.append({"image_id": a["image_id"], "category_id": 1, "keypoints": fp.reshape(-1).tolist(),
                        "score": float(rng.uniform(0.0, 0.4))})
    return out


class Env:
    """A shared SQLite registry in a temporary folder (the working directory of the tests)."""

    def __init__(self, root: Path, eval_root: Path):
        import torch

        from pose.models import build_model
        from pose.train.checkpoint import save_checkpoint

        self.root = root
        self.images = eval_root / "val2017"
        self.gt = json.loads(val_json(eval_root).read_text())
        self.ann = root / "val.json"
        self.ann.write_text(json.dumps(self.gt))
        base = tiny_params()
        base["registry"].update(tracking_uri=f"sqlite:///{root / 'mlflow.db'}", bootstrap_samples=200)
        base["data"].update(raw_dir=str(root / "raw"), mirror=str(eval_root.parent))
        self.base = base
        mp = dict(base["model"])
        torch.manual_seed(0)
        model = build_model(mp)
        self.ckpt = root / "best.pt"
        save_checkpoint({"model": model.state_dict(), "model_params": json.dumps(mp)}, self.ckpt)
        self.n = 0

    def params(self, name: str, **registry) -> dict:
        p = copy.deepcopy(self.base)
        p["registry"].update(model_name=name, **registry)
        return p

    def sections(self, name: str, **registry):
        """:meth:`params` checked: the typed `pose.params.Params` the library functions take sections of."""
        from conftest import sections

        return sections(self.params(name, **registry))

    def params_file(self, name: str, **registry) -> Path:
        import yaml

        f = self.root / f"params-{name}.yaml"
        f.write_text(yaml.safe_dump(self.params(name, **registry), sort_keys=False))
        return f

    def evidence(self, *, noise_medium: float, noise_large: float, seed: int, gt: dict | None = None):
        """(metrics path, results path, annotations path) of synthetic results."""
        self.n += 1
        d = self.root / f"ev{self.n}"
        d.mkdir()
        gt = gt or self.gt
        ann = d / "val.json"
        ann.write_text(json.dumps(gt))
        res = synth_results(gt, noise_medium=noise_medium, noise_large=noise_large, seed=seed)
        (d / "results.json").write_text(json.dumps(res))
        write_metrics(evaluate_results(ann, res, sigmas=COCO_SIGMAS), d / "metrics.json")
        return d / "metrics.json", d / "results.json", ann

    def register(self, name: str, *, gate: bool = True, reevaluate=None, gt: dict | None = None, artifacts=(),
                 registry: dict | None = None, **noise) -> dict:
        from pose.registry.mlflow_registry import register_run

        metrics, results, ann = self.evidence(gt=gt, **noise)
        p = self.sections(name, **(registry or {}))
        return register_run(*register_sections(p), logged_params=flatten(p.as_dict()), checkpoint=self.ckpt,
                            eval_metrics=metrics, eval_annotations=ann,
                            out=metrics.parent / "registration.json", results=results, gate=gate,
                            reevaluate=reevaluate, artifacts=artifacts)

    def fake(self, name: str, *, gate: bool = True, reevaluate=None, gt: dict | None = None,
             registry: dict | None = None, **noise) -> dict:
        """A cheap registration: a run with the eval/ evidence and the weights only (what the gate reads),
        then the same version creation + gate as register_run."""
        import mlflow

        from pose.io import sha256_file
        from pose.registry.data_version import image_list
        from pose.registry.promotion import promote

        metrics, results, ann = self.evidence(gt=gt, **noise)
        h = sha256_file(ann)
        mlflow.set_tracking_uri(self.base["registry"]["tracking_uri"])
        mlflow.set_experiment(self.base["registry"]["experiment"])
        with mlflow.start_run() as run:
            mlflow.set_tags({"eval_data_hash": h, "dataset": "coco-mini"})
            mlflow.log_metric("AP", json.loads(metrics.read_text())["AP"])
            mlflow.log_artifact(str(metrics), "eval")
            mlflow.log_artifact(str(results), "eval")
            mlflow.log_text(ann.read_text(), "eval/annotations.json")
            mlflow.log_text(json.dumps(image_list(ann)), "data/eval_images.json")
            mlflow.log_artifact(str(self.ckpt), "model")
        client = self.client()
        try:
            client.create_registered_model(name)
        except Exception:  # noqa: BLE001 - exists
            pass
        mv = client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id,
                                         tags={"eval_data_hash": h, "AP": str(json.loads(metrics.read_text())["AP"])})
        client.set_registered_model_alias(name, "challenger", mv.version)
        rec = {"version": int(mv.version), "run_id": run.info.run_id, "eval_data_hash": h,
               "AP": json.loads(metrics.read_text())["AP"], "metrics": metrics}
        if gate:
            p = self.sections(name, **(registry or {}))
            rec.update(promote(p.registry, p.data, p.catalogue, version=mv.version, reevaluate=reevaluate,
                               client=client))
        return rec

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(self.base["registry"]["tracking_uri"])


@pytest.fixture(scope="module")
def env(tmp_path_factory, eval_root):
    root = tmp_path_factory.mktemp("registry")
    old = os.getcwd()
    server = os.environ.pop("MLFLOW_TRACKING_URI", None)   # never the developer's tracking server
    os.chdir(root)  # relative paths (mlruns/, data/compare) land in the temporary folder
    try:
        yield Env(root, eval_root)
    finally:
        os.chdir(old)
        if server is not None:
            os.environ["MLFLOW_TRACKING_URI"] = server


def _tags(env: Env, name: str, version) -> dict:
    return env.client().get_model_version(name, str(version)).tags


# ----------------------------------------------------------------------------- bootstrap (no MLflow)

def test_bootstrap_accumulation_equals_pycocotools_with_duplicated_images(eval_root):
    gt = json.loads(val_json(eval_root).read_text())
    res = synth_results(gt, noise_medium=5, noise_large=5, seed=1)
    table = boot.match_table(gt, res)
    ones = np.ones((1, len(table.img_ids)), np.int64)
    metrics = evaluate_results(gt, res, per_keypoint=False)
    got = boot.accumulate(table, ones)
    for m in boot.BOOT_METRICS:
        assert got[m][0] == pytest.approx(metrics[m], abs=1e-12), m
    # a bootstrap draw counts an image c times: same as pycocotools on a set holding c renamed copies of it
    rng = np.random.default_rng(3)
    counts = rng.multinomial(len(table.img_ids), np.full(len(table.img_ids), 1 / len(table.img_ids)))
    dup = {"images": [], "annotations": [], "categories": gt["categories"]}
    dup_res = []
    by_img = {}
    for a in gt["annotations"]:
        by_img.setdefault(a["image_id"], []).append(a)
    res_by_img = {}
    for r in res:
        res_by_img.setdefault(r["image_id"], []).append(r)
    ims = {im["id"]: im for im in gt["images"]}
    new_id = ann_id = 0
    for img_id, c in zip(table.img_ids, counts):
        for _ in range(int(c)):
            new_id += 1
            dup["images"].append({**ims[img_id], "id": new_id})
            for a in by_img.get(img_id, []):
                ann_id += 1
                dup["annotations"].append({**a, "id": ann_id, "image_id": new_id})
            dup_res += [{**r, "image_id": new_id} for r in res_by_img.get(img_id, [])]
    ref = evaluate_results(dup, dup_res, per_keypoint=False)
    got = boot.accumulate(table, counts[None])
    for m in boot.BOOT_METRICS:
        assert got[m][0] == pytest.approx(ref[m], abs=1e-9), m


def test_bootstrap_ci_separates_clearly_different_models(eval_root):
    gt = json.loads(val_json(eval_root).read_text())
    good = synth_results(gt, noise_medium=1, noise_large=1, seed=2)
    bad = synth_results(gt, noise_medium=12, noise_large=12, seed=2)
    t0 = time.perf_counter()
    out = boot.bootstrap_diff(gt, bad, good, n_resamples=300, seed=0)
    assert time.perf_counter() - t0 < 20
    ap = out["metrics"]["AP"]
    assert ap["delta"] > 0.1 and 0 < ap["ci_low"] < ap["delta"] < ap["ci_high"]
    assert out["n_images"] == len(gt["images"]) and ap["n_valid"] == 300
    same = boot.bootstrap_diff(gt, good, good, n_resamples=50, seed=0)["metrics"]["AP"]
    assert same["delta"] == 0 and same["ci_low"] == 0 and same["ci_high"] == 0


RULES = [{"metric": "AP", "min": 0.1}, {"metric": "AP", "min_delta": 0.005},
         {"metric": "APM", "max_drop": 0.02}, {"metric": "APL", "max_drop": 0.02}]


def _by(results, metric, kind):
    (r,) = [r for r in results if r.metric == metric and r.kind == kind]
    return r


def test_rules_from_params_decide_the_gate():
    rules = parse_rules({"rules": RULES})
    assert rules[0] == Rule("AP", "min", 0.1)
    assert [r.kind for r in rules] == ["min", "min_delta", "max_drop", "max_drop"]
    champ = {"AP": 0.50, "APM": 0.40, "APL": 0.60}
    ci = {"level": 0.95, "metrics": {"AP": {"delta": 0.01, "ci_low": 0.002, "ci_high": 0.018}}}
    res = evaluate_rules(rules, {"AP": 0.51, "APM": 0.39, "APL": 0.70}, champ, ci=ci)
    assert gate_passed(res) and [r.status for r in res] == ["pass"] * 4
    apm = _by(res, "APM", "max_drop")
    assert apm.delta == pytest.approx(-0.01) and apm.champion == 0.40 and apm.challenger == 0.39
    assert _by(res, "AP", "min_delta").ci_low == 0.002 and apm.ci_low is None
    # the margin: +0.004 < +0.005 fails min_delta only; exactly +0.005 passes despite binary rounding
    res = evaluate_rules(rules, {"AP": 0.504, "APM": 0.5, "APL": 0.7}, champ)
    assert not gate_passed(res) and [r.passed for r in res] == [True, False, True, True]
    assert gate_passed(evaluate_rules(rules, {"AP": 0.505, "APM": 0.4, "APL": 0.6}, champ))
    # a per-scale drop beyond max_drop blocks a better AP
    res = evaluate_rules(rules, {"AP": 0.60, "APM": 0.30, "APL": 0.90}, champ)
    assert not gate_passed(res) and not _by(res, "APM", "max_drop").passed and _by(res, "APL", "max_drop").passed
    # COCO's -1 (no person at that scale): the relative rule is not applicable and does not block
    res = evaluate_rules(rules, {"AP": 0.60, "APM": -1.0, "APL": 0.90}, {**champ, "APM": -1.0})
    assert gate_passed(res) and _by(res, "APM", "max_drop").status == "n/a"
    # no champion: the floor still applies, relative rules are not applicable
    res = evaluate_rules(rules, {"AP": 0.0, "APM": 0.0, "APL": 0.0}, None)
    assert not gate_passed(res) and res[0].status == "fail" and {r.status for r in res[1:]} == {"n/a"}
    assert gate_passed(evaluate_rules(rules, {"AP": 0.3}, None))
    # a champion that cannot be scored on the challenger's data: relative rules fail, never pass silently
    res = evaluate_rules(rules, {"AP": 0.9, "APM": 0.9, "APL": 0.9}, None, champion_unavailable="not re-evaluable")
    assert not gate_passed(res) and not _by(res, "AP", "min_delta").passed
    # the results round-trip through the JSON tag
    from pose.registry.rules import rules_tag

    back = rules_from_tags({"promotion.rules": rules_tag(res)})
    assert [(r.metric, r.kind, r.passed, r.applicable) for r in back] == [(r.metric, r.kind, r.passed, r.applicable)
                                                                          for r in res]


@pytest.mark.parametrize("rules, key", [
    ([], "registry.rules must be a non-empty list"),
    ([{"metric": "AP", "min": 1.5}], "registry.rules[0].min must be a number in [0, 1]"),
    ([{"metric": "AP"}], "registry.rules[0] needs exactly one of min, min_delta, max_drop"),
    ([{"metric": "AP", "min": 0.1, "max_drop": 0.1}], "registry.rules[0] needs exactly one"),
    ([{"metric": "AP", "min": 0.1}, {"metric": "mAP", "min": 0.1}], "registry.rules[1].metric 'mAP'"),
    ([{"metric": "AP", "margin": 0.1}], "registry.rules[0]: unknown key(s) ['margin']"),
    ([{"metric": "APM", "max_drop": -0.1}], "registry.rules[0].max_drop must be a number in [0, 1]"),
    (["AP >= 0.1"], "registry.rules[0] must be a mapping"),
])
def test_bad_rules_name_the_key(rules, key):
    with pytest.raises(RuleError) as exc:
        parse_rules({"rules": rules})
    assert key in str(exc.value)
    with pytest.raises(RuleError, match="registry.promotion_margin was replaced by registry.rules"):
        parse_rules({"rules": RULES, "promotion_margin": 0.005})


def test_registered_model_name_includes_the_training_dataset():
    from conftest import REPO, sections

    from pose.params import load_params

    p = sections(load_params(REPO / "params.yaml"))
    reg = p.registry
    assert "{dataset}" in reg.model_name
    assert registered_model_name(reg, p.data.dataset) == f"higherhrnet-{p.data.dataset}"
    for ds in ("generated", "coco2017"):
        assert registered_model_name(reg.model_copy(update={"model_name": "higherhrnet-{dataset}"}),
                                     ds) == f"higherhrnet-{ds}"
    assert registered_model_name(reg.model_copy(update={"model_name": "sweep"}), "x") == "sweep"
    with pytest.raises(RuleError, match="registry.model_name"):
        registered_model_name(reg.model_copy(update={"model_name": "m-{data}"}), "x")
    with pytest.raises(RuleError, match="registry.model_name"):
        registered_model_name(reg.model_copy(update={"model_name": "m/{dataset}"}), "x")
    # every rule of params.yaml parses, and it keeps an absolute AP floor for the first model
    assert any(r.metric == "AP" and r.kind == "min" and r.threshold > 0 for r in parse_rules(reg))


# ----------------------------------------------------------------------------- registry

@pytest.mark.slow
def test_register_logs_run_content_and_a_servable_model(env):
    import mlflow

    from pose.serving.model import load_registered_model

    extra = env.root / "content-extra" / "plots" / "eval"          # like dvc.yaml's --artifact data/plots/eval
    extra.mkdir(parents=True)
    (extra / "overlay.png").write_bytes(b"png")
    rec = env.register("content", artifacts=[extra], noise_medium=6, noise_large=6, seed=0)
    assert rec["version"] == 1 and rec["promoted"] and rec["decision"] == "promoted"
    assert rec["reason"].startswith("no champion yet") and rec["gate_passed"] is True
    floor = [r for r in rec["rules"] if r["kind"] == "min"]
    assert floor and all(r["passed"] and r["challenger"] == pytest.approx(rec["AP"], abs=1e-6) for r in floor)
    assert set(rec["aliases"]) == {"challenger", "champion"}
    client = env.client()
    run = client.get_run(rec["run_id"])
    tags = run.data.tags
    for key in ("git.commit", "git.dirty", "dataset", "eval_data_hash", "data.source_fingerprint"):
        assert key in tags, key
    assert tags["dataset"] == "coco-mini" and tags["eval_data_hash"] == rec["eval_data_hash"]
    assert run.data.params["train.use_curriculum"] == "True"
    assert "kp_AP/nose" in run.data.metrics and run.data.metrics["AP"] == pytest.approx(rec["AP"])
    arts = {f.path for d in ("", "eval", "model", "plots", "checkpoint", "data")
            for f in client.list_artifacts(rec["run_id"], d or None)}
    for path in ("model_card.md", "eval/metrics.json", "eval/results.json", "eval/annotations.json",
                 "model/MLmodel", "checkpoint/best.pt", "plots/per_keypoint_ap.png", "data/eval_images.json",
                 "plots/eval"):
        assert path in arts, path
    assert [f.path for f in client.list_artifacts(rec["run_id"], "eval")] == \
        ["eval/annotations.json", "eval/metrics.json", "eval/results.json"]           # extra folder kept apart
    card = mlflow.artifacts.load_text(f"runs:/{rec['run_id']}/model_card.md")
    assert "# Model card: content v1" in card and "**promoted** (champion before: none)" in card
    floor_min = floor[0]["threshold"]
    # the rule table, from the rule results
    assert f"| `AP >= {floor_min:g}` (min) | n/a |" in card and "| PASS |" in card
    mv = client.get_model_version("content", "1")
    assert mv.tags["data.source_fingerprint"] == tags["data.source_fingerprint"]
    assert client.get_registered_model("content").tags["data.fingerprint"] == tags["data.source_fingerprint"]
    assert json.loads(client.get_registered_model("content").tags["champion.history"]) == [1]

    # the registered pyfunc model: images in, persons out, with the evaluation's test-time settings
    # (the contract and its equality with `pose predict`: tests/test_serving.py)
    uri = "models:/content@champion"
    info = mlflow.models.get_model_info(uri)
    assert info.signature.inputs.input_names() == ["image"]
    defaults = {p.name: p.default for p in info.signature.params.params}
    assert defaults["input_size"] == env.base["evaluate"]["input_size"] and defaults["flip_test"] is False
    assert info.saved_input_example_info is not None and info.metadata["keypoint_names"][0] == "nose"
    model = mlflow.pyfunc.load_model(uri)
    image = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    persons = model.predict({"image": [image]}, params={"min_person_score": 0.0})
    assert isinstance(persons, list) and len(persons) == 1 and isinstance(persons[0], list)
    assert all(np.asarray(p["keypoints"]).shape == (K, 3) and len(p["bbox"]) == 4 for p in persons[0])
    # torch module for `pose predict --model models:/...`
    net = load_registered_model(uri, tracking_uri=env.base["registry"]["tracking_uri"])
    outs = net(__import__("torch").zeros(1, 3, 64, 64))
    assert outs[0].shape == (1, 2 * K, 16, 16)


def test_gate_promotes_only_a_better_model_without_scale_regression(env):
    name = "gate"
    env.fake(name, noise_medium=6, noise_large=6, seed=0)                         # v1 champion (AP .40)
    better = env.register(name, noise_medium=4, noise_large=4, seed=1)            # v2: better (AP .53)
    assert better["promoted"] and better["decision"] == "promoted", better["reason"]
    assert 0 < better["ci_AP"]["ci_low"] < better["ci_AP"]["delta"] < better["ci_AP"]["ci_high"]
    assert better["champion_AP_before"] < better["AP"] and better["champion_before"] == 1
    t = _tags(env, name, 2)
    assert t["promotion.decision"] == "promoted" and t["promotion.champion_before"] == "1"
    assert t["promotion.AP_delta_ci95"].startswith("[+")
    tagged = rules_from_tags(t)
    assert [r.to_dict() for r in tagged] == better["rules"] and all(r.passed for r in tagged)
    gain = _by(tagged, "AP", "min_delta")
    assert gain.champion == pytest.approx(better["champion_AP_before"], abs=1e-6) and 0 < gain.ci_low < gain.delta
    assert "PROMOTED to champion" in env.client().get_model_version(name, "2").description
    card = mlflow_text(better["run_id"], "model_card.md")
    assert "**promoted** (champion before: v1; compared on: same evaluation data)" in card
    assert f"| `AP >= champion + 0.005` (min_delta) | {better['champion_AP_before']:.4f} | {better['AP']:.4f} |" in card
    worse = env.fake(name, noise_medium=8, noise_large=8, seed=2)                 # v3: worse
    assert not worse["promoted"] and worse["decision"] == "kept_champion"
    assert _tags(env, name, 3)["promotion.decision"] == "kept_champion"
    # v4: much better on large persons, worse on medium ones -> AP up, APM down beyond tolerance
    mixed = env.fake(name, noise_medium=4.4, noise_large=0, seed=0)
    champ_m = json.loads(better_metrics(env, better).read_text())
    mixed_m = json.loads(mixed["metrics"].read_text())
    assert mixed_m["AP"] >= champ_m["AP"] + 0.005 and mixed_m["APM"] < champ_m["APM"] - 0.02   # the setup
    assert not mixed["promoted"] and mixed["decision"] == "kept_champion" and mixed["gate_passed"] is False
    tagged = rules_from_tags(_tags(env, name, 4))          # the decision's data, not its English reason
    assert not _by(tagged, "APM", "max_drop").passed and _by(tagged, "APM", "max_drop").delta < -0.02
    assert _by(tagged, "AP", "min_delta").passed and _by(tagged, "AP", "min").passed
    assert [r["metric"] for r in mixed["rules"] if not r["passed"]] == ["APM"]
    client = env.client()
    assert int(client.get_model_version_by_alias(name, "champion").version) == 2
    assert int(client.get_model_version_by_alias(name, "challenger").version) == 4
    assert json.loads(client.get_registered_model(name).tags["champion.history"]) == [1, 2]


def test_no_model_below_the_floor_becomes_champion_not_even_the_first(env):
    import mlflow
    from mlflow.exceptions import MlflowException

    template = "floor-{dataset}"                      # registered as floor-coco-mini (data.dataset)
    rules = [{"metric": "AP", "min": 0.6}, {"metric": "AP", "min_delta": 0.005}, {"metric": "APM", "max_drop": 0.02}]
    low = env.register(template, registry={"rules": rules}, noise_medium=6, noise_large=6, seed=0)   # AP ~ .4
    assert low["model_name"] == "floor-coco-mini" and low["AP"] < 0.6
    assert not low["promoted"] and low["decision"] == "rejected" and low["aliases"] == ["challenger"]
    client = env.client()
    with pytest.raises(MlflowException, match="champion"):
        client.get_model_version_by_alias("floor-coco-mini", "champion")
    tagged = rules_from_tags(_tags(env, "floor-coco-mini", 1))
    assert [r.status for r in tagged] == ["fail", "n/a", "n/a"]
    assert tagged[0].challenger == pytest.approx(low["AP"], abs=1e-6)  # tags keep 6 decimals
    card = mlflow.artifacts.load_text(f"runs:/{low['run_id']}/model_card.md")
    assert "**rejected**" in card and "| FAIL (below the absolute floor) |" in card
    high = env.register(template, registry={"rules": rules}, noise_medium=1, noise_large=1, seed=1)
    assert high["AP"] >= 0.6 and high["promoted"] and high["champion_before"] is None
    assert int(client.get_model_version_by_alias("floor-coco-mini", "champion").version) == 2
    assert json.loads(client.get_registered_model("floor-coco-mini").tags["champion.history"]) == [2]


def mlflow_text(run_id: str, path: str) -> str:
    import mlflow

    return mlflow.artifacts.load_text(f"runs:/{run_id}/{path}")


def better_metrics(env: Env, rec: dict) -> Path:
    import mlflow

    return Path(mlflow.artifacts.download_artifacts(run_id=rec["run_id"], artifact_path="eval/metrics.json",
                                                    dst_path=str(env.root / f"dl-{rec['run_id']}")))


def test_force_promotion_needs_a_reason_and_rollback_restores_the_previous_champion(env):
    from pose.cli import app

    name = "manual"
    env.fake(name, noise_medium=3, noise_large=3, seed=0)                         # v1 champion
    env.fake(name, noise_medium=9, noise_large=9, seed=1)                         # v2 kept (worse)
    pf = env.params_file(name)
    runner = CliRunner()
    res = runner.invoke(app, ["promote", "--version", "2", "--force", "--params", str(pf)])
    assert res.exit_code != 0 and "--reason" in res.output
    res = runner.invoke(app, ["promote", "--version", "2", "--force", "--reason", "hotfix for customer X",
                              "--params", str(pf)])
    assert res.exit_code == 0, res.output
    client = env.client()
    assert int(client.get_model_version_by_alias(name, "champion").version) == 2
    t = _tags(env, name, 2)
    assert t["promotion.decision"] == "forced" and "hotfix for customer X" in t["promotion.reason"]
    assert "promotion.forced_by" in t
    res = runner.invoke(app, ["rollback", "--reason", "v2 misses small people", "--params", str(pf)])
    assert res.exit_code == 0, res.output
    assert int(client.get_model_version_by_alias(name, "champion").version) == 1
    assert json.loads(client.get_registered_model(name).tags["champion.history"]) == [1]
    t = _tags(env, name, 2)
    assert t["promotion.decision"] == "rolled_back" and t["promotion.rollback_reason"] == "v2 misses small people"
    res = runner.invoke(app, ["rollback", "--reason", "again", "--params", str(pf)])
    assert res.exit_code != 0 and "no previous champion" in res.output
    # the gate on an unchanged champion is a no-op
    res = runner.invoke(app, ["promote", "--version", "1", "--params", str(pf)])
    assert res.exit_code == 0 and json.loads(res.output[res.output.index("{"):])["decision"] == "already_champion"


def test_champion_is_reevaluated_on_the_challengers_data_once(env):
    name = "reeval"
    subset = copy.deepcopy(env.gt)
    n_all = len(env.gt["images"])
    keep = {im["id"] for im in subset["images"][:n_all * 2 // 3]}
    subset["images"] = [im for im in subset["images"] if im["id"] in keep]
    subset["annotations"] = [a for a in subset["annotations"] if a["image_id"] in keep]
    env.fake(name, gt=subset, noise_medium=5, noise_large=5, seed=0)             # v1 on 2/3 of the images
    calls = []

    def reevaluate(ckpt: Path, annotations: Path):
        calls.append((Path(ckpt).name, Path(annotations).name))
        gt = json.loads(Path(annotations).read_text())
        res = synth_results(gt, noise_medium=5, noise_large=5, seed=0)
        return evaluate_results(gt, res), res

    rec = env.fake(name, reevaluate=reevaluate, noise_medium=1, noise_large=1, seed=1)       # v2 on all images
    assert calls == [("best.pt", "annotations.json")]
    assert rec["promoted"] and "re-evaluated on" in rec["reason"] and rec["ci"]["metrics"]["AP"]["ci_low"] is not None
    h16 = rec["eval_data_hash"][:16]
    client = env.client()
    assert f"reeval.{h16}.AP" in _tags(env, name, 1)
    assert any(f.path == f"reeval/{h16}/results.json"
               for f in client.list_artifacts(client.get_model_version(name, "1").run_id, f"reeval/{h16}"))
    # gating v1-era champion again on the same data uses the cached re-evaluation
    from pose.registry.promotion import promote, rollback

    p = env.sections(name)
    rollback(p.registry, p.data, reason="test")
    rec3 = promote(p.registry, p.data, p.catalogue, version=2, reevaluate=reevaluate)
    assert len(calls) == 1 and "cached re-evaluation" in rec3["reason"] and rec3["promoted"]

    # `pose compare v1 v2` reuses that cached re-evaluation: a like-for-like verdict on all of v2's images
    from pose.cli import app

    pf = env.params_file(name)
    out = env.root / "cmp-reeval"
    res = CliRunner().invoke(app, ["compare", "v1", "v2", "--no-log", "--out-dir", str(out),
                                   "--images", str(env.images), "--params", str(pf)])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("B (candidate) is better: AP +"), res.output        # the verdict, first
    summary = json.loads((out / "summary.json").read_text())
    v = summary["verdict"]
    assert v["basis"] == "a_reeval" and v["n_images"] == n_all and summary["bootstrap"]["n_images"] == n_all
    assert v["better"] == "B" and 0 < v["ci_low"] < v["AP_delta"] < v["ci_high"]
    assert v["AP_delta"] == pytest.approx(rec["AP"] - rec["champion_AP_before"], abs=1e-6)
    assert v["gate_decided"] and v["gate_passed"] and v["failed_rules"] == []
    assert v["recorded"]["decision"] == "promoted" and v["recorded"]["champion_before"] == "1"
    assert [(r["metric"], r["kind"], r["passed"]) for r in v["rules"]] == \
        [(r["metric"], r["kind"], r["passed"]) for r in rec3["rules"]]
    md = (out / "report.md").read_text()
    assert f"cached by the promotion gate under `reeval/{h16}/` of A's run" in md
    assert "**Gate** (`registry.rules`, B as challenger vs A as champion): **PASS**" in md
    assert "(the same comparison as this report)" in md
    assert len(list((out / "overlays").glob("*.png"))) == 4


def test_compare_shows_na_for_missing_and_undefined_values():
    from pose.registry.deltas import metric_rows
    from pose.registry.report import short

    rows = metric_rows({"AP": 0.5, "APM": -1.0}, {"AP": 0.6, "APM": 0.3}, ["AP", "APM", "APL"], None)
    assert rows == [["AP", "0.5000", "0.6000", "+0.1000", "n/a"], ["APM", "n/a", "0.3000", "n/a", "n/a"]]
    assert short("ab" * 32) == "abababababab…" and short(None) == "n/a" and short("coco-mini") == "coco-mini"


RACE = """
import json, os, sys, time
from pathlib import Path
import pose.registry.promotion as P
P._critical_hook = lambda: time.sleep({hold})
ready, go = Path(sys.argv[2]), Path(sys.argv[3])
ready.touch()
while not go.exists():
    time.sleep(0.02)
from pose.cli import app
app(["promote", "--version", sys.argv[1], "--params", {params!r}])
"""


@pytest.mark.slow
def test_concurrent_promotions_leave_the_best_champion_and_consistent_tags(env, tmp_path):
    name = "race"
    env.fake(name, noise_medium=8, noise_large=8, seed=0)                         # v1 champion
    env.fake(name, gate=False, noise_medium=4, noise_large=4, seed=1)             # v2 better
    env.fake(name, gate=False, noise_medium=1, noise_large=1, seed=2)             # v3 best
    pf = env.params_file(name, bootstrap_samples=50)
    script = RACE.format(hold=2.0, params=str(pf))
    go = tmp_path / "go"
    envv = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    procs = {v: subprocess.Popen([sys.executable, "-c", script, v, str(tmp_path / f"ready{v}"), str(go)],
                                 cwd=env.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=envv)
             for v in ("2", "3")}
    deadline = time.time() + 120
    while not all((tmp_path / f"ready{v}").exists() for v in procs) and time.time() < deadline:
        time.sleep(0.05)
    go.touch()
    records = {}
    for v, p in procs.items():
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        records[v] = json.loads(out[out.index("{"):])
    # the two promotions overlapped and were serialized by the lock
    assert max(r["lock_wait_s"] for r in records.values()) > 1.0, records
    client = env.client()
    assert int(client.get_model_version_by_alias(name, "champion").version) == 3
    hist = json.loads(client.get_registered_model(name).tags["champion.history"])
    assert hist in ([1, 2, 3], [1, 3]), hist
    for v in hist[1:]:
        assert _tags(env, name, v)["promotion.decision"] == "promoted"
    if hist == [1, 3]:   # v3 first: v2 was then gated against v3, not v1
        assert records["2"]["decision"] == "kept_champion" and records["2"]["champion_before"] == 3
    else:
        assert records["3"]["champion_before"] == 2
    assert client.get_registered_model(name).tags["champion.change"].startswith("v3:")


def test_compare_report_has_metrics_cis_curves_diffs_and_overlays(env, tmp_path):
    from mlflow import MlflowClient

    from pose.registry.compare import compare

    name = "review"
    env.fake(name, noise_medium=6, noise_large=6, seed=0)
    subset = copy.deepcopy(env.gt)
    drop = {im["id"] for im in subset["images"][:3]}
    subset["images"] = [im for im in subset["images"] if im["id"] not in drop]
    subset["annotations"] = [a for a in subset["annotations"] if a["image_id"] not in drop]
    rec2 = env.register(name, gt=subset, gate=False, noise_medium=2, noise_large=2, seed=1)
    client = MlflowClient(env.base["registry"]["tracking_uri"])
    client.log_batch(client.get_model_version(name, "1").run_id,
                     metrics=[__import__("mlflow").entities.Metric("train/loss", 1.0 / s, 0, s) for s in range(1, 6)])
    client.log_batch(rec2["run_id"],
                     metrics=[__import__("mlflow").entities.Metric("train/loss", 0.8 / s, 0, s) for s in range(1, 6)])
    p = env.sections(name)
    out = compare(p.registry, p.data, p.catalogue, p.predict, "champion", "challenger", out_dir=tmp_path / "cmp",
                  images_dir=env.images)
    md = Path(out["markdown"]).read_text()
    for section in ("## AP family", "## Per scale", "## Per keypoint AP", "## Training curves", "## Params diff",
                    "## Data diff", "## Overlays"):
        assert section in md, section
    assert md.index("## Verdict") < md.index("## AP family")                        # the verdict comes first
    assert "images common to both evaluation sets" in md and "removed in B 3" in md
    assert "**Gate** (`registry.rules`, B as challenger vs A as champion): **cannot be decided here**" in md
    assert "has no recorded gate decision" in md                                    # v2 was registered ungated
    # data diff: labelled, shortened hashes and the first removed file names, not hundreds of bare names
    h1, h2 = (env.client().get_model_version(name, v).tags["eval_data_hash"] for v in ("1", "2"))
    assert f"- eval annotations sha256: `{h1[:12]}…` -> `{h2[:12]}…`" in md and h1 not in md
    removed = sorted(drop)
    assert f"removed: {removed[0]:012d}.jpg, {removed[1]:012d}.jpg, {removed[2]:012d}.jpg" in md
    assert "-1.0000" not in md and "–" not in md
    s = out["summary"]
    assert s["bootstrap"]["n_images"] == len(env.gt["images"]) - 3 and s["eval_images"]["removed"] == 3
    v = s["verdict"]
    assert v["basis"] == "common_images" and v["gate_decided"] is False and v["gate_passed"] is None
    assert v["better"] == "B" and v["significant"] and v["ci_low"] > 0          # noise 2 px vs 6 px
    assert (tmp_path / "cmp" / "training_curves.png").stat().st_size > 1000
    assert len(list((tmp_path / "cmp" / "overlays").glob("*.png"))) == 4
    page = Path(out["html"]).read_text()
    assert page.count("data:image/png;base64,") == 5 and "<table>" in page
    logged = {f.path for f in client.list_artifacts(rec2["run_id"], out["artifact_path"])}
    assert f"{out['artifact_path']}/report.html" in logged


# ----------------------------------------------------------------------------- registration happens once

def registry_state(env: Env, name: str) -> dict:
    """Everything a registration writes to the registry: versions (aliases, tags, description, run),
    the registered model's aliases and tags."""
    client = env.client()
    versions = {}
    for mv in client.search_model_versions(f"name='{name}'"):
        mv = client.get_model_version(name, mv.version)
        versions[int(mv.version)] = {"aliases": sorted(mv.aliases), "tags": dict(mv.tags),
                                     "description": mv.description, "run_id": mv.run_id}
    try:
        rm = client.get_registered_model(name)
        model = {"aliases": dict(rm.aliases), "tags": dict(rm.tags)}
    except Exception:  # noqa: BLE001 - not registered yet
        model = None
    return {"versions": versions, "model": model}


@contextlib.contextmanager
def immutable(path: Path):
    """``chattr +i path`` (a real read-only file / folder, also for root), always undone."""
    if os.geteuid() != 0:
        pytest.skip("chattr +i needs root")
    proc = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"chattr +i not supported here: {proc.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def pose_register(env: Env, name: str, evidence: tuple, out: Path) -> subprocess.CompletedProcess:
    """`pose register` in a subprocess, as the register stage runs it."""
    from repo_setup import BIN, pipeline_env

    metrics, results, ann = evidence
    cmd = [str(BIN / "pose"), "register", "--checkpoint", str(env.ckpt), "--metrics", str(metrics),
           "--eval-annotations", str(ann), "--eval-images", str(env.images), "--results", str(results),
           "--out", str(out), "--params", str(env.params_file(name))]
    return subprocess.run(cmd, cwd=env.root, capture_output=True, text=True, env=pipeline_env())


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    noise = [ln for ln in proc.stderr.splitlines() if ln.strip() and " INFO " not in ln and not ln.startswith("error:")]
    assert len(errors) == 1 and not noise, proc.stderr
    return errors[0]


@pytest.mark.slow
def test_register_rerun_reuses_the_version_and_says_so_in_one_line(env):
    """The same checkpoint + evaluation registered twice: one version; the rerun writes nothing to the
    registry and rewrites the record DVC deleted before the stage ran."""
    name = "once"
    ev = env.evidence(noise_medium=3, noise_large=3, seed=0)
    out = env.root / name / "data" / "registry" / "registration.json"
    first = pose_register(env, name, ev, out)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.startswith(f"registered {name} v1 ") and len(first.stdout.splitlines()) == 1, first.stdout
    record = json.loads(out.read_text())
    before = registry_state(env, name)
    assert list(before["versions"]) == [1] and before["versions"][1]["aliases"] == ["challenger", "champion"]
    tags = before["versions"][1]["tags"]
    assert tags["registration.status"] == "complete"
    assert tags["checkpoint.sha256"] == record["key"]["checkpoint.sha256"] == __import__("pose.io").io.sha256_file(
        env.ckpt)
    out.unlink()                                                      # DVC removes the stage's output first
    again = pose_register(env, name, ev, out)
    assert again.returncode == 0, again.stderr[-3000:]
    lines = again.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"already registered: {name} v1 has this checkpoint and evaluation")
    assert "nothing new registered" in lines[0]
    assert registry_state(env, name) == before                       # not one write
    rerun = json.loads(out.read_text())
    assert rerun.pop("new_version") is False and record.pop("new_version") is True
    assert rerun == record
    # another evaluation of the same checkpoint is another version
    other = pose_register(env, name, env.evidence(noise_medium=6, noise_large=6, seed=1), out)
    assert other.returncode == 0 and other.stdout.startswith(f"registered {name} v2 "), other.stdout + other.stderr


@pytest.mark.slow
def test_register_with_a_read_only_record_folder_changes_nothing_and_the_rerun_registers_once(env):
    name = "ro-folder"
    env.fake(name, noise_medium=6, noise_large=6, seed=0)                         # v1 champion
    out = env.root / name / "data" / "registry" / "registration.json"
    out.parent.mkdir(parents=True)
    ev = env.evidence(noise_medium=2, noise_large=2, seed=1)                      # better: would be promoted
    before = registry_state(env, name)
    with immutable(out.parent):
        line = _one_error_line(pose_register(env, name, ev, out))
        assert f"cannot write the registration record in {out.parent}/" in line and "nothing was registered" in line
        assert registry_state(env, name) == before                   # no version, no alias moved
    ok = pose_register(env, name, ev, out)
    assert ok.returncode == 0, ok.stderr[-3000:]
    after = registry_state(env, name)
    assert sorted(after["versions"]) == [1, 2] and json.loads(out.read_text())["version"] == 2
    assert after["model"]["aliases"] == {"challenger": 2, "champion": 2}
    assert json.loads(after["model"]["tags"]["champion.history"]) == [1, 2]
    assert pose_register(env, name, ev, out).stdout.startswith(f"already registered: {name} v2 ")
    assert registry_state(env, name) == after


@pytest.mark.slow
def test_register_with_a_read_only_registry_database_changes_nothing_and_the_rerun_registers_once(env):
    name = "ro-db"
    env.fake(name, noise_medium=6, noise_large=6, seed=0)                         # v1 champion
    out = env.root / name / "data" / "registry" / "registration.json"
    ev = env.evidence(noise_medium=2, noise_large=2, seed=1)
    before = registry_state(env, name)
    db = env.root / "mlflow.db"
    with immutable(db):
        line = _one_error_line(pose_register(env, name, ev, out))
        assert f"registry sqlite:///{db} is not writable (attempt to write a readonly database)" in line, line
        # promote and rollback refuse the same way
        from pose.cli import app

        res = CliRunner().invoke(app, ["promote", "--version", "1", "--params", str(env.params_file(name))])
        assert res.exit_code == 1 and "is not writable" in res.output and res.exception.__class__ is SystemExit
    assert registry_state(env, name) == before and not out.exists()
    ok = pose_register(env, name, ev, out)
    assert ok.returncode == 0, ok.stderr[-3000:]
    after = registry_state(env, name)
    assert sorted(after["versions"]) == [1, 2] and after["model"]["aliases"] == {"challenger": 2, "champion": 2}


def test_interrupted_registration_is_completed_by_the_rerun_not_duplicated(env):
    """The record folder turns read-only right after the version was created: the aliases have not
    moved, the version is pending; the rerun completes that same version."""
    import pose.registry.mlflow_registry as R
    from pose.registry.errors import RegistryError

    name = "interrupted"
    env.fake(name, noise_medium=6, noise_large=6, seed=0)                         # v1 champion
    out = env.root / name / "data" / "registry" / "registration.json"
    out.parent.mkdir(parents=True)
    ev = env.evidence(noise_medium=2, noise_large=2, seed=1)
    metrics, results, ann = ev
    before = registry_state(env, name)
    frozen = contextlib.ExitStack()

    def hook(step: str) -> None:
        if step == "version_created":
            frozen.enter_context(immutable(out.parent))

    def register():
        p = env.sections(name)
        return R.register_run(*register_sections(p), logged_params=flatten(p.as_dict()), checkpoint=env.ckpt,
                              eval_metrics=metrics, eval_annotations=ann, results=results, out=out)

    R._step_hook = hook
    try:
        with frozen, pytest.raises(RegistryError) as err:
            register()
    finally:
        R._step_hook = None
    msg = str(err.value)
    assert "\n" not in msg and "v2 of interrupted exists but its registration is pending" in msg, msg
    mid = registry_state(env, name)
    assert sorted(mid["versions"]) == [1, 2] and mid["model"]["aliases"] == before["model"]["aliases"]
    assert mid["versions"][2]["aliases"] == [] and mid["versions"][2]["tags"]["registration.status"] == "pending"
    assert mid["model"]["tags"] == before["model"]["tags"]            # history, fingerprint untouched
    record = register()
    assert record["version"] == 2 and record["new_version"] is True and record["decision"] == "promoted"
    after = registry_state(env, name)
    assert sorted(after["versions"]) == [1, 2] and after["model"]["aliases"] == {"challenger": 2, "champion": 2}
    assert after["versions"][2]["tags"]["registration.status"] == "complete"
    assert json.loads(after["model"]["tags"]["champion.history"]) == [1, 2]
    client = env.client()
    runs = client.search_runs([client.get_run(record["run_id"]).info.experiment_id],
                              f"tags.`eval.metrics_sha256` = '{record['key']['eval.metrics_sha256']}'")
    assert [r.info.run_id for r in runs] == [record["run_id"]]                    # one MLflow run too
    assert register()["new_version"] is False


def test_promote_and_rollback_usage_errors_exit_2_and_promote_prints_a_human_line_first(env):
    from pose.cli import app

    name = "cli-lines"
    env.fake(name, noise_medium=3, noise_large=3, seed=0)                         # v1 champion
    env.fake(name, gate=False, noise_medium=9, noise_large=9, seed=1)             # v2 worse
    pf = str(env.params_file(name))
    runner = CliRunner()
    from repo_setup import BIN, pipeline_env

    for args in (["promote", "--version", "2", "--force"], ["rollback"], ["rollback", "--reason", " "]):
        proc = subprocess.run([str(BIN / "pose"), *args, "--params", pf], cwd=env.root, capture_output=True,
                              text=True, env=pipeline_env())
        lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: pose "), (args, lines)
        assert "--reason" in lines[0]
    assert registry_state(env, name)["model"]["aliases"]["champion"] == 1
    res = runner.invoke(app, ["promote", "--version", "2", "--params", pf])
    assert res.exit_code == 0, res.output
    first, rest = res.output.split("\n", 1)
    assert first.startswith(f"{name} v2 not promoted (kept_champion): champion stays v1; fail: AP >= champion"), first
    assert json.loads(rest)["decision"] == "kept_champion"
    res = runner.invoke(app, ["promote", "--version", "2", "--force", "--reason", "ticket 7", "--params", pf])
    assert res.output.startswith(f"{name} v2 is the new champion (forced; was v1; AP "), res.output
    assert "ticket 7" in res.output.splitlines()[0]
    res = runner.invoke(app, ["rollback", "--reason", "too slow", "--params", pf])
    assert res.output.startswith(f"{name}: champion rolled back from v2 to v1 (too slow)"), res.output


def test_compare_names_an_unknown_alias_and_lists_what_exists(env):
    from pose.cli import app

    name = "aliases"
    env.fake(name, noise_medium=3, noise_large=3, seed=0)
    pf = str(env.params_file(name))
    res = CliRunner().invoke(app, ["compare", "champion", "nosuchalias", "--no-log", "--params", pf])
    assert res.exit_code == 1, res.output
    assert res.output.strip() == (f"error: model '{name}' has no alias 'nosuchalias': unknown alias "
                                  f"(aliases: challenger (v1), champion (v1); versions: v1)")
    res = CliRunner().invoke(app, ["compare", "v1", "v7", "--no-log", "--params", pf])
    assert res.output.strip() == (f"error: model '{name}' has no version 7 "
                                  f"(aliases: challenger (v1), champion (v1); versions: v1)")


def test_compare_reports_of_two_models_do_not_overwrite_each_other_and_find_the_images(env):
    """Two versions of a sweep model, then two of the production model: two reports, named by model and
    version, titled with the model names; the overlays find the validation images where the data lives
    (the dataset mirror) without --images, and say where they looked when they are not there."""
    from pose.cli import app
    from pose.registry.compare import compare

    reports = {}
    for name in ("cmp-sweep", "cmp-prod"):
        env.fake(name, noise_medium=6, noise_large=6, seed=0)
        env.fake(name, gate=False, noise_medium=2, noise_large=2, seed=1)
        p = env.sections(name)
        out = compare(p.registry, p.data, p.catalogue, p.predict, "v1", "v2")    # default report folder
        reports[name] = out
        assert Path(out["out_dir"]) == Path("data/compare") / name / "v1_vs_v2"
        assert out["artifact_path"] == f"compare/{name}/v1_vs_v2"
        md = Path(out["markdown"]).read_text()
        assert md.startswith(f"# Compare A = {name} v1 (champion) vs B = {name} v2 (challenger)\n"), md[:200]
        assert len(list((Path(out["out_dir"]) / "overlays").glob("*.png"))) == 4   # images found in the mirror
        assert not any(n.startswith("No overlays") for n in out["summary"]["notes"])
    assert reports["cmp-sweep"]["markdown"] != reports["cmp-prod"]["markdown"]
    assert "cmp-sweep v1" in Path(reports["cmp-sweep"]["html"]).read_text()     # the first report is still there
    # no images anywhere: one line saying where it looked and how to get them
    p = env.params("cmp-prod")
    p["data"].update(mirror=str(env.root / "no-mirror"), raw_dir=str(env.root / "no-raw"))
    f = env.root / "params-missing.yaml"
    f.write_text(__import__("yaml").safe_dump(p, sort_keys=False))
    res = CliRunner().invoke(app, ["compare", "v1", "v2", "--no-log", "--out-dir", str(env.root / "cmp-missing"),
                                   "--params", str(f)])
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if ln.startswith("No overlays"))
    assert f"looked in {env.root / 'no-raw' / 'coco-mini' / 'val2017'}" in line
    assert f"dvc pull {env.root / 'no-raw'}/coco-mini" in line and "--images DIR" in line


def test_overlay_panel_without_a_person_says_so():
    import tempfile

    import cv2

    from pose.registry.figures import side_by_side

    image = np.full((120, 160, 3), 90, np.uint8)                      # drawn at 320 x 240 under a 24 px title

    with tempfile.TemporaryDirectory() as tmp:
        bare = cv2.imread(str(side_by_side(image, [("B v2", [])], Path(tmp) / "bare.png")))
        said = cv2.imread(str(side_by_side(image, [("B v2", [], "no person above min_person_score = 0.4")],
                                           Path(tmp) / "said.png")))
    assert bare.shape == said.shape
    changed = np.argwhere(np.abs(bare.astype(int) - said.astype(int)).sum(axis=2) > 0)
    assert len(changed) > 500                                          # a text band, not a bare photo
    rows = changed[:, 0]
    assert 24 + 90 < rows.min() and rows.max() < 24 + 150             # across the image's middle
    red = (said[..., 2] > 150) & (said[..., 0] < 80) & (said[..., 1] < 80)
    assert red.sum() > 50


# ----------------------------------------------------------------------------- data versions, notify

def test_source_fingerprint_tracks_folder_content(tmp_path):
    from pose.registry.data_version import source_fingerprint

    mirror = tmp_path / "mirror" / "ds"
    (mirror / "annotations").mkdir(parents=True)
    (mirror / "annotations" / "a.json").write_text("{}")
    base = _base_sections()
    secs = {"data": base.data.model_copy(update={"dataset": "ds", "mirror": str(tmp_path / "mirror"),
                                                 "train_split": "t", "val_split": "v"}),
            "catalogue": {"ds": CatalogueEntry.model_validate({"kind": "coco", "mirror": "ds"}),
                          "gen": CatalogueEntry.model_validate({"kind": "generated"})},
            "generated": base.generated.model_copy(update={"seed": 0}),
            "schedule": base.schedule.model_copy(update={"fingerprint": "content"})}

    def fingerprint(**kw):
        return source_fingerprint(secs["data"], secs["catalogue"], secs["generated"], secs["schedule"], **kw)

    a = fingerprint()
    assert a["files"] == 1 and a["source"].startswith("mirror:")
    assert fingerprint()["fingerprint"] == a["fingerprint"]
    (mirror / "v").mkdir()
    (mirror / "v" / "1.jpg").write_bytes(b"x")
    b = fingerprint()
    assert b["fingerprint"] != a["fingerprint"] and b["files"] == 2
    (mirror / "v" / "1.jpg").write_bytes(b"y")
    assert fingerprint()["fingerprint"] != b["fingerprint"]
    assert fingerprint(mode="stat")["fingerprint"] != fingerprint()["fingerprint"]
    secs["data"] = secs["data"].model_copy(update={"dataset": "gen"})
    g = fingerprint()
    secs["generated"] = secs["generated"].model_copy(update={"seed": 1})
    assert fingerprint()["fingerprint"] != g["fingerprint"]


def test_source_fingerprint_of_an_s3_prefix(monkeypatch):
    import boto3
    from moto import mock_aws

    from pose.registry.data_version import source_fingerprint

    for k, v in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    base = _base_sections()
    data = base.data.model_copy(update={"dataset": "s3ds", "mirror": "", "train_split": "t", "val_split": "v"})
    catalogue = {"s3ds": CatalogueEntry.model_validate({"kind": "coco", "sources": ["s3://bucket/coco"]})}
    schedule = base.schedule.model_copy(update={"fingerprint": "content"})

    def fingerprint():
        return source_fingerprint(data, catalogue, base.generated, schedule)

    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="bucket")
        s3.put_object(Bucket="bucket", Key="coco/annotations/a.json", Body=b"{}")
        s3.put_object(Bucket="bucket", Key="other/x", Body=b"ignored")
        a = fingerprint()
        assert a["files"] == 1 and a["source"] == "s3://bucket/coco"
        s3.put_object(Bucket="bucket", Key="coco/v/1.jpg", Body=b"new image")
        b = fingerprint()
        assert b["files"] == 2 and b["fingerprint"] != a["fingerprint"]
        s3.put_object(Bucket="bucket", Key="coco/v/1.jpg", Body=b"changed image")
        assert fingerprint()["fingerprint"] != b["fingerprint"]


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list = []
    fail_first = 0

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if _Hook.fail_first > 0:
            _Hook.fail_first -= 1
            self.send_response(503)
        else:
            _Hook.received.append(json.loads(body))
            self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture()
def webhook():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Hook)
    _Hook.received = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook", _Hook
    server.shutdown()


def test_notify_posts_with_retries_and_env_override(webhook, monkeypatch):
    from pose.registry.notify import notify, webhook_url

    url, hook = webhook
    hook.fail_first = 2
    assert notify("promotion", "v2 is champion", {"version": 2}, url=url, backoff=0.01)
    assert hook.received == [{"event": "promotion", "text": "v2 is champion", "version": 2}]
    assert not notify("x", "no url", url="")
    monkeypatch.setenv("POSE_NOTIFY_WEBHOOK", url)
    assert webhook_url("http://other") == url
    monkeypatch.delenv("POSE_NOTIFY_WEBHOOK")
    assert webhook_url("http://other") == "http://other"
    assert not notify("x", "down", url="http://127.0.0.1:9/none", retries=1, backoff=0.01)


def test_tracking_uri_env_override_and_lock_file_paths(monkeypatch):
    from pose.registry.lock import lock_path_for
    from pose.registry.tracking import tracking_uri

    reg = _base_sections().registry.model_copy(update={"tracking_uri": "sqlite:///mlflow.db"})
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(reg) == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.example")     # team mode: the shared server wins
    assert tracking_uri(reg) == "https://mlflow.example"
    assert lock_path_for("sqlite:///mlflow.db") == Path("mlflow.db.lock")
    assert lock_path_for("sqlite:////abs/x.db") == Path("/abs/x.db.lock")
    assert lock_path_for("file:///srv/mlruns") == Path("/srv/mlruns/.promotion.lock")
    assert lock_path_for("https://mlflow.example").parent.name == "pose-registry"
