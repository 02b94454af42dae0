"""`pose` command line: one command per pipeline stage, explicit inputs/outputs/params.

Every command reads its tunables from ``--params`` (params.yaml) and is exactly what
`dvc.yaml` runs; the Prefect flows run `dvc repro`, so nothing is implemented twice.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

import pose  # noqa: F401  (turns telemetry off before any tool is imported)
from pose.params import load_params

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
PARAMS = typer.Option(Path("params.yaml"), "--params", help="params.yaml with every tunable")


def _fail(msg: str, code: int = 1) -> None:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@app.command()
def fetch(out: Path = typer.Option(None, help="output folder (default: <data.raw_dir>/<data.dataset>)"),
          dataset: str = typer.Option(None, help="catalogue name (default: params data.dataset)"),
          ingest: list[str] = typer.Option(None, "--ingest", help="also merge this batch of new annotated images "
                                           "(folder or s3://prefix) into the train split; repeatable"),
          params_file: Path = PARAMS) -> None:
    """Fetch a dataset into COCO-17 layout with a sha256 manifest (stage `fetch`); native datasets are converted."""
    from pose.datasets.fetch import fetch_dataset

    p = load_params(params_file)
    d = p["data"]
    name = dataset or d["dataset"]
    out = out or Path(d["raw_dir"]) / name
    mirror = Path(d["mirror"]) if d.get("mirror") else None
    try:
        summary = fetch_dataset(name, catalogue=p["catalogue"], mirror_root=mirror, out_dir=out,
                                generated_params=p["generated"], train_split=d["train_split"], val_split=d["val_split"],
                                link=False, ingest=list(ingest or []), progress=sys.stderr.isatty())
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps(summary, indent=2, sort_keys=True, default=str))


@app.command()
def ingest(batch: str = typer.Option(..., help="folder, file:// URL or s3://bucket/prefix with one COCO JSON + images"),
           into: Path = typer.Option(..., help="dataset folder written by `pose fetch`, e.g. data/raw/<name>"),
           split: str = typer.Option(None, help="split to add to (default: params data.train_split)"),
           fmt: str = typer.Option("coco", "--format", help="coco | crowdpose | aic | mpii (converted first)"),
           annotations: str = typer.Option(None, help="the batch's annotation JSON, relative to the batch "
                                           "(default: its only JSON)"),
           params_file: Path = PARAMS) -> None:
    """Merge a batch of new annotated images into a dataset's train split: new ids, duplicates (by image
    content hash) dropped, ingest_record.json appended, manifest rewritten, all atomically."""
    from pose.datasets.ingest import ingest_batch

    d = load_params(params_file)["data"]
    try:
        summary = ingest_batch(batch, into, split=split or d["train_split"], fmt=fmt, annotations=annotations,
                               progress=sys.stderr.isatty())
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps(summary, indent=2, sort_keys=True, default=str))


@app.command()
def validate(annotations: Path = typer.Option(..., exists=False), images: Path = typer.Option(...),
             report: Path = typer.Option(...), docs: Path = typer.Option(None, help="Data Docs HTML folder"),
             cleaned: Path = typer.Option(None, help="annotation file downstream stages read (cleaned under quarantine)"),
             on_error: str = typer.Option(None, help="fail | quarantine (default: params validate.on_error)"),
             params_file: Path = PARAMS) -> None:
    """Validate annotations and image files with a great-expectations suite (stage `validate`). Exit 1 on errors."""
    from pose.quality.validate import validate_dataset

    v = load_params(params_file)["validate"]
    docs = docs or report.with_suffix("").parent / (report.stem + "_docs")
    result = validate_dataset(annotations, images, on_error=on_error or v["on_error"],
                              bbox_tolerance=float(v["bbox_tolerance"]),
                              min_labeled_keypoints=int(v["min_labeled_keypoints"]),
                              report_path=report, docs_dir=docs, cleaned_path=cleaned,
                              workers=int(v["workers"]), cache_path=Path(v["image_cache"]) if v.get("image_cache") else None)
    s = result.get("summary", {})
    typer.echo(f"{annotations}: {s}")
    if not result["ok"]:
        errors = [f for f in result.get("findings", []) if f.get("severity") == "error"]
        for f in errors[:20]:
            typer.echo(f"  [{f.get('check')}] image {f.get('image_id')} ann {f.get('annotation_id')} "
                       f"{f.get('field')}: {f.get('message')}", err=True)
        _fail(f"{len(errors)} error(s) in {annotations}; see {report}")


@app.command("check-scales")
def check_scales_cmd(annotations: Path = typer.Option(...), report: Path = typer.Option(...),
                     params_file: Path = PARAMS) -> None:
    """Cross-scale annotation consistency for every curriculum input size (stage `check_scales`)."""
    from pose.quality.scales import check_scales

    p = load_params(params_file)
    c = p["check_scales"]
    sizes = sorted({int(s) for st in p["train"]["curriculum"] for s in st["sizes"]} | {int(p["evaluate"]["input_size"])})
    from pose.quality.tables import AnnotationFileError

    try:
        result = check_scales(annotations, input_sizes=sizes, strides=[4, 2], sigma=float(p["targets"]["sigma"]),
                              max_roundtrip_error=float(c["max_roundtrip_error"]),
                              max_peak_error=float(c["max_peak_error"]),
                              min_torso_heatmap_px=float(c["min_torso_heatmap_px"]), report_path=report)
    except AnnotationFileError as exc:
        _fail(str(exc))
    if not result["ok"]:
        _fail(f"scale consistency violations in {annotations}; see {report}")
    typer.echo(f"scale checks passed for sizes {sizes}")


@app.command()
def train(train_ann: Path = typer.Option(...), train_images: Path = typer.Option(...),
          out_dir: Path = typer.Option(Path("data/models")), metrics: Path = typer.Option(Path("data/metrics/train.json")),
          steps: Path = typer.Option(Path("data/plots/train_steps.csv")),
          resume: bool = typer.Option(True, help="continue from out_dir/last.pt when present"),
          params_file: Path = PARAMS) -> None:
    """Train HigherHRNet with the multi-scale curriculum (stage `train`). Works under torchrun."""
    from pose.train.loop import train as run_train

    summary = run_train(load_params(params_file), train_ann=train_ann, train_images=train_images, out_dir=out_dir,
                        metrics_path=metrics, steps_path=steps, resume=resume)
    if summary:
        typer.echo(json.dumps(summary, indent=2, sort_keys=True))


def _score(params: dict, checkpoint: Path, annotations: Path, images: Path, results_out: Path | None, *,
           dataset_schema: str = "auto", model=None, device=None) -> tuple[dict, list]:
    """Predict every image of ``annotations`` with the checkpoint (or an already loaded
    ``model`` on ``device``) and score the results: eval.json's metrics and the results."""
    from pose.datasets.schema import COCO_SIGMAS
    from pose.decode.inference import predict_dataset
    from pose.evaluate.coco import evaluate_keypoints

    if model is None:
        from pose.train.checkpoint import load_trained_model
        from pose.train.loop import pick_device

        device = pick_device()
        model = load_trained_model(checkpoint, device)
    ev = params["evaluate"]
    results = predict_dataset(model, annotations, images, ev, device)
    if results_out:
        results_out.parent.mkdir(parents=True, exist_ok=True)
        tmp = results_out.with_suffix(".tmp")
        tmp.write_text(json.dumps(results))
        tmp.replace(results_out)
    return evaluate_keypoints(annotations, results, sigmas=COCO_SIGMAS, oks_threshold=float(ev["oks_threshold"]),
                              schema=dataset_schema, area_bins=ev.get("area_bins")), results


