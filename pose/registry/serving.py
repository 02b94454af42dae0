"""The registered model as an MLflow pyfunc model, and loading it back as a torch module.

Layout of a version's ``model/`` artifact (an MLflow Model directory, so
``mlflow models serve -m models:/<name>@champion --env-manager local`` serves it)::

    model/MLmodel, python_env.yaml, requirements.txt, input_example.json, serving_input_example.json
    model/pyfunc_entry.py          # "models from code" entry: builds PoseNetModel (nothing pickled)
    model/artifacts/weights.pt     # {"model": state_dict, "model_params": json}: loads with weights_only=True

The raw training checkpoint (optimizer state included) is logged beside it as
``checkpoint/best.pt``.

Serving contract (signature logged with the model):

* input: float32 tensor ``(B, 3, H, W)``, H and W multiples of 32, the normalised image
  batch ``pose.decode.inference.to_input_tensor`` builds (RGB, ImageNet mean / std);
* output: float32 ``(B, K * (1 + tag_dim), H/2, W/2)``: channels ``[0, K)`` are the
  heatmaps (HigherHRNet's 1/2-resolution heatmaps averaged with the 1/4-resolution ones
  upsampled, as inference does), channels ``[K, K + K*tag_dim)`` the associative-embedding
  tags (upsampled from 1/4). Group them with ``pose.decode.group``.

The serving environment needs the ``pose`` package installed (``pip install -e .`` of this
repository; the model's ``requirements.txt`` pins mlflow, torch and numpy).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

WEIGHTS_NAME = "weights.pt"


def serving_maps(outputs, num_joints: int) -> "torch.Tensor":  # noqa: F821
    """One tensor from HigherHRNet's ``[out_quarter, out_half, ...]`` (see the module docstring)."""
    import torch
    import torch.nn.functional as F

    quarter = outputs[0]
    h, w = quarter.shape[-2] * 2, quarter.shape[-1] * 2
    up = F.interpolate(quarter, size=(h, w), mode="bilinear", align_corners=False)
    heat = up[:, :num_joints]
    if len(outputs) > 1:
        half = outputs[1]
        if half.shape[-2:] != (h, w):
            half = F.interpolate(half, size=(h, w), mode="bilinear", align_corners=False)
        heat = (heat + half[:, :num_joints]) / 2
    return torch.cat([heat, up[:, num_joints:]], dim=1)


try:
    import mlflow.pyfunc

    class PoseNetModel(mlflow.pyfunc.PythonModel):
        """pyfunc wrapper: normalised image tensor in, heatmaps + tags out (module docstring)."""

        def load_context(self, context) -> None:
            from pose.train.checkpoint import load_trained_model

            self.model = load_trained_model(Path(context.artifacts["weights"]), "cpu")

        def predict(self, context, model_input, params=None):
            import torch

            x = np.asarray(model_input, dtype=np.float32)
            if x.ndim == 3:
                x = x[None]
            with torch.no_grad():
                outs = self.model(torch.from_numpy(np.ascontiguousarray(x)))
            return serving_maps(outs, self.model.num_joints).numpy()
except ImportError:  # pragma: no cover - mlflow is a dependency
    PoseNetModel = None  # type: ignore[assignment]


def slim_weights(checkpoint: Path, out: Path) -> Path:
    """Write ``{"model": state_dict, "model_params": json}`` of a training checkpoint to ``out``."""
    from pose.train.checkpoint import load_checkpoint, save_checkpoint

    ck = load_checkpoint(checkpoint)
    save_checkpoint({"model": ck["model"], "model_params": ck["model_params"]}, out)
    return out


def save_pyfunc_model(checkpoint: Path, path: Path, *, example_size: int = 64) -> Path:
    """Save the checkpoint as an MLflow pyfunc model directory at ``path`` (signature + input example).

    The input example is a ``(1, 3, example_size, example_size)`` float32 tensor (multiple of 32)."""
    import mlflow
    import torch
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    from pose.train.checkpoint import load_trained_model

    import tempfile

    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=".weights-", dir=path.parent))
    weights = slim_weights(checkpoint, tmp / WEIGHTS_NAME)
    try:
        model = load_trained_model(weights, "cpu")
        example = np.random.default_rng(0).standard_normal((1, 3, example_size, example_size)).astype(np.float32)
        with torch.no_grad():
            out = serving_maps(model(torch.from_numpy(example)), model.num_joints).numpy()
        signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, -1, -1))]),
                                   outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, out.shape[1], -1, -1))]))
        # explicit requirements: MLflow would otherwise load the model in a subprocess to infer them
        reqs = [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"]
        mlflow.pyfunc.save_model(str(path), python_model=str(Path(__file__).with_name("pyfunc_entry.py")), artifacts={"weights": str(weights)},
                                 signature=signature, input_example=example, pip_requirements=reqs,
                                 metadata={"task": "bottom-up multi-person pose (COCO-17)",
                                           "output": "heatmaps (K) + tags (K*tag_dim) at H/2 x W/2",
                                           "model_params": _model_params(weights)})
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _model_params(weights: Path) -> dict:
    from pose.train.checkpoint import load_checkpoint

    return json.loads(load_checkpoint(weights)["model_params"])


def checkpoint_from_uri(model_uri: str, *, tracking_uri: str | None = None) -> Path:
    """Download a registered / logged model (``models:/<name>@<alias>``, ``models:/<name>/<version>``,
    ``runs:/<run id>/model``, or a local model folder) and return its weights file."""
    import os

    import mlflow

    if tracking_uri and not os.environ.get("MLFLOW_TRACKING_URI"):   # team mode: the env's server wins
        mlflow.set_tracking_uri(tracking_uri)
    local = Path(model_uri)
    if not local.exists():
        local = Path(mlflow.artifacts.download_artifacts(model_uri))
    if local.is_file():
        return local
    for cand in (local / "artifacts" / WEIGHTS_NAME, local / WEIGHTS_NAME):
        if cand.is_file():
            return cand
    found = sorted(local.rglob("*.pt"))
    if not found:
        raise FileNotFoundError(f"{model_uri}: no weights (*.pt) in the model artifact")
    return found[0]


def load_registered_model(model_uri: str, *, tracking_uri: str | None = None, device: str = "cpu"):
    """The HigherHRNet torch module (eval mode) of ``model_uri`` (see :func:`checkpoint_from_uri`).

    Loads the weights with ``torch.load(weights_only=True)``: no pickled code runs. This is
    what ``pose predict --model models:/<name>@champion`` uses."""
    from pose.train.checkpoint import load_trained_model

    return load_trained_model(checkpoint_from_uri(model_uri, tracking_uri=tracking_uri), device)
