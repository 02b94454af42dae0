"""`pose` command line: one command per pipeline stage, explicit inputs/outputs/params.

Every command reads its tunables from ``--params`` (params.yaml) and is exactly what
`dvc.yaml` runs; the Prefect flows run `dvc repro`, so nothing is implemented twice.
Every command checks params.yaml against the schema (`pose.params`) before it does
anything else, once, and hands each library function the typed sections it reads
(`pose.params.Params`: ``p.train``, ``p.evaluate``, ...); `pose check-params` does only that (the
first DVC stage).

Errors a person can act on: a bad value, a missing file or a usage mistake ends in one
line ``error: ...`` on stderr naming the file / key / option and what is allowed (exit
status 2 for bad params and usage, 75 when `fetch` / `ingest` lost the network after their
retries, 1 for other failures), never a traceback; warnings
are one plain line ``warning: ...``; no colour codes unless stderr is a terminal.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import warnings
from pathlib import Path

import typer

try:  # typer >= 0.22 vendors click as typer._click: its usage errors are those classes
    from typer._click import exceptions as _click_exc
except ImportError:  # pragma: no cover - older typer on the real click
    from click import exceptions as _click_exc

import pose  # noqa: F401  (turns telemetry off before any tool is imported)
from pose.datasets.formats import NATIVE_KINDS
from pose.params import Params, ParamsError, check_input_size, load_sections, restore_hint

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, rich_markup_mode=None,
                  pretty_exceptions_enable=False)
PARAMS = typer.Option(Path("params.yaml"), "--params", help="params.yaml with every tunable (checked against "
                                                          "the schema in pose.params before the command runs)")
#: exit status of bad params / usage (click's usage errors use 2 as well)
EXIT_CONFIG = 2
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
#: third-party warnings that say nothing a `pose` user can act on
_IGNORED_WARNINGS = (
    # MLflow: PythonModel.predict without type hints (pose.serving.model declares a signature instead)
    (r".*Add type hints to the .predict. method", UserWarning),
)


def _one_line(msg: object) -> str:
    """``msg`` without colour codes, its lines joined with "; " (a message is one line)."""
    lines = [ln.strip() for ln in _ANSI.sub("", str(msg)).splitlines() if ln.strip()]
    return "; ".join(lines)


def _colour() -> bool:
    return sys.stderr.isatty() and "NO_COLOR" not in os.environ


def _error_line(msg: object) -> None:
    text = f"error: {_one_line(msg)}"
    if _colour():
        typer.secho(text, fg=typer.colors.RED, err=True)
    else:
        typer.echo(text, err=True)


def _fail(msg: str, code: int = 1) -> None:
    """Print ``error: <msg>`` (one line, plain unless stderr is a terminal) and exit ``code``."""
    _error_line(msg)
    raise typer.Exit(code)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """`warnings.showwarning` replacement: ``warning: <message as one line> (<category>)``, no
    source line; drops `_IGNORED_WARNINGS` here too, since libraries that reset the filters
    (MLflow's ``simplefilter("once")`` around its type-hint check) bypass `warnings.filterwarnings`."""
    text = _one_line(message)
    if any(re.match(pattern, text) and issubclass(category, cat) for pattern, cat in _IGNORED_WARNINGS):
        return
    try:
        print(f"warning: {text} ({category.__name__})", file=file or sys.stderr)
    except (OSError, ValueError):
        pass


def _quiet_warnings() -> None:
    """Drop the known noise (`_IGNORED_WARNINGS`) and print other warnings as one plain line."""
    for pattern, category in _IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=category)
    warnings.showwarning = _show_warning


for _pattern, _category in _IGNORED_WARNINGS:
    warnings.filterwarnings("ignore", message=_pattern, category=_category)


#: the params of the running command, checked once before its body (`_checks_params_first`)
_CHECKED: dict[Path, Params] = {}


def _params(path: Path) -> Params:
    """params.yaml checked against the schema (the typed `pose.params.Params`, loaded once per
    command); a bad file / value ends the command with one line."""
    if path in _CHECKED:
        return _CHECKED[path]
    try:
        return load_sections(path)
    except ParamsError as exc:
        _fail(str(exc) + restore_hint(path), EXIT_CONFIG)
    except FileNotFoundError as exc:
        _fail(str(exc), EXIT_CONFIG)


