"""Evidence of a model version: what it was scored on and how (metrics, COCO results and ground
truth logged under ``eval/`` of its run), shared by the promotion gate and ``pose compare``.

Relative rules compare two models on the SAME evaluation data (same ``eval_data_hash``);
otherwise the champion is re-evaluated on the challenger's data first, and the re-evaluation
is cached on the champion's run under ``reeval/<hash16>/`` (:func:`champion_on_data`,
:func:`cached_reevaluation`).

Params sections read (handed in by the caller, `pose.params`): ``catalogue`` (:func:`oks_sigmas`).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pose.registry.errors import RegistryError

if TYPE_CHECKING:
    from pose.params import CatalogueEntry


@dataclass
class Evidence:
    """What a model version was scored on and how: metrics, results and ground truth files."""

    version: str
    run_id: str
    data_hash: str | None
    metrics: dict
    results: Path | None = None
    annotations: Path | None = None


def oks_sigmas(catalogue: Mapping[str, CatalogueEntry], dataset: str) -> np.ndarray:
    """(17,) float64 COCO-17 OKS sigmas the evaluate stage scores ``dataset`` (params ``data.dataset``
    by default) with: its catalogue entry's ``sigmas`` (`pose.datasets.catalogue.entry_sigmas`),
    so bootstrap CIs match the logged metrics. ``catalogue``: the params ``catalogue`` section (name ->
    `pose.params.CatalogueEntry`). Raises RegistryError for a name that is not a ``catalogue`` key."""
    from pose.datasets.catalogue import entry_sigmas

    if dataset not in catalogue:
        raise RegistryError(f"dataset {dataset!r} is not a catalogue key ({' | '.join(catalogue)})")
    return entry_sigmas(catalogue[dataset].as_dict())


def download_artifacts(run_id: str, artifact_path: str, dst: Path) -> Path | None:
    """Download ``artifact_path`` of run ``run_id`` into ``dst``; the local path, or None when the
    run has no such artifact (or it cannot be read)."""
    dst.mkdir(parents=True, exist_ok=True)
    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=str(dst)))
    except (MlflowException, OSError):
        return None


def eval_files(run_id: str, dst: Path) -> tuple[dict | None, Path | None, Path | None]:
    """The ``eval/`` artifacts of a run, downloaded into ``dst``: (metrics dict or None, results.json
    path or None, annotations.json path or None)."""
    local = download_artifacts(run_id, "eval", Path(dst))
    if local is None:
        return None, None, None
    metrics = json.loads((local / "metrics.json").read_text()) if (local / "metrics.json").is_file() else None
    results = local / "results.json" if (local / "results.json").is_file() else None
    annotations = local / "annotations.json" if (local / "annotations.json").is_file() else None
    return metrics, results, annotations


def load_evidence(client: MlflowClient, mv, workdir: Path) -> Evidence:
    """Metrics / results / annotations logged with ``mv``'s run (``eval/``), downloaded into ``workdir``."""
    metrics, results, annotations = eval_files(mv.run_id, Path(workdir) / f"v{mv.version}")
    if metrics is None:  # runs of the first registry version: metrics only in the run / version tags
        metrics = dict(client.get_run(mv.run_id).data.metrics)
        if "AP" not in metrics and "AP" in mv.tags:
            metrics["AP"] = float(mv.tags["AP"])
    return Evidence(str(mv.version), mv.run_id, mv.tags.get("eval_data_hash"), metrics, results, annotations)


def call_reevaluate(fn: Callable, checkpoint: Path, annotations: Path | None):
    """Call ``reevaluate(checkpoint[, annotations])``; returns (metrics, results or None)."""
    params = inspect.signature(fn).parameters.values()
    n = len([p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)])
    varargs = any(p.kind == p.VAR_POSITIONAL for p in params)
    out = fn(checkpoint, annotations) if (n >= 2 or varargs) and annotations is not None else fn(checkpoint)
    if isinstance(out, tuple):
        return out[0], out[1]
    return out, None


def cached_reevaluation(run_id: str, data_hash: str | None, workdir: Path) -> tuple[dict, Path | None] | None:
    """The re-evaluation of ``run_id``'s model on the evaluation data with sha256 ``data_hash``,
    cached by the gate under ``reeval/<hash16>/`` of that run: (metrics, results.json path or
    None), or None when there is none."""
    if not data_hash:
        return None
    cached = download_artifacts(run_id, f"reeval/{data_hash[:16]}", Path(workdir))
    if cached is None or not (cached / "metrics.json").is_file():
        return None
    res = cached / "results.json"
    return json.loads((cached / "metrics.json").read_text()), (res if res.is_file() else None)


def champion_on_data(client: MlflowClient, name: str, champ, challenger: Evidence, workdir: Path,
                     reevaluate: Callable | None) -> tuple[Evidence | None, str]:
    """The champion's evidence on the challenger's evaluation data: its own (same hash), a cached
    re-evaluation (``reeval/<hash16>/`` in its run), or a fresh ``reevaluate`` (then cached).

    Returns (evidence or None, how it was obtained)."""
    ev = load_evidence(client, champ, workdir)
    h = challenger.data_hash
    if h is not None and ev.data_hash == h:
        return ev, "same evaluation data"
    h16 = (h or "unknown")[:16]
    cached = cached_reevaluation(champ.run_id, h, Path(workdir) / f"v{champ.version}-reeval")
    if cached is not None:
        return Evidence(ev.version, ev.run_id, h, cached[0], cached[1], challenger.annotations), \
            f"cached re-evaluation on {h16}"
    if reevaluate is None or challenger.annotations is None:
        why = "no re-evaluation callback" if reevaluate is None else "the challenger's annotations are not logged"
        return None, (f"champion v{champ.version} was evaluated on other data ({(ev.data_hash or '?')[:16]}) "
                      f"and cannot be re-evaluated here ({why})")
    from pose.serving.model import checkpoint_from_uri

    ckpt = checkpoint_from_uri(f"models:/{name}/{champ.version}")
    metrics, results = call_reevaluate(reevaluate, ckpt, challenger.annotations)
    out = Path(workdir) / f"v{champ.version}-reeval-new"
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True, default=float))
    res_path = None
    if results is not None:
        res_path = out / "results.json"
        res_path.write_text(json.dumps(results))
    client.log_artifacts(champ.run_id, str(out), artifact_path=f"reeval/{h16}")
    client.set_model_version_tag(name, champ.version, f"reeval.{h16}.AP", f"{float(metrics['AP']):.6f}")
    return Evidence(ev.version, ev.run_id, h, metrics, res_path, challenger.annotations), f"re-evaluated on {h16}"


__all__ = ["Evidence", "oks_sigmas", "download_artifacts", "eval_files", "load_evidence", "call_reevaluate",
           "cached_reevaluation", "champion_on_data"]
