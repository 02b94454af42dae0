"""AP effect of each switch of the ``reference`` convention (`pose.codec.Convention`): one
checkpoint decoded with the official rule of every row, then with one row switched back to the
project's choice at a time, then with all of them (the decoding of ``reference`` before issue 21).

Same checkpoint, images, ground truth and ``evaluate`` settings for every variant; only the
decoding differs (the training targets are the checkpoint's). Prints AP, AP50, AP75, AR and the
AP difference to the official variant with its 95% paired image-bootstrap CI
(`pose.registry.deltas`-style resampling of images, ``--bootstrap`` samples).

Run:  PYTHONPATH=. python benchmarks/convention_ablation.py --checkpoint data/models/best.pt \\
          --annotations data/validated/val.json --images data/raw/generated/val2017 [--params params.yaml] \\
          [--set evaluate.resize=short_side evaluate.input_size=512] [--rows peak_ties ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

from pose.codec import CONVENTION_RULES, Convention
from pose.decode.inference import predict_dataset
from pose.evaluate.coco import evaluate_results

#: the rows of the README table: field, the project's value
ROWS: tuple[tuple[str, str], ...] = (
    ("keypoint_mapping", "mapping back to image px: M^-1 (c - o) + o instead of M^-1 c"),
    ("input_affine", "input affine in float64 instead of float32 points"),
    ("assignment", "SciPy on the rectangular cost instead of munkres' choice"),
    ("adjust_equal", "no shift on equal neighbours instead of -0.25"),
    ("keep_all_groups", "top max_people persons instead of every group"),
    ("missing_joint", "missing joints at (0, 0) instead of M^-1 (0, 0)"),
    ("peak_ties", "equal peaks in index order instead of torch.topk's"),
)


def variants(fields: list[str] | None = None) -> list[tuple[str, Convention]]:
    """(label, convention) of every variant: official, one row switched back each, all switched;
    with ``fields``, official and those rows only."""
    ref, proj = CONVENTION_RULES["reference"], CONVENTION_RULES["project"]
    out = [("reference (official, every row)", ref)]
    for field, label in ROWS:
        if fields is None or field in fields:
            out.append((label, dataclasses.replace(ref, **{field: getattr(proj, field)})))
    if fields is None:
        out.append(("all rows switched (reference before issue 21)",
                    dataclasses.replace(ref, **{f: getattr(proj, f) for f, _ in ROWS})))
    return out


def _per_image(results: list[dict]) -> dict[int, list[dict]]:
    by: dict[int, list[dict]] = {}
    for r in results:
        by.setdefault(int(r["image_id"]), []).append(r)
    return by


def bootstrap_delta(gt: dict, a: list[dict], b: list[dict], samples: int, seed: int) -> tuple[float, float]:
    """95% CI of AP(b) - AP(a) over image-bootstrap resamples of ``gt`` (paired: the same
    resampled images for both; a resampled image is renamed so duplicates count twice)."""
    rng = np.random.default_rng(seed)
    ids = [im["id"] for im in gt["images"]]
    anns, ra, rb = _per_image(gt["annotations"]), _per_image(a), _per_image(b)
    images = {im["id"]: im for im in gt["images"]}
    deltas = []
    for _ in range(samples):
        pick = rng.choice(len(ids), size=len(ids), replace=True)
        g = {k: v for k, v in gt.items() if k not in ("images", "annotations")}
        g["images"], g["annotations"], xa, xb = [], [], [], []
        aid = 1
        for new_id, i in enumerate(pick, start=1):
            old = ids[i]
            g["images"].append({**images[old], "id": new_id})
            for ann in anns.get(old, []):
                g["annotations"].append({**ann, "id": aid, "image_id": new_id})
                aid += 1
            xa += [{**r, "image_id": new_id} for r in ra.get(old, [])]
            xb += [{**r, "image_id": new_id} for r in rb.get(old, [])]
        ap_a = evaluate_results(g, xa, per_keypoint=False)["AP"] if xa else 0.0
        ap_b = evaluate_results(g, xb, per_keypoint=False)["AP"] if xb else 0.0
        deltas.append(ap_b - ap_a)
    return float(np.percentile(deltas, 2.5)), float(np.percentile(deltas, 97.5))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--annotations", required=True, type=Path)
    ap.add_argument("--images", required=True, type=Path)
    ap.add_argument("--params", default="params.yaml", type=Path)
    ap.add_argument("--set", nargs="*", default=[], help="evaluate overrides, e.g. evaluate.resize=short_side")
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--out", type=Path, default=None, help="write the per-variant results JSON here")
    ap.add_argument("--rows", nargs="+", default=None, choices=[f for f, _ in ROWS],
                    help="only these rows (Convention fields) beside the official one (default: every row)")
    args = ap.parse_args(argv)
    from pose.predict import load_model

    torch.set_num_threads(1)
    ev = dict(yaml.safe_load(args.params.read_text())["evaluate"])
    for item in args.set:
        key, value = item.split("=", 1)
        ev[key.split(".", 1)[1]] = yaml.safe_load(value)
    model = load_model(args.checkpoint, tracking_uri=None)
    gt = json.loads(args.annotations.read_text())
    print(f"checkpoint {args.checkpoint} (trained in {getattr(model, 'convention', '?')}), "
          f"{len(gt['images'])} images, resize {ev['resize']} {ev['input_size']}, flip {ev['flip_test']}, "
          f"project2image {ev['project2image']}")
    rows, official = [], None
    for label, conv in variants(args.rows):
        results = predict_dataset(model, args.annotations, args.images, ev, convention=conv)
        m = evaluate_results(gt, results, per_keypoint=False) if results else {"AP": 0.0, "AP50": 0.0, "AP75": 0.0,
                                                                               "AR": 0.0}
        if official is None:
            official = results
            ci = ""
        else:
            lo, hi = bootstrap_delta(gt, official, results, args.bootstrap, 0)
            ci = f"[{lo:+.3f}, {hi:+.3f}]"
        d = m["AP"] - rows[0][1]["AP"] if rows else 0.0
        rows.append((label, m, d, ci, results))
        print(f"| {label} | {m['AP']:.3f} | {m['AP50']:.3f} | {m['AP75']:.3f} | {m['AR']:.3f} | "
              f"{'-' if not ci else f'{d:+.3f} {ci}'} |", flush=True)
    if args.out:
        args.out.write_text(json.dumps({label: {"metrics": m, "results": r} for label, m, _, _, r in rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