@app.command()
def evaluate(annotations: Path = typer.Option(..., help="ground-truth COCO keypoints JSON"),
             out: Path = typer.Option(..., help="metrics.json to write"),
             results: Path = typer.Option(None, help="score this existing COCO results JSON"),
             checkpoint: Path = typer.Option(None, help="or: decode this checkpoint on --images first"),
             images: Path = typer.Option(None), results_out: Path = typer.Option(None),
             efficiency: Path = typer.Option(None, help="efficiency.json to write: params, GFLOPs, latency p50/p90, "
                                                        "peak memory (needs --checkpoint and --images)"),
             plots_dir: Path = typer.Option(None, help="folder for AP per keypoint / per person scale (PNG + CSV) "
                                                       "and overlays.png of sample images (needs --images)"),
             dataset_schema: str = typer.Option("auto", help="auto | coco | crowdpose (auto: crowdpose when every "
                                                             "image has a crowdIndex)"),
             params_file: Path = PARAMS) -> None:
    """COCO keypoint AP/AR with pycocotools, per-scale AP, CrowdPose easy/medium/hard, plots and
    efficiency (stage `evaluate`)."""
    from pose.datasets.schema import COCO_SIGMAS
    from pose.evaluate.coco import evaluate_keypoints, write_metrics

    p = load_params(params_file)
    ev = p["evaluate"]
    if efficiency is not None and (checkpoint is None or images is None):
        _fail("--efficiency needs --checkpoint and --images")
    model = device = None
    try:
        if results is not None:
            res = json.loads(results.read_text())
            metrics = evaluate_keypoints(annotations, res, sigmas=COCO_SIGMAS,
                                         oks_threshold=float(ev["oks_threshold"]), schema=dataset_schema,
                                         area_bins=ev["area_bins"])
        elif checkpoint is not None and images is not None:
            from pose.train.checkpoint import load_trained_model
            from pose.train.loop import pick_device

            device = pick_device()
            model = load_trained_model(checkpoint, device)
            metrics, res = _score(p, checkpoint, annotations, images, results_out, dataset_schema=dataset_schema,
                                  model=model, device=device)
        else:
            _fail("give --results, or --checkpoint with --images")
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    write_metrics(metrics, out)
    if plots_dir is not None:
        from pose.evaluate.plots import write_eval_plots

        write_eval_plots(metrics, plots_dir, gt_json=annotations, results=res, images_dir=images,
                         overlay_count=int(ev["overlay_count"]), overlay_min_score=float(ev["overlay_min_score"]))
    if efficiency is not None:
        from pose.evaluate.efficiency import load_sample_images, measure_efficiency

        eff = measure_efficiency(model, load_sample_images(annotations, images, int(ev["latency_samples"])),
                                 eval_params=ev, samples=int(ev["latency_samples"]),
                                 warmup=int(ev["latency_warmup"]), device=device)
        write_metrics(eff, efficiency)
        typer.echo(json.dumps({k: eff[k] for k in ("params", "gflops", "latency_ms_p50", "latency_ms_p90",
                                                   "peak_memory_mb")}))
    keys = ("AP", "AP50", "AP75", "APM", "APL", "AR", "AP_easy", "AP_medium", "AP_hard")
    typer.echo(json.dumps({k: metrics[k] for k in keys if k in metrics}, indent=2))


