"""MLflow run logging and model registration; the promotion gate lives in :mod:`pose.registry.promotion`.

What one ``pose register`` (stage ``register``) writes:

* an MLflow run: params.yaml flattened; eval metrics (AP family, per-keypoint AP as
  ``kp_AP/<joint>``, diagnostics); training summary and per-step curves (``train/*``, with
  steps); tags ``git.commit``, ``git.dirty``, ``dvc.<stage>.<out>`` (md5s from dvc.lock),
  ``dataset``, ``dataset.version`` (sha256 of the fetched MANIFEST.sha256), ``eval_data_hash``
  / ``data.train_hash`` (sha256 of the annotation files) and ``data.source_fingerprint``
  (:mod:`pose.registry.data_version`); artifacts::

      model/                      MLflow pyfunc model: images in, persons out (signature, input example,
                                  test-time settings; pose.registry.serving)
      checkpoint/best.pt          the raw training checkpoint
      eval/metrics.json, eval/results.json, eval/annotations.json   (re-scorable: bootstrap, compare)
      data/eval_images.json, data/train_images.json                (image id lists: data diffs)
      plots/train_steps.csv, plots/training_curves.png, plots/per_keypoint_ap.png
      model_card.md               generated after the promotion decision (pose.registry.model_card)
      <extra --artifact folders>  e.g. reports/ (validation reports, Data Docs, scale checks)

* a registered model version of :func:`pose.registry.tracking.registered_model_name`
  (``registry.model_name``, ``{dataset}`` = ``data.dataset``; source: the run's ``model/``) with alias
  ``challenger`` and
  tags ``AP``, ``eval_data_hash``, ``dataset``, ``dataset.version``, ``data.source_fingerprint``;
* the promotion gate (:func:`pose.registry.promotion.promote`, rules ``registry.rules``), whose
  decision and rule results land in the version's ``promotion.*`` tags (``promotion.rules``:
  JSON) and description;
* registered-model tag ``data.fingerprint``: the source fingerprint of the last registered
  data (what the scheduled retrain compares against);
* ``data/registry/registration.json`` (written atomically).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from pose.io import atomic_write_json, sha256_file
from pose.params import flatten
from pose.registry.model_card import model_card
from pose.registry.promotion import promote
from pose.registry.rules import parse_rules
from pose.registry.tracking import registered_model_name, tracking_uri

log = logging.getLogger(__name__)
FINGERPRINT_ENV = "POSE_DATA_FINGERPRINT"
#: artifact folders register_run writes itself (the gate / compare read eval/ and data/)
RESERVED_ARTIFACT_DIRS = {"eval", "data", "model", "checkpoint", "plots", "compare", "reeval"}


def git_info(repo: Path = Path(".")) -> dict[str, str]:
    """``{"git.commit": sha or "unknown", "git.dirty": "true"|"false"|"unknown"}``."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
        return {"git.commit": sha, "git.dirty": str(bool(dirty)).lower()}
    except (subprocess.CalledProcessError, FileNotFoundError):
        return {"git.commit": "unknown", "git.dirty": "unknown"}


def dvc_lock_hashes(lock: Path = Path("dvc.lock")) -> dict[str, str]:
    """``{"dvc.<stage>.<out path>": md5}`` for every stage output recorded in dvc.lock (empty if absent)."""
    import yaml

    if not lock.exists():
        return {}
    data = yaml.safe_load(lock.read_text()) or {}
    out = {}
    for stage, body in (data.get("stages") or {}).items():
        for o in body.get("outs", []) or []:
            if "md5" in o:
                out[f"dvc.{stage}.{o['path']}"] = o["md5"]
    return out


def _read_steps(path: Path) -> list[Metric]:
    metrics = []
    if not path or not Path(path).exists():
        return metrics
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            step = int(row["step"])
            for k, v in row.items():
                if k in ("step", "epoch") or v in ("", None):
                    continue
                metrics.append(Metric(key=f"train/{k}", value=float(v), timestamp=0, step=step))
    return metrics


def read_val_epochs(path: Path | None) -> list[Metric]:
    """Validation during training (``val_epochs.csv`` of `pose.train.loop`) as MLflow
    metrics ``val/AP``, ``val/AP50``, ... with ``step`` = the (0-based) epoch; empty when absent."""
    metrics = []
    if not path or not Path(path).exists():
        return metrics
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            epoch = int(row["epoch"])
            for k, v in row.items():
                if k in ("epoch", "step", "images") or v in ("", None):
                    continue
                metrics.append(Metric(key=f"val/{k}", value=float(v), timestamp=0, step=epoch))
    return metrics


def _log_json(obj, artifact_file: str) -> None:
    mlflow.log_text(json.dumps(obj, indent=2, sort_keys=True, default=str), artifact_file)


