"""Learning on the generated set and the seed's ablations on one training budget.

Trains the params.yaml model on the generated multi-person set (`pose fetch` output
``data/raw/generated``; run ``dvc repro fetch`` first) and evaluates COCO AP on its
validation split for each variant, all with the same number of optimiser steps:

* ``curriculum``: params ``train.curriculum`` as written (multi-scale, curriculum on);
* ``no_curriculum``: every size active from the first epoch (``train.use_curriculum=false``);
* ``single_scale``: only the largest size (``train.multi_scale=false``).

The same variants run through DVC as experiments::

    dvc exp run -S train.use_curriculum=false
    dvc exp run -S train.multi_scale=false
    dvc exp show --only-changed

Usage: ``python benchmarks/ablation.py [--epochs-scale 1.0] [--variants ...]``; prints a
table (AP, AP50, APM, APL, train minutes). On 2 CPU cores each variant takes 12-16
minutes at the default budget (1536 steps); the numbers are small-budget AP, not
converged AP. ``--data`` may point at any generated copy (e.g. a fetch into /tmp).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pose.datasets.schema import COCO_SIGMAS  # noqa: E402
from pose.decode.inference import predict_dataset  # noqa: E402
from pose.evaluate.coco import evaluate_results  # noqa: E402
from pose.train.checkpoint import load_trained_model  # noqa: E402
from pose.train.loop import pick_device, train  # noqa: E402

VARIANTS = {
    "curriculum": {},
    "no_curriculum": {"use_curriculum": False},
    "single_scale": {"multi_scale": False},
}


def run_variant(params: dict, name: str, data: Path, work: Path) -> dict:
    p = copy.deepcopy(params)
    p["train"].update(VARIANTS[name])
    out = work / name
    t0 = time.perf_counter()
    summary = train(p, train_ann=data / "annotations/person_keypoints_train2017.json",
                    train_images=data / "train2017", out_dir=out, metrics_path=out / "train.json",
                    steps_path=out / "steps.csv", resume=False)
    minutes = (time.perf_counter() - t0) / 60
    device = pick_device()
    model = load_trained_model(out / "best.pt", device)
    gt = data / "annotations/person_keypoints_val2017.json"
    results = predict_dataset(model, gt, data / "val2017", p["evaluate"], device)
    m = evaluate_results(gt, results, sigmas=COCO_SIGMAS, oks_threshold=float(p["evaluate"]["oks_threshold"]))
    return {"variant": name, "AP": m["AP"], "AP50": m["AP50"], "APM": m["APM"], "APL": m["APL"], "AR": m["AR"],
            "steps": summary.get("steps"), "train_min": minutes}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--data", type=Path, default=ROOT / "data/raw/generated")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every curriculum stage's epochs")
    ap.add_argument("--out", type=Path, default=None, help="also write the table as JSON here")
    args = ap.parse_args(argv)
    if not (args.data / "annotations").exists():
        print(f"{args.data} not found: run `dvc repro fetch` (generated set) first", file=sys.stderr)
        return 2
    params = yaml.safe_load(args.params.read_text())
    for st in params["train"]["curriculum"]:
        st["epochs"] = max(1, round(st["epochs"] * args.epochs_scale))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.variants:
            rows.append(run_variant(params, name, args.data, Path(tmp)))
            r = rows[-1]
            print(f"{r['variant']:<14} AP {r['AP']:.3f} AP50 {r['AP50']:.3f} APM {r['APM']:.3f} APL {r['APL']:.3f} "
                  f"AR {r['AR']:.3f} steps {r['steps']} train {r['train_min']:.1f} min", flush=True)
    base = rows[0]["AP"]
    print("\nvariant         AP      AP50    APM     APL     AR      dAP vs first")
    for r in rows:
        print(f"{r['variant']:<14} {r['AP']:.3f}   {r['AP50']:.3f}   {r['APM']:.3f}   {r['APL']:.3f}   {r['AR']:.3f}   "
              f"{r['AP'] - base:+.3f}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
