"""The seed's ablations on one training budget, and the test-time resize protocols, with bootstrap CIs.

Trains the params.yaml model on the generated multi-person set (`pose fetch` output, by
default ``data/raw/generated``: run ``dvc repro fetch`` first, or let ``--num-val`` write a
copy) and scores COCO keypoint AP on its validation split for each variant, all with the
same number of optimiser steps:

* ``curriculum``: params ``train.curriculum`` as written (multi-scale, curriculum on);
* ``no_curriculum``: every size active from the first epoch (``train.use_curriculum=false``);
* ``single_scale``: only the largest size (``train.multi_scale=false``).

Each variant trains on the fetched training annotations as they are (the DVC ``train`` stage
reads the validated copy) and otherwise as that stage does (validation every ``train.val_every``
epochs on the first ``train.val_max_images`` validation images, ``best.pt`` = best
validation AP) and its ``best.pt`` is evaluated with the params' ``evaluate`` section
(`pose.decode.inference.predict_dataset`, `pose.evaluate.coco.evaluate_results`). The
selection of ``best.pt`` sees those first validation images too, as in the default
pipeline; every variant is favoured alike.

Then one checkpoint (the ``curriculum`` variant's ``best.pt``, or ``--checkpoint``) is
evaluated with ``evaluate.resize: letterbox`` and ``short_side`` at the params'
``evaluate.input_size`` (the second table).

Confidence intervals: every metric is printed as ``value [low, high]``, the 95% percentile
interval of an image bootstrap (`pose.registry.bootstrap.bootstrap_ci`: validation images
resampled with replacement, COCO AP re-accumulated from pycocotools' per-image matches;
``registry.bootstrap_samples`` resamples, seed ``registry.bootstrap_seed``). The ``dAP``
column is the paired bootstrap of the AP difference to the first row on the same
resamples (`pose.registry.bootstrap.bootstrap_diff`): the rows share their images, so it
is usually narrower than the two single intervals suggest.

The same variants run through DVC as experiments::

    dvc exp run -S train.use_curriculum=false
    dvc exp run -S train.multi_scale=false
    dvc exp show --only-changed

Usage::

    python benchmarks/ablation.py [--variants curriculum no_curriculum single_scale]
        [--epochs-scale 1.0] [--max-steps-per-epoch N] [--data DIR] [--num-val N]
        [--checkpoint PATH] [--work DIR] [--out ablation.json]

Prints both tables in Markdown (to paste into the README) and writes them, with every
number, to ``--out`` as JSON (rewritten after each variant, ``"complete": false`` until the
end). At the default budget (12 epochs x 128 steps = 1536 steps of batch 8) on 2 idle CPU
cores ``curriculum`` trains in about 12-13 min (~0.5 s/step) and ``no_curriculum`` in about
14-16 min; ``single_scale`` runs every step at the largest size (~1.7x the pixels of the
curriculum's mean step), about 20 min. Evaluation adds ~0.1 s (letterbox) / ~0.15 s
(short_side) per validation image with flip test. The numbers are small-budget AP, not
converged AP. ``--max-steps-per-epoch N`` caps every epoch at N steps
(``train.max_steps_per_epoch``) for a reduced-budget table.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pose.io import atomic_write_json  # noqa: E402
from pose.params import ParamsError, load_checked_params, validate_params  # noqa: E402

#: train-section overrides of each variant (the seed's ablations)
VARIANTS: dict[str, dict] = {
    "curriculum": {},
    "no_curriculum": {"use_curriculum": False},
    "single_scale": {"multi_scale": False},
}

#: ``evaluate.resize`` protocols of the second table (pose.decode.inference.RESIZE_MODES)
RESIZE_MODES: tuple[str, ...] = ("letterbox", "short_side")

#: metric columns of both tables, each with its bootstrap CI
TABLE_METRICS: tuple[str, ...] = ("AP", "AP50", "APM", "APL", "AR")


class AblationError(Exception):
    """Bad data folder or arguments; the message is one line for the user."""


def variant_params(params: dict, name: str, *, epochs_scale: float = 1.0,
                   max_steps_per_epoch: int | None = None) -> dict:
    """A deep copy of ``params`` with variant ``name``'s ``train`` overrides and the budget knobs.

    ``epochs_scale`` multiplies every curriculum stage's ``epochs`` (rounded, at least 1);
    ``max_steps_per_epoch`` (None: as in params) sets ``train.max_steps_per_epoch``.
    Raises KeyError for an unknown variant."""
    p = copy.deepcopy(params)
    p["train"].update(VARIANTS[name])
    for stage in p["train"]["curriculum"]:
        stage["epochs"] = max(1, round(stage["epochs"] * epochs_scale))
    if max_steps_per_epoch is not None:
        p["train"]["max_steps_per_epoch"] = int(max_steps_per_epoch)
    return p


def fmt_ci(value: float | None, ci: tuple[float | None, float | None] | None, signed: bool = False) -> str:
    """``0.512 [0.471, 0.553]``; ``n/a`` for COCO's -1 (no ground truth in that range)."""
    if value is None or value <= -1:
        return "n/a"
    f = "{:+.3f}" if signed else "{:.3f}"
    text = f.format(value)
    if ci is not None and ci[0] is not None:
        text += f" [{f.format(ci[0])}, {f.format(ci[1])}]"
    return text


