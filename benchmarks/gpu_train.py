"""Train the published HigherHRNet-W32 @ 512 recipe on a GPU for a fixed number of steps.

Usage::

    python benchmarks/gpu_train.py                            # coco_w32_512, 60 steps (10 warm-up), AMP
    python benchmarks/gpu_train.py --steps 200 --backbone models/pytorch/imagenet/hrnet_w32-36af842e.pth
    python benchmarks/gpu_train.py --preset coco_w48_640 --batch-size 10 --json gpu.json

What runs is the project's own training: the preset composed as `dvc exp run -S preset=...`
would (`pose.presets.compose`), then `pose.train.loop.train` with ``stop_after_steps`` on the
real COCO sample coco-mini (80 train / 79 val images, read from the offline mirror
``data.mirror``; nothing is downloaded), with AMP on (fp16 + GradScaler on CUDA) and one input
size (the preset's). The loader is the project's (`pose.train.data`, ``train.workers``
processes, the reference crop), timed from outside: this script wraps the ``DataLoader`` the
loop builds and records how long each step waited for its batch. Then the checkpoint written
at the last step is decoded on the first ``--val-images`` validation images with the preset's
test protocol and scored with COCO AP (`pose.decode.inference.predict_dataset`,
`pose.evaluate.coco.evaluate_results`).

Printed: GPU, images/s over the steps after ``--warmup`` (step = wait for the batch + host to
device copy + forward + loss + backward + optimiser step; the loop syncs every step when it
logs the loss), peak GPU memory (allocated and reserved by PyTorch), the data-loader wait
share of that time, overall and without each epoch's first batch (the loop starts new loader
workers every epoch; coco-mini's epochs are 6 steps long, COCO's thousands), and the
validation AP. A few steps from scratch (no ``--backbone``) give AP near 0: the number checks
that the whole chain runs, not the recipe's accuracy.

On a machine without CUDA it says so and exits 0. ``--allow-cpu`` runs the same code on the
CPU (a smoke test of the script: shrink it with ``--set model.width=16 --size 128`` ...).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class LoaderClock:
    """Records, for every batch the training loop takes from a ``DataLoader``, when it asked
    (``requested``), when it got it (``received``) and whether it was the epoch's first."""

    def __init__(self) -> None:
        self.requested: list[float] = []
        self.received: list[float] = []
        self.first_of_epoch: list[bool] = []

    def loader_class(self, base: type) -> type:
        """A ``DataLoader`` subclass whose iterator reports to this clock."""
        clock = self

        class TimedDataLoader(base):
            def __iter__(self):
                it = super().__iter__()
                first = True
                while True:
                    t0 = time.perf_counter()
                    try:
                        batch = next(it)
                    except StopIteration:
                        return
                    clock.requested.append(t0)
                    clock.received.append(time.perf_counter())
                    clock.first_of_epoch.append(first)
                    first = False
                    yield batch

        return TimedDataLoader

    def summary(self, warmup: int, batch_size: int) -> dict:
        """Throughput and loader-wait share over steps ``warmup .. n-2`` (step i lasts from its
        request to the next one; the last step has no successor and is left out)."""
        n = len(self.requested)
        if n - 1 - warmup < 1:
            raise ValueError(f"need more than warmup + 1 = {warmup + 1} steps, got {n}")
        steps = range(warmup, n - 1)
        window = self.requested[n - 1] - self.requested[warmup]
        waits = [self.received[i] - self.requested[i] for i in steps]
        steady = [w for i, w in zip(steps, waits) if not self.first_of_epoch[i]]
        steady_time = sum(self.requested[i + 1] - self.requested[i] for i in steps if not self.first_of_epoch[i])
        return {"timed_steps": len(steps), "seconds": window,
                "images_per_s": len(steps) * batch_size / window, "step_ms": 1000 * window / len(steps),
                "loader_wait_share": sum(waits) / window,
                "loader_wait_share_steady": (sum(steady) / steady_time) if steady_time > 0 else float("nan"),
                "epoch_starts_timed": sum(self.first_of_epoch[i] for i in steps)}


def _count_training_images(ann_file: Path) -> int:
    data = json.loads(ann_file.read_text())
    ids = {a["image_id"] for a in data["annotations"] if a.get("num_keypoints", 0) > 0 and not a.get("iscrowd", 0)}
    return len(ids)


