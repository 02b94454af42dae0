"""The training loop: HigherHRNet with heatmap + associative-embedding losses and a
multi-scale input-size curriculum (Cheng et al., CVPR 2020, Sec. 3.3-3.4).

Read it top to bottom: set up (device, DDP, data, model, optimiser, schedule),
resume, then the epoch/step loop with logging and checkpoints. Under ``torchrun``
every rank trains on its own slice of each global batch; only rank 0 prints and
writes files (see `pose.train.ddp` and infra/torchrun.md).

Exact resume: a run killed at any moment and resumed from ``last.pt`` ends with
the same weights, bit for bit, as an uninterrupted run on the same machine,
because everything a step depends on is either in the checkpoint (model,
optimiser, LR-schedule position, AMP scaler, torch RNG, epoch, batch within the
epoch, per-step history) or a pure function of ``(seed, epoch, index)`` (batch
order, input size, augmentation). The DataLoader gets its own generator, so
starting an epoch's loader does not consume the global torch RNG. Validation
(`pose.train.validation`) uses no random numbers, so it does not disturb this.
SIGTERM / SIGINT (and the end of the parent process under ``--dvc-stage``) write ``last.pt``
at the next step boundary and stop (`pose.train.stop`); under DVC only a ``last.pt`` of the same
stage inputs is resumed (`pose.train.resume`).

Checkpoint selection: with ``train.val_every > 0`` and a validation split, the model is
decoded and scored (COCO AP) every ``val_every`` epochs and after the last one, and
``best.pt`` is the epoch with the highest validation AP (ties keep the earlier epoch);
with validation off, ``best.pt`` is the epoch with the lowest mean training loss.

CPU threads: `configure_threads` sets torch's intra-op threads to the cores this process
may run on (``os.sched_getaffinity``, not ``os.cpu_count``: containers and ``taskset``
restrict it) divided among the ranks of this node, minus the ``train.workers`` loader
processes, at least 1, so compute threads + loader workers never exceed the cores. An
explicit ``OMP_NUM_THREADS`` caps it. Oversubscribing made steps 10-60x slower on a loaded
2-core machine (issue 13). Loader workers run one torch and one OpenCV thread each
(`pose.train.data.loader_worker_init`). CUDA is used when present (`pose.device.pick_device`).

Params sections read (handed in by ``pose.cli``, `pose.params`): ``train``, ``model``, ``targets``,
``augment``, ``loss`` and ``evaluate`` (the validation's decoding).
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader

from pose.codec import LOSS_PARTS
from pose.device import pick_device
from pose.io import atomic_write_json, sha256_file
from pose.losses import total_loss
from pose.models import build_training_model
from pose.train import ddp
from pose.train.checkpoint import load_checkpoint, remove_stale_temps, save_checkpoint, upgrade_model_params
from pose.train.data import CurriculumBatchSampler, curriculum_schedule, dataset_from_params, loader_worker_init
from pose.train.ema import ModelEMA
from pose.train.resume import resume_decision
from pose.train.stop import StopRequest, TrainingInterrupted, echo
from pose.train.validation import VAL_COLUMNS, Validator

if TYPE_CHECKING:
    from pose.params import AugmentSection, EvaluateSection, LossSection, ModelSection, TargetsSection, TrainSection

#: per-step columns of the steps CSV: the loss parts are `pose.codec.LOSS_PARTS` (``heatmap_4``,
#: ``heatmap_2``, ``push``, ``pull``); ``images_per_s`` is wall-clock, so it stays out of checkpoints
STEP_COLUMNS = ["step", "epoch", "input_size", "loss", *LOSS_PARTS, "lr", "images_per_s"]


def available_cores() -> int:
    """CPU cores this process may run on: ``len(os.sched_getaffinity(0))`` (honours cgroup
    cpusets and ``taskset``), ``os.cpu_count()`` where the platform lacks it (macOS)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def configure_threads(workers: int, ranks_per_node: int = 1) -> int:
    """Set torch's intra-op threads for training and return the number set.

    ``available_cores() // ranks_per_node - workers``, at least 1, capped by an explicit
    ``OMP_NUM_THREADS`` (a positive integer; anything else is ignored): the ``workers``
    loader processes (params ``train.workers``, one thread each) and the compute threads
    together never exceed this rank's share of the cores (module docstring).
    """
    threads = max(1, available_cores() // max(1, int(ranks_per_node)) - max(0, int(workers)))
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        threads = min(threads, int(env))
    torch.set_num_threads(threads)
    return threads


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the base LR at optimiser step ``step`` (0-based): linear warm-up
    over ``warmup`` steps, then cosine decay to 0 or a x0.1 step at 2/3 of training."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        t = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
    if schedule == "step":
        return 0.1 if step >= (2 * total) // 3 else 1.0
    raise ValueError(f"params train.lr_schedule: unknown schedule {schedule!r} (cosine | step)")


def train_step(model: torch.nn.Module, batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, *, loss_params: LossSection, grad_clip: float, use_amp: bool,
               amp_dtype: torch.dtype) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimisation step of HigherHRNet on a batch from `pose.train.data.CocoKeypoints` (already on the device).

    Forward under autocast when ``use_amp`` (``amp_dtype``: bf16 on CPU, fp16 on CUDA),
    heatmap + associative-embedding loss in float32 (`pose.losses.total_loss`), backward
    through the AMP scaler, gradient-norm clipping at ``grad_clip``, optimiser step.
    ``model`` may be DDP-wrapped. Returns (scalar loss, detached loss parts).
    """
    with torch.autocast(batch["image"].device.type, dtype=amp_dtype, enabled=use_amp):
        outputs = model(batch["image"])
    outputs = [o.float() for o in outputs]
    loss, parts = total_loss(outputs, batch, loss_params)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss, parts


def _write_json(path: Path, obj: dict) -> None:
    atomic_write_json(path, obj, indent=2, sort_keys=True)


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    """Atomic CSV of ``rows`` (floats rounded to 1e-6); a header-only file when empty."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for h in rows:
            w.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in h.items()})
    os.replace(tmp, path)