@app.command()
def predict(source: Path = typer.Argument(..., help="an image or a folder of images"),
            model: str = typer.Option(..., help="checkpoint path, or models:/<name>@<alias> (also "
                                                "models:/<name>/<version>, runs:/<run>/<path>)"),
            out_dir: Path = typer.Option(Path("predictions")),
            input_size: int = typer.Option(None, help="network input side (default: params evaluate.input_size)"),
            min_score: float = typer.Option(None, help="draw persons / joints scoring above this "
                                                       "(default: params evaluate.overlay_min_score)"),
            params_file: Path = PARAMS) -> None:
    """Draw skeletons (one colour per person) on images and write COCO results JSON."""
    from pose.decode.predict import list_images, load_model, predict_files
    from pose.registry.promotion import tracking_uri
    from pose.train.loop import pick_device

    p = load_params(params_file)
    ev = dict(p["evaluate"])
    if input_size is not None:
        ev["input_size"] = input_size
    device = pick_device()
    try:
        files = list_images(source)
        net = load_model(model, tracking_uri=tracking_uri(p), device=device)
        summary = predict_files(net, files, out_dir, eval_params=ev, device=device,
                                min_score=float(ev["overlay_min_score"] if min_score is None else min_score))
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        _fail(str(exc))
    typer.echo(f"{summary['images']} image(s), {summary['persons']} person(s) ({summary['drawn']} drawn) -> "
               f"{out_dir} (results: {summary['results']})")


