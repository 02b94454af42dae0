"""Scoring a checkpoint or a results file on a dataset (``pose evaluate``, and the champion's
re-evaluation of ``pose register`` / ``pose promote``): predict every image of the annotations
(`pose.decode.inference.predict_dataset`) and score the results with the sigmas and native metric
of the dataset's catalogue entry (`pose.evaluate.coco.evaluate_keypoints`).

A service on top of the core evaluation (it loads checkpoints and reads the catalogue). Params sections
read (handed in by ``pose.cli``): ``evaluate``, ``data`` (the default dataset) and ``catalogue``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from pose.params import CatalogueEntry, EvaluateSection


class Scored(NamedTuple):
    """What :func:`score_evaluation` found: eval.json's metrics, the COCO results scored, and the
    loaded model and its device (None when a results file was scored)."""

    metrics: dict
    results: list
    model: Any
    device: Any


def dataset_evaluation(catalogue: Mapping[str, CatalogueEntry], dataset: str):
    """(COCO-17 sigmas, native metric or None) of catalogue entry ``dataset`` (params ``data.dataset``
    by default) of the params ``catalogue`` section (name -> `pose.params.CatalogueEntry`), from its
    format (`pose.datasets.catalogue.evaluation`). Raises ValueError for a name that is not a catalogue key."""
    from pose.datasets.catalogue import evaluation

    if dataset not in catalogue:
        raise ValueError(f"--dataset {dataset!r}: not a catalogue key ({' | '.join(catalogue)})")
    return evaluation(catalogue[dataset].as_dict())


def score_checkpoint(ev: EvaluateSection, catalogue: Mapping[str, CatalogueEntry], checkpoint: Path,
                     annotations: Path, images: Path, results_out: Path | None, *, dataset: str, model=None,
                     device=None) -> tuple[dict, list]:
    """Predict every image of ``annotations`` with the checkpoint (or an already loaded
    ``model`` on ``device``) with the params ``evaluate`` section ``ev`` (`pose.params.EvaluateSection`)
    and score the results with the sigmas and native metric of the entry ``dataset`` (params
    ``data.dataset`` by default) of the params ``catalogue`` section: eval.json's metrics and the results
    (also written to ``results_out`` when given)."""
    from pose.decode.inference import predict_dataset
    from pose.evaluate.coco import evaluate_keypoints

    if model is None:
        from pose.device import pick_device
        from pose.train.checkpoint import load_trained_model

        device = pick_device()
        model = load_trained_model(checkpoint, device)
    results = predict_dataset(model, annotations, images, ev, device)
    if results_out:
        results_out.parent.mkdir(parents=True, exist_ok=True)
        tmp = results_out.with_suffix(".tmp")
        tmp.write_text(json.dumps(results))
        tmp.replace(results_out)
    sigmas, native = dataset_evaluation(catalogue, dataset)
    return evaluate_keypoints(annotations, results, sigmas=sigmas, oks_threshold=float(ev.oks_threshold),
                              area_bins=ev.area_bins, native=native), results


def score_evaluation(ev: EvaluateSection, catalogue: Mapping[str, CatalogueEntry], annotations: Path, *,
                     dataset: str, results: Path | None = None, checkpoint: Path | None = None,
                     images: Path | None = None, results_out: Path | None = None) -> Scored:
    """``pose evaluate``'s scores: of the COCO results file ``results`` when given, else of
    ``checkpoint`` decoded on ``images`` (:func:`score_checkpoint`, the model loaded once so that
    the efficiency measurement reuses it). ``ev``, ``catalogue``, ``dataset``: as :func:`score_checkpoint`.
    Raises ValueError (neither given, a bad ``dataset``) or
    FileNotFoundError."""
    from pose.evaluate.coco import evaluate_keypoints

    if results is not None:
        res = json.loads(results.read_text())
        sigmas, native = dataset_evaluation(catalogue, dataset)
        metrics = evaluate_keypoints(annotations, res, sigmas=sigmas, oks_threshold=float(ev.oks_threshold),
                                     area_bins=ev.area_bins, native=native)
        return Scored(metrics, res, None, None)
    if checkpoint is None or images is None:
        raise ValueError("give --results, or --checkpoint with --images")
    from pose.device import pick_device
    from pose.train.checkpoint import load_trained_model

    device = pick_device()
    model = load_trained_model(checkpoint, device)
    metrics, res = score_checkpoint(ev, catalogue, checkpoint, annotations, images, results_out, dataset=dataset,
                                    model=model, device=device)
    return Scored(metrics, res, model, device)


__all__ = ["Scored", "dataset_evaluation", "score_checkpoint", "score_evaluation"]
