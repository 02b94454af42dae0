"""Efficiency of a model at test time: size, compute, latency and peak memory.

What :func:`measure_efficiency` reports (the evaluate stage writes it to
``data/metrics/efficiency.json``, separate from eval.json because wall-clock numbers differ
from run to run while eval.json must not):

* ``params``: parameter count (:func:`pose.models.count_params`), ``params_M`` in millions;
* ``gflops``: GFLOPs of one forward pass at ``input_size`` (1 multiply-add = 1 FLOP, the
  HRNet papers' convention; :func:`pose.models.count_flops`, ``convention="exact"``);
  ``gflops_per_image``: all forward passes ``predict_image`` runs for one image (every
  test scale, doubled by the flip test);
* ``latency_ms_p50 / latency_ms_p90 / latency_ms_mean``: wall time of
  :func:`pose.decode.inference.predict_image` per image (preprocessing, forward passes,
  aggregation, grouping, mapping back; not image decoding from disk), over ``samples``
  timed calls after ``warmup`` untimed ones, cycling through the given images;
  ``images_per_s`` = 1000 / mean;
* ``peak_memory_mb``: on CPU the process's peak resident set size (VmHWM) while the timed
  calls run (the high-water mark is reset first through ``/proc/self/clear_refs`` where
  Linux allows it, else it is the process's lifetime peak, ``ru_maxrss``); on CUDA
  ``torch.cuda.max_memory_allocated`` during the timed calls. ``peak_memory_kind`` says
  which (``"rss"``, ``"rss_lifetime"``, ``"cuda_allocated"``);
* the settings: ``device``, ``torch_threads``, ``input_size``, ``flip_test``,
  ``test_scales``, ``latency_samples``, ``latency_warmup``.

Params sections read: ``evaluate`` (handed in by `pose.evaluate.outputs`).
"""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from pose.decode.inference import predict_image, scaled_input_size
from pose.decode.persons import InferenceSettings, resolve_eval_params
from pose.io import dataset_exif, read_image

if TYPE_CHECKING:
    from pose.params import EvaluateSection


def _vm_hwm_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def load_sample_images(ann_file: Path | str, images_dir: Path | str, count: int) -> list[np.ndarray]:
    """The first ``count`` images (by id) of a COCO annotation file, decoded (BGR uint8).

    Raises FileNotFoundError / ValueError for a missing or unreadable image, ValueError when
    the file lists no image."""
    coco = json.loads(Path(ann_file).read_text())
    exif = dataset_exif(coco, ann_file)
    images = sorted(coco.get("images", []), key=lambda im: im["id"])
    if not images:
        raise ValueError(f"{ann_file}: no images to time")
    out = []
    for im in images[:max(1, int(count))]:
        out.append(read_image(Path(images_dir) / im["file_name"], im["id"], exif=exif))
    return out


def measure_efficiency(model: torch.nn.Module, images: Sequence[np.ndarray], *,
                       eval_params: EvaluateSection | InferenceSettings | dict,
                       samples: int, warmup: int, device: torch.device | str | None = None) -> dict:
    """Size, compute, latency and peak memory of ``predict_image`` (module docstring).

    Args:
        model: the network (its device is used unless ``device`` is given).
        images: BGR uint8 images, timed in turn (cycled when fewer than ``samples``).
        eval_params: the params ``evaluate`` section (`pose.params.EvaluateSection`: inference settings).
        samples: number of timed calls (>= 1). warmup: untimed calls before them.

    Raises ValueError on no images or ``samples < 1``.
    """
    from pose.models import count_flops, count_params

    if not images:
        raise ValueError("measure_efficiency needs at least one image")
    if int(samples) < 1 or int(warmup) < 0:
        raise ValueError(f"need samples >= 1 and warmup >= 0, got {samples}, {warmup}")
    cfg = resolve_eval_params(eval_params)
    size = int(cfg.input_size)
    scales = [float(s) for s in cfg.test_scales]
    flip = bool(cfg.flip_test)
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    gflops = count_flops(model, size)
    per_image = sum(count_flops(model, scaled_input_size(size, s)) if s != 1.0 else gflops for s in scales)
    per_image *= 2 if flip else 1

    def run(i: int) -> None:
        predict_image(model, images[i % len(images)], eval_params=cfg, device=dev)

    for i in range(int(warmup)):
        run(i)
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        kind = "cuda_allocated"
    else:
        kind = "rss" if _reset_peak_rss() and _vm_hwm_mb() is not None else "rss_lifetime"
    times = []
    for i in range(int(samples)):
        t0 = time.perf_counter()
        run(int(warmup) + i)
        if cuda:
            torch.cuda.synchronize(dev)
        times.append((time.perf_counter() - t0) * 1e3)
    if cuda:
        peak = torch.cuda.max_memory_allocated(dev) / 2 ** 20
    elif kind == "rss":
        peak = _vm_hwm_mb()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # kB on Linux
    t = np.asarray(times, dtype=np.float64)
    n_params = count_params(model)
    return {
        "params": int(n_params), "params_M": n_params / 1e6,
        "gflops": float(gflops), "gflops_per_image": float(per_image),
        "latency_ms_p50": float(np.percentile(t, 50)), "latency_ms_p90": float(np.percentile(t, 90)),
        "latency_ms_mean": float(t.mean()), "images_per_s": float(1e3 / t.mean()),
        "peak_memory_mb": float(peak), "peak_memory_kind": kind,
        "device": str(dev), "torch_threads": int(torch.get_num_threads()),
        "input_size": size, "flip_test": flip, "test_scales": scales,
        "latency_samples": int(samples), "latency_warmup": int(warmup),
    }