def _val_subset(ann_file: Path, count: int, out: Path) -> Path:
    """The first ``count`` images (by id) of a COCO file with their annotations, written to ``out``."""
    from pose.io import atomic_write_json

    data = json.loads(ann_file.read_text())
    images = sorted(data["images"], key=lambda im: im["id"])[:count]
    keep = {im["id"] for im in images}
    subset = dict(data, images=images, annotations=[a for a in data["annotations"] if a["image_id"] in keep])
    atomic_write_json(out, subset)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="coco_w32_512", help="conf/preset/<name>.yaml (default coco_w32_512)")
    ap.add_argument("--steps", type=int, default=60, help="optimiser steps (default 60)")
    ap.add_argument("--warmup", type=int, default=10, help="steps left out of the timing (default 10)")
    ap.add_argument("--batch-size", type=int, default=None, help="per-GPU batch (default: the preset's)")
    ap.add_argument("--workers", type=int, default=None, help="loader workers (default: the preset's)")
    ap.add_argument("--size", type=int, default=None, help="input size (default: the preset's)")
    ap.add_argument("--backbone", default="", help="ImageNet HRNet weights (model.pretrained_backbone); "
                                                    "default: none, from scratch")
    ap.add_argument("--val-images", type=int, default=20, help="coco-mini val images scored (default 20)")
    ap.add_argument("--coco", type=Path, default=None, help="coco-mini folder (default: params data.mirror)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="extra Hydra override of the composed params (repeatable)")
    ap.add_argument("--allow-cpu", action="store_true", help="run on the CPU when there is no GPU (smoke test)")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers to this JSON file")
    args = ap.parse_args(argv)

    import torch

    if not torch.cuda.is_available() and not args.allow_cpu:
        print("gpu_train: no CUDA device here (torch.cuda.is_available() is False; torch "
              f"{torch.__version__}); this benchmark needs a GPU, nothing to do.")
        return 0

    from pose.datasets.formats import dataset_domain
    from pose.datasets.schema import COCO_SIGMAS
    from pose.decode.inference import predict_dataset
    from pose.device import pick_device
    from pose.evaluate.coco import evaluate_results
    from pose.models import build_model, count_params
    from pose.params import validate_params
    from pose.presets import compose
    from pose.train import loop
    from pose.train.checkpoint import load_trained_model

    overrides = ["data.dataset=coco-mini", "train.amp=true", "train.val_every=0", "train.max_steps_per_epoch=0",
                 f"train.checkpoint_every={args.steps}", f"train.log_every={max(1, args.steps // 10)}",
                 f"model.pretrained_backbone={args.backbone}"]
    if args.batch_size:
        overrides.append(f"train.batch_size={args.batch_size}")
    if args.workers is not None:
        overrides.append(f"train.workers={args.workers}")
    p = compose(args.preset, overrides + list(args.overrides))
    tp = p["train"]
    size = args.size or max(s for stage in tp["curriculum"] for s in stage["sizes"])
    coco = args.coco or (ROOT / p["data"]["mirror"] / p["catalogue"]["coco-mini"]["mirror"])
    train_ann = coco / "annotations" / "person_keypoints_train2017.json"
    val_ann = coco / "annotations" / "person_keypoints_val2017.json"
    if not train_ann.is_file():
        print(f"gpu_train: coco-mini not found at {coco} (pass --coco)", file=sys.stderr)
        return 1
    batch = int(tp["batch_size"])
    steps_per_epoch = max(1, _count_training_images(train_ann) // batch)
    tp["curriculum"] = [{"sizes": [size], "epochs": math.ceil(args.steps / steps_per_epoch)}]
    tp["multi_scale"], tp["use_curriculum"] = False, False
    p["evaluate"]["input_size"] = size

    device = pick_device()
    params_m = count_params(build_model(dict(p["model"], pretrained=""))) / 1e6
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"gpu_train: preset {args.preset} (W{p['model']['width']}, {params_m:.1f} M params) on {name}: "
          f"{args.steps} steps, batch {batch}, input {size}, AMP {'fp16' if device.type == 'cuda' else 'bf16'}, "
          f"{tp['workers']} loader workers, backbone {args.backbone or 'none (from scratch)'}", flush=True)

    clock = LoaderClock()
    loop.DataLoader = clock.loader_class(loop.DataLoader)
    with tempfile.TemporaryDirectory(prefix="gpu_train_") as tmp:
        out = Path(tmp)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        s = validate_params(p, source="gpu_train params")
        loop.train(s.train, s.model, s.targets, s.augment, s.loss, s.evaluate, dataset=s.data.dataset,
                   domain=dataset_domain(s.catalogue, s.data.dataset), train_ann=train_ann,
                   train_images=coco / "train2017", out_dir=out / "models",
                   metrics_path=out / "train.json", steps_path=out / "steps.csv", resume=False,
                   stop_after_steps=args.steps)
        train_s = time.perf_counter() - t0
        peak = {}
        if device.type == "cuda":
            peak = {"peak_allocated_gib": torch.cuda.max_memory_allocated(device) / 2 ** 30,
                    "peak_reserved_gib": torch.cuda.max_memory_reserved(device) / 2 ** 30}
        timing = clock.summary(min(args.warmup, max(0, len(clock.requested) - 3)), batch)
        model = load_trained_model(out / "models" / "last.pt", device)
        subset = _val_subset(val_ann, args.val_images, out / "val_subset.json")
        t1 = time.perf_counter()
        results = predict_dataset(model, subset, coco / "val2017", p["evaluate"], device)
        metrics = (evaluate_results(subset, results, COCO_SIGMAS, per_keypoint=False) if results
                   else dict.fromkeys(("AP", "AP50", "AP75", "AR"), 0.0))  # no person detected
        val_s = time.perf_counter() - t1

    report = {"preset": args.preset, "device": name, "steps": args.steps, "batch_size": batch, "input_size": size,
              "params_M": round(params_m, 2), "train_seconds": train_s, **timing, **peak,
              "val_images": args.val_images, "val_seconds": val_s,
              **{k: metrics.get(k) for k in ("AP", "AP50", "AP75", "AR")}}
    print(f"  images/s         {timing['images_per_s']:.1f}  ({timing['timed_steps']} steps after {args.warmup} "
          f"warm-up, {timing['step_ms']:.0f} ms/step)")
    if peak:
        print(f"  peak GPU memory  {peak['peak_allocated_gib']:.2f} GiB allocated, "
              f"{peak['peak_reserved_gib']:.2f} GiB reserved")
    print(f"  loader wait      {100 * timing['loader_wait_share']:.1f}% of step time "
          f"({100 * timing['loader_wait_share_steady']:.1f}% without the {timing['epoch_starts_timed']} "
          f"epoch-start batches)")
    print(f"  validation       AP {report['AP']:.3f}, AP50 {report['AP50']:.3f} on {args.val_images} coco-mini val "
          f"images, {len(results)} persons detected ({p['evaluate']['resize']} {size}, flip test "
          f"{p['evaluate']['flip_test']}, {val_s:.0f} s)")
    if args.json:
        from pose.io import atomic_write_json

        atomic_write_json(args.json, report, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
