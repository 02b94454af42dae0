"""Fit and check the calibrated person confidence (`pose.decode.persons.person_confidence`).

A person decoded by associative embedding has a score, the mean of its joints' heatmap values.
The CPU default model, trained on generated figures, gives tangles on real photos (joints of
several people joined) scores of 0.4-0.5, as high as true persons: the score says how strong the
joints are, not whether they belong together. The confidence is a logistic regression of features
that do (`pose.decode.persons.FEATURES`: the score, joint scores after refinement, the share added
by refinement, joints found, the spread of the person's tags, joints outside the image, left/right
limb asymmetry) on the label "matches a ground-truth person at OKS >= 0.5".

Data (none of it used to train the model, none of the reported sets used to fit):

* fit: a held-out generated set (``generated`` params with seed + 1, ``--fit-generated`` images)
  and the coco-mini **train** split (80 real photos; the default model never saw a photo);
* report: the generated **validation** split (the evaluate stage's) and the coco-mini
  **validation** split (79 photos), each at the model's evaluate settings (input
  ``evaluate.input_size``; coco-mini also at ``--coco-size``).

Labels: pycocotools' own matching (COCOeval, area "all", maxDets 20, OKS >= 0.5, by descending
official score): a person matched to a ground-truth person is true, one matched to a crowd /
ignored region is left out, any other is false (duplicates included).

A last input is the off-domain indicator: the model was trained on generated figures (its
``train_data`` record) and the image is a photo (`pose.predict.looks_like_photo`). On the held-out
photos none of the default model's persons is true, and the features alone cannot tell its
tangles from weak true persons (the "features-only fit" rows), so the fit learns that persons of
this model on photos are rarely true; a model trained on photos never gets the term.

The off-domain term is then set by recalibration in the large (:func:`recalibrate_in_the_large`):
the shift that makes the mean confidence of the off-domain fit persons equal their observed share of
true persons, with a half-person prior (Jeffreys). The regression alone kept its weight small (its
L2 penalty against the evidence of no true person), and the strongest tangles stayed confident.

Prints the fitted constants (``--write``: into ``pose/decode/confidence.json``, the
`pose.decode.persons.ConfidenceCalibration` that `person_confidence` reads, with what it was fitted
on: checkpoint sha256, sets, counts; not a train-stage input, so refitting retrains nothing) and,
per report set, precision and recall
at ``predict.min_person_score`` of the official score (before), of the confidence (after) and of a
fit of the features alone, each alone and with the whole `pose predict` filter
(``predict.min_joints`` joints above ``predict.joint_threshold``).

Run (about 10 minutes on 2 busy cores):
  PYTHONPATH=. python benchmarks/calibrate_confidence.py --checkpoint data/models/best.pt [--work /tmp/calib] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from scipy.optimize import brentq, minimize

from pose.datasets.generated import generate_dataset
from pose.decode.inference import multi_scale_maps
from pose.decode.persons import (
    CALIBRATION_FILE,
    FEATURES,
    ConfidenceCalibration,
    decode_persons,
    graph_projects,
    person_confidence,
    resolve_eval_params,
)
from pose.evaluate.coco import load_ground_truth, load_results, run_cocoeval
from pose.io import atomic_write_text, read_image, sha256_file
from pose.predict import PHOTO_MAX_CHROMA_DETAIL, PHOTO_PURE_PER_GREY, looks_like_photo, model_domain, read_train_data
from pose.train.checkpoint import load_trained_model

REPO = Path(__file__).resolve().parents[1]
COCO = Path(os.environ.get("POSE_SHARED_DATASETS", REPO.parent / "shared" / "datasets")) / "coco-mini"


def decode_set(model, ann: Path, images: Path, cfg: dict, sigmas: np.ndarray, label: str, domain: str) -> dict:
    """Decode every image of a COCO set; return features, the off-domain flag (a model of ``domain``
    generated given a photo), official scores, labels, joint scores."""
    records = sorted(json.loads(ann.read_text())["images"], key=lambda im: im["id"])
    feats, results, joint_scores, photo, keypoints, off = [], [], [], [], [], []
    t0 = time.perf_counter()
    for n, im in enumerate(records):
        img = read_image(images / im["file_name"], im["id"])
        photo.append(looks_like_photo(img))
        m = multi_scale_maps(model, img, input_size=int(cfg.input_size), resize=str(cfg.resize),
                             test_scales=[float(s) for s in cfg.test_scales], flip_test=bool(cfg.flip_test),
                             project2image=graph_projects(cfg), convention=None)
        persons = decode_persons(m.heatmaps.numpy(), m.tags.numpy(), m.affine, m.stride, cfg=cfg,
                                 convention=model.convention, image_size=(img.shape[1], img.shape[0]),
                                 with_features=True)
        for p in persons:
            feats.append(p["features"])
            off.append(domain == "generated" and photo[-1])
            joint_scores.append(np.clip(p["keypoints"][:, 2], 0, 1))
            keypoints.append(np.asarray(p["keypoints"]))
            results.append({"image_id": im["id"], "category_id": 1, "score": p["score"], "idx": len(results),
                            "keypoints": np.asarray(p["keypoints"]).reshape(-1).tolist()})
        if (n + 1) % 20 == 0 or n + 1 == len(records):
            rate = (time.perf_counter() - t0) / (n + 1)
            print(f"  {label}: {n + 1}/{len(records)} images, {rate:.2f} s/image, "
                  f"~{rate * (len(records) - n - 1):.0f} s left", file=sys.stderr, flush=True)
    gt = load_ground_truth(ann)
    labels = np.zeros(len(results), dtype=np.int64)
    num_gt = 0
    if results:
        dt = load_results(gt, results, 17)
        ev = run_cocoeval(gt, dt, sigmas, summarize=False)
        for e in ev.evalImgs:
            if e is None or e["aRng"] != ev.params.areaRng[0]:
                continue
            num_gt += int((np.asarray(e["gtIgnore"]) == 0).sum())
            for d, match, ignored in zip(e["dtIds"], e["dtMatches"][0], e["dtIgnore"][0]):
                labels[dt.anns[d]["idx"]] = -1 if ignored else int(match > 0)
    else:
        num_gt = sum(1 for a in gt.dataset["annotations"] if not a.get("iscrowd") and a.get("num_keypoints", 0) > 0)
    return {"features": np.asarray(feats, dtype=np.float64).reshape(-1, len(FEATURES)), "labels": labels,
            "scores": np.asarray([r["score"] for r in results]), "joint_scores": joint_scores, "num_gt": num_gt,
            "images": len(records), "photo": np.asarray(photo), "keypoints": keypoints,
            "off_domain": np.asarray(off, dtype=np.float64)}


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[float, np.ndarray]:
    """Maximum-likelihood logistic regression with an L2 penalty on the weights (not the intercept),
    on standardised features; returns (intercept, weights) for the raw features."""
    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-9
    z = (x - mu) / sd

    def loss(w):
        s = w[0] + z @ w[1:]
        nll = np.sum(np.logaddexp(0.0, s) - y * s)
        grad_s = 1.0 / (1.0 + np.exp(-s)) - y
        g = np.concatenate([[grad_s.sum()], z.T @ grad_s + 2 * l2 * w[1:]])
        return nll + l2 * np.sum(w[1:] ** 2), g

    w = minimize(loss, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B").x
    weights = w[1:] / sd
    return float(w[0] - np.sum(w[1:] * mu / sd)), weights


def recalibrate_in_the_large(logits: np.ndarray, true_count: int, prior: float) -> float:
    """The shift ``b`` of the log-odds that makes the mean confidence of a set of persons equal
    their observed share of true ones, ``sum(sigmoid(logits + b)) == true_count + prior``
    (recalibration in the large, Steyerberg, *Clinical Prediction Models*, 2009, ch. 15; ``prior``
    pseudo-persons keep a set with no true person finite, 0.5 is Jeffreys'). Used for the off-domain
    term: the logistic fit's L2 penalty keeps its weight from following the evidence (no true
    person among the held-out photos' persons), which let the strongest tangles stay confident."""
    target = min(true_count + prior, len(logits) - prior)

    def excess(b: float) -> float:
        return float(np.sum(1.0 / (1.0 + np.exp(-np.clip(logits + b, -50.0, 50.0))))) - target

    return float(brentq(excess, -60.0, 60.0))


def precision_row(data: dict, values: np.ndarray, threshold: float, joints_ok: np.ndarray) -> tuple:
    keep = (values >= threshold) & (data["labels"] >= 0)
    full = keep & joints_ok
    out = []
    for k in (keep, full):
        kept, true = int(k.sum()), int((data["labels"][k] == 1).sum())
        out += [kept, true, true / kept if kept else float("nan"), true / data["num_gt"] if data["num_gt"] else 0.0]
    return tuple(out)


def write_fixture(path: Path, data: dict) -> None:
    """The report sets' decoded persons as ``tests/test_confidence.py`` reads them (npz): every person of
    the coco-mini val photos (``photo_features``, ``photo_scores``; both input sizes, ignored ones left
    out) and of the generated val split (``generated_features``, ``generated_labels``,
    ``generated_num_gt``); float32 features."""
    photos = [d for n, d in data.items() if n.startswith("report: coco-mini")]
    gen = data["report: generated val"]
    keep = [d["labels"] >= 0 for d in photos]
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, photo_features=np.concatenate([d["features"][k] for d, k in zip(photos, keep)])
                        .astype(np.float32),
                        photo_scores=np.concatenate([d["scores"][k] for d, k in zip(photos, keep)]).astype(np.float32),
                        generated_features=gen["features"][gen["labels"] >= 0].astype(np.float32),
                        generated_labels=gen["labels"][gen["labels"] >= 0].astype(np.int8),
                        generated_num_gt=np.int64(gen["num_gt"]))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=REPO / "data" / "models" / "best.pt")
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--work", type=Path, default=Path("/tmp/pose-calibrate"))
    ap.add_argument("--fit-generated", type=int, default=200, help="held-out generated images to fit on")
    ap.add_argument("--coco-size", type=int, default=512, help="second input size for the coco-mini splits")
    ap.add_argument("--generated-val", type=Path, default=REPO / "data" / "raw" / "generated",
                    help="the evaluate stage's generated set (val2017 split)")
    ap.add_argument("--l2", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prior", type=float, default=0.5,
                    help="pseudo-count of true persons in the off-domain recalibration (default 0.5, Jeffreys)")
    ap.add_argument("--write", type=Path, nargs="?", const=CALIBRATION_FILE, default=None,
                    help=f"write the calibration (default path {CALIBRATION_FILE.relative_to(REPO)})")
    ap.add_argument("--fixture", type=Path, nargs="?", const=REPO / "tests" / "data" / "confidence_features.npz",
                    default=None, help="write the report sets' persons for tests/test_confidence.py")
    ap.add_argument("--reuse", action="store_true", help="reuse the decoded persons of a previous run in --work")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.checkpoint.is_file():
        print(f"error: checkpoint {args.checkpoint} not found (make run writes data/models/best.pt)", file=sys.stderr)
        return 2
    if not COCO.is_dir():
        print(f"error: coco-mini not found at {COCO} (POSE_SHARED_DATASETS)", file=sys.stderr)
        return 2
    p = yaml.safe_load(args.params.read_text())
    cfg = resolve_eval_params(p["evaluate"])
    pr = p["predict"]
    from pose.datasets.schema import COCO_SIGMAS

    model = load_trained_model(args.checkpoint, "cpu")
    domain = model_domain(read_train_data(args.checkpoint))
    g = p["generated"]
    held = args.work / f"generated_seed{int(g['seed']) + 1}"
    if not (held / "annotations" / "person_keypoints_val2017.json").exists():
        generate_dataset(held, seed=int(g["seed"]) + 1, num_train=0, num_val=args.fit_generated, width=g["width"],
                         height=g["height"], max_people=g["max_people"], min_person_height=g["min_person_height"],
                         max_person_height=g["max_person_height"])
    size = int(cfg.input_size)
    coco_cfg = cfg.replace(input_size=args.coco_size)
    print(f"load average {os.getloadavg()[0]:.1f}, {args.threads} torch thread(s); checkpoint {args.checkpoint}; "
          f"decode: input {size}, project2image {cfg.project2image}, project_maps {cfg.project_maps}",
          flush=True)
    sets = {
        "fit: generated held-out": (held / "annotations" / "person_keypoints_val2017.json", held / "val2017", cfg),
        f"fit: coco-mini train @{size}": (COCO / "annotations" / "person_keypoints_train2017.json",
                                          COCO / "train2017", cfg),
        f"fit: coco-mini train @{args.coco_size}": (COCO / "annotations" / "person_keypoints_train2017.json",
                                                    COCO / "train2017", coco_cfg),
        "report: generated val": (args.generated_val / "annotations" / "person_keypoints_val2017.json",
                                  args.generated_val / "val2017", cfg),
        f"report: coco-mini val @{size}": (COCO / "annotations" / "person_keypoints_val2017.json",
                                           COCO / "val2017", cfg),
        f"report: coco-mini val @{args.coco_size}": (COCO / "annotations" / "person_keypoints_val2017.json",
                                                     COCO / "val2017", coco_cfg),
    }
    cache = args.work / "decoded.pkl"
    if args.reuse and cache.exists():
        data = pickle.loads(cache.read_bytes())
    else:
        data = {name: decode_set(model, ann, img, c, COCO_SIGMAS, name, domain)
                for name, (ann, img, c) in sets.items()}
        cache.write_bytes(pickle.dumps(data))
    fit = [d for n, d in data.items() if n.startswith("fit")]
    x = np.concatenate([np.column_stack([d["features"], d["off_domain"]])[d["labels"] >= 0] for d in fit])
    y = np.concatenate([d["labels"][d["labels"] >= 0] for d in fit]).astype(np.float64)
    intercept, weights = fit_logistic(x, y, args.l2)
    print(f"\nfit on {len(y)} persons ({int(y.sum())} true); model domain {domain}")
    print(f"intercept {intercept:.4f}")
    print(f"weights ({', '.join(f'{w:.4f}' for w in weights[:-1])})  # {FEATURES}")
    # ablation: the features alone, fitted without the off-domain indicator
    icpt_f, w_f = fit_logistic(x[:, :-1], y, args.l2)

    def features_only(f: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(icpt_f + f @ w_f)))

    off_rows = x[:, -1] > 0
    shift, off_true = float(weights[-1]), int(y[off_rows].sum())
    if off_rows.any():
        shift = recalibrate_in_the_large(intercept + x[off_rows, :-1] @ weights[:-1], off_true, args.prior)
    print(f"off-domain shift: {weights[-1]:.4f} (the regression's weight) -> {shift:.4f} (recalibrated in the large on "
          f"{int(off_rows.sum())} off-domain persons, {off_true} true, prior {args.prior})")
    fitted = ConfidenceCalibration(intercept, tuple(float(w) for w in weights[:-1]), float(weights[-1]))
    cal = ConfidenceCalibration(intercept, tuple(float(w) for w in weights[:-1]), shift, {
        "checkpoint": str(args.checkpoint), "checkpoint_sha256": sha256_file(args.checkpoint),
        "model_domain": domain, "l2": args.l2, "prior": args.prior, "regression_off_domain": float(weights[-1]),
        "sets": {n: {"persons": int((d["labels"] >= 0).sum()), "true": int((d["labels"] == 1).sum()),
                     "images": int(d["images"])} for n, d in data.items() if n.startswith("fit")},
        "fitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    if args.write:
        atomic_write_text(args.write, json.dumps(cal.as_dict(), indent=1) + "\n")  # a text file: final newline
        print(f"wrote {args.write}")
    if args.fixture:
        write_fixture(args.fixture, data)
        print(f"wrote {args.fixture}")
    t = float(pr["min_person_score"])
    print(f"\nthreshold predict.min_person_score = {t}; 'filter': also >= {pr['min_joints']} joints > "
          f"{pr['joint_threshold']} (what pose predict draws)")
    head = ("set", "persons", "true", "GT", "value", "kept", "true kept", "precision", "recall",
            "filter kept", "filter true", "filter precision", "filter recall")
    print(" | ".join(head))
    for name, d in data.items():
        if not name.startswith("report"):
            continue
        joints_ok = np.asarray([(js > float(pr["joint_threshold"])).sum() >= int(pr["min_joints"])
                                for js in d["joint_scores"]], dtype=bool)
        n = len(d["features"])
        def confidence(c: ConfidenceCalibration, d: dict = d) -> np.ndarray:
            return np.asarray([float(person_confidence(d["features"][i], bool(d["off_domain"][i]), c)[0])
                               for i in range(len(d["features"]))])

        score = np.clip(d["scores"], 0.0, 1.0)
        only = features_only(d["features"]) if n else np.zeros(0)
        for label, values in (("score (before)", score), ("confidence (after)", confidence(cal)),
                              ("regression's off-domain weight", confidence(fitted)),
                              ("features-only fit", only)):
            row = precision_row(d, values, t, joints_ok)
            print(" | ".join([name, str(int((d["labels"] >= 0).sum())), str(int((d["labels"] == 1).sum())),
                              str(d["num_gt"]), label, str(row[0]), str(row[1]), f"{row[2]:.3f}", f"{row[3]:.3f}",
                              str(row[4]), str(row[5]), f"{row[6]:.3f}", f"{row[7]:.3f}"]))
    print(f"\nphoto check (pose.predict.looks_like_photo, pure-colour share < {PHOTO_PURE_PER_GREY} x grey share "
          f"or colour detail < {PHOTO_MAX_CHROMA_DETAIL} x brightness detail):")
    for name, d in data.items():
        if "@" in name and name.endswith(f"@{args.coco_size}"):
            continue
        print(f"  {name}: {int(d['photo'].sum())} of {d['images']} images taken for photos")
    return 0


if __name__ == "__main__":
    sys.exit(main())
