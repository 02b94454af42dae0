"""MLflow run logging and model registration; the promotion gate lives in :mod:`pose.registry.promotion`.

What one ``pose register`` (stage ``register``) writes:

* an MLflow run: params.yaml flattened; eval metrics (AP family, per-keypoint AP as
  ``kp_AP/<joint>``, diagnostics); training summary and per-step curves (``train/*``, with
  steps); tags ``git.commit``, ``git.dirty``, ``dvc.<stage>.<out>`` (md5s from dvc.lock),
  ``dataset``, ``dataset.version`` (sha256 of the fetched MANIFEST.sha256), ``eval_data_hash``
  / ``data.train_hash`` (sha256 of the annotation files) and ``data.source_fingerprint``
  (:mod:`pose.registry.data_version`); artifacts::

      model/                      MLflow pyfunc model: images in, persons out (signature, input example,
                                  test-time settings; pose.serving.model)
      checkpoint/best.pt          the raw training checkpoint
      eval/metrics.json, eval/results.json, eval/annotations.json   (re-scorable: bootstrap, compare)
      data/eval_images.json, data/train_images.json                (image id lists: data diffs)
      plots/train_steps.csv, plots/training_curves.png, plots/per_keypoint_ap.png
      model_card.md               generated after the promotion decision (pose.registry.model_card)
      registration.json           the registration record (what a rerun of the same registration returns)
      <extra --artifact folders>  e.g. reports/ (validation reports, Data Docs, scale checks)

* a registered model version of :func:`pose.registry.tracking.registered_model_name`
  (``registry.model_name``, ``{dataset}`` = ``data.dataset``; source: the run's ``model/``) with
  tags ``AP``, ``eval_data_hash``, ``dataset``, ``dataset.version``, ``data.source_fingerprint``,
  the registration key (``checkpoint.sha256``, ``eval.metrics_sha256``, ``eval.results_sha256``:
  :mod:`pose.registry.versions`) and ``registration.status`` (``pending`` -> ``complete``);
* the promotion gate (:func:`pose.registry.promotion.gate_locked`, rules ``registry.rules``), whose
  decision and rule results land in the version's ``promotion.*`` tags (``promotion.rules``:
  JSON) and description;
* ``data/registry/registration.json`` (written atomically);
* then, last, alias ``challenger`` (and ``champion`` when the gate promotes), registered-model tag
  ``data.fingerprint`` (the source fingerprint of the last registered data: what the scheduled
  retrain compares against) and ``registration.status=complete``.

Registering the same checkpoint and evaluation again writes nothing to the registry: it returns
the existing version's record (:func:`register_run`).

Params sections read (handed in by ``pose.cli``, `pose.params`): ``registry``, ``data``,
``catalogue``, ``generated``, ``schedule`` (the data tags), ``model``, ``train`` (the model card) and
``evaluate``, ``predict``, ``serve`` (the settings stored with the model); the run's MLflow params are
``pose.params.flatten`` of params.yaml as written.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from pose.io import atomic_write_text, sha256_file
from pose.registry.errors import RegistryError
from pose.registry.evidence import oks_sigmas
from pose.registry.lock import registry_lock
from pose.registry.model_card import model_card
from pose.registry.preflight import (
    check_folder_writable,
    check_registry_writable,
    quiet_store_logs,
    sqlite_path,
    store_error,
)
from pose.registry.promotion import gate_locked
from pose.registry.rules import parse_rules
from pose.registry.tracking import registered_model_name, tracking_uri
from pose.registry.versions import COMPLETE, PENDING, STATUS_TAG, find_registered, is_complete, registration_key

if TYPE_CHECKING:
    from pose.params import (
        CatalogueEntry,
        DataSection,
        EvaluateSection,
        GeneratedSection,
        ModelSection,
        PredictSection,
        RegistrySection,
        ScheduleSection,
        ServeSection,
        TrainSection,
    )

log = logging.getLogger(__name__)
FINGERPRINT_ENV = "POSE_DATA_FINGERPRINT"
#: artifact folders register_run writes itself (the gate / compare read eval/ and data/)
RESERVED_ARTIFACT_DIRS = {"eval", "data", "model", "checkpoint", "plots", "compare", "reeval"}
#: the registration record, also logged to the run (what a rerun of the same registration returns)
RECORD_ARTIFACT = "registration.json"
#: test hook: called with "version_created" / "records_written" during a registration (fault injection)
_step_hook: Callable[[str], None] | None = None


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


def data_tags(data: DataSection, catalogue: Mapping[str, CatalogueEntry], generated: GeneratedSection,
              schedule: ScheduleSection, eval_annotations: Path, train_annotations: Path | None,
              repo: Path = Path(".")) -> dict:
    """Dataset name / version / hash tags of a run (module docstring). ``data``, ``catalogue``, ``generated``,
    ``schedule``: those params sections (`pose.params`), for the source fingerprint
    (:func:`pose.registry.data_version.source_fingerprint`)."""
    from pose.registry.data_version import dataset_version, source_fingerprint

    tags = {"dataset": data.dataset, "eval_data_hash": sha256_file(eval_annotations)}
    version = dataset_version(Path(data.raw_dir) / data.dataset)
    if version:
        tags["dataset.version"] = version
    if train_annotations and Path(train_annotations).is_file():
        tags["data.train_hash"] = sha256_file(train_annotations)
    fp = os.environ.get(FINGERPRINT_ENV, "").strip()
    if not fp:
        try:
            fp = source_fingerprint(data, catalogue, generated, schedule, repo)["fingerprint"]
        except (OSError, KeyError, ValueError) as exc:  # source gone / not configured: not fatal here
            log.warning("data source fingerprint unavailable: %s", exc)
    if fp:
        tags["data.source_fingerprint"] = fp
    return tags


def register_run(reg: RegistrySection, data: DataSection, catalogue: Mapping[str, CatalogueEntry],
                 generated: GeneratedSection, schedule: ScheduleSection, model: ModelSection, train: TrainSection,
                 evaluate: EvaluateSection, predict: PredictSection, serve: ServeSection, *, logged_params: dict,
                 checkpoint: Path, eval_metrics: Path, eval_annotations: Path,
                 out: Path, artifacts: list[Path] = (), train_metrics: Path | None = None,
                 train_steps: Path | None = None, reevaluate: Callable | None = None,
                 results: Path | None = None, train_annotations: Path | None = None, gate: bool = True) -> dict:
    """Log the pipeline run to MLflow, register the model and apply the promotion gate, once per
    checkpoint and evaluation.

    Idempotent: the version is keyed by the sha256 of ``checkpoint``, ``eval_metrics``, ``results``
    and ``eval_annotations`` (:mod:`pose.registry.versions`). When a version of the model has
    that key and its registration is complete, nothing is written to the registry: the record is
    rewritten from that version (``new_version: False``) and returned. A version whose
    registration was interrupted (tag ``registration.status`` = ``pending``) is completed, not
    duplicated.

    Order of the writes (all under the registry lock, after :mod:`pose.registry.preflight` has
    checked that the record's folder and a SQLite registry are writable, so a read-only one
    fails before anything is written): the MLflow run (reused when a finished run has the key
    but no version), the version (tags: key, ``registration.status=pending``), the gate's decision
    (tags, description), the model card and the record (run artifact ``registration.json``,
    then ``out``), and only then the aliases (``challenger``, ``champion`` when promoted, with
    ``champion.history``), the registered-model tag ``data.fingerprint`` and
    ``registration.status=complete``.

    Args:
        reg: the params ``registry`` section (`pose.params.RegistrySection`: name, tracking URI, experiment,
            rules, lock).
        data: the params ``data`` section (`pose.params.DataSection`: the model name, dataset tags).
        catalogue, generated, schedule: those params sections (the source fingerprint tag; ``catalogue``:
            the OKS sigmas of the gate).
        model, train: the params ``model`` / ``train`` sections (the model card).
        evaluate, predict, serve: the params ``evaluate`` / ``predict`` / ``serve`` sections (the test-time
            settings stored with the model: :func:`pose.serving.model.save_pyfunc_model`; the model card).
        logged_params: the run's MLflow params (``pose.params.flatten`` of params.yaml as written).
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

    Returns the registration record (``new_version``: False when an existing version was reused;
    ``key``: the four hashes). Raises RegistryError with one line (unreadable input, a folder or
    registry that is not writable, a write that failed: the line says what the registry holds
    now and that a rerun completes it), RuleError (bad ``registry.rules``), TimeoutError (lock).
    """
    parse_rules(reg)                         # bad registry.rules fail before anything is logged
    name = registered_model_name(reg, data.dataset)
    uri = tracking_uri(reg)
    checkpoint, out = Path(checkpoint), Path(out)
    eval_metrics, eval_annotations = Path(eval_metrics), Path(eval_annotations)
    if results is None:
        cand = eval_metrics.parent.parent / "eval" / "results.json"
        results = cand if cand.is_file() else None
    if train_annotations is None:
        cand = eval_annotations.with_name("train.json")
        train_annotations = cand if cand.is_file() and cand != eval_annotations else None
    try:
        key = registration_key(checkpoint, eval_metrics, eval_annotations, results)
        metrics = json.loads(eval_metrics.read_text())
        ap = float(metrics["AP"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RegistryError(f"cannot read the registration inputs: {exc}; nothing was registered") from None
    inputs = dict(checkpoint=checkpoint, eval_metrics=eval_metrics, eval_annotations=eval_annotations,
                  metrics=metrics, ap=ap, artifacts=artifacts, train_metrics=train_metrics, train_steps=train_steps,
                  results=results, train_annotations=train_annotations)
    mlflow.set_tracking_uri(uri)
    db = sqlite_path(uri)
    with quiet_store_logs():
        client = MlflowClient(uri)
        if db is None or db.exists():            # (a new SQLite registry holds nothing to reuse)
            try:
                mv = find_registered(client, name, key)
            except MlflowException as exc:
                raise store_error(exc, f"reading the registry {uri}", "nothing was registered") from exc
            if mv is not None and is_complete(mv):
                return _reused(client, name, mv, key, out)
        check_folder_writable(out.parent, "registration record")
        check_registry_writable(uri)
        with registry_lock(uri, float(reg.lock_timeout_s)):
            step, version = "looking up the registration key", None
            try:
                mv = find_registered(client, name, key)
                if mv is not None and is_complete(mv):
                    return _reused(client, name, mv, key, out)
                if mv is None:
                    step = "logging the MLflow run"
                    dtags = data_tags(data, catalogue, generated, schedule, eval_annotations, train_annotations)
                    run_id = _finished_run(client, reg.experiment, key) or \
                        _log_run(reg, generated, evaluate, predict, serve, logged_params, client,
                                 {**git_info(), **dvc_lock_hashes(), **dtags, **key}, inputs)
                    step = "creating the model version"
                    mv = _create_version(client, name, data.dataset, run_id, dtags, key, ap)
                version = int(mv.version)
                _hook("version_created")
                step = "recording the gate decision"
                decision = _decide(reg, oks_sigmas(catalogue, data.dataset), client, name, mv, gate, reevaluate)
                step = "writing the model card and the registration record"
                record = _write_records(data, model, train, evaluate, client, name, mv, key, inputs, decision, out)
                _hook("records_written")
                step = "moving the aliases"
                _finish(client, name, mv, decision)
            except (MlflowException, OSError) as exc:
                state = (f"v{version} of {name} exists but its registration is pending (aliases not moved): rerun "
                         f"`pose register` to complete v{version}" if version is not None else
                         "the registry is unchanged (no version created): rerun `pose register`")
                raise store_error(exc, f"registration of {name} ({step})", state) from exc
    return record


def _hook(step: str) -> None:
    if _step_hook is not None:
        _step_hook(step)


def _reused(client: MlflowClient, name: str, mv, key: dict, out: Path) -> dict:
    """The record of the complete version ``mv`` (its logged ``registration.json`` with the aliases it
    holds now, ``new_version: False``), written to ``out`` when the file differs. No registry write."""
    from pose.registry.evidence import download_artifacts

    with tempfile.TemporaryDirectory(prefix="pose-register-") as tmp:
        got = download_artifacts(mv.run_id, RECORD_ARTIFACT, Path(tmp))
        record = json.loads(got.read_text()) if got is not None and got.is_file() else _record_from_tags(name, mv)
    record.update(aliases=sorted(mv.aliases), new_version=False, key=key)
    text = json.dumps(record, indent=2, sort_keys=True, default=str)
    try:
        if not (out.is_file() and out.read_text() == text):
            atomic_write_text(out, text)
    except OSError as exc:
        raise RegistryError(f"{name} v{mv.version} is already registered with this checkpoint and evaluation, but "
                            f"the record {out} cannot be written: {exc.strerror or exc}; make {out.parent}/ "
                            f"writable and rerun") from None
    return record


def _record_from_tags(name: str, mv) -> dict:
    """A registration record rebuilt from the version's tags (versions registered without a logged record)."""
    t = mv.tags
    decision = t.get("promotion.decision", "not_gated")
    try:
        rules = json.loads(t.get("promotion.rules") or "[]")
    except ValueError:
        rules = []
    before = t.get("promotion.champion_before")
    return {"model_name": name, "version": int(mv.version), "run_id": mv.run_id, "AP": float(t.get("AP", "nan")),
            "champion_AP_before": None, "champion_before": int(before) if before and before.isdigit() else None,
            "promoted": decision in ("promoted", "forced"), "decision": decision,
            "reason": t.get("promotion.reason", ""), "eval_data_hash": t.get("eval_data_hash"),
            "dataset": t.get("dataset"), "dataset_version": t.get("dataset.version"),
            "data_fingerprint": t.get("data.source_fingerprint"), "rules": rules,
            "gate_passed": all(r.get("passed") for r in rules if r.get("applicable", True)) if rules else None}