@app.command()
def register(checkpoint: Path = typer.Option(...), metrics: Path = typer.Option(...),
             eval_annotations: Path = typer.Option(...), eval_images: Path = typer.Option(...),
             out: Path = typer.Option(...), train_metrics: Path = typer.Option(None),
             train_steps: Path = typer.Option(None),
             results: Path = typer.Option(None, help="COCO results JSON of the evaluation (default: data/eval/results.json "
                                                     "beside --metrics' folder when present)"),
             train_annotations: Path = typer.Option(None, help="training annotations (default: train.json beside "
                                                               "--eval-annotations when present)"),
             artifact: list[Path] = typer.Option([], help="extra files/folders to log"),
             params_file: Path = PARAMS) -> None:
    """Log the run to MLflow, register the model, set challenger/champion aliases (stage `register`)."""
    from pose.registry.mlflow_registry import register_run

    p = load_params(params_file)
    record = register_run(p, checkpoint=checkpoint, eval_metrics=metrics, eval_annotations=eval_annotations, out=out,
                          artifacts=artifact, train_metrics=train_metrics, train_steps=train_steps,
                          results=results, train_annotations=train_annotations,
                          reevaluate=lambda ck, ann=None: _score(p, ck, ann or eval_annotations, eval_images, None))
    typer.echo(json.dumps(record, indent=2, sort_keys=True))


def _val_images(p: dict) -> Path:
    d = p["data"]
    return Path(d["raw_dir"]) / d["dataset"] / d["val_split"]


@app.command()
def promote(version: str = typer.Option(None, help="version (3 / v3), alias or models:/ URI (default: alias challenger)"),
            force: bool = typer.Option(False, help="override the gate; needs --reason"),
            reason: str = typer.Option(None, help="why the gate is overridden (required with --force)"),
            eval_images: Path = typer.Option(None, help="validation images, used to re-evaluate the champion on the "
                                                        "challenger's data (default: <raw_dir>/<dataset>/<val_split>)"),
            params_file: Path = PARAMS) -> None:
    """Gate a registered version against the champion (same eval data, AP margin, per-scale tolerance,
    bootstrap CI) and move alias `champion` when it passes, under the registry lock."""
    from pose.registry.promotion import RegistryError
    from pose.registry.promotion import promote as run_promote

    p = load_params(params_file)
    images = eval_images or _val_images(p)
    try:
        record = run_promote(p, version=version, force=force, reason=reason,
                             reevaluate=lambda ck, ann: _score(p, ck, ann, images, None))
    except (RegistryError, TimeoutError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps(record, indent=2, sort_keys=True, default=str))


@app.command()
def rollback(reason: str = typer.Option(..., help="why the champion is rolled back"),
             to: int = typer.Option(None, help="an earlier champion version (default: the previous champion)"),
             params_file: Path = PARAMS) -> None:
    """Move alias `champion` back to the previous champion (registered-model tag champion.history)."""
    from pose.registry.promotion import RegistryError
    from pose.registry.promotion import rollback as run_rollback

    try:
        record = run_rollback(load_params(params_file), reason=reason, to_version=to)
    except (RegistryError, TimeoutError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps(record, indent=2, sort_keys=True))


@app.command()
def compare(a: str = typer.Argument(..., help="baseline: run id, version (3 / v3), alias or models:/ URI"),
            b: str = typer.Argument(..., help="candidate (same forms); the report is logged to its run"),
            out_dir: Path = typer.Option(None, help="report folder (default: data/compare/<A>_vs_<B>)"),
            images: Path = typer.Option(None, help="validation images for overlays (default: <raw_dir>/<dataset>/<val_split>)"),
            log: bool = typer.Option(True, "--log/--no-log", help="log the report as an artifact of B's run"),
            params_file: Path = PARAMS) -> None:
    """Markdown + HTML report of A vs B: metric deltas with bootstrap CIs, curves, params / data diff, overlays."""
    from pose.registry.compare import compare as run_compare
    from pose.registry.promotion import RegistryError

    try:
        report = run_compare(load_params(params_file), a, b, out_dir=out_dir, images_dir=images, log_to_run=log)
    except RegistryError as exc:
        _fail(str(exc))
    typer.echo(json.dumps({k: v for k, v in report.items() if k != "summary"}, indent=2))


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
