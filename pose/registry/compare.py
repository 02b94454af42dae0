"""`pose compare A B`: a Markdown + HTML review report of two runs / model versions, verdict first.

A and B are MLflow run ids, model version numbers (``3`` / ``v3``), aliases
(``champion`` / ``challenger``) or ``models:/<name>@<alias>`` / ``models:/<name>/<N>``.
A is the baseline (the champion), B the candidate (the challenger); the report is logged as
an artifact of B's run under ``compare/<model>/v<A>_vs_v<B>/`` (:func:`pose.registry.sides.report_path`:
named by model and version; ``report.md``, ``report.html`` with the
figures embedded, PNGs, ``summary.json``).

Sections:

* **verdict**: which model has the better AP, by how much, the paired image-bootstrap 95% CI
  of the AP difference (:mod:`pose.registry.bootstrap`) and whether it excludes 0; the gate's
  decision for B as challenger against A as champion under ``registry.rules`` with each
  rule's result (:func:`pose.registry.rules.evaluate_rules`); B's recorded gate decision
  (version tags ``promotion.decision`` / ``promotion.rules``);
* metrics (AP family, per scale, per keypoint, diagnostics) of both models on ONE evaluation
  set (:class:`Basis`): the same data, or, when the data differ, the champion's re-evaluation
  on the challenger's data that the gate cached under ``reeval/<hash16>/`` of its run; only
  without one, the images both evaluation sets contain. "n/a" marks missing values and COCO's
  -1 (no person in that area range);
* data diff: labelled dataset name / version / annotation hashes (shortened), and counts of the
  train / eval images added and removed with the first few file names (logged
  ``data/{train,eval}_images.json``); params diff (flattened params.yaml);
* training curves of both runs overlaid (MLflow per-step metrics ``train/*``);
* side-by-side overlays (ground truth | A | B) of the validation images where the two models
  disagree most (OKS >= 0.5 true positives per image), when the images are found.

The pieces: :mod:`pose.registry.sides` (the two sides and the :class:`~pose.registry.sides.Basis`),
:mod:`pose.registry.verdict`, :mod:`pose.registry.deltas` (metric / data / params rows),
:mod:`pose.registry.figures` and :mod:`pose.registry.report` (one block structure rendered as
Markdown and HTML).

Params sections read (handed in by ``pose.cli``, `pose.params`): ``registry``, ``data``, ``catalogue``
and ``predict`` (the overlays' person filter).
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pose.io import atomic_write_json, atomic_write_text, dataset_exif
from pose.registry.bootstrap import bootstrap_diff
from pose.registry.deltas import (
    DATA_TAGS,
    DIAGNOSTICS,
    FAMILY,
    SCALES,
    data_tag_items,
    diff_ids,
    image_diff_items,
    metric_rows,
    params_diff,
)
from pose.registry.evidence import oks_sigmas
from pose.registry.figures import CURVES, plot_training_curves, side_by_side
from pose.registry.report import delta, num, to_html, to_markdown
from pose.registry.rules import Rule, evaluate_rules, metric_value, parse_rules
from pose.registry.sides import Basis, Side, basis_note, find_basis, report_path, resolve_side
from pose.registry.tracking import registered_model_name, tracking_uri
from pose.registry.verdict import RULE_HEADER, make_verdict, rule_rows, verdict_lines

if TYPE_CHECKING:
    from pose.params import CatalogueEntry, DataSection, PredictSection, RegistrySection

log = logging.getLogger(__name__)


def compare(reg: RegistrySection, data: DataSection, catalogue: Mapping[str, CatalogueEntry], predict: PredictSection,
            a_ref: str, b_ref: str, *, out_dir: Path | None = None, images_dir: Path | None = None,
            log_to_run: bool = True, client: MlflowClient | None = None) -> dict:
    """Build the report of ``a_ref`` vs ``b_ref`` in ``out_dir`` and (``log_to_run``) log it to B's run.

    Args:
        reg: the params ``registry`` section (`pose.params.RegistrySection`: tracking URI, model name,
            rules, bootstrap and ``compare_overlays``).
        data: the params ``data`` section (`pose.params.DataSection`: the model name and the validation
            images when ``images_dir`` is None).
        catalogue: the params ``catalogue`` section (the OKS sigmas of the evaluation data, the mirror).
        predict: the params ``predict`` section (`pose.params.PredictSection`; ``min_person_score`` of
            the overlays).
        out_dir: report folder (default ``data/compare/`` + :func:`pose.registry.sides.report_path`).
        images_dir: folder with the validation images of the comparison's evaluation data
            (default: the first of :func:`val_image_candidates` that holds them; none: the report
            says where it looked and how to get them, :func:`missing_images_note`).

    Returns ``{"markdown", "html", "out_dir", "artifact_path", "run_id", "summary", "verdict_lines"}``
    (``verdict_lines``: the verdict as Markdown lines); ``summary``
    (also ``summary.json``) holds the ``verdict`` (:func:`make_verdict`) first.
    Raises RegistryError when a reference cannot be resolved, RuleError on bad ``registry.rules``.
    """
    import mlflow

    rules = parse_rules(reg)
    name = registered_model_name(reg, data.dataset)
    uri = tracking_uri(reg)
    mlflow.set_tracking_uri(uri)
    client = client or MlflowClient(uri)
    with tempfile.TemporaryDirectory(prefix="pose-compare-") as tmp:
        a = resolve_side(client, name, a_ref, Path(tmp))
        b = resolve_side(client, name, b_ref, Path(tmp))
        out_dir = Path(out_dir) if out_dir is not None else Path("data/compare") / report_path(a, b)
        out_dir.mkdir(parents=True, exist_ok=True)
        basis = find_basis(a, b, Path(tmp))
        return _build(reg, data, catalogue, predict, rules, client, a, b, basis, out_dir, images_dir, log_to_run)


def _build(reg: RegistrySection, data: DataSection, catalogue: Mapping[str, CatalogueEntry], predict: PredictSection,
           rules: list[Rule], client, a: Side, b: Side, basis: Basis, out_dir: Path, images_dir,
           log_to_run: bool) -> dict:
    """Everything of :func:`compare` once both sides and the basis are known."""
    owner = a if basis.side == "A" else b                       # whose evaluation data the basis is
    dataset = str(owner.params.get("data.dataset") or data.dataset)
    notes: list[str] = [basis_note(basis, a, b)]
    # --- paired bootstrap on the basis
    ci = None
    if basis.kind != "none" and basis.a_results and basis.b_results and basis.annotations:
        ci = bootstrap_diff(basis.annotations, basis.a_results, basis.b_results,
                            n_resamples=int(reg.bootstrap_samples), seed=int(reg.bootstrap_seed),
                            sigmas=oks_sigmas(catalogue, dataset), img_ids=basis.img_ids)
        notes.append(f"Paired Δ and {int(ci['level'] * 100)}% CI: image bootstrap, {ci['n_resamples']} "
                     f"resamples of {ci['n_images']} images"
                     + (" common to both evaluation sets, scored against B's annotations"
                        if basis.kind == "common_images" else "") + ".")
    elif basis.kind != "none":
        notes.append("No paired CI: a run lacks its logged results / annotations (eval/results.json).")
    if basis.like_for_like:
        rule_results = evaluate_rules(rules, basis.b_metrics, basis.a_metrics, ci=ci)
    else:
        rule_results = evaluate_rules(rules, b.metrics, None)   # relative rules: not applicable here
        for r in rule_results:
            if not r.applicable:
                r.note = "A has no score on B's evaluation data"
    verdict = make_verdict(a, b, basis, ci, rule_results)

    family = metric_rows(basis.a_metrics, basis.b_metrics, FAMILY, ci)
    scales = metric_rows(basis.a_metrics, basis.b_metrics, SCALES, ci)
    diag = metric_rows(basis.a_metrics, basis.b_metrics, DIAGNOSTICS, None)
    kp_a, kp_b = basis.a_metrics.get("per_keypoint_AP") or {}, basis.b_metrics.get("per_keypoint_AP") or {}
    kp_rows = [[k, num(kp_a.get(k)), num(kp_b.get(k)),
                delta(float(kp_b[k]) - float(kp_a[k])
                      if metric_value(kp_a, k) is not None and metric_value(kp_b, k) is not None else None)]
               for k in (list(kp_b) or list(kp_a))]

    # --- training curves
    series = {}
    for side, tag in ((a, "A"), (b, "B")):
        s = {}
        for c in CURVES:
            try:
                hist = client.get_metric_history(side.run_id, f"train/{c}")
            except MlflowException:
                hist = []
            if hist:
                hist = sorted(hist, key=lambda m: m.step)
                s[c] = ([m.step for m in hist], [m.value for m in hist])
        series[f"{tag}: {side.label}"] = s
    curves_png = plot_training_curves(series, out_dir / "training_curves.png")

    # --- params / data diff
    params_rows = params_diff(a.params, b.params)
    eval_diff = diff_ids(a.eval_images, b.eval_images)
    train_diff = diff_ids(a.train_images, b.train_images)
    data_items = data_tag_items(a, b) + image_diff_items("eval", eval_diff) + image_diff_items("train", train_diff)

    # --- overlays on the basis' evaluation data
    overlays: list[Path] = []
    if basis.annotations and basis.a_results and basis.b_results:
        gt = json.loads(Path(basis.annotations).read_text())
        found, looked = find_val_images(owner, data, catalogue, dataset,
                                        [im["file_name"] for im in gt.get("images", [])], images_dir)
        if found is not None:
            overlays = _overlays(a, b, basis, ci, found, out_dir / "overlays", int(reg.compare_overlays),
                                 float(predict.min_person_score))
        else:
            notes.append(missing_images_note(owner, data, dataset, looked, images_dir))
    else:
        notes.append("No overlays: a side has no results on the comparison's evaluation data.")

    # --- write
    title = f"Compare A = {a.title} vs B = {b.title}"
    summary = {"verdict": verdict,
               "a": {"ref": a.ref, "run_id": a.run_id, "version": a.version, "aliases": a.aliases},
               "b": {"ref": b.ref, "run_id": b.run_id, "version": b.version, "aliases": b.aliases},
               "same_eval_data": basis.kind == "same_data", "basis": basis.kind,
               "metrics": {r[0]: r[1:] for r in family + scales + diag},
               "bootstrap": {k: v for k, v in (ci or {}).items() if k not in ("per_image_tp", "img_ids")} or None,
               "params_changed": len(params_rows),
               "eval_images": {k: (len(v) if isinstance(v, list) else v) for k, v in eval_diff.items()},
               "train_images": {k: (len(v) if isinstance(v, list) else v) for k, v in train_diff.items()},
               "data_tags": {k: [a.tags.get(k), b.tags.get(k)] for k, _ in DATA_TAGS},
               "notes": notes}
    atomic_write_json(out_dir / "summary.json", summary, indent=2, default=str)
    verdict_md = verdict_lines(verdict, a, b)
    blocks = report_blocks(title=title, a=a, b=b, verdict=verdict_md, rules=rule_rows(rule_results), notes=notes,
                           family=family, scales=scales, kp_rows=kp_rows, diag=diag, curves_png=curves_png,
                           params_rows=params_rows, data_items=data_items, overlays=overlays)
    atomic_write_text(out_dir / "report.md", to_markdown(blocks, out_dir))
    atomic_write_text(out_dir / "report.html", to_html(blocks, title))
    artifact_path = f"compare/{report_path(a, b).as_posix()}"
    if log_to_run:
        client.log_artifacts(b.run_id, str(out_dir), artifact_path=artifact_path)
    return {"markdown": str(out_dir / "report.md"), "html": str(out_dir / "report.html"), "out_dir": str(out_dir),
            "artifact_path": artifact_path if log_to_run else None, "run_id": b.run_id, "summary": summary,
            "verdict_lines": verdict_md}


def _run_value(side: Side, key: str, default):
    """``key`` (dotted) from the side's logged params, else ``default`` (this params.yaml's value)."""
    if side.params.get(key) not in (None, ""):
        return side.params[key]
    return default


def val_image_candidates(side: Side, data: DataSection, catalogue: Mapping[str, CatalogueEntry], dataset: str,
                         explicit: Path | None) -> list[Path]:
    """Folders that may hold the validation images of ``side``'s evaluation data, in order: ``explicit``
    (``--images``) alone when given; else ``<data.raw_dir>/<dataset>/<data.val_split>`` of the run's
    logged params and of ``data`` (the params ``data`` section, `pose.params.DataSection`: the fetch
    stage's output), then the offline mirror ``<data.mirror>/<catalogue.<dataset>.mirror>/<val_split>``
    the fetch stage reads (``catalogue``: the params ``catalogue`` section)."""
    if explicit is not None:
        return [Path(explicit)]
    out: list[Path] = []
    split = _run_value(side, "data.val_split", data.val_split) or data.val_split
    for raw in (side.params.get("data.raw_dir"), data.raw_dir):
        if raw:
            out.append(Path(raw) / dataset / str(split))
    folder = _run_value(side, f"catalogue.{dataset}.mirror",
                        catalogue[dataset].mirror if dataset in catalogue else None)
    for mirror in (side.params.get("data.mirror"), data.mirror):
        if mirror and folder:
            out.append(Path(mirror) / str(folder) / str(split))
    return list(dict.fromkeys(out))


def find_val_images(side: Side, data: DataSection, catalogue: Mapping[str, CatalogueEntry], dataset: str,
                    file_names: list[str], explicit: Path | None = None) -> tuple[Path | None, list[Path]]:
    """The first folder of :func:`val_image_candidates` holding one of ``file_names`` (the evaluation
    data's images), and the folders looked in (``data``, ``catalogue``: the params sections, as there)."""
    looked = val_image_candidates(side, data, catalogue, dataset, explicit)
    names = file_names[:50]
    for folder in looked:
        if folder.is_dir() and any((folder / n).is_file() for n in names):
            return folder, looked
    return None, looked


def missing_images_note(side: Side, data: DataSection, dataset: str, looked: list[Path],
                        explicit: Path | None) -> str:
    """The report note (one sentence) when no folder holds the validation images: where it looked and
    how to get them (``data``: the params ``data`` section, `pose.params.DataSection`; ``raw_dir``)."""
    where = ", ".join(f"`{p}`" for p in looked) or "nowhere"
    if explicit is not None:
        return f"No overlays: the validation images of {dataset} are not in `{explicit}` (--images)."
    raw = _run_value(side, "data.raw_dir", data.raw_dir) or data.raw_dir
    commit = (side.tags.get("git.commit") or "").replace("unknown", "")[:8]
    at = f" at the run's commit `{commit}` (`git checkout {commit}` or `dvc exp apply`)" if commit else ""
    return (f"No overlays: the validation images of {dataset} were not found (looked in {where}). They are the "
            f"fetch stage's output `{raw}/{dataset}`: get them with `dvc pull {raw}/{dataset}`{at}, or "
            f"`dvc repro fetch`, or pass `--images DIR`.")


def _overlays(a: Side, b: Side, basis: Basis, ci: dict | None, images_dir: Path, out: Path, k: int,
              min_score: float) -> list[Path]:
    """Ground truth | A | B on the ``k`` images of the basis' data where A and B disagree most
    (difference of OKS >= 0.5 true positives per image, from the bootstrap's matching). A and B
    show the persons scoring >= ``min_score`` (params ``predict.min_person_score``, as `pose
    predict` draws them); a panel without one says so."""
    import cv2

    gt = json.loads(Path(basis.annotations).read_text())
    res_a = json.loads(Path(basis.a_results).read_text())
    res_b = json.loads(Path(basis.b_results).read_text())
    by_img = {im["id"]: im for im in gt["images"]}
    common = set(by_img) & set(basis.img_ids) if basis.img_ids is not None else set(by_img)
    score = {i: 0 for i in common}
    if ci is not None:
        for i, ta, tb in zip(ci["img_ids"], ci["per_image_tp"]["a"], ci["per_image_tp"]["b"]):
            if i in score:
                score[i] = abs(int(tb) - int(ta))
    persons: dict[int, list] = {}
    for ann in gt["annotations"]:
        if not ann.get("iscrowd", 0) and ann.get("num_keypoints", 0) > 0:
            persons.setdefault(ann["image_id"], []).append({"keypoints": ann["keypoints"], "score": 1.0})
    order = sorted(common, key=lambda i: (-score[i], -len(persons.get(i, [])), i))[:k]

    def dets(res, i):
        return [{"keypoints": r["keypoints"], "score": r["score"]} for r in res
                if r["image_id"] == i and r["score"] >= min_score][:10]

    none = f"no person above min_person_score = {min_score:g}"
    paths = []
    for i in order:
        f = images_dir / by_img[i]["file_name"]
        ignore = cv2.IMREAD_IGNORE_ORIENTATION if dataset_exif(gt) == "ignore" else 0  # the annotations' frame
        img = cv2.imread(str(f), cv2.IMREAD_COLOR | ignore)
        if img is None:
            continue
        paths.append(side_by_side(img, [(f"ground truth #{i}", persons.get(i, []), "no ground-truth person"),
                                        (f"A {a.label}", dets(res_a, i), none),
                                        (f"B {b.label}", dets(res_b, i), none)], out / f"{i}.png"))
    return paths


def report_blocks(*, title: str, a: Side, b: Side, verdict: list[str], rules: list[list[str]], notes: list[str],
                  family, scales, kp_rows, diag, curves_png: Path | None, params_rows, data_items: list[str],
                  overlays: list[Path]) -> list[tuple]:
    """The report's structure (:mod:`pose.registry.report` blocks), rendered as Markdown and HTML."""
    hdr = ["metric", "A", "B", "Δ (B−A)", "paired Δ [95% CI]"]
    blocks: list[tuple] = [("title", title), ("box", "verdict"), ("heading", "Verdict")]
    blocks += [("para", line) for line in verdict]
    blocks += [("table", RULE_HEADER, rules), ("end_box",),
               ("bullets", [f"A (baseline): `{a.ref}` → {a.title}, run `{a.run_id}`",
                            f"B (candidate): `{b.ref}` → {b.title}, run `{b.run_id}`"])]
    blocks += [("note", n) for n in notes]
    blocks += [("heading", "AP family"), ("table", hdr, family), ("heading", "Per scale"), ("table", hdr, scales),
               ("heading", "Per keypoint AP"), ("table", ["keypoint", "A", "B", "Δ (B−A)"], kp_rows),
               ("heading", "Diagnostics"), ("table", hdr, diag),
               ("heading", "Data diff"), ("bullets", data_items),
               ("heading", "Params diff"), ("table", ["param", "A", "B"], params_rows),
               ("heading", "Training curves"),
               ("image", curves_png, "training curves") if curves_png else ("empty", "no per-step metrics"),
               ("heading", "Overlays (ground truth | A | B)")]
    blocks += [("image", p, p.stem) for p in overlays] or [("empty", "none")]
    return blocks


__all__ = ["compare", "report_blocks", "val_image_candidates", "find_val_images", "missing_images_note"]
