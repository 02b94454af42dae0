"""End-to-end speed of `pose predict` at one input size, on real COCO validation images.

What is timed (wall clock, this process, after ``--warmup`` untimed images):

* ``forward``: the network alone on the (1 or 2 with flip, 3, S, S) batch predict_image feeds it;
* ``predict_image``: preprocessing (letterbox warp, normalisation), forward(s), heatmap/tag
  aggregation, grouping, mapping back to image px (what efficiency.json's latency is);
* ``end-to-end``: what ``pose predict DIR`` does per image (:func:`pose.decode.predict.predict_files`):
  decode the JPEG, predict_image, draw the overlay, encode and write the PNG, build the
  COCO results; images/s = images / total time of one predict_files call over all of them.

The model: ``--checkpoint`` if given, else a randomly initialised model of params.yaml's
``model`` section (default width). A random model detects (almost) nothing, so grouping
costs next to nothing here; a trained model adds the grouping time of
``benchmarks/decode.py`` (a few ms per image at 512 for up to 20 people).

Run:  PYTHONPATH=. python benchmarks/predict.py [--size 512] [--images 10] [--threads N]
Prints one table; nothing is written outside a temporary folder.
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

from pose.augment.affine import letterbox_affine
from pose.decode.inference import predict_image, to_input_tensor
from pose.decode.predict import predict_files
from pose.models import build_model, count_flops, count_params

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = Path(os.environ.get("POSE_SHARED_DATASETS", REPO.parent / "shared" / "datasets")) / "coco-mini"


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--size", type=int, default=512, help="network input side")
    ap.add_argument("--images", type=int, default=10, help="validation images timed (sorted by id)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--coco", type=Path, default=DEFAULT_IMAGES, help="COCO folder with val2017/ and annotations/")
    ap.add_argument("--checkpoint", type=Path, default=None, help="trained checkpoint (default: random init)")
    ap.add_argument("--flip", choices=("params", "on", "off"), default="params", help="flip test (default: params)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    p = yaml.safe_load(args.params.read_text())
    ev = dict(p["evaluate"], input_size=args.size)
    if args.flip != "params":
        ev["flip_test"] = args.flip == "on"
    if args.checkpoint:
        from pose.train.checkpoint import load_trained_model

        model = load_trained_model(args.checkpoint, "cpu")
        source = str(args.checkpoint)
    else:
        torch.manual_seed(0)
        model = build_model(dict(p["model"], pretrained="")).eval()
        source = f"random init, width {p['model']['width']}"
    ann = args.coco / "annotations" / "person_keypoints_val2017.json"
    if not ann.exists():
        print(f"benchmarks/predict.py: no COCO sample at {args.coco}", file=sys.stderr)
        return 2
    records = sorted(json.loads(ann.read_text())["images"], key=lambda im: im["id"])
    files = [args.coco / "val2017" / im["file_name"] for im in records[:args.images + args.warmup]]
    warm, timed = files[:args.warmup], files[args.warmup:]
    images = [cv2.imread(str(f), cv2.IMREAD_COLOR) for f in timed]
    flip = bool(ev["flip_test"])
    scales = [float(s) for s in ev["test_scales"]]

    print(f"model: {source}; {count_params(model) / 1e6:.2f} M params, {count_flops(model, args.size):.2f} GFLOPs "
          f"per forward at {args.size}; flip test {flip}; test scales {scales}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}; {len(timed)} timed images (+{len(warm)} warm-up) from {args.coco}")

    for f in warm:
        predict_image(model, cv2.imread(str(f), cv2.IMREAD_COLOR), eval_params=ev)
    fwd, pred = [], []
    with torch.no_grad():
        for img in images:
            x = torch.from_numpy(to_input_tensor(img, letterbox_affine(img.shape[1], img.shape[0], args.size),
                                                 args.size))[None]
            batch = torch.cat([x, torch.flip(x, dims=[3])]) if flip else x
            t0 = time.perf_counter()
            model(batch)
            fwd.append((time.perf_counter() - t0) * 1e3)
    for img in images:
        t0 = time.perf_counter()
        predict_image(model, img, eval_params=ev)
        pred.append((time.perf_counter() - t0) * 1e3)
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        t0 = time.perf_counter()
        summary = predict_files(model, timed, tmp, eval_params=ev, predict_params=params["predict"])
        total = time.perf_counter() - t0
    n = len(timed)
    print(f"{'stage':<14} {'p50 ms':>9} {'p90 ms':>9} {'mean ms':>9} {'images/s':>9}")
    for name, ts in (("forward", fwd), ("predict_image", pred)):
        mean = statistics.fmean(ts)
        print(f"{name:<14} {_pct(ts, 50):>9.1f} {_pct(ts, 90):>9.1f} {mean:>9.1f} {1e3 / mean:>9.2f}")
    print(f"{'end-to-end':<14} {'':>9} {'':>9} {total / n * 1e3:>9.1f} {n / total:>9.2f}   "
          f"({summary['persons']} persons found in {n} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