def _flat_metrics(metrics: dict) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            out[k] = float(v)
        elif isinstance(v, dict) and k == "per_keypoint_AP":
            out.update({f"kp_AP/{j}": float(x) for j, x in v.items() if isinstance(x, (int, float))})
    return out


def data_tags(params: dict, eval_annotations: Path, train_annotations: Path | None, repo: Path = Path(".")) -> dict:
    """Dataset name / version / hash tags of a run (module docstring)."""
    from pose.registry.data_version import dataset_version, source_fingerprint

    d = params["data"]
    tags = {"dataset": d["dataset"], "eval_data_hash": sha256_file(eval_annotations)}
    version = dataset_version(Path(d["raw_dir"]) / d["dataset"])
    if version:
        tags["dataset.version"] = version
    if train_annotations and Path(train_annotations).is_file():
        tags["data.train_hash"] = sha256_file(train_annotations)
    fp = os.environ.get(FINGERPRINT_ENV, "").strip()
    if not fp:
        try:
            fp = source_fingerprint(params, repo)["fingerprint"]
        except (OSError, KeyError, ValueError) as exc:  # source gone / not configured: not fatal here
            log.warning("data source fingerprint unavailable: %s", exc)
    if fp:
        tags["data.source_fingerprint"] = fp
    return tags


