"""``pose predict``: load a model (checkpoint or MLflow registry URI), detect the persons of
images, write skeleton overlays and a COCO results JSON.

Outputs in ``out_dir``:

* ``<stem>_pose.png`` per image: every person with score > ``min_score`` drawn in its own
  colour (joints with score <= ``min_score`` hidden), :func:`pose.evaluate.plots.draw_persons`;
  ``<name>_pose.png`` (suffix kept) when two inputs share a stem;
* ``results.json``: COCO keypoint results, one entry per detected person (all of them,
  not only the drawn ones; AP needs the low-score ones too) ``{"image_id", "category_id":
  1, "keypoints": [x, y, score] * K (image px), "score", "file_name"}``. ``image_id`` is
  the number in the file name when every input's stem is a distinct integer (COCO's
  ``000000123456.jpg`` -> 123456, so the file scores against COCO ground truth directly),
  else the 1-based position in the sorted input list.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from pose.decode.inference import predict_image, to_coco_results
from pose.io import read_image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
REMOTE_PREFIXES = ("models:/", "runs:/", "mlflow-artifacts:/")


def list_images(source: Path | str) -> list[Path]:
    """An image file, or the images (by suffix, sorted by name) directly in a folder.

    Raises FileNotFoundError when ``source`` does not exist or a folder holds no image."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such image or folder")
    if source.is_file():
        return [source]
    files = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{source}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def image_ids(files: Sequence[Path]) -> list[int]:
    """COCO image ids of the inputs (module docstring)."""
    stems = [f.stem for f in files]
    if all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems):
        return [int(s) for s in stems]
    return list(range(1, len(files) + 1))


def _registry_loader():
    """``load_registered_model`` of the registry package when it provides one, else None."""
    try:
        from pose.registry import load_registered_model
        return load_registered_model
    except ImportError:
        pass
    try:
        from pose.registry.serving import load_registered_model
        return load_registered_model
    except ImportError:
        return None


def _download_checkpoint(model_uri: str) -> Path:
    """The weights file of a logged / registered model: download its artifacts and pick a
    ``*.pt`` (``weights.pt`` or ``best.pt`` first, else the first by path)."""
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(model_uri))
    if local.is_file():
        return local
    found = sorted(local.rglob("*.pt"))
    for name in ("weights.pt", "best.pt"):
        for f in found:
            if f.name == name:
                return f
    if not found:
        raise FileNotFoundError(f"{model_uri}: no weights (*.pt) in the model's artifacts")
    return found[0]


def load_model(ref: str, *, tracking_uri: str | None, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The model behind ``ref`` in eval mode on ``device``.

    ``ref`` is a training checkpoint path (``{"model": state_dict, "model_params": json}``,
    :func:`pose.train.checkpoint.load_trained_model`) or an MLflow URI (``models:/<name>@<alias>``,
    ``models:/<name>/<version>``, ``runs:/<run>/<path>``). A URI is loaded with the
    registry's ``load_registered_model`` when the registry package has one; when it is
    missing or fails, the URI's artifacts are downloaded and the ``*.pt`` in them loaded.

    Raises FileNotFoundError for a missing checkpoint, RuntimeError when neither way loads
    a URI.
    """
    from pose.train.checkpoint import load_trained_model

    device = torch.device(device)
    if not ref.startswith(REMOTE_PREFIXES):
        return load_trained_model(Path(ref), device)
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    errors = []
    loader = _registry_loader()
    if loader is not None:
        try:
            accepted = inspect.signature(loader).parameters
            kwargs = {k: v for k, v in (("tracking_uri", tracking_uri), ("device", str(device)))
                      if k in accepted and v is not None}
            model = loader(ref, **kwargs)
            if isinstance(model, torch.nn.Module):
                return model.to(device).eval()
            errors.append(f"load_registered_model returned {type(model).__name__}, not a torch module")
        except Exception as exc:  # noqa: BLE001 - fall back to the artifact download below
            errors.append(f"load_registered_model: {exc}")
        log.warning("%s; falling back to downloading the artifacts", errors[-1])
    try:
        return load_trained_model(_download_checkpoint(ref), device)
    except Exception as exc:  # noqa: BLE001
        errors.append(f"artifact download: {exc}")
    raise RuntimeError(f"cannot load {ref}: " + "; ".join(errors))


def _atomic_text(text: str, path: Path) -> None:
    from pose.io import atomic_write_text

    atomic_write_text(path, text)


def predict_files(model: torch.nn.Module, files: Sequence[Path], out_dir: Path | str, *, eval_params: dict,
                  min_score: float, device: torch.device | str | None = None) -> dict:
    """Predict each image, write its overlay and ``results.json`` (module docstring).

    Returns ``{"images", "persons", "drawn", "results", "overlays": [paths]}``.
    Raises ValueError for an unreadable image or missing settings.
    """
    from pose.evaluate.plots import overlay

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stems = [f.stem for f in files]
    ids = image_ids(files)
    records, overlays, drawn = [], [], 0
    for f, image_id in zip(files, ids):
        image = read_image(f)
        persons = predict_image(model, image, eval_params=eval_params, device=device)
        shown = [p for p in persons if p["score"] > min_score]
        drawn += len(shown)
        name = f.stem if stems.count(f.stem) == 1 else f.name
        overlays.append(overlay(image, shown, out_dir / f"{name}_pose.png", min_score=min_score))
        records += [{**r, "file_name": f.name} for r in to_coco_results(persons, image_id)]
    results = out_dir / "results.json"
    _atomic_text(json.dumps(records), results)
    return {"images": len(files), "persons": len(records), "drawn": drawn, "results": results,
            "overlays": overlays}
