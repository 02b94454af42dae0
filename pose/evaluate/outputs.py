"""What ``pose evaluate`` writes from its scores (`pose.evaluate.scoring`): eval.json, the plots
(AP per keypoint / per person scale, overlays of what ``pose predict`` would draw) and
efficiency.json (size, GFLOPs, latency, memory of the loaded model).

A service on top of the core evaluation (it applies the ``predict`` filters of `pose.predict`). Params
sections read (handed in by ``pose.cli``): ``evaluate`` and ``predict``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pose.evaluate.scoring import Scored

if TYPE_CHECKING:
    from pose.params import EvaluateSection, PredictSection


def write_evaluation(ev: EvaluateSection, pr: PredictSection, scored: Scored, *, out: Path, annotations: Path,
                     images: Path | None, plots_dir: Path | None = None, efficiency: Path | None = None) -> dict | None:
    """Write eval.json (``out``), with ``plots_dir`` the evaluation plots and overlays, with
    ``efficiency`` efficiency.json (needs the model the scores came from). ``ev``: the params ``evaluate``
    section (`pose.params.EvaluateSection`); ``pr``: the params ``predict`` section
    (`pose.params.PredictSection`, the overlays' filters). Returns the efficiency measurement, or None."""
    from pose.evaluate.coco import write_metrics

    write_metrics(scored.metrics, out)
    if plots_dir is not None:
        from pose.evaluate.plots import write_eval_plots
        from pose.predict import confident_persons, limit_persons

        # the overlays draw what `pose predict` draws: at most evaluate.max_people persons per
        # image, only those passing the params `predict` thresholds (results.json keeps them all)
        by_image: dict = {}
        for r in scored.results:
            by_image.setdefault(r["image_id"], []).append(r)
        shown = [r for rs in by_image.values()
                 for r in confident_persons(limit_persons(rs, int(ev.max_people)),
                                            min_person_score=float(pr.min_person_score),
                                            min_joints=int(pr.min_joints),
                                            joint_threshold=float(pr.joint_threshold))]
        write_eval_plots(scored.metrics, plots_dir, gt_json=annotations, results=shown, images_dir=images,
                         overlay_count=int(ev.overlay_count), overlay_min_score=float(pr.joint_threshold))
    if efficiency is None:
        return None
    from pose.evaluate.efficiency import load_sample_images, measure_efficiency

    eff = measure_efficiency(scored.model, load_sample_images(annotations, images, int(ev.latency_samples)),
                             eval_params=ev, samples=int(ev.latency_samples),
                             warmup=int(ev.latency_warmup), device=scored.device)
    write_metrics(eff, efficiency)
    return eff


__all__ = ["write_evaluation"]
