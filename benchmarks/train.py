"""Training throughput of HigherHRNet on real COCO images: model vs data loader.

Usage::

    python benchmarks/train.py                           # W16 (params stage_blocks) and W32 (1-4-3), 256/384/512
    python benchmarks/train.py --configs w16 --sizes 256 --steps 5
    python benchmarks/train.py --learning --learning-steps 60   # loss curve of the params config

For every configuration and input size it prints:

* ``params(M)`` and ``GFLOPs`` of one forward pass (`pose.models.count_params`,
  `pose.models.count_flops`; the papers' convention, 1 multiply-add = 1 FLOP, with
  the reference repositories' deconvolution counting, so W32 @ 512 reads 47.9);
* ``train img/s``: full optimisation steps (forward, HigherHRNet loss, backward,
  gradient clipping, AdamW) on batches already in memory, after ``--warmup`` steps;
* ``loader img/s``: the training `DataLoader` (`CocoKeypoints` with params.yaml's
  augmentation, ``train.workers`` processes) producing batches of that size, after
  the first batch (worker start-up is printed separately);
* ``loader/train``: the ratio. The loader keeps the model busy when it is >= 2
  (it also has to keep up while the model competes for the same CPU cores).

Images come from the COCO sample (``--coco``, default ../shared/datasets/coco-mini);
nothing is downloaded. On a CPU the W32 rows are slow (several seconds per image at
512): ``--w32-steps`` measures fewer steps there.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pose.device import pick_device  # noqa: E402
from pose.models import build_model, count_flops, count_params  # noqa: E402
from pose.train.data import CocoKeypoints, dataset_from_params  # noqa: E402
from pose.train.loop import train_step  # noqa: E402

PUBLISHED_STAGE_BLOCKS = [1, 4, 3]
DEFAULT_COCO = Path(os.environ.get("POSE_SHARED_DATASETS", ROOT.parent / "shared" / "datasets")) / "coco-mini"


def configs(params: dict, names: list[str]) -> list[tuple[str, dict]]:
    out = []
    for name in names:
        mp = copy.deepcopy(params["model"])
        mp["pretrained"] = ""
        if name == "w16":
            mp["width"] = 16
        elif name == "w32":
            mp.update(width=32, stage_blocks=PUBLISHED_STAGE_BLOCKS)
        out.append((f"W{mp['width']} {'-'.join(map(str, mp['stage_blocks']))}", mp))
    return out


def dataset(params: dict, coco: Path, split: str) -> CocoKeypoints:
    from pose.params import AugmentSection, ModelSection, TargetsSection

    return dataset_from_params(ModelSection.model_validate(params["model"]),
                               TargetsSection.model_validate(params["targets"]),
                               AugmentSection.model_validate(params["augment"]), seed=int(params["train"]["seed"]),
                               ann_file=coco / "annotations" / f"person_keypoints_{split}.json",
                               images_dir=coco / split)


def batches(n_images: int, batch: int, size: int, count: int, seed: int = 0) -> list[list[tuple[int, int]]]:
    order = np.random.default_rng(seed).permutation(np.resize(np.arange(n_images), batch * count))
    return [[(int(i), size) for i in order[b * batch:(b + 1) * batch]] for b in range(count)]


def loader_throughput(ds: CocoKeypoints, batch: int, size: int, n_batches: int, workers: int) -> tuple[float, float]:
    """(images/s after the first batch, seconds to the first batch) of the training DataLoader."""
    loader = DataLoader(ds, batch_sampler=batches(len(ds), batch, size, n_batches + 1), num_workers=workers,
                        persistent_workers=False)
    t0 = time.perf_counter()
    it = iter(loader)
    next(it)
    first = time.perf_counter() - t0
    t1 = time.perf_counter()
    n = sum(b["image"].shape[0] for b in it)
    return n / (time.perf_counter() - t1), first


def train_throughput(mp: dict, params: dict, data: list[dict], steps: int, warmup: int, device: torch.device,
                     amp: bool) -> float:
    """images/s of full optimisation steps on in-memory batches (cycled)."""
    torch.manual_seed(0)
    model = build_model(mp).to(device).train()
    tp = params["train"]
    opt = torch.optim.AdamW(model.parameters(), lr=float(tp["lr"]), weight_decay=float(tp["weight_decay"]))
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=amp and dtype == torch.float16)

    def step(b: dict) -> None:
        train_step(model, b, opt, scaler, loss_params=params["loss"], grad_clip=float(tp["grad_clip"]),
                   use_amp=amp, amp_dtype=dtype)

    data = [{k: v.to(device) for k, v in b.items()} for b in data]
    for i in range(warmup):
        step(data[i % len(data)])
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    n = 0
    for i in range(steps):
        b = data[i % len(data)]
        step(b)
        n += b["image"].shape[0]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def throughput(args, params: dict) -> int:
    device = pick_device()
    workers = int(params["train"]["workers"]) if args.workers is None else args.workers
    ds = dataset(params, args.coco, "train2017")
    print(f"device {device} | torch threads {torch.get_num_threads()} | cpu cores {os.cpu_count()} | "
          f"load average {os.getloadavg()[0]:.1f} | loader workers {workers} | batch {args.batch} | "
          f"{len(ds)} coco-mini train images | amp {args.amp}")
    cfgs = configs(params, args.configs)

    print("\nparams and GFLOPs (one forward pass, 1 multiply-add = 1 FLOP, reference deconv counting)")
    print(f"{'model':>10} {'params(M)':>10} " + " ".join(f"{f'GFLOPs@{s}':>11}" for s in args.sizes))
    for name, mp in cfgs:
        with torch.device("meta"):
            meta = build_model(mp)
        flops = [count_flops(meta, s, convention="reference") for s in args.sizes]
        print(f"{name:>10} {count_params(meta) / 1e6:>10.2f} " + " ".join(f"{f:>11.2f}" for f in flops))

    print("\nloader throughput (real images, params augmentation)")
    loader_rate = {}
    for size in args.sizes:
        rate, first = loader_throughput(ds, args.batch, size, args.loader_batches, workers)
        loader_rate[size] = rate
        print(f"  size {size}: {rate:7.1f} img/s with {workers} workers (first batch after {first:.2f} s)")

    print(f"\n{'model':>10} {'size':>5} {'steps':>5} {'train img/s':>12} {'loader img/s':>13} {'loader/train':>13}")
    worst = float("inf")
    for name, mp in cfgs:
        steps = args.w32_steps if mp["width"] >= 32 and device.type == "cpu" else args.steps
        for size in args.sizes:
            # one real batch, built once (not timed), reused every step
            samples = [ds[key] for key in batches(len(ds), args.batch, size, 1)[0]]
            data = [{k: torch.stack([d[k] for d in samples]) for k in samples[0]}]
            rate = train_throughput(mp, params, data, steps, args.warmup, device, args.amp)
            ratio = loader_rate[size] / rate
            worst = min(worst, ratio)
            flag = "" if ratio >= 2 else "  < 2: loader-bound"
            print(f"{name:>10} {size:>5} {steps:>5} {rate:>12.2f} {loader_rate[size]:>13.1f} {ratio:>13.2f}{flag}",
                  flush=True)
    print(f"\nlowest loader/train ratio: {worst:.2f} ({'ok' if worst >= 2 else 'below the 2x target'})")
    return 0


def learning(args, params: dict) -> int:
    """Train the params.yaml model (its augmentation, smallest curriculum size) for about
    ``--learning-steps`` steps on coco-mini train and print the loss curve summary."""
    import csv
    import math

    from pose.train.loop import train

    p = copy.deepcopy(params)
    p["model"]["pretrained"] = ""
    size = min(int(s) for st in p["train"]["curriculum"] for s in st["sizes"])
    per_epoch = min(max(1, len(dataset(p, args.coco, "train2017")) // args.batch), args.learning_steps)
    epochs = math.ceil(args.learning_steps / per_epoch)
    p["train"].update(max_steps_per_epoch=per_epoch, checkpoint_every=0, batch_size=args.batch,
                      log_every=max(1, args.learning_steps // 10), curriculum=[{"sizes": [size], "epochs": epochs}])
    print(f"W{p['model']['width']} {p['model']['stage_blocks']} size {size} batch {args.batch}: "
          f"{epochs} epochs x {per_epoch} steps")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        from pose.datasets.formats import dataset_domain
        from pose.params import validate_params

        s = validate_params(p, source="benchmarks/train.py params")
        train(s.train, s.model, s.targets, s.augment, s.loss, s.evaluate, dataset=s.data.dataset,
              domain=dataset_domain(s.catalogue, s.data.dataset),
              train_ann=args.coco / "annotations" / "person_keypoints_train2017.json",
              train_images=args.coco / "train2017", out_dir=Path(tmp) / "models", metrics_path=Path(tmp) / "m.json",
              steps_path=Path(tmp) / "s.csv", resume=False)
        seconds = time.perf_counter() - t0
        with (Path(tmp) / "s.csv").open() as fh:
            losses = [float(r["loss"]) for r in csv.DictReader(fh)]
    k = max(1, min(10, len(losses) // 4))
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    print(f"{len(losses)} steps in {seconds:.1f} s; mean loss of the first {k} steps {first:.5f}, "
          f"of the last {k} {last:.5f} (x{last / first:.2f})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--coco", type=Path, default=DEFAULT_COCO, help="COCO-layout sample with train2017")
    parser.add_argument("--configs", nargs="+", choices=["w16", "w32"], default=["w16", "w32"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 384, 512])
    parser.add_argument("--batch", type=int, default=2, help="images per step (CPU-friendly default)")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per row")
    parser.add_argument("--w32-steps", type=int, default=1, help="timed steps for W32 on CPU")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--loader-batches", type=int, default=12, help="timed loader batches per size")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: params train.workers)")
    parser.add_argument("--threads", default="auto",
                        help="torch intra-op threads: a number, or auto (torch's default of one per core, but 1 "
                             "when the load average exceeds the cores: busy shared CPUs make OpenMP threads wait "
                             "on each other and throughput collapses)")
    parser.add_argument("--amp", action="store_true", help="autocast (bf16 on CPU, fp16 on CUDA)")
    parser.add_argument("--learning", action="store_true", help="loss curve of the params config instead")
    parser.add_argument("--learning-steps", type=int, default=40)
    args = parser.parse_args(argv)
    if not (args.coco / "annotations" / "person_keypoints_train2017.json").exists():
        parser.error(f"{args.coco}: no COCO sample (annotations/person_keypoints_train2017.json)")
    params = yaml.safe_load(args.params.read_text())
    if args.threads == "auto":
        if os.getloadavg()[0] > (os.cpu_count() or 1):
            torch.set_num_threads(1)
    else:
        torch.set_num_threads(int(args.threads))
    return learning(args, params) if args.learning else throughput(args, params)


if __name__ == "__main__":
    raise SystemExit(main())