def _version_callback(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("pose-pipeline")
        except PackageNotFoundError:
            v = pose.__version__
        typer.echo(f"pose {v}")
        raise typer.Exit(0)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", is_eager=True, callback=_version_callback,
                                       help="print the version and exit")) -> None:
    _quiet_warnings()


@app.command("check-params")
def check_params(out: Path = typer.Option(None, help="also write this JSON marker ({\"ok\": true}; the same bytes for "
                                                     "every valid params.yaml) for DVC stages to depend on"),
                 dataset_entry: Path = typer.Option(None, help="also write what the stages after fetch read of "
                                                    "catalogue.<data.dataset> (pose.params.dataset_reading_entry)"),
                 params_file: Path = PARAMS) -> None:
    """Check params.yaml against the schema and exit (the first DVC stage, `check_params`): unknown keys,
    types, ranges, input sizes (positive multiples of 32), enumerations, data.dataset in the catalogue."""
    p = _params(params_file)
    from pose.io import atomic_write_json

    if out is not None:
        atomic_write_json(out, {"ok": True})
    if dataset_entry is not None:
        from pose.params import dataset_reading_entry

        atomic_write_json(dataset_entry, dataset_reading_entry(p))
    typer.echo(f"{params_file}: ok")


def _data_exit_code(exc: BaseException) -> int:
    """Exit status of a failed `fetch` / `ingest`: 75 (`pose.datasets.sources.NETWORK_EXIT_CODE`,
    EX_TEMPFAIL: try again later) when only the network failed, after the download retries; 1 for
    everything else, a bad batch included (retrying cannot help)."""
    from pose.datasets.sources import NETWORK_EXIT_CODE, is_network_error

    return NETWORK_EXIT_CODE if is_network_error(exc) else 1


@app.command()
def fetch(out: Path = typer.Option(None, help="output folder (default: <data.raw_dir>/<data.dataset>)"),
          dataset: str = typer.Option(None, help="catalogue name (default: params data.dataset)"),
          ingest: list[str] = typer.Option(None, "--ingest", help="also merge this batch of new annotated images "
                                           "(folder or s3://prefix) into the train split; repeatable"),
          params_file: Path = PARAMS) -> None:
    """Fetch a dataset into COCO-17 layout with a sha256 manifest (stage `fetch`); native datasets are converted."""
    from pose.datasets.fetch import fetch_dataset

    p = _params(params_file)
    d = p.data
    name = dataset or d.dataset
    out = out or Path(d.raw_dir) / name
    mirror = Path(d.mirror) if d.mirror else None
    try:
        summary = fetch_dataset(name, catalogue=p.as_dict()["catalogue"], mirror_root=mirror, out_dir=out,
                                generated_params=p.generated.as_dict(), train_split=d.train_split,
                                val_split=d.val_split,
                                link=False, ingest=list(ingest or []), progress=sys.stderr.isatty())
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as exc:
        _fail(str(exc), _data_exit_code(exc))
    typer.echo(json.dumps(summary, indent=2, sort_keys=True, default=str))


@app.command()
def ingest(batch: str = typer.Option(..., help="folder, file:// URL or s3://bucket/prefix with one COCO JSON + images"),
           into: Path = typer.Option(..., help="dataset folder written by `pose fetch`, e.g. data/raw/<name>"),
           split: str = typer.Option(None, help="split to add to (default: params data.train_split)"),
           fmt: str = typer.Option("coco", "--format", help="coco, or the kind of a native format converted first "
                                   f"({' | '.join(NATIVE_KINDS)}; pose.datasets.formats)"),
           annotations: str = typer.Option(None, help="the batch's annotation JSON, relative to the batch "
                                           "(default: its only JSON)"),
           params_file: Path = PARAMS) -> None:
    """Merge a batch of new annotated images into a dataset's train split: new ids, duplicates (by image
    content hash) dropped, ingest_record.json appended, manifest rewritten, all atomically."""
    from pose.datasets.ingest import ingest_batch

    d = _params(params_file).data
    try:
        summary = ingest_batch(batch, into, split=split or d.train_split, fmt=fmt, annotations=annotations,
                               progress=sys.stderr.isatty())
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as exc:
        _fail(str(exc), _data_exit_code(exc))
    typer.echo(json.dumps(summary, indent=2, sort_keys=True, default=str))


