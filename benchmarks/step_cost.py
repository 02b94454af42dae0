"""Per-step cost of the default recipe's training on the generated set, and what each speed lever
changes, as ratios against the baseline measured beside it (issue 23, "spending the budget better").

For each input size of ``train.curriculum`` it times, on batches already in memory, interleaved in
rounds so that a changing machine load hits every variant alike (median over rounds):

* ``baseline``: one optimisation step as the loop runs it (`pose.train.loop.train_step`);
* ``+ema``: the same plus one `pose.train.ema.ModelEMA.update` (the EMA's overhead);
* ``channels_last``: model and input in ``torch.channels_last`` memory format;
* ``bf16``: bf16 autocast (params ``train.amp``; fast only where the CPU has bf16 instructions,
  AVX512-BF16 or AMX);
* ``channels_last+bf16``: both;

and separately ``loader``: producing one batch (`CocoKeypoints`: read, augment, encode targets;
``train.workers`` 0 does this in the training process, between steps), and ``validation``: one
validation image decoded as the evaluate stage does (flip test), per image.

Usage::

    python benchmarks/step_cost.py [--steps 6] [--rounds 5] [--threads N] [--data DIR]

Numbers are seconds on this machine under its current load; the ratios are what carries over.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ablation import ensure_data  # noqa: E402

from pose.params import load_checked_params, validate_params  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--data", type=Path, default=ROOT / "data/raw/generated",
                    help="generated set in `pose fetch` layout (written there when missing)")
    ap.add_argument("--steps", type=int, default=6, help="steps per variant and round")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (the median is printed)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--val-images", type=int, default=6, help="validation images timed")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from pose.decode.inference import predict_image
    from pose.io import read_image
    from pose.models import build_training_model
    from pose.train.data import dataset_from_params
    from pose.train.ema import ModelEMA
    from pose.train.loop import train_step
    from pose.train.validation import validation_subset

    params = load_checked_params(args.params)
    tp, d = params["train"], params["data"]
    ensure_data(params, args.data, int(params["generated"]["num_val"]))
    sections = validate_params(params, source=str(args.params))
    ds = dataset_from_params(sections.model, sections.targets, sections.augment, seed=0,
                             ann_file=args.data / "annotations" / f"person_keypoints_{d['train_split']}.json",
                             images_dir=args.data / d["train_split"])
    sizes = sorted({int(s) for st in tp["curriculum"] for s in st["sizes"]})
    bs = int(tp["batch_size"])
    torch.manual_seed(0)
    base, _ = build_training_model(params["model"], verbose=False)
    print(f"{torch.get_num_threads()} torch thread(s); batch {bs}; {args.rounds} rounds x {args.steps} steps; "
          f"median s per step (ratio to baseline)")

    def collate(items):
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}

    rows = []
    for size in sizes:
        t0 = time.perf_counter()
        batches = [collate([ds[(i * bs + j, size)] for j in range(bs)]) for i in range(args.steps)]
        loader_s = (time.perf_counter() - t0) / args.steps
        variants = {}
        for name in ("baseline", "+ema", "channels_last", "bf16", "channels_last+bf16"):
            m = copy.deepcopy(base).train()
            if name.startswith("channels_last"):
                m = m.to(memory_format=torch.channels_last)
            opt = torch.optim.AdamW(m.parameters(), lr=float(tp["lr"]), weight_decay=float(tp["weight_decay"]))
            ema = ModelEMA(m, 0.99, 100) if name == "+ema" else None
            variants[name] = (m, opt, ema, torch.amp.GradScaler("cpu", enabled=False))
        times: dict[str, list[float]] = {k: [] for k in variants}
        for _ in range(args.rounds):
            for name, (m, opt, ema, scaler) in variants.items():
                t0 = time.perf_counter()
                for b in batches:
                    if name.startswith("channels_last"):
                        b = {**b, "image": b["image"].contiguous(memory_format=torch.channels_last)}
                    train_step(m, b, opt, scaler, loss_params=params["loss"], grad_clip=float(tp["grad_clip"]),
                               use_amp=name.endswith("bf16"), amp_dtype=torch.bfloat16)
                    if ema is not None:
                        ema.update(m)
                times[name].append((time.perf_counter() - t0) / len(batches))
        med = {k: statistics.median(v) for k, v in times.items()}
        cells = [f"{k} {v:.3f} s ({v / med['baseline']:.2f}x)" for k, v in med.items()]
        print(f"size {size}: " + ", ".join(cells) + f"; loader {loader_s:.3f} s/batch "
              f"({loader_s / med['baseline']:.2f}x)", flush=True)
        rows.append((size, med, loader_s))

    gt = validation_subset(args.data / "annotations" / f"person_keypoints_{d['val_split']}.json", args.val_images)
    model = base.eval()
    t0 = time.perf_counter()
    for im in gt["images"]:
        predict_image(model, read_image(args.data / d["val_split"] / im["file_name"], im["id"]),
                      eval_params=params["evaluate"])
    per_image = (time.perf_counter() - t0) / len(gt["images"])
    n_val = int(tp["val_max_images"]) or int(params["generated"]["num_val"])
    print(f"validation: {per_image:.3f} s per image (flip test {params['evaluate']['flip_test']}); "
          f"{n_val} images = {per_image * n_val:.1f} s per validation "
          f"= {per_image * n_val / rows[-1][1]['baseline']:.0f} steps at size {rows[-1][0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
