"""COCO keypoint training data and the multi-scale curriculum batch sampler.

A batch is a list of ``(dataset index, input size)`` pairs that all share one
input size (HigherHRNet trains each batch at one resolution). Every random choice
is a pure function of ``(seed, epoch, index)``, so a run resumed mid-epoch sees
exactly the batches and augmentations it would have seen without the interruption,
whatever the number of loader workers.

Params sections read (handed in by `pose.train.loop`): ``model``, ``targets``, ``augment`` and
``train.curriculum``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

from pose.augment.transforms import TrainTransform, normalize_image
from pose.codec import INPUT_MULTIPLE, Codec, codec_from_params
from pose.io import dataset_exif, read_image
from pose.targets.masks import ignore_mask

if TYPE_CHECKING:
    from pose.params import AugmentSection, CurriculumStage, ModelSection, TargetsSection


def loader_worker_init(worker_id: int) -> None:
    """``DataLoader(worker_init_fn=...)``: one OpenCV thread per loader worker process.

    PyTorch already gives each worker one torch thread; OpenCV would otherwise start a pool
    of one thread per core in every worker (decode, warp, colour jitter), so ``train.workers``
    workers plus the training threads would oversubscribe the cores (`pose.train.loop`
    module docstring). Results do not depend on it (same pixels with 1 or N threads). Workers
    ignore SIGTERM / SIGINT (the training process handles them, `pose.train.stop`).
    """
    import signal

    import cv2

    cv2.setNumThreads(1)
    # SIGTERM / SIGINT reach the whole process group: the training process stops at a step boundary
    # and writes its checkpoint (pose.train.stop); a worker killed by the signal would abort that
    # with "DataLoader worker ... killed". Workers end with the training process's loader.
    if torch.utils.data.get_worker_info() is not None:  # in a loader worker process only
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def read_coco_json(ann_file: Path) -> dict:
    """The parsed COCO keypoints file, with its ``images`` and ``annotations`` fields.

    Raises ValueError naming the file (and line/column) for malformed JSON or a
    missing top-level field.
    """
    ann_file = Path(ann_file)
    try:
        data = json.loads(ann_file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{ann_file}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    for field in ("images", "annotations"):
        if field not in data:
            raise ValueError(f"{ann_file}: missing top-level field '{field}'")
    return data


def load_coco(ann_file: Path | dict) -> tuple[list[dict], dict[int, list[dict]]]:
    """Read a COCO keypoints file (or its parsed dict): (images, annotations grouped by image id).
    Raises as :func:`read_coco_json`."""
    data = ann_file if isinstance(ann_file, dict) else read_coco_json(ann_file)
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    return data["images"], by_image


def person_keypoints(anns: list[dict], num_joints: int) -> np.ndarray:
    """(P, K, 3) float64 keypoints (image px) of the non-crowd people with labels."""
    kps = [np.asarray(a["keypoints"], dtype=np.float64).reshape(num_joints, 3)
           for a in anns if not a.get("iscrowd", 0) and a.get("num_keypoints", 0) > 0]
    return np.stack(kps) if kps else np.zeros((0, num_joints, 3))


class CocoKeypoints(Dataset):
    """Images with at least one labelled person, producing HigherHRNet targets (`pose.codec`).

    ``dataset[(index, input_size)]`` returns a dict of tensors named as `pose.codec`:

    * ``image``: (3, S, S) float32, ImageNet-normalised RGB;
    * ``heatmap_4`` / ``heatmap_2``: (K, S/4, S/4) / (K, S/2, S/2) float32 Gaussians;
    * ``mask_4`` / ``mask_2``: (S/4, S/4) / (S/2, S/2) float32, 0 on ignored pixels;
    * ``joints``: (max_people, K, 2) int64 tag-loss indices at the 1/4 resolution.

    Args:
        ann_file, images_dir: COCO keypoints JSON and its image folder.
        codec: the model I/O contract (strides, K, convention, target settings).
        augment: the params ``augment`` section (`pose.params.AugmentSection`), or None for the
            deterministic crop without jitter.
        seed: params ``train.seed`` (every random draw is a function of (seed, epoch, index)).
        crop: params ``augment.crop`` (``letterbox`` | ``short_side``).

    Raises ValueError when no image has a labelled non-crowd person, or as
    :class:`pose.augment.transforms.TrainTransform`.
    """

    def __init__(self, ann_file: Path, images_dir: Path, *, codec: Codec, augment: AugmentSection | None, seed: int,
                 crop: str):
        if codec.sigma is None:
            raise ValueError("CocoKeypoints needs a codec built with the params 'targets' section")
        data = read_coco_json(ann_file)
        images, by_image = load_coco(data)
        self.exif = dataset_exif(data, ann_file)  # the frame the annotations were made in (pose.io)
        self.images_dir = Path(images_dir)
        self.codec, self.num_joints, self.seed = codec, codec.num_joints, int(seed)
        def labelled(anns: list[dict]) -> bool:
            return any(a.get("num_keypoints", 0) > 0 and not a.get("iscrowd", 0) for a in anns)

        self.records = [(img, by_image.get(img["id"], [])) for img in images if labelled(by_image.get(img["id"], []))]
        if not self.records:
            raise ValueError(f"{ann_file}: no image has a labelled non-crowd person; nothing to train on")
        self.augment = augment
        # params augment.crop (letterbox | short_side); augment None: the deterministic crop, no jitter
        self.transform = TrainTransform(crop, augment, convention=codec.convention)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, input_size = key
        img, anns = self.records[index]
        path = self.images_dir / img["file_name"]
        image = read_image(path, img["id"], exif=self.exif)
        h, w = image.shape[:2]
        kp = person_keypoints(anns, self.num_joints)
        ignore = ignore_mask(anns, h, w)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        flip = self.augment is not None and rng.random() < float(self.augment.flip_prob)
        canvas, kps, masks, _ = self.transform(image, kp, ignore, input_size=input_size, strides=self.codec.strides,
                                               flip=flip, seed=int(rng.integers(2 ** 31)))
        out = {"image": torch.from_numpy(normalize_image(canvas))}
        out.update({name: torch.from_numpy(t) for name, t in self.codec.encode(kps, masks, input_size).items()})
        return out


def dataset_from_params(model_params: ModelSection, targets_params: TargetsSection, augment_params: AugmentSection,
                        *, seed: int, ann_file: Path, images_dir: Path) -> CocoKeypoints:
    """The training set as params.yaml describes it: the codec of the ``model`` and ``targets``
    sections (`pose.params.ModelSection`, `pose.params.TargetsSection`; `pose.codec.codec_from_params`),
    the ``augment`` section (`pose.params.AugmentSection`, with ``augment.crop``) and ``train.seed``.
    Raises KeyError / ValueError as `codec_from_params` and :class:`CocoKeypoints`."""
    return CocoKeypoints(ann_file, images_dir, codec=codec_from_params(model_params, targets_params),
                         augment=augment_params, seed=int(seed), crop=str(augment_params.crop))


def curriculum_schedule(curriculum: list[CurriculumStage], *, multi_scale: bool,
                        use_curriculum: bool) -> list[list[int]]:
    """Active input sizes of every epoch, from params ``train.curriculum``.

    ``curriculum`` is a list of ``{sizes: [...], epochs: n}`` stages (`pose.params.CurriculumStage`). With
    ``use_curriculum`` false every epoch uses the union of all sizes (same number
    of epochs); with ``multi_scale`` false every epoch uses only the largest size.
    Returns one sorted size list per epoch. Raises ValueError on an empty plan or a
    size that is not a multiple of `pose.codec.INPUT_MULTIPLE` (32).
    """
    if not curriculum:
        raise ValueError("train.curriculum is empty")
    all_sizes = sorted({int(s) for st in curriculum for s in st.sizes})
    bad = [s for s in all_sizes if s % INPUT_MULTIPLE]
    if bad:
        raise ValueError(f"train.curriculum sizes must be multiples of {INPUT_MULTIPLE}, got {bad}")
    plan = []
    for stage in curriculum:
        sizes = sorted(int(s) for s in stage.sizes)
        for _ in range(int(stage.epochs)):
            if not multi_scale:
                plan.append([all_sizes[-1]])
            elif not use_curriculum:
                plan.append(all_sizes)
            else:
                plan.append(sizes)
    return plan


class CurriculumBatchSampler:
    """Yields batches ``[(index, size), ...]`` of one input size each.

    The order of an epoch is a permutation seeded by ``(seed, epoch)``; the size of
    global step i is drawn from the epoch's active sizes with the same seed. Under
    DDP every rank computes the same global plan and takes every ``world_size``-th
    batch, so ranks at the same step train the same size. ``start_batch`` skips the
    first batches of the epoch (exact mid-epoch resume). ``max_batches`` (params
    ``train.max_steps_per_epoch``, 0: the whole epoch) caps the batches of an epoch.
    """

    def __init__(self, num_samples: int, batch_size: int, schedule: list[list[int]], *, seed: int,
                 max_batches: int, rank: int = 0, world_size: int = 1):
        self.num_samples, self.batch_size, self.schedule = num_samples, batch_size, schedule
        self.seed, self.rank, self.world_size, self.max_batches = seed, rank, world_size, max_batches
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def _plan(self) -> list[list[tuple[int, int]]]:
        rng = np.random.default_rng([self.seed, self.epoch, 7])
        order = rng.permutation(self.num_samples)
        per_step = self.batch_size * self.world_size
        steps = self.num_samples // per_step
        if steps == 0:  # tiny datasets: repeat the permutation to fill one step
            order = np.resize(order, per_step)
            steps = 1
        if self.max_batches:
            steps = min(steps, self.max_batches)
        sizes = self.schedule[min(self.epoch, len(self.schedule) - 1)]
        step_sizes = rng.choice(sizes, size=steps)
        batches = []
        for s in range(steps):
            chunk = order[s * per_step:(s + 1) * per_step]
            mine = chunk[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
            batches.append([(int(i), int(step_sizes[s])) for i in mine])
        return batches

    def __len__(self) -> int:
        return len(self._plan())

    def __iter__(self):
        yield from self._plan()[self.start_batch:]
