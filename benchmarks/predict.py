"""Speed of `pose predict` per image and on video, torch vs onnxruntime, on real COCO photos.

For each model width (``--widths``, default W16 and W32) and backend (torch, onnxruntime) it
times, per image (wall clock, this process, after ``--warmup`` untimed images), the stages of
the one inference path (issue 15), each through its public function:

* ``pre``: :func:`pose.decode.preprocess.input_geometry` + :func:`~pose.decode.preprocess.input_batch`
  (letterbox / short-side warp, normalisation; NumPy + OpenCV, the same for both backends);
* ``net``: the network on the (2 with the flip test, 3, S, S) batch. torch: the ``model`` of
  :class:`pose.decode.inference.InferenceNet`, timed by forward hooks while the InferenceNet
  runs. onnxruntime: the exported InferenceNet graph (``pose.export.export_onnx``, what
  ``pose predict --backend onnxruntime`` runs) under onnxruntime's profiler, one run per
  image: the run's wall time minus ``agg``;
* ``agg``: flip batch, head aggregation, flip merge and ``project2image`` upsampling: the rest
  of the InferenceNet run. torch: its time minus the network's, plus the copy of the maps to
  NumPy. onnxruntime: the kernel times of the nodes the exporter did not place under the
  ``model`` submodule (node metadata ``pkg.torch.onnx.name_scopes``);
* ``group``: :func:`pose.decode.persons.decode_persons` (tag grouping, adjust / refine,
  mapping to image px, pose NMS; NumPy, the same for both backends);
* ``e2e``: the whole predictor as ``pose predict`` builds it (torch:
  :func:`pose.decode.inference.predict_image` on the InferenceNet; onnxruntime:
  :meth:`pose.decode.onnx_backend.OnnxPoseModel.predict`).

Then frames/s of :func:`pose.video.predict_video` (decode, predict, draw, encode, JSON Lines)
on an MP4 made of the same COCO photos (``--video-frames`` frames at 640 x 480, 5 fps).

Settings: params.yaml ``evaluate`` with ``input_size`` = ``--size`` (flip test, resize,
``project2image`` as there). Models: random initialisation (``model.init``) of params.yaml's
``model`` section at each width (W16: the CPU config; W32: the published HigherHRNet-W32
architecture, ``stage_blocks [1, 4, 3]``, preset ``coco_w32_512``), unless ``--checkpoint``
gives a trained model of that width. A random model finds few confident joints, so its
grouping time is small; a trained one groups more (pass ``--checkpoint data/models/best.pt``).

Threads: torch intra-op, onnxruntime intra-op and OpenCV all get ``--threads`` (default: the
cores this process may use), inter-op 1; backends run one after the other, never at once.

Prints one table and the issue's two ratios: (agg + group) / net (goal < 10%) and
onnxruntime / torch network time (goal <= 1).

Run:  PYTHONPATH=. python benchmarks/predict.py [--size 512] [--images 10] [--widths 16 32]
      [--checkpoint data/models/best.pt]
Nothing is written outside a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml

from pose.decode.inference import inference_net, predict_image
from pose.decode.onnx_backend import OnnxPoseModel
from pose.decode.persons import decode_persons, graph_projects, resolve_eval_params
from pose.decode.preprocess import input_batch, input_geometry
from pose.export import calibration_inputs, export_onnx, quantize_int8
from pose.models import build_model, count_flops, count_params
from pose.params import PredictSection
from pose.predict import limit_persons
from pose.video import predict_video

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = Path(os.environ.get("POSE_SHARED_DATASETS", REPO.parent / "shared" / "datasets")) / "coco-mini"
#: the published HigherHRNet-W32 architecture (conf/preset/coco_w32_512.yaml)
W32_STAGE_BLOCKS = [1, 4, 3]
STAGES = ("pre", "net", "agg", "group", "e2e")


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _model(params: dict, width: int, checkpoint: Path | None) -> tuple[torch.nn.Module, str]:
    if checkpoint is not None:
        from pose.train.checkpoint import load_checkpoint, load_trained_model, trained_model_params

        if int(trained_model_params(load_checkpoint(checkpoint))["width"]) == width:
            return load_trained_model(checkpoint, "cpu"), f"trained {checkpoint}"
    mp = dict(params["model"], width=width, pretrained="", pretrained_backbone="")
    if width >= 32:
        mp["stage_blocks"] = W32_STAGE_BLOCKS
    torch.manual_seed(0)
    return build_model(mp).eval(), f"random init, stage_blocks {mp['stage_blocks']}"


def _wrapper_nodes(onnx_path: Path) -> set[str]:
    """Names of the nodes of an exported InferenceNet graph outside its ``model`` submodule (flip
    batch, head aggregation, upsampling), from the exporter's ``pkg.torch.onnx.name_scopes`` node
    metadata. onnxruntime keeps these names (elementwise / gather ops), while it fuses and renames
    the network's convolutions (``relu_nchwc``, ``ReorderOutput_token_N``)."""
    import ast

    import onnx

    names, network = set(), 0
    for node in onnx.load(str(onnx_path)).graph.node:
        meta = {e.key: e.value for e in node.metadata_props}
        scopes = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))
        if len(scopes) > 2 and scopes[1] == "model":
            network += 1
        else:
            names.add(node.name)
    if not network:
        raise RuntimeError(f"{onnx_path}: no node carries the name scope 'model' (exporter metadata changed?)")
    return names