@app.command()
def validate(annotations: Path = typer.Option(..., help="COCO keypoints JSON to check"),
             images: Path = typer.Option(..., help="folder of the images it references"),
             report: Path = typer.Option(..., help="JSON report to write (findings, summary, removed records)"),
             docs: Path = typer.Option(None, help="Data Docs HTML folder"),
             cleaned: Path = typer.Option(None, help="annotation file downstream stages read "
                                          "(cleaned under quarantine)"),
             on_error: str = typer.Option(None, help="fail | quarantine (default: params validate.on_error)"),
             params_file: Path = PARAMS) -> None:
    """Validate annotations and image files with a great-expectations suite (stage `validate`). Exit 1 on errors."""
    from pose.datasets.catalogue import exif_orientation
    from pose.quality.validate import validate_dataset

    p = _params(params_file)
    v = p.validate_
    docs = docs or report.with_suffix("").parent / (report.stem + "_docs")
    result = validate_dataset(annotations, images, on_error=on_error or v.on_error,
                              bbox_tolerance=float(v.bbox_tolerance),
                              min_labeled_keypoints=int(v.min_labeled_keypoints),
                              lr_swap_min_shoulder_reversal=float(v.lr_swap_min_shoulder_reversal),
                              report_path=report, docs_dir=docs, cleaned_path=cleaned,
                              workers=int(v.workers),
                              cache_path=Path(v.image_cache) if v.image_cache else None,
                              exif_orientation=exif_orientation(p.catalogue[p.data.dataset].as_dict()))
    s = result.get("summary", {})
    typer.echo(f"{annotations}: {s}")
    if not result["ok"]:
        errors = [f for f in result.get("findings", []) if f.get("severity") == "error"]
        for f in errors[:20]:
            typer.echo(f"  [{f.get('check')}] image {f.get('image_id')} ann {f.get('annotation_id')} "
                       f"{f.get('field')}: {f.get('message')}", err=True)
        _fail(f"{len(errors)} error(s) in {annotations}; see {report}")


@app.command("check-scales")
def check_scales_cmd(annotations: Path = typer.Option(..., help="COCO keypoints JSON (the validated train split)"),
                     report: Path = typer.Option(..., help="JSON report to write (per size: violations, persons "
                                                           "too small, keypoints lost, height histogram)"),
                     params_file: Path = PARAMS) -> None:
    """Cross-scale annotation consistency for every curriculum input size (stage `check_scales`)."""
    from pose.codec import OUTPUT_STRIDES
    from pose.quality.scales import check_scales

    p = _params(params_file)
    c = p.check_scales
    # the shared size rule (pose.params), also applied by the schema and by `pose train`
    sizes = sorted({check_input_size(s, f"train.curriculum[{i}].sizes", str(params_file))
                    for i, st in enumerate(p.train.curriculum) for s in st.sizes}
                   | {check_input_size(p.evaluate.input_size, "evaluate.input_size", str(params_file))})
    from pose.quality.tables import AnnotationFileError

    try:
        result = check_scales(annotations, input_sizes=sizes, strides=list(OUTPUT_STRIDES),
                              sigma=float(p.targets.sigma),
                              max_roundtrip_error=float(c.max_roundtrip_error),
                              max_peak_error=float(c.max_peak_error),
                              min_torso_heatmap_px=float(c.min_torso_heatmap_px), report_path=report,
                              crop=str(p.augment.crop), convention=str(p.model.convention),
                              subpixel=bool(p.targets.subpixel))
    except (AnnotationFileError, ValueError) as exc:
        _fail(str(exc))
    if not result["ok"]:
        violations = [str(v) for v in result.get("violations", [])]
        for v in violations[:20]:
            typer.echo(f"  violation: {_one_line(v)}", err=True)
        if len(violations) > 20:
            typer.echo(f"  ... and {len(violations) - 20} more in {report}", err=True)
        _fail(f"{len(violations)} scale consistency violation(s) in {annotations} for sizes {sizes}; see {report}")
    typer.echo(f"scale checks passed for sizes {sizes}")


