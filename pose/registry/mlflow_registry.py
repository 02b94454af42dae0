"""MLflow run logging, model registration and the champion/challenger promotion gate.

Registry conventions (MLflow model registry aliases, MLflow >= 2.3):

* every registered version gets the alias ``challenger`` when it is registered;
* ``champion`` moves to the new version when there is no champion yet, or when the
  new version's AP beats the champion's AP *on the same evaluation data* by at
  least ``registry.promotion_margin``. When the champion was evaluated on other
  data (different ``eval_data_hash`` tag), it is re-evaluated on the
  challenger's data first (``reevaluate`` callback) so the comparison is fair.

Every decision is written into the version's tags (``promotion.*``) and
description, so a promotion can always be justified after the fact.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from pose.params import flatten

AP_KEYS = ("AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL")


def file_sha256(*paths: Path) -> str:
    """sha256 hex digest over the bytes of the given files, in order."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def git_info(repo: Path = Path(".")) -> dict[str, str]:
    """``{"git.commit": sha or "unknown", "git.dirty": "true"|"false"|"unknown"}``."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
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


def _atomic_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=True)
    os.replace(tmp, path)


def champion_version(client: MlflowClient, name: str):
    """The model version holding alias ``champion``, or None."""
    try:
        return client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None


def decide_promotion(challenger_ap: float, champion_ap: float | None, margin: float) -> tuple[bool, str]:
    """Promotion rule: promote when there is no champion or ``challenger_ap >= champion_ap + margin``.

    Returns (promote, human-readable reason).
    """
    if champion_ap is None:
        return True, "no champion yet"
    if challenger_ap >= champion_ap + margin:
        return True, f"AP {challenger_ap:.4f} >= champion AP {champion_ap:.4f} + margin {margin}"
    return False, f"AP {challenger_ap:.4f} < champion AP {champion_ap:.4f} + margin {margin}"


def register_run(params: dict, *, checkpoint: Path, eval_metrics: Path, eval_annotations: Path,
                 out: Path, artifacts: list[Path] = (), train_metrics: Path | None = None,
                 train_steps: Path | None = None,
                 reevaluate: Callable[[Path], dict] | None = None) -> dict:
    """Log the pipeline run to MLflow, register the checkpoint and apply the promotion gate.

    Args:
        params: whole params.yaml dict (logged flattened; ``registry`` section used).
        checkpoint: trained checkpoint (``best.pt``), logged under artifact path ``model``.
        eval_metrics: metrics.json of the evaluate stage (AP family is logged).
        eval_annotations: ground truth the metrics were computed on; its sha256 is the
            ``eval_data_hash`` tag that makes AP comparable across versions.
        out: registration record JSON (run id, version, aliases, decision), written atomically.
        artifacts: extra files/folders to log (reports, plots, data docs).
        train_metrics / train_steps: training summary JSON and per-step CSV (logged as metrics with steps).
        reevaluate: ``checkpoint path -> metrics`` used to score the champion on this
            evaluation data when it was scored on other data.

    Returns the registration record.
    """
    reg = params["registry"]
    name = reg["model_name"]
    mlflow.set_tracking_uri(reg["tracking_uri"])
    mlflow.set_experiment(reg["experiment"])
    client = MlflowClient()
    metrics = json.loads(Path(eval_metrics).read_text())
    data_hash = file_sha256(eval_annotations)
    ap = float(metrics["AP"])
    tags = {**git_info(), **dvc_lock_hashes(), "dataset": params["data"]["dataset"], "eval_data_hash": data_hash}
    with mlflow.start_run() as run:
        mlflow.log_params(flatten(params))
        mlflow.set_tags(tags)
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))})
        if train_metrics and Path(train_metrics).exists():
            tm = json.loads(Path(train_metrics).read_text())
            mlflow.log_metrics({f"train/{k}": float(v) for k, v in tm.items() if isinstance(v, (int, float))})
        steps = _read_steps(train_steps) if train_steps else []
        for i in range(0, len(steps), 1000):
            client.log_batch(run.info.run_id, metrics=steps[i:i + 1000])
        mlflow.log_artifact(str(checkpoint), artifact_path="model")
        mlflow.log_artifact(str(eval_metrics))
        for a in artifacts:
            a = Path(a)
            if a.is_dir():
                mlflow.log_artifacts(str(a), artifact_path=a.name)
            elif a.exists():
                mlflow.log_artifact(str(a))
        run_id, artifact_uri = run.info.run_id, run.info.artifact_uri

    try:
        client.create_registered_model(name, description="HigherHRNet bottom-up pose model (COCO-17 keypoints)")
    except MlflowException:
        pass  # already registered
    mv = client.create_model_version(name, source=f"{artifact_uri}/model", run_id=run_id,
                                     tags={"AP": f"{ap:.6f}", "eval_data_hash": data_hash,
                                           "dataset": params["data"]["dataset"]})
    client.set_registered_model_alias(name, "challenger", mv.version)

    champ = champion_version(client, name)
    champ_ap = None
    if champ is not None:
        if champ.tags.get("eval_data_hash") == data_hash:
            champ_ap = float(champ.tags["AP"])
        elif reevaluate is not None:
            local = mlflow.artifacts.download_artifacts(f"models:/{name}/{champ.version}")
            champ_ckpt = next(Path(local).glob("*.pt"))
            champ_ap = float(reevaluate(champ_ckpt)["AP"])
        else:
            champ_ap = float(champ.tags.get("AP", "nan"))
    promote, reason = decide_promotion(ap, champ_ap, float(reg["promotion_margin"]))
    if champ is not None and champ.version == mv.version:
        promote = False
    client.set_model_version_tag(name, mv.version, "promotion.decision", "promoted" if promote else "kept_champion")
    client.set_model_version_tag(name, mv.version, "promotion.reason", reason)
    if promote:
        client.set_registered_model_alias(name, "champion", mv.version)
    client.update_model_version(name, mv.version, description=f"run {run_id}; AP {ap:.4f} on eval data {data_hash[:12]}; "
                                f"{'promoted to champion' if promote else 'not promoted'}: {reason}")
    aliases = sorted(client.get_model_version(name, mv.version).aliases)
    record = {"model_name": name, "version": int(mv.version), "run_id": run_id, "aliases": aliases,
              "AP": ap, "champion_AP_before": champ_ap, "promoted": promote, "reason": reason,
              "eval_data_hash": data_hash}
    _atomic_json(Path(out), record)
    return record