def register_run(params: dict, *, checkpoint: Path, eval_metrics: Path, eval_annotations: Path,
                 out: Path, artifacts: list[Path] = (), train_metrics: Path | None = None,
                 train_steps: Path | None = None, reevaluate: Callable | None = None,
                 results: Path | None = None, train_annotations: Path | None = None, gate: bool = True) -> dict:
    """Log the pipeline run to MLflow, register the model and apply the promotion gate.

    Args:
        params: whole params.yaml dict (logged flattened; ``registry`` / ``data`` sections used).
        checkpoint: trained checkpoint (``best.pt``): logged raw under ``checkpoint/`` and as a
            pyfunc model under ``model/`` (the registered source).
        eval_metrics: metrics.json of the evaluate stage.
        eval_annotations: ground truth the metrics were computed on; its sha256 is the
            ``eval_data_hash`` tag that makes AP comparable across versions.
        out: registration record JSON (run id, version, aliases, decision), written atomically.
        artifacts: extra files/folders to log (reports, plots, data docs).
        train_metrics / train_steps: training summary JSON and per-step CSV (metrics with steps);
            ``val_epochs.csv`` beside ``train_steps``, when present, is logged as ``val/AP``,
            ``val/AP50``, ... with step = epoch.
        reevaluate: ``(checkpoint[, annotations]) -> metrics | (metrics, results)`` scoring the
            champion on this evaluation data when it was scored on other data.
        results: COCO results JSON of the evaluation (default: ``<eval_metrics>/../../eval/results.json``,
            the dvc.yaml layout, when it exists); logged so the gate / compare can re-score it.
        train_annotations: training annotation file (default: ``train.json`` beside
            ``eval_annotations`` when present): hash tag and image list.
        gate: run the promotion gate (False: register as challenger only).

    Returns the registration record.
    """
    from pose.registry.data_version import image_list
    from pose.registry.figures import plot_training_curves, steps_csv_series
    from pose.registry.serving import save_pyfunc_model

    reg = params["registry"]
    parse_rules(params)                      # bad registry.rules fail before anything is logged
    name = registered_model_name(params)
    mlflow.set_tracking_uri(tracking_uri(params))
    mlflow.set_experiment(reg["experiment"])
    client = MlflowClient()
    eval_metrics, eval_annotations = Path(eval_metrics), Path(eval_annotations)
    metrics = json.loads(eval_metrics.read_text())
    if results is None:
        cand = eval_metrics.parent.parent / "eval" / "results.json"
        results = cand if cand.is_file() else None
    if train_annotations is None:
        cand = eval_annotations.with_name("train.json")
        train_annotations = cand if cand.is_file() and cand != eval_annotations else None
    ap = float(metrics["AP"])
    dtags = data_tags(params, eval_annotations, train_annotations)
    data_hash = dtags["eval_data_hash"]
    tags = {**git_info(), **dvc_lock_hashes(), **dtags}
    eval_imgs = image_list(eval_annotations)
    train_imgs = image_list(train_annotations) if train_annotations else None
    tr_summary = json.loads(Path(train_metrics).read_text()) if train_metrics and Path(train_metrics).exists() else None
    with mlflow.start_run() as run, tempfile.TemporaryDirectory(prefix="pose-register-") as tmp:
        tmp = Path(tmp)
        mlflow.log_params(flatten(params))
        mlflow.set_tags(tags)
        mlflow.log_metrics(_flat_metrics(metrics))
        if tr_summary:
            mlflow.log_metrics({f"train/{k}": float(v) for k, v in tr_summary.items()
                                if isinstance(v, (int, float)) and not isinstance(v, bool)})
        steps = _read_steps(train_steps) if train_steps else []
        # per-epoch validation AP of the training run (val_epochs.csv beside the steps CSV, dvc.yaml layout)
        steps += read_val_epochs(Path(train_steps).with_name("val_epochs.csv")) if train_steps else []
        for i in range(0, len(steps), 1000):
            client.log_batch(run.info.run_id, metrics=steps[i:i + 1000])
        # evaluation evidence (re-scorable) and data lists
        evdir = tmp / "eval"
        evdir.mkdir()
        shutil.copyfile(eval_metrics, evdir / "metrics.json")
        shutil.copyfile(eval_annotations, evdir / "annotations.json")
        if results is not None:
            shutil.copyfile(results, evdir / "results.json")
        mlflow.log_artifacts(str(evdir), artifact_path="eval")
        _log_json(eval_imgs, "data/eval_images.json")
        if train_imgs is not None:
            _log_json(train_imgs, "data/train_images.json")
        # plots
        if train_steps and Path(train_steps).exists():
            mlflow.log_artifact(str(train_steps), artifact_path="plots")
            png = plot_training_curves({"train": steps_csv_series(Path(train_steps))}, tmp / "training_curves.png")
            if png:
                mlflow.log_artifact(str(png), artifact_path="plots")
        if metrics.get("per_keypoint_AP"):
            from pose.evaluate.plots import ap_per_keypoint_plot

            mlflow.log_artifact(str(ap_per_keypoint_plot(metrics, tmp / "per_keypoint_ap.png")), artifact_path="plots")
        # model: raw checkpoint + servable pyfunc model
        mlflow.log_artifact(str(checkpoint), artifact_path="checkpoint")
        save_pyfunc_model(Path(checkpoint), tmp / "model", params=params)
        mlflow.log_artifacts(str(tmp / "model"), artifact_path="model")
        for a in artifacts:
            a = Path(a)
            if a.is_dir():  # a folder named like one of ours (e.g. data/plots/eval) goes under its parent's name
                dest = f"{a.parent.name}/{a.name}" if a.name in RESERVED_ARTIFACT_DIRS else a.name
                mlflow.log_artifacts(str(a), artifact_path=dest)
            elif a.exists():
                mlflow.log_artifact(str(a))
        run_id, artifact_uri = run.info.run_id, run.info.artifact_uri

    try:
        client.create_registered_model(name, description=f"HigherHRNet bottom-up pose model (COCO-17 keypoints) "
                                                         f"trained on {params['data']['dataset']}")
    except MlflowException:
        pass  # already registered
    vtags = {"AP": f"{ap:.6f}", **{k: v for k, v in dtags.items()
                                   if k in ("eval_data_hash", "dataset", "dataset.version", "data.source_fingerprint")}}
    mv = client.create_model_version(name, source=f"{artifact_uri}/model", run_id=run_id, tags=vtags,
                                     description=f"run {run_id}; AP {ap:.4f} on eval data {data_hash[:12]} "
                                                 f"({params['data']['dataset']})")
    client.set_registered_model_alias(name, "challenger", mv.version)
    if "data.source_fingerprint" in dtags:
        client.set_registered_model_tag(name, "data.fingerprint", dtags["data.source_fingerprint"])

    if gate:
        decision = promote(params, version=mv.version, reevaluate=reevaluate, client=client)
    else:
        decision = {"promoted": False, "decision": "not_gated", "reason": "registered without the gate",
                    "champion_AP_before": None, "ci": None, "rules": [], "gate_passed": None}
    aliases = sorted(client.get_model_version(name, mv.version).aliases)
    record = {"model_name": name, "version": int(mv.version), "run_id": run_id, "aliases": aliases,
              "AP": ap, "champion_AP_before": decision.get("champion_AP_before"),
              "champion_before": decision.get("champion_before"), "promoted": bool(decision["promoted"]),
              "decision": decision["decision"], "reason": decision["reason"], "eval_data_hash": data_hash,
              "dataset": params["data"]["dataset"], "dataset_version": dtags.get("dataset.version"),
              "data_fingerprint": dtags.get("data.source_fingerprint"), "rules": decision.get("rules", []),
              "gate_passed": decision.get("gate_passed")}
    if decision.get("ci"):
        record["ci_AP"] = {k: decision["ci"]["metrics"]["AP"][k] for k in ("delta", "ci_low", "ci_high")}
    card = model_card(name=name, version=str(mv.version), run_id=run_id, params=params, tags=tags, metrics=metrics,
                      train_summary=tr_summary, record={**decision, "aliases": aliases},
                      n_eval_images=len(eval_imgs), n_train_images=len(train_imgs) if train_imgs is not None else None)
    with tempfile.TemporaryDirectory(prefix="pose-card-") as tmp:
        (Path(tmp) / "model_card.md").write_text(card)
        client.log_artifact(run_id, str(Path(tmp) / "model_card.md"))
    atomic_write_json(Path(out), record, indent=2, sort_keys=True)
    return record