@app.command()
def train(train_ann: Path = typer.Option(..., help="training COCO keypoints JSON (the validated train split)"),
          train_images: Path = typer.Option(..., help="folder of the training images"),
          out_dir: Path = typer.Option(Path("data/models"), help="checkpoint folder (last.pt, best.pt)"),
          metrics: Path = typer.Option(Path("data/metrics/train.json"), help="training summary JSON to write"),
          steps: Path = typer.Option(Path("data/plots/train_steps.csv"), help="per-step CSV to write (loss "
                                                                              "terms, lr, input size, images/s)"),
          resume: bool = typer.Option(True, help="continue from out_dir/last.pt when present"),
          val_ann: Path = typer.Option(None, help="validation COCO keypoints JSON, scored every train.val_every "
                                                  "epochs; best.pt = best validation AP"),
          val_images: Path = typer.Option(None, help="folder of the validation images"),
          val_epochs: Path = typer.Option(None, help="per-epoch validation CSV to write (epoch, step, AP, AP50, ...)"),
          dvc_stage: str = typer.Option(None, help="run as this dvc.yaml stage (the train stage: --dvc-stage train): "
                                        "resume only from a last.pt written by the same stage inputs (deps' hashes "
                                        "as DVC computes them, the stage's params), else start fresh and say why; "
                                        "stop with a checkpoint when the dvc process running it ends"),
          params_file: Path = PARAMS) -> None:
    """Train HigherHRNet with the multi-scale curriculum (stage `train`). Works under torchrun.

    SIGTERM / SIGINT write last.pt at the next step boundary and exit 128 + signal (130, 143);
    the same command resumes there (`pose.train.stop`)."""
    from pose.datasets.formats import dataset_domain
    from pose.train.loop import train as run_train
    from pose.train.stop import TrainingInterrupted

    try:
        inputs = None
        if dvc_stage:
            from pose.train.resume import stage_inputs

            inputs = stage_inputs(dvc_stage, os.environ.get("DVC_ROOT") or ".")
        p = _params(params_file)
        summary = run_train(p.train, p.model, p.targets, p.augment, p.loss, p.evaluate, dataset=p.data.dataset,
                            domain=dataset_domain(p.catalogue, p.data.dataset), train_ann=train_ann,
                            train_images=train_images,
                            out_dir=out_dir, metrics_path=metrics, steps_path=steps, resume=resume,
                            val_ann=val_ann, val_images=val_images, val_path=val_epochs, stage_inputs=inputs,
                            watch_parents=bool(dvc_stage))
    except TrainingInterrupted as exc:
        try:
            typer.echo(f"interrupted: {exc}", err=True)
        except OSError:  # stderr closed with the process that read it
            pass
        raise typer.Exit(128 + exc.signum) from None
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    if summary:
        typer.echo(json.dumps(summary, indent=2, sort_keys=True))


@app.command()
def evaluate(annotations: Path = typer.Option(..., help="ground-truth COCO keypoints JSON"),
             out: Path = typer.Option(..., help="metrics.json to write"),
             results: Path = typer.Option(None, help="score this existing COCO results JSON"),
             checkpoint: Path = typer.Option(None, help="or: decode this checkpoint on --images first"),
             images: Path = typer.Option(None, help="folder of the images of --annotations (with --checkpoint)"),
             results_out: Path = typer.Option(None, help="write the decoded COCO results JSON here "
                                              "(with --checkpoint)"),
             efficiency: Path = typer.Option(None, help="efficiency.json to write: params, GFLOPs, latency p50/p90, "
                                                        "peak memory (needs --checkpoint and --images)"),
             plots_dir: Path = typer.Option(None, help="folder for AP per keypoint / per person scale (PNG + CSV) "
                                                       "and overlays.png of sample images (needs --images)"),
             dataset: str = typer.Option(None, help="catalogue entry whose sigmas (COCO-17 OKS) and format's native "
                                                    "metric (e.g. CrowdPose easy/medium/hard) score the results "
                                                    "(default: params data.dataset)"),
             params_file: Path = PARAMS) -> None:
    """COCO keypoint AP/AR with pycocotools (the dataset's catalogue sigmas), per-scale AP, the dataset
    format's native metric (CrowdPose easy/medium/hard, AIC / MPII OKS AP), plots and efficiency (stage `evaluate`)."""
    from pose.evaluate.outputs import write_evaluation
    from pose.evaluate.scoring import score_evaluation

    p = _params(params_file)
    if efficiency is not None and (checkpoint is None or images is None):
        _fail("--efficiency needs --checkpoint and --images")
    try:
        scored = score_evaluation(p.evaluate, p.catalogue, annotations, results=results, checkpoint=checkpoint,
                                  images=images, results_out=results_out, dataset=dataset or p.data.dataset)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    eff = write_evaluation(p.evaluate, p.predict, scored, out=out, annotations=annotations, images=images,
                           plots_dir=plots_dir, efficiency=efficiency)
    if eff is not None:
        typer.echo(json.dumps({k: eff[k] for k in ("params", "gflops", "latency_ms_p50", "latency_ms_p90",
                                                   "peak_memory_mb")}))
    metrics = scored.metrics
    keys = ("AP", "AP50", "AP75", "APM", "APL", "AR", "AP_easy", "AP_medium", "AP_hard")
    typer.echo(json.dumps({k: metrics[k] for k in keys if k in metrics}, indent=2))


