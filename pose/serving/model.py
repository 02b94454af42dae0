"""The served model: :class:`PoseService` (weights + stored settings -> answers to requests),
its MLflow pyfunc form :class:`PoseModel`, saving it as a version's ``model/`` directory
(:func:`save_pyfunc_model`) and loading that back as a torch module (:func:`load_registered_model`).
What a request may be and cost: `pose.serving.requests`.

Layout of a version's ``model/`` artifact (an MLflow Model directory, so ``pose serve --model
models:/<name>/latest`` and ``mlflow models serve -m ... --env-manager local`` serve it)::

    model/MLmodel, python_env.yaml, requirements.txt, input_example.json, serving_input_example.json
    model/pyfunc_entry.py          # "models from code" entry: builds PoseModel (nothing pickled)
    model/artifacts/weights.pt     # {"model": state_dict, "model_params": json}: loads with weights_only=True
    model/artifacts/settings.json  # test-time settings: {"evaluate": {...}, "predict": {...}, "serve": {...}}
    model/model.onnx               # with serve.log_onnx: pose.export.export_onnx of the weights (evaluate settings),
                                   # for `pose predict --backend onnxruntime --model models:/...`

Contract (signature and input example logged with the model)
------------------------------------------------------------
Input: one column ``image`` (MLflow type ``binary``), one row per image, each an encoded
JPEG / PNG file (any format OpenCV decodes). Over HTTP the bytes are base64 strings, in any
of MLflow's JSON scoring formats::

    {"dataframe_split": {"columns": ["image"], "data": [["<base64>"], ...]}, "params": {...}}
    {"inputs": {"image": ["<base64>", ...]}, "params": {...}}

In Python (``mlflow.pyfunc.load_model(uri).predict``) a row may also hold a uint8
``(H, W, 3)`` RGB array: ``model.predict(pd.DataFrame({"image": [rgb, jpeg_bytes]}))`` or
``model.predict({"image": [rgb]})``.

Output (``params.output = "persons"``, the default): one list per image (JSON: the
``predictions`` list), each person::

    {"keypoints": [[x, y, score] x K],   # image px (the model's coordinate convention), score in [0, 1]
     "score": float,                      # person score (mean joint score, the official one), in [0, 1]
     "confidence": float,                 # calibrated person confidence, in [0, 1] (pose.decode.persons)
     "bbox": [x, y, w, h]}                # image px, the box around the joints found (score > 0)

These are the persons ``pose predict`` writes to ``results.json`` for the same image, by
the same code (the predictor of :func:`pose.predict.make_predictor`, backend ``torch``:
preprocessing, network, flip / scale aggregation and grouping of ``pose.decode``; then
:func:`pose.predict.limit_persons`: scores clamped to [0, 1], at most
``evaluate.max_people``, joints outside the image dropped, duplicates removed), keeping
those with calibrated ``confidence >= predict.min_person_score``. The
keypoint names (``keypoint_names``) and the skeleton (``skeleton``, 0-based joint index
pairs) are in the model's metadata (``mlflow.models.get_model_info(uri).metadata``).

``params.output = "maps"``: per image the maps the persons are decoded from
(:func:`pose.decode.inference.multi_scale_maps`): ``{"heatmaps": (K, Hg, Wg) float32,
"tags": (K, Hg, Wg, T*n) float32, "affine": (2, 3) image px -> base input px, "stride":
input px per map px}``.

Test-time settings: the ``evaluate`` section the model was evaluated with, and
``predict.min_person_score``, are stored in ``settings.json`` by :func:`save_pyfunc_model`
(``pose register``) and are the defaults of the signature's params schema; a request may
override any of them (`pose.serving.requests.REQUEST_PARAMS`), e.g. ``"params": {"input_size": 256,
"flip_test": false, "min_person_score": 0.0}``; overrides are checked against the params
schema (`pose.params`).

Bad requests and requests over a limit (`pose.serving.requests`) are answered ``INVALID_PARAMETER_VALUE``
(HTTP 400, MLflow's scoring server: ``{"error_code": ..., "message": ...}`` without a stack trace), a
request past its deadline ``DEADLINE_EXCEEDED`` (504) or ``CANCELLED`` (499) when its client disconnected
(``pose serve``), one that finds no free slot ``TEMPORARILY_UNAVAILABLE`` (503); unexpected failures are
logged with their trace on the server and answered ``INTERNAL_ERROR`` (500) with a one-line message
(:class:`PoseModel`). MLflow's scoring server puts the parsed input in front of these messages;
``pose serve`` (`pose.serve`) sends the message alone.

The serving environment needs the ``pose`` package installed (``pip install -e .`` of this
repository; the model's ``requirements.txt`` pins mlflow, torch and numpy).

Params sections read (handed in by `pose.registry.mlflow_registry`, `pose.params`) when a model is
saved: ``evaluate``, ``predict``, ``serve`` and ``generated`` (the input example); they are stored as
plain dicts (``settings.json``, `pose.params.Section.as_dict`) and read back as
`pose.decode.persons.InferenceSettings` (`pose.serving.requests.request_settings`).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pose.serving.requests import (
    IMAGE_COLUMN,
    LIMIT_KEYS,
    OUTPUTS,
    REQUEST_PARAMS,
    SERVE_SETTINGS_ENV,
    RequestError,
    ServerBusy,
    check_input_pixels,
    check_settings_limits,
    decode_payload,
    input_images,
    read_image_value,
    request_deadline,
    request_settings,
    serve_settings,
)

if TYPE_CHECKING:
    from pose.decode.persons import InferenceSettings
    from pose.params import EvaluateSection, GeneratedSection, PredictSection, ServeSection

log = logging.getLogger(__name__)

WEIGHTS_NAME = "weights.pt"
SETTINGS_NAME = "settings.json"
#: keys of params.yaml ``serve`` stored with the model
SERVE_KEYS = (*LIMIT_KEYS, "example_size", "log_onnx")
#: the ONNX export in a version's model directory (``serve.log_onnx``)
ONNX_NAME = "model.onnx"


# ----------------------------------------------------------------------------- settings

def model_settings(ev: EvaluateSection, pr: PredictSection, sv: ServeSection) -> dict:
    """The test-time settings stored with a model: ``{"evaluate": {EVAL_KEYS, and the
    OPTIONAL_EVAL_KEYS params sets}, "predict": {"min_person_score"}, "serve": {SERVE_KEYS}}`` of the
    params sections ``evaluate`` (``ev``, `pose.params.EvaluateSection`), ``predict`` (``pr``,
    `pose.params.PredictSection`) and ``serve`` (``sv``, `pose.params.ServeSection`), as params.yaml
    writes them (`pose.params.Section.as_dict`: what settings.json stores). Raises KeyError naming a
    missing key."""
    from pose.decode.persons import EVAL_KEYS, OPTIONAL_EVAL_KEYS

    stored_ev, stored_pr, stored_sv = ev.as_dict(), pr.as_dict(), sv.as_dict()
    return {"evaluate": {k: stored_ev[k] for k in EVAL_KEYS + OPTIONAL_EVAL_KEYS if k in stored_ev},
            "predict": {"min_person_score": stored_pr["min_person_score"]},
            "serve": {k: stored_sv[k] for k in SERVE_KEYS}}



# ----------------------------------------------------------------------------- outputs

def serve_persons(predictor, image_bgr: np.ndarray, *, min_person_score: float) -> list[dict]:
    """The served persons of one image (module docstring): ``pose predict``'s persons
    (the :func:`pose.predict.make_predictor` predictor, then :func:`pose.predict.limit_persons`
    with its ``evaluate.max_people``) with score ``>= min_person_score``, as JSON-able dicts
    ``{"keypoints": [[x, y, score] x K] image px, "score", "bbox": [x, y, w, h] image px}``."""
    from pose.decode.persons import person_json
    from pose.predict import limit_persons, person_confidence_of

    persons = limit_persons(predictor(image_bgr), int(predictor.eval_params.max_people))
    return [person_json(p) for p in persons if person_confidence_of(p) >= min_person_score]


def serve_maps(predictor, image_bgr: np.ndarray) -> dict:
    """The maps the persons of one image are decoded from (``output: maps``):
    :func:`pose.decode.inference.multi_scale_maps` of the predictor's torch model with its
    settings, as NumPy ``{"heatmaps": (K, Hg, Wg) float32, "tags": (K, Hg, Wg, T*n) float32,
    "affine": (2, 3) float64 image px -> base input px, "stride": int input px per map px}``."""
    from pose.decode.inference import multi_scale_maps
    from pose.decode.persons import graph_projects

    ev = predictor.eval_params
    m = multi_scale_maps(predictor.model, image_bgr, input_size=int(ev.input_size), resize=str(ev.resize),
                         test_scales=[float(s) for s in ev.test_scales], flip_test=bool(ev.flip_test),
                         project2image=graph_projects(ev), convention=None)
    return {"heatmaps": m.heatmaps.float().cpu().numpy(), "tags": m.tags.float().cpu().numpy(),
            "affine": np.asarray(m.affine, np.float64), "stride": int(m.stride)}


class PoseService:
    """The served model without MLflow: weights + stored settings -> answers to requests.

    Predictors (:func:`pose.predict.make_predictor`, backend ``torch``, the one inference path
    of ``pose predict``) are built per distinct ``evaluate`` settings and the
    ``serve.predictor_cache`` most recently used are kept; the stored settings' one is built
    at once, so a broken model fails at load, not at the first request.

    Every request has a bounded cost: its settings and images are checked against the limits of
    :func:`serve_settings` before any network runs (:func:`check_settings_limits`,
    ``serve.max_images``, ``serve.max_pixels``, :func:`check_input_pixels`); at most
    ``serve.concurrent_requests`` requests compute at once (the others wait for a slot until
    their deadline, then :class:`ServerBusy`); and the work stops at the first checkpoint after
    the request's deadline (:func:`request_deadline`; between images, test scales, network and
    decoding: `pose.decode.deadline`).

    Args:
        weights: the slim checkpoint (``weights.pt``).
        settings: :func:`model_settings` of the params the model was evaluated with (settings.json).
        device: ``cpu`` / ``cuda`` / ``cuda:N``.
        host_serve: the serving host's params.yaml ``serve`` (:func:`serve_settings`), or None.
    """

    def __init__(self, weights: Path, settings: dict, *, device: str, host_serve: dict | None = None) -> None:
        import threading
        from collections import OrderedDict

        self.weights = Path(weights)
        self.settings = settings
        self.serve = serve_settings(settings, host_serve)
        self.device = str(device)
        self._predictors: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(int(self.serve["concurrent_requests"]))
        from pose.decode.persons import resolve_eval_params

        self.predictor(resolve_eval_params(settings["evaluate"]))

    def predictor(self, eval_params: InferenceSettings):
        """The (cached) predictor of these ``evaluate`` settings (:func:`pose.serving.requests.request_settings`)."""
        from pose.predict import make_predictor

        key = json.dumps(eval_params.as_dict(), sort_keys=True, default=str)
        with self._lock:
            if key in self._predictors:
                self._predictors.move_to_end(key)
                return self._predictors[key]
            pred = make_predictor(str(self.weights), backend="torch", eval_params=eval_params, tracking_uri=None,
                                  device=self.device)
            self._predictors[key] = pred
            while len(self._predictors) > int(self.serve["predictor_cache"]):
                self._predictors.popitem(last=False)
            return pred

    def _acquire_slot(self, deadline) -> None:
        """Wait for one of the ``serve.concurrent_requests`` slots until ``deadline`` (None:
        as long as it takes). Raises ServerBusy when none frees in time, DeadlineExceeded
        when the request is cancelled while it waits."""
        if deadline is None:
            self._slots.acquire()
            return
        while not self._slots.acquire(timeout=max(0.0, min(0.25, deadline.remaining()))):
            if deadline.reason is not None:
                deadline.check("waiting for a free slot")
            if deadline.remaining() <= 0:
                raise ServerBusy(f"server busy: no free slot (serve.concurrent_requests = "
                                 f"{self.serve['concurrent_requests']} per worker) within {deadline.limit} s; "
                                 "retry later")

    def predict(self, model_input, params: dict | None) -> list:
        """Answer one request (module docstring): per image a list of persons, or a maps dict.
        Raises RequestError for a bad request or one over a limit (before any network runs),
        ServerBusy when no slot frees before its deadline, DeadlineExceeded when its work
        passes the deadline or is cancelled."""
        from pose.decode.deadline import checkpoint, deadline_scope

        serve = self.serve
        eval_params, min_score, output = request_settings(self.settings, params)
        check_settings_limits(eval_params, serve)
        values = input_images(model_input)
        if len(values) > int(serve["max_images"]):
            raise RequestError(f"{len(values)} images in one request: more than serve.max_images = "
                               f"{serve['max_images']}")
        max_pixels = int(serve["max_pixels"])
        payloads = [read_image_value(v, max_pixels=max_pixels, what=f"image {i}") for i, v in enumerate(values)]
        if all(size is not None for _, size in payloads):   # the header sizes: before anything is decoded
            check_input_pixels([size for _, size in payloads], eval_params, serve)
        deadline = request_deadline(serve)
        with deadline_scope(deadline):
            checkpoint("the start")
            self._acquire_slot(deadline)
            try:   # settings the inference rejects (e.g. test scales off the size grid) are the request's fault
                images = [decode_payload(p, max_pixels=max_pixels, what=f"image {i}")   # in the slot: bounded memory
                          for i, (p, _) in enumerate(payloads)]
                check_input_pixels([(im.shape[1], im.shape[0]) for im in images], eval_params, serve)
                predictor = self.predictor(eval_params)
                out = []
                for i, image in enumerate(images):
                    checkpoint(f"image {i}")
                    out.append(serve_maps(predictor, image) if output == "maps"
                               else serve_persons(predictor, image, min_person_score=min_score))
                return out
            except ValueError as exc:
                raise RequestError(str(exc)) from None
            finally:
                self._slots.release()


try:
    import mlflow.pyfunc

    class PoseModel(mlflow.pyfunc.PythonModel):
        """pyfunc model: images in, persons out (module docstring)."""

        def load_context(self, context) -> None:
            import os

            from pose.device import pick_device

            settings = json.loads(Path(context.artifacts["settings"]).read_text())
            host = os.environ.get(SERVE_SETTINGS_ENV, "").strip()
            self.service = PoseService(Path(context.artifacts["weights"]), settings, device=str(pick_device()),
                                       host_serve=json.loads(host) if host else None)

        def predict(self, context, model_input, params=None):
            from mlflow.exceptions import MlflowException
            from mlflow.protos.databricks_pb2 import (
                CANCELLED,
                DEADLINE_EXCEEDED,
                INTERNAL_ERROR,
                INVALID_PARAMETER_VALUE,
                TEMPORARILY_UNAVAILABLE,
            )

            from pose.decode.deadline import DeadlineExceeded

            try:
                return self.service.predict(model_input, params)
            except RequestError as exc:
                raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
            except ServerBusy as exc:
                log.warning("pose model: %s", exc)
                raise MlflowException(str(exc), error_code=TEMPORARILY_UNAVAILABLE) from None
            except DeadlineExceeded as exc:
                log.warning("pose model: request %s", exc)
                raise MlflowException(f"request {exc}", error_code=CANCELLED if exc.cancelled
                                      else DEADLINE_EXCEEDED) from None
            except Exception as exc:   # noqa: BLE001 - a one-line 500 for the client, the trace in the server log
                log.exception("pose model: prediction failed")
                raise MlflowException(f"internal error: {type(exc).__name__}: {exc}",
                                      error_code=INTERNAL_ERROR) from None
except ImportError:  # pragma: no cover - mlflow is a dependency
    PoseModel = None  # type: ignore[assignment,misc]


# ----------------------------------------------------------------------------- saving

def slim_weights(checkpoint: Path, out: Path) -> Path:
    """Write ``{"model": state_dict, "model_params": json, "train_data": json}`` of a training
    checkpoint to ``out`` (no optimizer state; ``train_data`` when the checkpoint has it, so
    ``pose predict`` / ``pose export`` of the registered model can say what it was trained on)."""
    from pose.train.checkpoint import load_checkpoint, save_checkpoint

    ck = load_checkpoint(checkpoint)
    slim = {"model": ck["model"], "model_params": ck["model_params"]}
    if ck.get("train_data"):
        slim["train_data"] = ck["train_data"]
    save_checkpoint(slim, out)
    return out


def example_image(generated: GeneratedSection, size: int) -> bytes:
    """JPEG bytes of one generated ``size`` x ``size`` image with one figure
    (`pose.datasets.generated`, seed ``generated.seed`` of the params ``generated`` section,
    `pose.params.GeneratedSection`): the logged input example."""
    from pose.datasets.generated import generate_dataset

    with tempfile.TemporaryDirectory(prefix="pose-example-") as tmp:
        generate_dataset(Path(tmp), seed=int(generated.seed), num_train=0, num_val=1, width=size,
                         height=size, max_people=1, min_person_height=0.6 * size, max_person_height=0.9 * size)
        return next((Path(tmp) / "val2017").glob("*.jpg")).read_bytes()


def signature(settings: dict):
    """The logged ``ModelSignature``: input column ``image`` (binary), output one list of
    persons per image, params schema :data:`REQUEST_PARAMS` with the stored settings as defaults."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Object, ParamSchema, ParamSpec, Property, Schema

    defaults = {**settings["evaluate"], **settings["predict"], "output": OUTPUTS[0]}
    specs = []
    for key, (_, dtype, shape) in REQUEST_PARAMS.items():
        value = defaults[key]
        value = [float(v) for v in value] if shape else value
        specs.append(ParamSpec(key, dtype, value, shape))
    person = Object([Property("keypoints", Array(Array("double"))), Property("score", "double"),
                     Property("bbox", Array("double"))])
    return ModelSignature(inputs=Schema([ColSpec("binary", IMAGE_COLUMN)]),
                          outputs=Schema([ColSpec(Array(person), "persons")]),
                          params=ParamSchema(specs))