def _profiled_split(onnx_path: Path, batches: list[np.ndarray], threads: int, workdir: Path) -> tuple[list, list]:
    """Per batch: (network ms, aggregation ms) of one run of the exported graph under onnxruntime's
    profiler: aggregation = the kernel times of the InferenceNet's own nodes (:func:`_wrapper_nodes`),
    network = the rest of the run's wall time (sequential execution: the network's kernels and the
    executor's overhead)."""
    import onnxruntime as ort

    wrapper = _wrapper_nodes(onnx_path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.enable_profiling = True
    opts.profile_file_prefix = str(workdir / "ort_profile")
    session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for batch in batches:
        session.run(None, {name: batch})
    events = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    agg_us = [0.0] * len(runs)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["name"][:-12] in wrapper:
            for i, (t0, t1) in enumerate(runs):
                if t0 <= e["ts"] <= t1:
                    agg_us[i] += e["dur"]
                    break
    return [(t1 - t0 - a) / 1e3 for (t0, t1), a in zip(runs, agg_us)], [a / 1e3 for a in agg_us]


class Progress:
    """Progress lines on stderr: the variant, the image, the time per image and an estimate of the
    time left over all variants (images left x the mean time per image so far), so a run on a busy
    machine shows that it advances and for how long it will."""

    def __init__(self, total_images: int) -> None:
        self.total, self.done, self.t0 = total_images, 0, time.perf_counter()

    def step(self, label: str, i: int, n: int) -> None:
        self.done += 1
        spent = time.perf_counter() - self.t0
        left = spent / self.done * (self.total - self.done)
        print(f"  [{label}] image {i}/{n}, {spent / self.done:.2f} s per image, about {left / 60:.1f} min left "
              f"(load {os.getloadavg()[0]:.1f})", file=sys.stderr, flush=True)


def _time_torch(net, images: list[np.ndarray], warm: list[np.ndarray], cfg: dict, progress: Progress,
                label: str) -> tuple[dict, int]:
    conv = net.convention
    marks: list[float] = []
    hooks = [net.model.register_forward_pre_hook(lambda *_: marks.append(time.perf_counter())),
             net.model.register_forward_hook(lambda *_: marks.append(time.perf_counter()))]
    times = {k: [] for k in STAGES}
    persons = 0
    try:
        with torch.no_grad():
            for i, img in enumerate(warm + images):
                t0 = time.perf_counter()
                geo = input_geometry(img.shape[1], img.shape[0], resize=str(cfg.resize),
                                     input_size=int(cfg.input_size), scale=1.0, min_scale=1.0)
                x = torch.from_numpy(input_batch(img, geo))
                t1 = time.perf_counter()
                marks.clear()
                hm, tg = net(x)
                hm, tg = hm[0].numpy(), tg[0].numpy()
                t2 = time.perf_counter()
                found = decode_persons(hm, tg, geo.affine, net.stride, cfg=cfg, convention=conv,
                                       image_size=(img.shape[1], img.shape[0]))
                t3 = time.perf_counter()
                predict_image(net, img, eval_params=cfg)
                t4 = time.perf_counter()
                progress.step(label, i + 1, len(warm) + len(images))
                if i < len(warm):
                    continue
                network = marks[1] - marks[0]
                for k, v in zip(STAGES, (t1 - t0, network, t2 - t1 - network, t3 - t2, t4 - t3)):
                    times[k].append(v * 1e3)
                persons += len(found)
    finally:
        for h in hooks:
            h.remove()
    return times, persons


def _time_onnx(full: OnnxPoseModel, images: list[np.ndarray], warm: list[np.ndarray], cfg: dict, threads: int,
               workdir: Path, progress: Progress, label: str, agg_fallback: list[float] | None) -> tuple[dict, int]:
    times = {k: [] for k in STAGES}
    batches, persons = [], 0
    for i, img in enumerate(warm + images):
        t0 = time.perf_counter()
        geo = input_geometry(img.shape[1], img.shape[0], resize=str(cfg.resize),
                             input_size=int(cfg.input_size), scale=1.0, min_scale=1.0)
        x = input_batch(img, geo)
        t1 = time.perf_counter()
        hm, tg = full.run(x)
        t2 = time.perf_counter()
        found = decode_persons(hm[0], tg[0], geo.affine, full.stride, cfg=cfg, convention=full.convention,
                               image_size=(img.shape[1], img.shape[0]))
        t3 = time.perf_counter()
        full.predict(img, cfg)
        t4 = time.perf_counter()
        progress.step(label, i + 1, len(warm) + len(images))
        if i < len(warm):
            continue
        batches.append(x)
        times["pre"].append((t1 - t0) * 1e3)
        times["group"].append((t3 - t2) * 1e3)
        times["e2e"].append((t4 - t3) * 1e3)
        times["run"] = times.get("run", []) + [(t2 - t1) * 1e3]
        persons += len(found)
    try:
        times["net"], times["agg"] = _profiled_split(full.path, batches, threads, workdir)
    except RuntimeError:   # the int8 graph: its float aggregation nodes are the fp32 graph's (same shapes)
        agg = list(agg_fallback or [0.0] * len(batches))
        times["agg"] = agg
        times["net"] = [max(0.0, r - a) for r, a in zip(times["run"], agg)]
    times.pop("run", None)
    return times, persons


def _coco_ap(predict_fn, ann: Path, images_dir: Path, max_people: int, label: str) -> tuple[float, list]:
    """COCO keypoint AP of a predictor (official scores and coordinates, as the evaluate stage) and its
    COCO results (for the paired bootstrap against the official protocol)."""
    from pose.datasets.schema import COCO_SIGMAS
    from pose.decode.persons import to_coco_results
    from pose.evaluate.coco import evaluate_results

    records = sorted(json.loads(ann.read_text())["images"], key=lambda im: im["id"])
    results = []
    t0 = time.perf_counter()
    for n, im in enumerate(records):
        img = cv2.imread(str(images_dir / im["file_name"]), cv2.IMREAD_COLOR)
        results += to_coco_results(predict_fn(img)[:max_people], im["id"])
        if (n + 1) % 25 == 0:
            rate = (time.perf_counter() - t0) / (n + 1)
            print(f"  [AP {label}] {n + 1}/{len(records)} images, about {rate * (len(records) - n - 1):.0f} s left",
                  file=sys.stderr, flush=True)
    return float(evaluate_results(ann, results, sigmas=COCO_SIGMAS, per_keypoint=False)["AP"]), results


def _video(files: list[Path], path: Path, frames: int) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (640, 480))
    for i in range(frames):
        writer.write(cv2.resize(cv2.imread(str(files[i % len(files)]), cv2.IMREAD_COLOR), (640, 480)))
    writer.release()