def _write_steps_csv(path: Path, history: list[dict]) -> None:
    _write_csv(path, STEP_COLUMNS, history)


def train(tp: TrainSection, mp: ModelSection, targets: TargetsSection, augment: AugmentSection, lp: LossSection,
          ev: EvaluateSection, *, dataset: str, domain: str, train_ann: Path, train_images: Path, out_dir: Path,
          metrics_path: Path,
          steps_path: Path, resume: bool = True, stop_after_steps: int = 0, val_ann: Path | None = None,
          val_images: Path | None = None, val_path: Path | None = None, stage_inputs: dict | None = None,
          watch_parents: bool = False) -> dict:
    """Train with the params sections ``tp`` (``train``, `pose.params.TrainSection`), ``mp`` (``model``,
    `pose.params.ModelSection`), ``targets`` (`pose.params.TargetsSection`), ``augment``
    (`pose.params.AugmentSection`), ``lp`` (``loss``, `pose.params.LossSection`) and ``ev`` (``evaluate``,
    `pose.params.EvaluateSection`: the validation's decoding) on ``train_ann`` / ``train_images`` of
    ``dataset`` (params ``data.dataset``; ``domain``: its image domain,
    `pose.datasets.formats.dataset_domain`), and write, on rank 0:

    * ``out_dir/last.pt`` (every ``train.checkpoint_every`` steps and each epoch end)
      and ``out_dir/best.pt`` (best validation AP, or lowest mean epoch loss when
      validation is off; module docstring): see `pose.train.checkpoint`. Checkpoints
      record the training data (``train_data``: ``data.dataset``, annotation file, its
      sha256, image count) so `pose predict` can say what a model was trained on;
    * ``metrics_path``: JSON summary (final losses, steps, images/s, epochs, ``best_by``
      ``val_AP`` | ``train_loss``, ``best_epoch``, ``best_val_AP`` / ``last_val_AP``);
    * ``steps_path``: CSV of per-step metrics (step, epoch, input_size, loss,
      the loss parts of `pose.codec.LOSS_PARTS` (heatmap_4, heatmap_2, push, pull), lr, images_per_s)
      for DVC plots and MLflow.
      Losses are means over all ranks under DDP;
    * ``val_path`` (optional): CSV of the validations (:data:`VAL_COLUMNS`: epoch (0-based,
      as in the steps CSV), global step, AP, AP50, AP75, AR, images), rewritten after each
      one; header only when validation is off. Their wall-clock time is ``val_seconds`` in
      the summary.

    Validation (``train.val_every > 0``) needs ``val_ann`` (COCO keypoints JSON) and
    ``val_images``; it runs on rank 0 with the ``evaluate`` params on the first
    ``train.val_max_images`` images (`pose.train.validation`). When they are not given
    it is off and a warning is printed.

    ``resume`` continues from ``out_dir/last.pt`` when present (model, optimiser,
    scheduler position, AMP scaler, torch RNG, epoch, batch within the epoch,
    history). With ``stage_inputs`` (`pose.train.resume.stage_inputs` of the DVC stage
    running this, ``pose train --dvc-stage``) it does so only when ``last.pt`` records the
    same inputs and is not a finished run; otherwise it prints one line saying why, deletes
    the stale ``last.pt`` / ``best.pt`` and trains from scratch
    (`pose.train.resume.resume_decision`). Every checkpoint records ``stage_inputs``.
    ``stop_after_steps`` > 0 returns ``{"stopped_at_step": n}`` after that
    many global steps without writing the metrics / steps files (tests, benchmarks).
    Returns the summary dict on rank 0, ``{}`` on other ranks.

    SIGTERM / SIGINT (and, with ``watch_parents``, the end of the process that started this
    one: `pose.train.stop`) stop the run at the next step boundary (or between two validation
    images): ``last.pt`` is written with the exact state there and :class:`TrainingInterrupted`
    is raised; resuming from it ends with the same weights, bit for bit, as a run never stopped.

    Raises ValueError when ``last.pt`` was trained with other ``model`` params, or on a
    bad ``train.val_every`` / ``train.val_max_images`` or validation file;
    `pose.train.stop.TrainingInterrupted` as above.
    """
    device = pick_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist_info = ddp.setup(device)
    world, is_main = dist_info.world, dist_info.is_main
    workers = int(tp.workers)
    threads_before = torch.get_num_threads()
    threads = configure_threads(workers, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if is_main:
        echo(f"device {device.type}: {threads} torch thread(s) + {workers} loader worker(s) "
             f"on {available_cores()} available core(s)")
    torch.manual_seed(int(tp.seed))
    torch.use_deterministic_algorithms(device.type == "cpu", warn_only=True)

    # ---- data
    seed = int(tp.seed)
    train_set = dataset_from_params(mp, targets, augment, seed=seed, ann_file=train_ann, images_dir=train_images)
    schedule = curriculum_schedule(tp.curriculum, multi_scale=bool(tp.multi_scale),
                                   use_curriculum=bool(tp.use_curriculum))
    sampler = CurriculumBatchSampler(len(train_set), int(tp.batch_size), schedule, seed=seed,
                                     rank=dist_info.rank, world_size=world, max_batches=int(tp.max_steps_per_epoch))
    steps_per_epoch = len(sampler)
    total_steps = steps_per_epoch * len(schedule)
    plan = {"schedule": schedule, "steps_per_epoch": steps_per_epoch, "batch_size": int(tp.batch_size),
            "world_size": world, "seed": seed}
    train_data = json.dumps({"dataset": dataset, "annotations": str(train_ann),
                             "annotations_sha256": sha256_file(Path(train_ann)), "images": len(train_set),
                             "domain": domain},
                            sort_keys=True)

    # ---- validation (rank 0 decodes and scores; the result is broadcast so every rank agrees on best.pt)
    val_every = int(tp.val_every)
    if val_every < 0:
        raise ValueError(f"params train.val_every: must be >= 0 (0: off), got {val_every}")
    validator = None
    if val_every and (val_ann is None or val_images is None):
        if is_main:
            echo("warning: train.val_every > 0 but no validation split given (--val-ann / --val-images): "
                 "validation off, best.pt by training loss")
        val_every = 0
    if val_every and is_main:
        validator = Validator(val_ann, val_images, max_images=int(tp.val_max_images), eval_params=ev)

    # ---- model, optimiser, schedule
    # initialise for training from scratch (params model.init), then load published weights if any
    model, _ = build_training_model(mp, verbose=is_main)
    model = model.to(device)
    # params train.channels_last: NHWC activations and weights (oneDNN's faster convolutions on CPU;
    # benchmarks/step_cost.py); the same model, other rounding
    channels_last = bool(tp.channels_last)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt_cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}.get(tp.optimizer)
    if opt_cls is None:
        raise ValueError(f"params train.optimizer: unknown optimizer {tp.optimizer!r} (adam | adamw)")
    optimizer = opt_cls(model.parameters(), lr=float(tp.lr), weight_decay=float(tp.weight_decay))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total_steps, int(tp.warmup_steps), tp.lr_schedule))
    use_amp = bool(tp.amp)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    if use_amp and device.type == "cpu" and is_main and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        # the default recipe's budget assumes bf16 instructions (AVX512-BF16 / AMX; benchmarks/step_cost.py)
        print("warning: params train.amp is true but this CPU has no bf16 instructions: bf16 autocast is "
              "emulated and slower than float32 here; set train.amp: false", file=sys.stderr, flush=True)
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp and amp_dtype == torch.float16)
    # EMA of the weights (params train.ema_decay > 0): validated and saved as the checkpoints' "model"
    ema = ModelEMA(model, float(tp.ema_decay), float(tp.ema_warmup_steps)) if float(tp.ema_decay) else None

    # ---- resume
    out_dir = Path(out_dir)
    start_epoch, start_batch, global_step, best_loss = 0, 0, 0, float("inf")
    best_val_ap, best_epoch = float("-inf"), -1
    history: list[dict] = []
    val_history: list[dict] = []
    last = out_dir / "last.pt"
    if is_main:
        remove_stale_temps(out_dir)  # temp files of a save that was killed; never read
    resuming = bool(resume and last.exists())
    if is_main and resume and stage_inputs is not None:
        if resuming:
            head = load_checkpoint(last)
            recorded = json.loads(head["stage_inputs"]) if head.get("stage_inputs") else None
            finished = int(head["epoch"]) >= len(schedule) and int(head["batch_in_epoch"]) == 0
            resuming, why = resume_decision(recorded, stage_inputs, finished=finished)
            del head
            if not resuming:
                echo(f"starting fresh, not resuming {last}: {why}")
                for stale in (last, out_dir / "best.pt"):
                    stale.unlink(missing_ok=True)
        else:
            echo(f"starting fresh: no {last} to resume")
    # rank 0 decides, so no rank resumes while another starts afresh (shared out_dir assumed)
    resuming = ddp.broadcast_object(resuming, dist_info)
    if resuming:
        ck = load_checkpoint(last, map_location=device)
        if upgrade_model_params(json.loads(ck["model_params"])) != json.loads(json.dumps(mp.as_dict())):
            raise ValueError(f"{last}: trained with model params {ck['model_params']}, params.yaml has "
                             f"{json.dumps(mp.as_dict(), sort_keys=True)}; use --no-resume or another --out-dir")
        if "plan" in ck and json.loads(ck["plan"]) != plan and is_main:
            echo(f"warning: {last} was written with another curriculum / batch plan ({ck['plan']}); "
                 f"resuming at its epoch and batch, not an exact continuation")
        raw = "model_raw" in ck   # written with the EMA on: "model" is the average, "model_raw" the training weights
        model.load_state_dict(ck["model_raw"] if raw else ck["model"])
        if ema is not None:
            if raw:
                ema.load(ck["model"], int(ck["ema_updates"]))
            else:
                ema.load(model.state_dict(), 0)
                if is_main:
                    echo(f"warning: {last} was written without an EMA of the weights (train.ema_decay 0): the EMA "
                         f"starts from its weights now")
        elif raw and is_main:
            echo(f"warning: {last} was written with an EMA of the weights; train.ema_decay is 0: continuing "
                 f"without it")
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        torch.set_rng_state(ck["rng_cpu"].cpu())
        start_epoch, start_batch, global_step = int(ck["epoch"]), int(ck["batch_in_epoch"]), int(ck["global_step"])
        best_loss = float(ck["best_loss"])
        history = json.loads(ck["history"])
        # checkpoints written before validation existed lack these
        best_val_ap = float(ck.get("best_val_ap", float("-inf")))
        best_epoch = int(ck.get("best_epoch", -1))
        val_history = json.loads(ck.get("val_history", "[]"))
        del ck
        if is_main:
            echo(f"resumed from {last}: epoch {start_epoch} batch {start_batch} step {global_step}")
    if dist_info.distributed:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        train_model = model

    def checkpoint_state(epoch: int, batch_in_epoch: int) -> dict:
        weights = {"model": model.state_dict()} if ema is None else \
            {"model": ema.state_dict(), "model_raw": model.state_dict(), "ema_updates": ema.updates}
        return {**weights, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "rng_cpu": torch.get_rng_state(), "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                "global_step": global_step, "best_loss": best_loss, "best_val_ap": best_val_ap,
                "best_epoch": best_epoch,
                # wall-clock columns stay out of checkpoints so equal training gives equal files
                "history": json.dumps([{k: v for k, v in h.items() if k != "images_per_s"} for h in history]),
                "val_history": json.dumps([{k: v for k, v in h.items() if k != "seconds"} for h in val_history]),
                "train_data": train_data, "stage_inputs": json.dumps(stage_inputs) if stage_inputs else "",
                "model_params": json.dumps(mp.as_dict(), sort_keys=True), "plan": json.dumps(plan),
                "active_sizes": json.dumps(schedule[min(epoch, len(schedule) - 1)])}

    every = int(tp.checkpoint_every)

    def interrupted(epoch: int, batch_in_epoch: int) -> TrainingInterrupted:
        """Write last.pt at this step boundary (rank 0) and build the exception to raise."""
        if is_main:
            save_checkpoint(checkpoint_state(epoch, batch_in_epoch), last)
            echo(f"{stop.reason}: stopping after step {global_step}/{total_steps}, checkpoint {last} written "
                 f"(epoch {epoch} batch {batch_in_epoch})")
        return TrainingInterrupted(stop.reason or "stop requested on another rank", stop.signum or 15, global_step,
                                   total_steps, last if is_main else None)

    model.train()
    stopped = False
    with StopRequest(watch_parents=watch_parents) as stop:
        for epoch in range(start_epoch, len(schedule)):
            train_set.set_epoch(epoch)
            sampler.set_epoch(epoch, start_batch if epoch == start_epoch else 0)
            # own generator: worker seeds come from it, not from the global RNG the checkpoint restores
            loader = DataLoader(train_set, batch_sampler=sampler, num_workers=workers,
                                pin_memory=device.type == "cuda", persistent_workers=False,
                                worker_init_fn=loader_worker_init,
                                generator=torch.Generator().manual_seed(seed * 100003 + epoch))
            epoch_losses = [h["loss"] for h in history if h["epoch"] == epoch]
            batch_in_epoch = sampler.start_batch
            t0 = time.perf_counter()
            for batch in loader:
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                if channels_last:
                    batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
                loss, parts = train_step(train_model, batch, optimizer, scaler, loss_params=lp,
                                         grad_clip=float(tp.grad_clip), use_amp=use_amp, amp_dtype=amp_dtype)
                lr = optimizer.param_groups[0]["lr"]
                scheduler.step()
                if ema is not None:
                    ema.update(model)
                global_step += 1
                batch_in_epoch += 1
                # the stop flag rides along with the logged losses: every rank stops at the same step
                flag = torch.tensor(float(stop.requested), device=loss.device)
                logged = ddp.mean_across_ranks(
                    torch.stack([loss.detach(), *(parts[name] for name in LOSS_PARTS), flag]).float(),
                    dist_info).tolist()
                stop_now = logged.pop() > 0
                dt = time.perf_counter() - t0
                t0 = time.perf_counter()
                row = {"step": global_step, "epoch": epoch, "input_size": int(batch["image"].shape[-1]),
                       "loss": logged[0], **dict(zip(LOSS_PARTS, logged[1:])), "lr": lr,
                       "images_per_s": batch["image"].shape[0] * world / max(dt, 1e-9)}
                history.append(row)
                epoch_losses.append(row["loss"])
                if is_main and (global_step % int(tp.log_every) == 0 or global_step == 1):
                    echo(f"step {global_step}/{total_steps} epoch {epoch} size {row['input_size']} "
                         f"loss {row['loss']:.5f} lr {lr:.2e} {row['images_per_s']:.1f} img/s", stop)
                if stop_now:
                    del loader
                    raise interrupted(epoch, batch_in_epoch)
                if is_main and every and global_step % every == 0:
                    save_checkpoint(checkpoint_state(epoch, batch_in_epoch), last)
                if stop_after_steps and global_step >= stop_after_steps:
                    stopped = True
                    break
            del loader
            if stopped:
                break
            mean_loss = sum(epoch_losses) / max(1, len(epoch_losses))
            improved = False
            if val_every and ((epoch + 1) % val_every == 0 or epoch + 1 == len(schedule)):
                row = None
                if is_main:
                    result = validator.run(model if ema is None else ema.module, device,
                                           should_stop=lambda: stop.requested)
                    if result is not None:
                        row = {"epoch": epoch, "step": global_step, **result}
                        echo(f"epoch {epoch} validation: AP {row['AP']:.4f} AP50 {row['AP50']:.4f} "
                             f"AR {row['AR']:.4f} on {row['images']} images ({row['seconds']:.1f} s)", stop)
                row = ddp.broadcast_object(row, dist_info)
                if row is None:  # stopped during the validation: resume re-runs it (epoch done, batch = all)
                    raise interrupted(epoch, batch_in_epoch)
                val_history.append(row)
                if row["AP"] > best_val_ap:
                    best_val_ap = row["AP"]
                    improved = True
                if is_main and val_path is not None:
                    _write_csv(Path(val_path), VAL_COLUMNS, val_history)
            if mean_loss < best_loss:  # same value on every rank (losses are rank means)
                best_loss = mean_loss
                improved = improved or not val_every
            if improved:
                best_epoch = epoch
                if is_main:
                    save_checkpoint(checkpoint_state(epoch + 1, 0), out_dir / "best.pt")
            if is_main:
                save_checkpoint(checkpoint_state(epoch + 1, 0), last)
            start_batch = 0

    summary: dict = {}
    if stopped:
        summary = {"stopped_at_step": global_step}
    else:
        # BatchNorm statistics are per rank under DDP: take rank 0's (the ones in its checkpoints),
        # then check that all replicas are bit-identical
        ddp.sync_buffers(model, dist_info)
        digest = ddp.check_replicas(model, dist_info)
        if is_main:
            timed = [h["images_per_s"] for h in history[-max(1, steps_per_epoch):] if "images_per_s" in h]
            tail = history[-max(1, steps_per_epoch):]
            summary = {"steps": global_step, "epochs": len(schedule), "best_epoch_loss": best_loss,
                       "final_loss": sum(h["loss"] for h in tail) / max(1, len(tail)),
                       "images_per_s": sum(timed) / len(timed) if timed else 0.0,
                       "device": device.type, "world_size": world, "torch_threads": threads,
                       "best_by": "val_AP" if val_every else "train_loss", "best_epoch": best_epoch}
            if val_history:
                summary.update(best_val_AP=best_val_ap, last_val_AP=val_history[-1]["AP"],
                               validations=len(val_history),
                               val_seconds=sum(float(h.get("seconds", 0.0)) for h in val_history))
            metrics_path, steps_path = Path(metrics_path), Path(steps_path)
            metrics_path.parent.mkdir(parents=True, exist_ok=True)
            steps_path.parent.mkdir(parents=True, exist_ok=True)
            _write_json(metrics_path, summary)
            _write_steps_csv(steps_path, history)
            if val_path is not None:
                _write_csv(Path(val_path), VAL_COLUMNS, val_history)
            if dist_info.distributed:
                echo(f"{world} replicas in sync, model sha256 {digest[:16]}")
    ddp.teardown(dist_info)
    torch.set_num_threads(threads_before)  # the caller's setting again (tests, benchmarks)
    return summary