def markdown_table(rows: list[dict], key: str, extra: tuple[tuple[str, str], ...] = ()) -> str:
    """Markdown table of ``rows`` (dicts with ``key``, ``metrics``, ``ci`` and optional ``dAP``):
    one column per :data:`TABLE_METRICS` (value and 95% CI), the paired ``dAP`` vs the first
    row, then ``extra`` columns ``(header, row key)`` printed as they are."""
    first = rows[0][key] if rows else ""
    head = [key, *(f"{m} [95% CI]" for m in TABLE_METRICS), f"dAP vs {first} [95% CI]", *(h for h, _ in extra)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        d = r.get("dAP")
        cells = [str(r[key]), *(fmt_ci(r["metrics"][m], r["ci"][m]) for m in TABLE_METRICS),
                 "-" if d is None else fmt_ci(d["delta"], (d["ci_low"], d["ci_high"]), signed=True),
                 *(str(r.get(k, "")) for _, k in extra)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ensure_data(params: dict, data: Path, num_val: int) -> int:
    """Make sure ``data`` holds a generated set; returns its validation image count.

    ``num_val`` > 0 and ``data`` missing: write params' ``generated`` set with ``num_val``
    validation images there (`pose.datasets.fetch.fetch_dataset`; the generator draws image
    ``i`` from seed ``(seed, split, i)``, so the training split and the first validation
    images are those of the default set). Raises AblationError (one line) when ``data`` is
    missing without ``num_val``, or holds another number of validation images."""
    d = params["data"]
    ann = data / "annotations" / f"person_keypoints_{d['val_split']}.json"
    if not ann.exists():
        if num_val <= 0:
            raise AblationError(f"{ann} not found: run `dvc repro fetch` (generated set), point --data at a "
                             f"`pose fetch` copy, or pass --num-val N to generate one there")
        from pose.datasets.fetch import fetch_dataset

        gen = [n for n, e in params["catalogue"].items() if (e or {}).get("kind") == "generated"]
        if not gen:
            raise AblationError(f"params catalogue has no entry of kind `generated` to write {data} from")
        print(f"generating catalogue entry `{gen[0]}` with {num_val} validation images into {data}", flush=True)
        fetch_dataset(gen[0], catalogue=params["catalogue"], mirror_root=None, out_dir=data,
                      generated_params={**params["generated"], "num_val": int(num_val)},
                      train_split=d["train_split"], val_split=d["val_split"], progress=False)
    n = len(json.loads(ann.read_text())["images"])
    if num_val > 0 and n != num_val:
        raise AblationError(f"{data} holds {n} validation images, not --num-val {num_val}: pick another --data folder")
    return n


def score(checkpoint: Path, params: dict, data: Path, resize: str, device, boot: dict) -> dict:
    """Evaluate ``checkpoint`` on the validation split with ``evaluate.resize = resize``.

    Returns ``{"metrics": evaluate_results' dict (pycocotools), "ci": {metric: (lo, hi)},
    "results": COCO results, "eval_s": seconds}``."""
    from pose.datasets.schema import COCO_SIGMAS
    from pose.decode.inference import predict_dataset
    from pose.evaluate.coco import evaluate_results
    from pose.registry.bootstrap import bootstrap_ci
    from pose.train.checkpoint import load_trained_model

    d = params["data"]
    gt = data / "annotations" / f"person_keypoints_{d['val_split']}.json"
    ev = {**params["evaluate"], "resize": resize}
    t0 = time.perf_counter()
    model = load_trained_model(checkpoint, device)
    results = predict_dataset(model, gt, data / d["val_split"], ev, device)
    metrics = evaluate_results(gt, results, sigmas=COCO_SIGMAS, oks_threshold=float(ev["oks_threshold"]),
                               per_keypoint=False)
    ci = bootstrap_ci(gt, results, n_resamples=boot["n_resamples"], seed=boot["seed"], metrics=TABLE_METRICS)
    return {"metrics": {m: metrics[m] for m in (*TABLE_METRICS, "AP75")}, "ci": ci, "results": results,
            "eval_s": time.perf_counter() - t0}


def add_paired_deltas(rows: list[dict], gt: Path, boot: dict) -> None:
    """Set ``row["dAP"]`` (paired bootstrap of AP(row) - AP(first row): delta, ci_low, ci_high)
    on every row after the first."""
    from pose.registry.bootstrap import bootstrap_diff

    for r in rows[1:]:
        out = bootstrap_diff(gt, rows[0]["results"], r["results"], n_resamples=boot["n_resamples"],
                             seed=boot["seed"], metrics=("AP",))
        a = out["metrics"]["AP"]
        r["dAP"] = {"delta": a["delta"], "ci_low": a["ci_low"], "ci_high": a["ci_high"]}


def write_report(args: argparse.Namespace, n_val: int, boot: dict, params: dict, rows: list[dict],
                 resize_rows: list[dict], *, complete: bool, markdown: dict | None = None) -> None:
    """Write ``args.out`` atomically: settings, every row without its COCO results, the Markdown
    tables; ``complete`` false while variants are still running."""
    ev = params["evaluate"]

    def clean(r: dict) -> dict:
        return {k: v for k, v in r.items() if k != "results"}

    atomic_write_json(args.out, {
        "complete": complete, "params": str(args.params), "data": str(args.data), "num_val_images": n_val,
        "budget": {"epochs_scale": args.epochs_scale, "max_steps_per_epoch": args.max_steps_per_epoch},
        "bootstrap": {**boot, "method": "image bootstrap, percentile interval (pose.registry.bootstrap)"},
        "evaluate": {k: ev[k] for k in ("input_size", "resize", "flip_test", "test_scales")},
        "variants": [clean(r) for r in rows], "resize": [clean(r) for r in resize_rows],
        "markdown": markdown or {}}, indent=2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("--data", type=Path, default=ROOT / "data/raw/generated",
                    help="generated set in `pose fetch` layout (default: data/raw/generated)")
    ap.add_argument("--num-val", type=int, default=0,
                    help="N > 0: the validation split must hold N images; a missing --data is generated with N "
                         "(default 0: use --data as it is)")
    ap.add_argument("--variants", nargs="*", choices=list(VARIANTS), default=list(VARIANTS),
                    help="variants to train (default: all; none: only the resize table of --checkpoint)")
    ap.add_argument("--epochs-scale", type=float, default=1.0,
                    help="multiply every curriculum stage's epochs (default 1)")
    ap.add_argument("--max-steps-per-epoch", type=int, default=None,
                    help="cap every epoch at N optimiser steps (train.max_steps_per_epoch; default: params)")
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="checkpoint of the resize table (default: the curriculum variant's best.pt, else the first)")
    ap.add_argument("--work", type=Path, default=None,
                    help="keep checkpoints, training logs and results here (default: a temporary folder)")
    ap.add_argument("--out", type=Path, default=None, help="write both tables and every number as JSON here")
    args = ap.parse_args(argv)
    if args.epochs_scale <= 0:
        ap.error(f"--epochs-scale must be > 0, got {args.epochs_scale}")
    if args.max_steps_per_epoch is not None and args.max_steps_per_epoch < 0:
        ap.error(f"--max-steps-per-epoch must be >= 0 (0: whole epoch), got {args.max_steps_per_epoch}")
    if not args.variants and args.checkpoint is None:
        ap.error("nothing to do: give --variants or --checkpoint")
    if args.checkpoint is not None and not args.checkpoint.exists():
        ap.error(f"--checkpoint {args.checkpoint}: file not found")
    try:
        params = load_checked_params(args.params)
        variant_p = {}
        for name in args.variants:
            variant_p[name] = variant_params(params, name, epochs_scale=args.epochs_scale,
                                             max_steps_per_epoch=args.max_steps_per_epoch)
            validate_params(variant_p[name], source=f"{args.params} (variant {name})")
    except (ParamsError, FileNotFoundError) as exc:
        print(str(exc), file=sys.stderr)
        return 2
    try:
        n_val = ensure_data(params, args.data, args.num_val)
    except AblationError as exc:
        print(str(exc), file=sys.stderr)
        return 2

    from pose.datasets.formats import dataset_domain
    from pose.device import pick_device
    from pose.train.loop import train

    d = params["data"]
    gt = args.data / "annotations" / f"person_keypoints_{d['val_split']}.json"
    boot = {"n_resamples": int(params["registry"]["bootstrap_samples"]),
            "seed": int(params["registry"]["bootstrap_seed"]), "level": 0.95}
    device = pick_device()
    rows: list[dict] = []
    resize_rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        checkpoints: dict[str, Path] = {}
        for name in args.variants:
            p, out = variant_p[name], work / name
            t0 = time.perf_counter()
            s = validate_params(p, source=f"variant {name}")
            summary = train(s.train, s.model, s.targets, s.augment, s.loss, s.evaluate, dataset=s.data.dataset,
                            domain=dataset_domain(s.catalogue, s.data.dataset),
                            train_ann=args.data / "annotations" / f"person_keypoints_{d['train_split']}.json",
                            train_images=args.data / d["train_split"], out_dir=out,
                            metrics_path=out / "train.json", steps_path=out / "steps.csv", resume=False,
                            val_ann=gt, val_images=args.data / d["val_split"], val_path=out / "val.csv")
            minutes = (time.perf_counter() - t0) / 60
            checkpoints[name] = out / "best.pt"
            r = score(checkpoints[name], p, args.data, p["evaluate"]["resize"], device, boot)
            r.update(variant=name, steps=summary.get("steps"), train_min=round(minutes, 2),
                     val_s=round(float(summary.get("val_seconds", 0.0)), 1), best_epoch=summary.get("best_epoch"),
                     best_by=summary.get("best_by"), resize=p["evaluate"]["resize"])
            atomic_write_json(out / "results.json", r["results"])
            rows.append(r)
            if args.out:   # partial report after each variant (a long run stopped later keeps these)
                write_report(args, n_val, boot, params, rows, [], complete=False)
            print(f"{name}: AP {fmt_ci(r['metrics']['AP'], r['ci']['AP'])}, {r['steps']} steps, "
                  f"train {minutes:.1f} min, eval {r['eval_s']:.0f} s", flush=True)

        if args.checkpoint is not None:
            ck_variant, ck, ck_label, ck_params = None, args.checkpoint, str(args.checkpoint), params
        else:
            ck_variant = "curriculum" if "curriculum" in checkpoints else args.variants[0]
            ck, ck_label, ck_params = checkpoints[ck_variant], f"{ck_variant} best.pt", variant_p[ck_variant]
        for mode in RESIZE_MODES:
            # the variant's own evaluation already used this protocol: same checkpoint, same (deterministic) numbers
            same = next((r for r in rows if r["variant"] == ck_variant and r["resize"] == mode), None)
            r = dict(same) if same else score(ck, ck_params, args.data, mode, device, boot)
            r.update(resize=mode, checkpoint=ck_label)
            resize_rows.append(r)
        add_paired_deltas(rows, gt, boot)
        add_paired_deltas(resize_rows, gt, boot)

    ev = params["evaluate"]
    header = (f"{n_val} validation images of {args.data}; evaluate.input_size {ev['input_size']}, flip test "
              f"{ev['flip_test']}, test scales {ev['test_scales']}; 95% CIs: image bootstrap, "
              f"{boot['n_resamples']} resamples, seed {boot['seed']} (dAP: paired)")
    md_variants = markdown_table(rows, "variant", (("steps", "steps"), ("train min", "train_min"))) if rows else ""
    md_resize = markdown_table(resize_rows, "resize")
    print(f"\n{header}\n")
    if rows:
        budget = rows[0]["steps"]
        print(f"Variants, {budget} optimiser steps each, best.pt, evaluate.resize {ev['resize']}:\n\n{md_variants}\n")
    print(f"Test-time resize, checkpoint {resize_rows[0]['checkpoint']}:\n\n{md_resize}")
    if args.out:
        write_report(args, n_val, boot, params, rows, resize_rows, complete=True,
                     markdown={"header": header, "variants": md_variants, "resize": md_resize})
    return 0


if __name__ == "__main__":
    sys.exit(main())
