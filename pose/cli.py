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
          params_file: Path = PARAMS) -> None:
    """Fetch a dataset into COCO layout with a sha256 manifest (stage `fetch`)."""
    from pose.datasets.fetch import fetch_dataset

    p = load_params(params_file)
    d = p["data"]
    name = dataset or d["dataset"]
    out = out or Path(d["raw_dir"]) / name
    mirror = Path(d["mirror"]) if d.get("mirror") else None
    try:
        summary = fetch_dataset(name, catalogue=p["catalogue"], mirror_root=mirror, out_dir=out,
                                generated_params=p["generated"], train_split=d["train_split"], val_split=d["val_split"])
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
                              report_path=report, docs_dir=docs, cleaned_path=cleaned)
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
    result = check_scales(annotations, input_sizes=sizes, strides=[4, 2], sigma=float(p["targets"]["sigma"]),
                          max_roundtrip_error=float(c["max_roundtrip_error"]), max_peak_error=float(c["max_peak_error"]),
                          min_torso_heatmap_px=float(c["min_torso_heatmap_px"]), report_path=report)
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


def _score(params: dict, checkpoint: Path, annotations: Path, images: Path, results_out: Path | None) -> tuple[dict, list]:
    from pose.decode.inference import predict_dataset
    from pose.evaluate.coco import evaluate_results
    from pose.train.checkpoint import load_trained_model
    from pose.train.loop import pick_device

    device = pick_device()
    model = load_trained_model(checkpoint, device)
    results = predict_dataset(model, annotations, images, params["evaluate"], device)
    if results_out:
        results_out.parent.mkdir(parents=True, exist_ok=True)
        tmp = results_out.with_suffix(".tmp")
        tmp.write_text(json.dumps(results))
        tmp.replace(results_out)
    from pose.datasets.schema import COCO_SIGMAS

    return evaluate_results(annotations, results, sigmas=COCO_SIGMAS,
                            oks_threshold=float(params["evaluate"]["oks_threshold"])), results


@app.command()
def evaluate(annotations: Path = typer.Option(..., help="ground-truth COCO keypoints JSON"),
             out: Path = typer.Option(..., help="metrics.json to write"),
             results: Path = typer.Option(None, help="score this existing COCO results JSON"),
             checkpoint: Path = typer.Option(None, help="or: decode this checkpoint on --images first"),
             images: Path = typer.Option(None), results_out: Path = typer.Option(None),
             params_file: Path = PARAMS) -> None:
    """COCO keypoint AP/AR with pycocotools (stage `evaluate`)."""
    from pose.datasets.schema import COCO_SIGMAS
    from pose.evaluate.coco import evaluate_results, write_metrics

    p = load_params(params_file)
    if results is not None:
        metrics = evaluate_results(annotations, results, sigmas=COCO_SIGMAS,
                                   oks_threshold=float(p["evaluate"]["oks_threshold"]))
    elif checkpoint is not None and images is not None:
        metrics, _ = _score(p, checkpoint, annotations, images, results_out)
    else:
        _fail("give --results, or --checkpoint with --images")
    write_metrics(metrics, out)
    typer.echo(json.dumps({k: metrics[k] for k in ("AP", "AP50", "AP75", "APM", "APL", "AR") if k in metrics}, indent=2))


@app.command()
def predict(source: Path = typer.Argument(..., help="an image or a folder of images"),
            model: str = typer.Option(..., help="checkpoint path or models:/<name>@<alias>"),
            out_dir: Path = typer.Option(Path("predictions")), params_file: Path = PARAMS) -> None:
    """Draw skeletons on images and write COCO-style results JSON."""
    import cv2

    from pose.decode.inference import predict_image
    from pose.evaluate.plots import overlay
    from pose.train.checkpoint import load_trained_model
    from pose.train.loop import pick_device

    p = load_params(params_file)
    ckpt = Path(model)
    if model.startswith("models:/"):
        import mlflow

        mlflow.set_tracking_uri(p["registry"]["tracking_uri"])
        ckpt = next(Path(mlflow.artifacts.download_artifacts(model)).glob("*.pt"))
    device = pick_device()
    net = load_trained_model(ckpt, device)
    files = sorted(x for x in source.iterdir() if x.suffix.lower() in (".jpg", ".jpeg", ".png")) if source.is_dir() else [source]
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    ev = p["evaluate"]
    for f in files:
        image = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if image is None:
            _fail(f"{f}: cannot read image")
        persons = predict_image(net, image, eval_params=ev, device=device)
        overlay(image, persons, out_dir / f"{f.stem}_pose.png")
        for person in persons:
            records.append({"file_name": f.name, "category_id": 1, "score": float(person["score"]),
                            "keypoints": [float(v) for v in person["keypoints"].reshape(-1)]})
    (out_dir / "results.json").write_text(json.dumps(records))
    typer.echo(f"{len(files)} image(s), {len(records)} person(s) -> {out_dir}")


@app.command()
def register(checkpoint: Path = typer.Option(...), metrics: Path = typer.Option(...),
             eval_annotations: Path = typer.Option(...), eval_images: Path = typer.Option(...),
             out: Path = typer.Option(...), train_metrics: Path = typer.Option(None),
             train_steps: Path = typer.Option(None),
             artifact: list[Path] = typer.Option([], help="extra files/folders to log"),
             params_file: Path = PARAMS) -> None:
    """Log the run to MLflow, register the model, set challenger/champion aliases (stage `register`)."""
    from pose.registry.mlflow_registry import register_run

    p = load_params(params_file)
    record = register_run(p, checkpoint=checkpoint, eval_metrics=metrics, eval_annotations=eval_annotations, out=out,
                          artifacts=artifact, train_metrics=train_metrics, train_steps=train_steps,
                          reevaluate=lambda ck: _score(p, ck, eval_annotations, eval_images, None)[0])
    typer.echo(json.dumps(record, indent=2, sort_keys=True))


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