def _notice(text: str) -> None:
    """The one-line domain notice of `pose.predict.Predictor` on stderr."""
    typer.echo(f"warning: {text}", err=True)


def _resolve_model(model: str, p: Params) -> str:
    """`pose.registry.model_refs.resolve_model` with params.yaml's tracking URI; an unresolvable reference
    ends the command with its one line."""
    from pose.registry.model_refs import ModelRefError, resolve_model
    from pose.registry.tracking import tracking_uri

    try:
        return resolve_model(model, tracking_uri=tracking_uri(p.registry))
    except ModelRefError as exc:
        _fail(str(exc))


@app.command()
def predict(source: Path = typer.Argument(..., help="an image, a folder of images, or a video (.mp4, .avi, .mov, "
                                                    ".mkv: <stem>.jsonl + <stem>_overlay.mp4/.avi in --out-dir)"),
            model: str = typer.Option(..., help="checkpoint path, or models:/<name>@<alias> (also "
                                                "models:/<name>/<version>, runs:/<run>/<path>)"),
            out_dir: Path = typer.Option(Path("predictions"), help="folder for <image>_pose.png overlays and "
                                                                   "results.json, or a video's <stem>.jsonl and "
                                                                   "<stem>_overlay video (not created when inputs "
                                                                   "are bad)"),
            input_size: int = typer.Option(None, help="network input side (default: params evaluate.input_size)"),
            min_score: float = typer.Option(None, help="draw persons scoring at least this "
                                                       "(default: params predict.min_person_score)"),
            min_joints: int = typer.Option(None, help="... with at least this many joints above the joint "
                                                      "threshold (default: params predict.min_joints)"),
            joint_threshold: float = typer.Option(None, help="draw joints scoring above this (and count them for "
                                                             "--min-joints; default: params predict.joint_threshold)"),
            max_frames: int = typer.Option(None, help="video only: predict at most this many frames "
                                                      "(default: the whole video)"),
            allow_partial: bool = typer.Option(False, "--allow-partial",
                                               help="video only: predict the frames that decode when fewer decode "
                                                    "than the video declares (default: stop with an error)"),
            backend: str = typer.Option("auto", help="auto (onnxruntime for a .onnx file or a registered version "
                                                     "holding model.onnx, else torch) | torch | onnxruntime "
                                                     "(NumPy decoding, torch is not imported)"),
            params_file: Path = PARAMS) -> None:
    """Draw the confident skeletons (one colour per person) on images and write COCO results JSON,
    or on a video's frames with per-frame JSON Lines; prints what data the model was trained on."""
    from pose.predict import OptionError, check_predict_inputs

    try:
        check_predict_inputs(source, model, input_size=input_size, min_score=min_score, min_joints=min_joints,
                             backend=backend, joint_threshold=joint_threshold)
    except OptionError as exc:
        _fail(str(exc), EXIT_CONFIG)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    from pose.predict import predict_images, prediction_settings
    from pose.registry.tracking import tracking_uri
    from pose.video import is_video, predict_video_file

    p = _params(params_file)
    model = _resolve_model(model, p)
    ev, show, device = prediction_settings(p.evaluate, p.predict, model, backend=backend, input_size=input_size,
                                           min_score=min_score, min_joints=min_joints,
                                           joint_threshold=joint_threshold)
    run = dict(eval_params=ev, predict_params=show, backend=backend, device=device,
               tracking_uri=tracking_uri(p.registry), notice=_notice, echo=typer.echo)
    if not is_video(source):
        try:
            summary = predict_images(source, model, out_dir, **run)
        except (FileNotFoundError, ValueError, RuntimeError) as exc:
            _fail(str(exc))
        typer.echo(f"{summary['images']} image(s), {summary['persons']} person(s) ({summary['drawn']} drawn) -> "
                   f"{out_dir} (results: {summary['results']})")
        return
    try:
        summary = predict_video_file(source, model, out_dir, max_frames=max_frames, allow_partial=allow_partial,
                                     **run)
    except OptionError as exc:
        _fail(str(exc), EXIT_CONFIG)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        _fail(str(exc))
    declared = summary["frames_declared"]
    decoded = (f"{summary['frames_decoded']} of {declared} declared frames decoded" if declared is not None
               else f"{summary['frames_decoded']} frames decoded (the video declares no count)")
    if summary["partial"]:
        typer.echo(f"warning: {source}: partial video, {decoded} (--allow-partial)", err=True)
    typer.echo(f"{summary['frames']} frame(s) predicted ({decoded}), {summary['persons']} person(s) "
               f"({summary['drawn']} drawn) -> {summary['jsonl']}, {summary['video']}")