def _finished_run(client: MlflowClient, experiment: str, key: dict) -> str | None:
    """A finished run of ``experiment`` logged with ``key`` whose version creation did not happen
    (an interrupted registration): reused instead of logging the same run again."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in key.items()) + " and attributes.status = 'FINISHED'"
    for run in client.search_runs([exp.experiment_id], query, max_results=10):
        return run.info.run_id
    return None


def _log_run(reg: RegistrySection, generated: GeneratedSection, evaluate: EvaluateSection, predict: PredictSection,
             serve: ServeSection, logged_params: dict, client: MlflowClient, tags: dict, inputs: dict) -> str:
    """Log the MLflow run of a registration (module docstring: params, metrics, curves, artifacts,
    the pyfunc model). Returns its id; the run ends FINISHED only when everything was logged."""
    from pose.registry.data_version import image_list
    from pose.registry.figures import plot_training_curves, steps_csv_series
    from pose.serving.model import save_pyfunc_model

    metrics, train_steps = inputs["metrics"], inputs["train_steps"]
    train_metrics, results = inputs["train_metrics"], inputs["results"]
    eval_imgs = image_list(inputs["eval_annotations"])
    train_ann = inputs["train_annotations"]
    tr_summary = json.loads(Path(train_metrics).read_text()) if train_metrics and Path(train_metrics).exists() else None
    mlflow.set_experiment(reg.experiment)
    with mlflow.start_run() as run, tempfile.TemporaryDirectory(prefix="pose-register-") as tmp:
        tmp = Path(tmp)
        mlflow.log_params(logged_params)
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
        shutil.copyfile(inputs["eval_metrics"], evdir / "metrics.json")
        shutil.copyfile(inputs["eval_annotations"], evdir / "annotations.json")
        if results is not None:
            shutil.copyfile(results, evdir / "results.json")
        mlflow.log_artifacts(str(evdir), artifact_path="eval")
        _log_json(eval_imgs, "data/eval_images.json")
        if train_ann:
            _log_json(image_list(train_ann), "data/train_images.json")
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
        mlflow.log_artifact(str(inputs["checkpoint"]), artifact_path="checkpoint")
        save_pyfunc_model(Path(inputs["checkpoint"]), tmp / "model", evaluate=evaluate, predict=predict, serve=serve,
                          generated=generated)
        mlflow.log_artifacts(str(tmp / "model"), artifact_path="model")
        for a in inputs["artifacts"]:
            a = Path(a)
            if a.is_dir():  # a folder named like one of ours (e.g. data/plots/eval) goes under its parent's name
                dest = f"{a.parent.name}/{a.name}" if a.name in RESERVED_ARTIFACT_DIRS else a.name
                mlflow.log_artifacts(str(a), artifact_path=dest)
            elif a.exists():
                mlflow.log_artifact(str(a))
        return run.info.run_id


def _create_version(client: MlflowClient, name: str, dataset: str, run_id: str, dtags: dict, key: dict, ap: float):
    """Create the registered model when missing, then the version of run ``run_id`` (source: its
    ``model/``) with the data and key tags and ``registration.status=pending``, in one write."""
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=f"HigherHRNet bottom-up pose model (COCO-17 keypoints) "
                                                         f"trained on {dataset}")
    vtags = {"AP": f"{ap:.6f}", **{k: v for k, v in dtags.items()
                                   if k in ("eval_data_hash", "dataset", "dataset.version", "data.source_fingerprint")},
             **key, STATUS_TAG: PENDING}
    artifact_uri = client.get_run(run_id).info.artifact_uri
    return client.create_model_version(name, source=f"{artifact_uri}/model", run_id=run_id, tags=vtags,
                                       description=f"run {run_id}; AP {ap:.4f} on eval data "
                                                   f"{key['eval_data_hash'][:12]} ({dataset})")


def _decide(reg: RegistrySection, sigmas, client: MlflowClient, name: str, mv, gate: bool, reevaluate) -> dict:
    """The gate's decision for version ``mv`` (recorded in its tags; aliases not moved yet). A pending
    version that already holds ``champion`` (an interrupted registration moved it) keeps its
    recorded decision instead of being gated against itself."""
    if not gate:
        return {"promoted": False, "decision": "not_gated", "reason": "registered without the gate",
                "champion_AP_before": None, "champion_before": None, "ci": None, "rules": [], "gate_passed": None}
    mv = client.get_model_version(name, mv.version)
    if "champion" in mv.aliases and mv.tags.get("promotion.decision") in ("promoted", "forced"):
        return {**_record_from_tags(name, mv), "ci": None}
    return gate_locked(reg, sigmas, client, name, mv.version, reevaluate=reevaluate, move_alias=False)


def _write_records(data: DataSection, model: ModelSection, train: TrainSection, evaluate: EvaluateSection,
                   client: MlflowClient, name: str, mv, key: dict, inputs: dict, decision: dict, out: Path) -> dict:
    """Model card and ``registration.json`` (run artifact, then ``out``, atomically); returns the record
    with the aliases the version holds once :func:`_finish` has moved them."""
    from pose.registry.data_version import image_list

    run = client.get_run(mv.run_id)
    tags, version = dict(run.data.tags), int(mv.version)
    aliases = sorted(set(mv.aliases) | {"challenger"} | ({"champion"} if decision["promoted"] else set()))
    metrics = inputs["metrics"]
    tm = inputs["train_metrics"]
    tr_summary = json.loads(Path(tm).read_text()) if tm and Path(tm).exists() else None
    record = {"model_name": name, "version": version, "run_id": mv.run_id, "aliases": aliases,
              "AP": inputs["ap"], "champion_AP_before": decision.get("champion_AP_before"),
              "champion_before": decision.get("champion_before"), "promoted": bool(decision["promoted"]),
              "decision": decision["decision"], "reason": decision["reason"], "eval_data_hash": key["eval_data_hash"],
              "dataset": data.dataset, "dataset_version": tags.get("dataset.version"),
              "data_fingerprint": tags.get("data.source_fingerprint"), "rules": decision.get("rules", []),
              "gate_passed": decision.get("gate_passed"), "new_version": True, "key": key}
    if decision.get("ci"):
        record["ci_AP"] = {k: decision["ci"]["metrics"]["AP"][k] for k in ("delta", "ci_low", "ci_high")}
    train_ann = inputs["train_annotations"]
    card = model_card(name=name, version=str(version), run_id=mv.run_id, model=model, train=train, evaluate=evaluate,
                      tags=tags, metrics=metrics,
                      train_summary=tr_summary, record={**decision, "aliases": aliases},
                      n_eval_images=len(image_list(inputs["eval_annotations"])),
                      n_train_images=len(image_list(train_ann)) if train_ann else None)
    text = json.dumps(record, indent=2, sort_keys=True, default=str)
    with tempfile.TemporaryDirectory(prefix="pose-card-") as tmp:
        (Path(tmp) / "model_card.md").write_text(card)
        client.log_artifact(mv.run_id, str(Path(tmp) / "model_card.md"))
        (Path(tmp) / RECORD_ARTIFACT).write_text(text)
        client.log_artifact(mv.run_id, str(Path(tmp) / RECORD_ARTIFACT))
    atomic_write_text(out, text)
    return record


def _finish(client: MlflowClient, name: str, mv, decision: dict) -> None:
    """The last writes of a registration: alias ``challenger``, alias ``champion`` when the gate
    promoted (:func:`pose.registry.champion.move_champion`), the registered-model tag
    ``data.fingerprint`` and ``registration.status=complete``."""
    from pose.registry.champion import champion_version, move_champion

    current = client.get_model_version(name, mv.version)
    if "challenger" not in current.aliases:
        client.set_registered_model_alias(name, "challenger", mv.version)
    if decision["promoted"]:
        before = decision.get("champion_before")
        champ = champion_version(client, name)
        move_champion(client, name, mv.version, decision=decision["decision"], reason=decision["reason"],
                      champ_before=client.get_model_version(name, str(before)) if before else champ,
                      at=decision.get("promoted_at"))
    fp = current.tags.get("data.source_fingerprint")
    if fp:
        client.set_registered_model_tag(name, "data.fingerprint", fp)
    client.set_model_version_tag(name, mv.version, STATUS_TAG, COMPLETE)