def save_pyfunc_model(checkpoint: Path, path: Path, *, evaluate: EvaluateSection, predict: PredictSection,
                      serve: ServeSection, generated: GeneratedSection) -> Path:
    """Save the checkpoint as an MLflow pyfunc model directory at ``path`` (module docstring):
    weights, test-time settings (:func:`model_settings` of the params sections ``evaluate``,
    ``predict`` and ``serve`` the model was evaluated with), signature, a generated input example
    (seed of the params ``generated`` section) of
    ``serve.example_size`` px, and metadata (keypoint names, skeleton, model params); with
    ``serve.log_onnx`` also the ONNX export (:func:`pose.export.export_onnx` with the
    ``evaluate`` settings) as ``<path>/model.onnx``. Returns ``path``."""
    import mlflow
    import pandas as pd
    import torch

    from pose.datasets.schema import KEYPOINT_NAMES, SKELETON

    path = Path(path)
    settings = model_settings(evaluate, predict, serve)
    tmp = Path(tempfile.mkdtemp(prefix=".weights-", dir=path.parent))
    try:
        weights = slim_weights(checkpoint, tmp / WEIGHTS_NAME)
        (tmp / SETTINGS_NAME).write_text(json.dumps(settings, indent=2, sort_keys=True))
        example = pd.DataFrame({IMAGE_COLUMN: [example_image(generated, int(serve.example_size))]})
        # explicit requirements: MLflow would otherwise load the model in a subprocess to infer them
        reqs = [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}",
                f"numpy=={np.__version__}"]
        stored_model = _model_params(weights)   # the checkpoint's stored ``model`` params (a dict)
        mlflow.pyfunc.save_model(str(path), python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
                                 artifacts={"weights": str(weights), "settings": str(tmp / SETTINGS_NAME)},
                                 signature=signature(settings), input_example=example, pip_requirements=reqs,
                                 metadata={"task": "bottom-up multi-person pose estimation",
                                           "output": "per image: [{keypoints: [[x, y, score] x K] image px, score, "
                                                     "confidence, bbox: [x, y, w, h] image px}] (params "
                                                     "output=maps: raw maps)",
                                           "keypoint_names": list(KEYPOINT_NAMES)[:int(stored_model["num_joints"])],
                                           "skeleton": [list(pair) for pair in SKELETON],
                                           "model_params": stored_model, "settings": settings})
        if serve.log_onnx:
            from pose.export import export_checkpoint
            from pose.train.checkpoint import load_checkpoint, load_trained_model

            # the version's ONNX carries its training data and domain (pose predict's notice)
            export_checkpoint(str(checkpoint), path / ONNX_NAME, eval_params=evaluate,
                              model=load_trained_model(weights, "cpu"),
                              train_data=load_checkpoint(weights).get("train_data"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _model_params(weights: Path) -> dict:
    from pose.train.checkpoint import load_checkpoint

    return json.loads(load_checkpoint(weights)["model_params"])


# ----------------------------------------------------------------------------- loading

def checkpoint_from_uri(model_uri: str, *, tracking_uri: str | None = None) -> Path:
    """Download a registered / logged model (``models:/<name>@<alias>``, ``models:/<name>/<version>``,
    ``runs:/<run id>/model``, or a local model folder) and return its weights file.

    Raises FileNotFoundError when the artifact holds no ``*.pt``."""
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


__all__ = ["PoseModel", "PoseService", "model_settings", "serve_persons", "serve_maps", "save_pyfunc_model",
           "slim_weights", "example_image", "signature", "checkpoint_from_uri", "load_registered_model",
           "WEIGHTS_NAME", "SETTINGS_NAME", "SERVE_KEYS", "ONNX_NAME"]