@app.command("export")
def export_cmd(model: str = typer.Option(..., help="checkpoint path, or models:/<name>@<alias> (also "
                                                   "models:/<name>/<version>, runs:/<run>/<path>)"),
               format: str = typer.Option("onnx", "--format", help="onnx (the only format)"),
               out: Path = typer.Option(..., help="file to write, e.g. model.onnx"),
               int8: bool = typer.Option(False, "--int8", help="write the int8 model (onnxruntime static "
                                                               "quantization, calibrated on training images)"),
               calibration_annotations: Path = typer.Option(Path("data/validated/train.json"),
                                                            help="--int8: COCO JSON of the calibration images "
                                                                 "(the training split)"),
               calibration_images: Path = typer.Option(None, help="--int8: their folder (default: "
                                                                  "<data.raw_dir>/<data.dataset>/<data.train_split>)"),
               params_file: Path = PARAMS) -> None:
    """Export a model for `pose predict --backend onnxruntime`: the test-time network (flip test, head
    aggregation, params evaluate) with dynamic batch, height and width, and the decoding settings and
    the training data's record in the file's metadata; --int8: quantized (predict.int8_calibration_images)."""
    if format not in ("onnx",):  # pose.export.FORMATS
        _fail(f"--format {format!r}: must be onnx", EXIT_CONFIG)
    from pose.predict import check_model_argument

    try:
        check_model_argument(model)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    from pose.export import export_model
    from pose.registry.tracking import tracking_uri

    p = _params(params_file)
    model = _resolve_model(model, p)
    try:
        path = export_model(p.evaluate, p.predict, p.data, model, out, int8=int8,
                            calibration_annotations=calibration_annotations, calibration_images=calibration_images,
                            tracking_uri=tracking_uri(p.registry), notice=_notice)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        _fail(str(exc))
    typer.echo(f"exported {model} -> {path} ({path.stat().st_size / 1e6:.1f} MB, onnx{', int8' if int8 else ''})")


