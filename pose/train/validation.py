"""Validation during training: decode + COCO keypoint AP on (a capped part of) the
validation split, every ``train.val_every`` epochs (issue 13, "Validation during training").

Nothing is reimplemented here: each image is decoded exactly as the ``evaluate`` stage
decodes it (:func:`pose.decode.inference.predict_image` with params.yaml ``evaluate``:
input size, flip / multi-scale test, grouping) and scored with pycocotools through
:func:`pose.evaluate.coco.evaluate_results` (COCO OKS sigmas). The per-epoch numbers are
therefore the evaluate stage's AP on the first ``train.val_max_images`` validation images
(all of them with 0), so ``best.pt`` is chosen by the metric the pipeline reports. The
reference (HigherHRNet ``tools/dist_train.py``) validates only after training; selecting the
checkpoint on validation AP is this project's addition.

Params sections read (handed in by `pose.train.loop`): ``evaluate``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pose.io import dataset_exif, read_image
from pose.train.data import read_coco_json

if TYPE_CHECKING:
    from pose.params import EvaluateSection

#: columns of the per-epoch validation CSV (``data/plots/val_epochs.csv``). No wall-clock
#: column (the run's ``seconds`` go to train.json only), so equal training writes an equal file.
VAL_COLUMNS = ["epoch", "step", "AP", "AP50", "AP75", "AR", "images"]


def validation_subset(ann_file: Path | str, max_images: int) -> dict:
    """The ground truth validated during training: the COCO dict of ``ann_file`` restricted
    to its first ``max_images`` images by id (all with ``max_images == 0``) and their
    annotations.

    Raises FileNotFoundError when the file is missing, ValueError (naming the file) for
    malformed JSON, a missing ``images`` / ``annotations`` field, no image at all, or a
    negative ``max_images`` (params ``train.val_max_images``).
    """
    ann_file = Path(ann_file)
    if int(max_images) < 0:
        raise ValueError(f"params train.val_max_images: must be >= 0 (0: all images), got {max_images}")
    if not ann_file.is_file():
        raise FileNotFoundError(f"{ann_file}: validation annotation file not found")
    data = read_coco_json(ann_file)
    images = sorted(data["images"], key=lambda im: im["id"])
    if max_images:
        images = images[:int(max_images)]
    if not images:
        raise ValueError(f"{ann_file}: no images to validate on")
    ids = {im["id"] for im in images}
    subset = {k: v for k, v in data.items() if k not in ("images", "annotations")}
    subset["images"] = images
    subset["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
    return subset


class Validator:
    """Scores a model on a fixed validation subset (module docstring).

    Args:
        ann_file: validation COCO keypoints JSON (``data/validated/val.json``).
        images_dir: folder of its ``file_name`` images.
        max_images: params ``train.val_max_images`` (0: all).
        eval_params: the params ``evaluate`` section (`pose.params.EvaluateSection`: every setting
            `predict_image` reads, plus ``oks_threshold``).

    Images are read from disk at each run (COCO's 5000 validation images would not fit in
    memory; decoding a JPEG costs far less than the network). Raises as
    :func:`validation_subset`, and FileNotFoundError naming the first missing image.
    """

    def __init__(self, ann_file: Path | str, images_dir: Path | str, *, max_images: int, eval_params: EvaluateSection):
        self.gt = validation_subset(ann_file, max_images)
        self.images_dir = Path(images_dir)
        self.eval_params = eval_params
        self.images = [(im["id"], self.images_dir / im["file_name"]) for im in self.gt["images"]]
        self.exif = dataset_exif(self.gt, ann_file)  # the frame the annotations were made in (pose.io)
        missing = [str(path) for _, path in self.images if not path.is_file()]
        if missing:
            raise FileNotFoundError(f"{missing[0]}: validation image not found ({len(missing)} missing in "
                                    f"{self.images_dir})")

    def __len__(self) -> int:
        return len(self.images)

    @torch.no_grad()
    def run(self, model: torch.nn.Module, device: torch.device | str | None = None,
            should_stop: Callable[[], bool] | None = None) -> dict | None:
        """Decode every image with ``model`` (run in eval mode; its mode is restored) and score.

        Returns ``{"AP", "AP50", "AP75", "AR", "images", "seconds"}``: COCO keypoint AP / AR
        (OKS 0.50:0.95, pycocotools, maxDets 20) as floats, the number of images and the
        wall-clock time of reading, decoding and scoring in s. Uses no random numbers (a
        resumed training run stays bit-identical). ``should_stop`` is asked before each image;
        when it says true the run ends early and returns None (a stopping training run,
        `pose.train.stop`). Raises ValueError for an unreadable image.
        """
        from pose.datasets.schema import COCO_SIGMAS
        from pose.decode.inference import predict_image, to_coco_results
        from pose.evaluate.coco import evaluate_results

        t0 = time.perf_counter()
        results: list[dict] = []
        for image_id, path in self.images:
            if should_stop is not None and should_stop():
                return None
            image = read_image(path, image_id, exif=self.exif)
            persons = predict_image(model, image, eval_params=self.eval_params, device=device)
            results.extend(to_coco_results(persons, image_id))
        # a copy: COCOeval writes ``ignore`` flags into the ground-truth annotations
        metrics = evaluate_results(copy.deepcopy(self.gt), results, sigmas=COCO_SIGMAS,
                                   oks_threshold=float(self.eval_params.oks_threshold), per_keypoint=False)
        return {"AP": float(metrics["AP"]), "AP50": float(metrics["AP50"]), "AP75": float(metrics["AP75"]),
                "AR": float(metrics["AR"]), "images": len(self.images), "seconds": time.perf_counter() - t0}