def _fps(predict_fn, video: Path, out: Path, predict_params: dict, max_people: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    summary = predict_video(lambda frame: limit_persons(predict_fn(frame), max_people), video,
                            out_jsonl=out / "v.jsonl", out_video=out / "v_overlay.mp4", predict_params=predict_params,
                            max_frames=None, progress=False)
    return summary["frames"] / (time.perf_counter() - t0), summary["frames"]


def _predict_fn(runner, cfg: dict):
    """image -> persons of an InferenceNet (torch) or an OnnxPoseModel at settings ``cfg``."""
    if isinstance(runner, OnnxPoseModel):
        settings = runner.settings(cfg)

        def run(img):
            return runner.predict(img, settings)
        return run

    def run_torch(img):
        return predict_image(runner, img, eval_params=cfg)
    return run_torch


def _ap_against_official(aps: dict, sets: tuple[Path, Path], resamples: int = 1000) -> None:
    """Print each variant's AP minus the official protocol's (``torch-maps``: every map projected, as
    ``TEST.PROJECT2IMAGE``) on the same images, with a 95% paired image-bootstrap interval
    (``pose.registry.bootstrap.bootstrap_diff``, seed 0): the goal is a difference within 0.002."""
    from pose.registry.bootstrap import bootstrap_diff

    for (width, name), per_set in aps.items():
        base = aps.get((width, "torch-maps"))
        if base is None or name == "torch-maps":
            continue
        cells = []
        for label, ann, (_, res_a), (_, res_b) in zip(("generated val", "coco-mini val"), sets, base, per_set):
            d = bootstrap_diff(ann, res_a, res_b, n_resamples=resamples, seed=0, metrics=("AP",))["metrics"]["AP"]
            ci = (f" [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]" if d["ci_low"] is not None else "")
            cells.append(f"{label} {d['delta']:+.4f}{ci}" if d["delta"] is not None else f"{label} -")
        print(f"{width} {name}: AP minus torch-maps (official protocol), 95% paired image bootstrap of {resamples}: "
              + "; ".join(cells))


#: rows of the table: (backend, precision, evaluate.project_maps)
VARIANTS = {"torch-maps": ("torch", "fp32", True), "torch": ("torch", "fp32", False),
            "onnx-maps": ("onnxruntime", "fp32", True), "onnx": ("onnxruntime", "fp32", False),
            "int8": ("onnxruntime", "int8", False)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--size", type=int, default=512, help="network input side (evaluate.input_size)")
    ap.add_argument("--images", type=int, default=10, help="validation images timed (sorted by id)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--widths", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                    help="torch / onnx: backend, decoding the joints from the 1/2 maps (evaluate.project_maps "
                         "false); *-maps: every map projected (project_maps true); int8: `pose export --int8`")
    ap.add_argument("--video-frames", type=int, default=10, help="frames of the video timed per model and backend")
    ap.add_argument("--coco", type=Path, default=DEFAULT_IMAGES, help="COCO folder with val2017/ and annotations/")
    ap.add_argument("--timing-images", type=Path, default=None,
                    help="COCO-layout folder whose val2017 images are timed (default: --coco)")
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="trained checkpoint, used for its width (default: random init for every width)")
    ap.add_argument("--threads", type=int, default=0,
                    help="threads of torch / onnxruntime / OpenCV (0: as pose predict chooses them, "
                         "pose.decode.onnx_backend.available_threads)")
    ap.add_argument("--ap", action="store_true",
                    help="also score each variant's COCO AP: the generated validation split at "
                         "evaluate.input_size and coco-mini val at --size (trained checkpoints only)")
    ap.add_argument("--generated", type=Path, default=REPO / "data" / "raw" / "generated",
                    help="--ap: the generated set (val2017) and --int8 calibration (train2017)")
    args = ap.parse_args(argv)
    from pose.decode.onnx_backend import available_threads

    threads = args.threads or available_threads()
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)

    p = yaml.safe_load(args.params.read_text())
    ev = dict(p["evaluate"], input_size=args.size)
    cfg = resolve_eval_params(ev)
    if [float(s) for s in cfg.test_scales] != [1.0]:
        print("benchmarks/predict.py: times the single test scale; params evaluate.test_scales is "
              f"{cfg.test_scales}", file=sys.stderr)
        return 2
    timing = args.timing_images or args.coco
    ann = timing / "annotations" / "person_keypoints_val2017.json"
    if not ann.exists():
        print(f"benchmarks/predict.py: no COCO-layout set at {timing}", file=sys.stderr)
        return 2
    records = sorted(json.loads(ann.read_text())["images"], key=lambda im: im["id"])
    files = [timing / "val2017" / im["file_name"] for im in records[:args.images + args.warmup]]
    loaded = [cv2.imread(str(f), cv2.IMREAD_COLOR) for f in files]
    warm, images = loaded[:args.warmup], loaded[args.warmup:]
    print(f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}; {threads} threads "
          f"(torch / onnxruntime / OpenCV), {_cores()} usable cores, load average {os.getloadavg()[0]:.1f}")
    print(f"{len(images)} timed images (+{len(warm)} warm-up) from {timing}/val2017; input {args.size} "
          f"({cfg.resize}), flip test {bool(cfg.flip_test)}, project2image {bool(cfg.project2image)}; "
          f"video: {args.video_frames} frames 640 x 480", flush=True)
    progress = Progress(len(args.widths) * len(args.variants) * (len(warm) + len(images)))

    rows, notes, aps = [], [], {}
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        tmp = Path(tmp)
        video = tmp / "coco.mp4"
        _video(files, video, args.video_frames)
        for width in args.widths:
            model, source = _model(p, width, args.checkpoint)
            notes.append(f"W{width}: {source}; {count_params(model) / 1e6:.2f} M params, "
                         f"{count_flops(model, args.size):.1f} GFLOPs per forward of one {args.size} image")
            agg_fp32: dict[bool, list[float]] = {}
            for name in args.variants:
                backend, precision, project_maps = VARIANTS[name]
                vcfg = resolve_eval_params(dict(ev, project_maps=project_maps))
                label = f"W{width} {name}"
                print(f"{label}: backend {backend} {precision}, project_maps {project_maps}", file=sys.stderr,
                      flush=True)
                if backend == "torch":
                    net = inference_net(model, flip_test=bool(vcfg.flip_test),
                                        project2image=graph_projects(vcfg), convention=None).eval()
                    times, persons = _time_torch(net, images, warm, vcfg, progress, label)
                    runner = net
                else:
                    onnx_path = tmp / f"w{width}_{name}.onnx"
                    export_onnx(model, onnx_path, eval_params=vcfg)
                    if precision == "int8":
                        calib = args.generated / "annotations" / "person_keypoints_train2017.json"
                        inputs = calibration_inputs(calib, args.generated / "train2017",
                                                    count=int(p["predict"]["int8_calibration_images"]),
                                                    eval_params=resolve_eval_params(p["evaluate"]))
                        onnx_path = quantize_int8(onnx_path, tmp / f"w{width}_{name}_int8.onnx", inputs)
                    full = OnnxPoseModel(onnx_path, device="cpu", threads=threads)
                    times, persons = _time_onnx(full, images, warm, full.settings(vcfg), threads, tmp, progress,
                                                label, agg_fp32.get(project_maps))
                    if precision == "fp32":
                        agg_fp32[project_maps] = times["agg"]
                    runner = full
                fn = _predict_fn(runner, vcfg)
                with torch.no_grad():
                    fps, _ = _fps(fn, video, tmp / f"v{width}{name}", PredictSection.model_validate(p["predict"]),
                                  int(cfg.max_people))
                rows.append((f"W{width}", name, times, persons / len(images), fps))
                if args.ap and args.checkpoint is not None and "trained" in source:
                    gen = args.generated
                    size0 = int(p["evaluate"]["input_size"])
                    gen_fn = _predict_fn(runner, vcfg.replace(input_size=size0))
                    with torch.no_grad():
                        aps[(f"W{width}", name)] = (
                            _coco_ap(gen_fn, gen / "annotations" / "person_keypoints_val2017.json",
                                     gen / "val2017", int(cfg.max_people), f"{label} generated"),
                            _coco_ap(fn, args.coco / "annotations" / "person_keypoints_val2017.json",
                                     args.coco / "val2017", int(cfg.max_people), f"{label} coco-mini"))
                    ap_sets = (gen / "annotations" / "person_keypoints_val2017.json",
                               args.coco / "annotations" / "person_keypoints_val2017.json")

    for n in notes:
        print(n)
    head = "".join(f" {s + ' p50':>10} {s + ' p90':>10}" for s in STAGES)
    print(f"\n{'model':<6} {'variant':<10}{head} {'persons':>8} {'video fps':>10} {'(agg+grp)/net':>14}"
          + (f" {'AP gen':>7} {'AP coco':>8}" if aps else ""))
    net_ms = {}
    for width, name, times, persons, fps in rows:
        cells = "".join(f" {_pct(times[s], 50):>10.1f} {_pct(times[s], 90):>10.1f}" for s in STAGES)
        ratio = (statistics.median(times["agg"]) + statistics.median(times["group"])) / statistics.median(times["net"])
        net_ms[(width, name)] = statistics.median(times["net"])
        ap_cells = ""
        if (width, name) in aps:
            ap_cells = f" {aps[(width, name)][0][0]:>7.4f} {aps[(width, name)][1][0]:>8.4f}"
        print(f"{width:<6} {name:<10}{cells} {persons:>8.1f} {fps:>10.2f} {ratio:>13.1%}{ap_cells}")
    print("(ms per image; persons: mean per image after grouping; video fps: pose.video.predict_video end to end; "
          f"AP gen: generated val at input {p['evaluate']['input_size']}, AP coco: coco-mini val at input {args.size})")
    _ap_against_official(aps, ap_sets if aps else ())
    print("\ngoals (issue 20): decoding (agg + group) <= 10% of the network; onnxruntime network <= torch's")
    for width in args.widths:
        t = net_ms.get((f"W{width}", "torch"))
        for name in ("onnx", "int8"):
            o = net_ms.get((f"W{width}", name))
            if t and o:
                print(f"W{width}: {name} / torch network time (p50) = {o / t:.2f}")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