@app.command()
def register(checkpoint: Path = typer.Option(..., help="trained checkpoint to register (data/models/best.pt)"),
             metrics: Path = typer.Option(..., help="its eval.json (pose evaluate --out)"),
             eval_annotations: Path = typer.Option(..., help="ground truth the metrics were computed on"),
             eval_images: Path = typer.Option(..., help="folder of the evaluation images (champion re-evaluation)"),
             out: Path = typer.Option(..., help="registration record JSON to write"),
             train_metrics: Path = typer.Option(None, help="train.json of the run, logged as metrics"),
             train_steps: Path = typer.Option(None, help="per-step CSV of the run, logged as metric curves"),
             results: Path = typer.Option(None, help="COCO results JSON of the evaluation "
                                          "(default: data/eval/results.json "
                                                     "beside --metrics' folder when present)"),
             train_annotations: Path = typer.Option(None, help="training annotations (default: train.json beside "
                                                               "--eval-annotations when present)"),
             artifact: list[Path] = typer.Option([], help="extra files/folders to log"),
             params_file: Path = PARAMS) -> None:
    """Log the run to MLflow, register the model, set challenger/champion aliases (stage `register`)."""
    from pose.evaluate.scoring import score_checkpoint
    from pose.params import flatten
    from pose.registry.errors import RegistryError
    from pose.registry.mlflow_registry import register_run

    p = _params(params_file)
    try:
        record = register_run(p.registry, p.data, p.catalogue, p.generated, p.schedule, p.model, p.train, p.evaluate,
                              p.predict, p.serve, logged_params=flatten(p.as_dict()), checkpoint=checkpoint,
                              eval_metrics=metrics, eval_annotations=eval_annotations,
                              out=out, artifacts=artifact, train_metrics=train_metrics, train_steps=train_steps,
                              results=results, train_annotations=train_annotations,
                              reevaluate=lambda ck, ann=None: score_checkpoint(
                                  p.evaluate, p.catalogue, ck, ann or eval_annotations, eval_images, None,
                                  dataset=p.data.dataset))
    except (RegistryError, TimeoutError) as exc:
        _fail(str(exc))
    from pose.registry.versions import registration_line

    typer.echo(registration_line(record, out))


def _val_images(p: Params) -> Path:
    d = p.data
    return Path(d.raw_dir) / d.dataset / d.val_split


@app.command()
def promote(version: str = typer.Option(None, help="version (3 / v3), alias or models:/ URI "
                                                "(default: alias challenger)"),
            force: bool = typer.Option(False, help="override the gate; needs --reason"),
            reason: str = typer.Option(None, help="why the gate is overridden (required with --force)"),
            eval_images: Path = typer.Option(None, help="validation images, used to re-evaluate the champion on the "
                                                        "challenger's data (default: <raw_dir>/<dataset>/<val_split>)"),
            params_file: Path = PARAMS) -> None:
    """Gate a registered version against the champion with the rules of params `registry.rules` (on the
    same eval data, with bootstrap CIs) and move alias `champion` when every rule passes, under the registry lock."""
    from pose.evaluate.scoring import score_checkpoint
    from pose.registry.errors import RegistryError
    from pose.registry.promotion import promote as run_promote

    if force and not (reason and reason.strip()):
        _fail("pose promote: --force needs --reason \"...\": say why the gate is overridden "
              "(see 'pose promote --help')", EXIT_CONFIG)
    p = _params(params_file)
    images = eval_images or _val_images(p)
    try:
        record = run_promote(p.registry, p.data, p.catalogue, version=version, force=force, reason=reason,
                             reevaluate=lambda ck, ann: score_checkpoint(p.evaluate, p.catalogue, ck, ann, images,
                                                                         None, dataset=p.data.dataset))
    except (RegistryError, TimeoutError) as exc:
        _fail(str(exc))
    from pose.registry.verdict import promotion_line

    typer.echo(promotion_line(record))
    typer.echo(json.dumps(record, indent=2, sort_keys=True, default=str))


@app.command()
def rollback(reason: str = typer.Option(..., help="why the champion is rolled back"),
             to: int = typer.Option(None, help="an earlier champion version (default: the previous champion)"),
             params_file: Path = PARAMS) -> None:
    """Move alias `champion` back to the previous champion (registered-model tag champion.history)."""
    from pose.registry.errors import RegistryError
    from pose.registry.promotion import rollback as run_rollback

    if not reason.strip():
        _fail("pose rollback: --reason must say why the champion is rolled back (see 'pose rollback --help')",
              EXIT_CONFIG)
    try:
        p = _params(params_file)
        record = run_rollback(p.registry, p.data, reason=reason, to_version=to)
    except (RegistryError, TimeoutError) as exc:
        _fail(str(exc))
    typer.echo(f"{record['model_name']}: champion rolled back from v{record['rolled_back']} to v{record['champion']} "
               f"({record['reason']})")
    typer.echo(json.dumps(record, indent=2, sort_keys=True))


@app.command()
def compare(a: str = typer.Argument(..., help="baseline: run id, version (3 / v3), alias or models:/ URI"),
            b: str = typer.Argument(..., help="candidate (same forms); the report is logged to its run"),
            out_dir: Path = typer.Option(None, help="report folder (default: data/compare/<model>/v<A>_vs_v<B>, "
                                                    "or data/compare/<modelA>-v<A>_vs_<modelB>-v<B>)"),
            images: Path = typer.Option(None, help="validation images for overlays "
                                         "(default: <raw_dir>/<dataset>/<val_split>)"),
            log: bool = typer.Option(True, "--log/--no-log", help="log the report as an artifact of B's run"),
            params_file: Path = PARAMS) -> None:
    """Markdown + HTML report of A vs B, verdict first (better AP, paired CI, gate rules), then metric deltas,
    data / params diff, curves and overlays. Prints the verdict and the report paths."""
    from pose.registry.compare import compare as run_compare
    from pose.registry.errors import RegistryError

    try:
        p = _params(params_file)
        report = run_compare(p.registry, p.data, p.catalogue, p.predict, a, b, out_dir=out_dir, images_dir=images,
                             log_to_run=log)
    except RegistryError as exc:
        _fail(str(exc))
    for line in report["verdict_lines"] + [n for n in report["summary"]["notes"] if n.startswith("No overlays")]:
        typer.echo(line.replace("**", "").replace("`", ""))
    typer.echo(f"report: {report['markdown']} | {report['html']}"
               + (f" | logged to run {report['run_id']} under {report['artifact_path']}"
                  if report["artifact_path"] else ""))


@app.command()
def serve(model: str = typer.Option(..., help="models:/<name>/latest (the newest version, whatever its alias), "
                                              "models:/<name>@champion, models:/<name>/<version>, runs:/<run>/model "
                                              "or a model folder"),
          host: str = typer.Option(None, help="address to bind (default: params serve.host)"),
          port: int = typer.Option(None, help="TCP port (default: params serve.port)"),
          workers: int = typer.Option(None, help="worker processes (default: params serve.workers)"),
          params_file: Path = PARAMS) -> None:
    """Serve a registered model over HTTP (MLflow's scoring protocol: POST /invocations, GET /ping) with
    supervised workers, request limits and deadlines (params serve; pose.serve). Runs until Ctrl-C / SIGTERM."""
    from pose.predict import check_model_argument

    try:
        if not Path(model).is_dir():   # a model folder, else a models:/ or runs:/ reference
            check_model_argument(model)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    from pose.serve import ServeError, serve_model

    try:
        p = _params(params_file)
        serve_model(p.serve, p.registry, model_uri=model, host=host, port=port, workers=workers, echo=typer.echo)
    except ServeError as exc:
        _fail(str(exc))


def _checks_params_first(fn):
    """Wrap a command so that its ``--params`` file passes the schema before the command body
    runs (before any heavy import, any output is touched or any compute starts)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        path = kwargs.get("params_file")
        if path is None:
            return fn(*args, **kwargs)
        _CHECKED[path] = _params(path)     # the command body reads this one (`_params`): loaded once
        try:
            return fn(*args, **kwargs)
        finally:
            _CHECKED.pop(path, None)

    wrapper.checks_params_first = True
    return wrapper


# every command registered above (whoever added it) validates params.yaml first
for _info in app.registered_commands:
    if _info.callback is not None and not getattr(_info.callback, "checks_params_first", False):
        _info.callback = _checks_params_first(_info.callback)


def main() -> None:
    """Console entry point ``pose``: runs the app, printing click's usage errors (unknown
    option, missing argument, bad value) as one line ``error: ... (see 'pose <cmd> --help')``,
    and any exception no command handles as one line ``error: pose <cmd> failed unexpectedly:
    <type>: <message> (<where>); full traceback: <log file>`` (:func:`pose.crash.crash_report`), exit 1."""
    _quiet_warnings()
    command = typer.main.get_command(app)
    try:
        code = command.main(args=sys.argv[1:], prog_name="pose", standalone_mode=False)
    except _click_exc.NoArgsIsHelpError as exc:
        typer.echo(exc.format_message())
        sys.exit(0)
    except _click_exc.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "pose"
        _error_line(f"{where}: {exc.format_message()} (see '{where} --help')")
        sys.exit(exc.exit_code)
    except _click_exc.ClickException as exc:
        _error_line(exc.format_message())
        sys.exit(exc.exit_code)
    except typer.Abort:
        _error_line("aborted")
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - the crash handler: no handler above expected this
        from pose.crash import crash_report

        _error_line(crash_report(exc, sys.argv[1:], one_line=_one_line))
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    sys.exit(main())
