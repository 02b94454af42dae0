"""The registered model as an MLflow pyfunc model that answers images with persons, and
loading it back as a torch module.

Layout of a version's ``model/`` artifact (an MLflow Model directory, so
``mlflow models serve -m models:/<name>@champion --env-manager local`` serves it)::

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
     "score": float,                      # person score, in [0, 1]
     "bbox": [x, y, w, h]}                # image px, the box around the joints found (score > 0)

These are the persons ``pose predict`` writes to ``results.json`` for the same image, by
the same code (the predictor of :func:`pose.predict.make_predictor`, backend ``torch``:
preprocessing, network, flip / scale aggregation and grouping of ``pose.decode``; then
:func:`pose.predict.limit_persons`: scores clamped to [0, 1], at most
``evaluate.max_people``), keeping those with score ``>= predict.min_person_score``. The
keypoint names (``keypoint_names``) and the skeleton (``skeleton``, 0-based joint index
pairs) are in the model's metadata (``mlflow.models.get_model_info(uri).metadata``).

``params.output = "maps"``: per image the maps the persons are decoded from
(:func:`pose.decode.inference.multi_scale_maps`): ``{"heatmaps": (K, Hg, Wg) float32,
"tags": (K, Hg, Wg, T*n) float32, "affine": (2, 3) image px -> base input px, "stride":
input px per map px}``.

Test-time settings: the ``evaluate`` section the model was evaluated with, and
``predict.min_person_score``, are stored in ``settings.json`` by :func:`save_pyfunc_model`
(``pose register``) and are the defaults of the signature's params schema; a request may
override any of them (:data:`REQUEST_PARAMS`), e.g. ``"params": {"input_size": 256,
"flip_test": false, "min_person_score": 0.0}``; overrides are checked against the params
schema (`pose.params`).

Bad requests (not an image, an empty body, more pixels than ``serve.max_pixels`` (checked on
the image header, before decoding), more rows than ``serve.max_images``, a bad params value)
raise an ``MlflowException`` with error code ``INVALID_PARAMETER_VALUE``, which MLflow's
scoring server answers with HTTP 400 and ``{"error_code": ..., "message": ...}``, without a
stack trace (other exceptions from ``predict`` become a 400 *with* the trace:
``mlflow.pyfunc.scoring_server.invocations``). Unexpected failures are logged with their
trace on the server and answered as ``INTERNAL_ERROR`` (HTTP 500) with a one-line message.

The serving environment needs the ``pose`` package installed (``pip install -e .`` of this
repository; the model's ``requirements.txt`` pins mlflow, torch and numpy).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

WEIGHTS_NAME = "weights.pt"
SETTINGS_NAME = "settings.json"
#: the input column of the signature
IMAGE_COLUMN = "image"
#: keys of params.yaml ``serve`` stored with the model
SERVE_KEYS = ("max_pixels", "max_images", "example_size", "predictor_cache", "log_onnx")
#: the ONNX export in a version's model directory (``serve.log_onnx``)
ONNX_NAME = "model.onnx"
#: values of the request param ``output``
OUTPUTS = ("persons", "maps")
#: request params (MLflow ParamSchema) -> (params.yaml section, MLflow type, shape): every
#: ``evaluate`` setting inference reads (`pose.decode.persons.EVAL_KEYS`), the person
#: filter ``predict.min_person_score`` and ``output`` (:data:`OUTPUTS`)
REQUEST_PARAMS: dict[str, tuple[str, str, tuple | None]] = {
    "input_size": ("evaluate", "long", None),
    "resize": ("evaluate", "string", None),
    "flip_test": ("evaluate", "boolean", None),
    "test_scales": ("evaluate", "double", (-1,)),
    "detection_threshold": ("evaluate", "double", None),
    "tag_threshold": ("evaluate", "double", None),
    "max_people": ("evaluate", "long", None),
    "nms_kernel": ("evaluate", "long", None),
    "tie_break": ("evaluate", "boolean", None),
    "project2image": ("evaluate", "boolean", None),
    "adjust": ("evaluate", "boolean", None),
    "refine": ("evaluate", "boolean", None),
    "nms_oks": ("evaluate", "double", None),
    "min_person_score": ("predict", "double", None),
    "output": ("", "string", None),
}


#: base64 text (standard alphabet, padding, line breaks) as bytes
_BASE64_TEXT = re.compile(rb"[A-Za-z0-9+/=\s]*")


class RequestError(ValueError):
    """A bad request (its message says what is wrong and what is allowed): HTTP 400."""


# ----------------------------------------------------------------------------- settings

def model_settings(params: dict) -> dict:
    """The test-time settings stored with a model: ``{"evaluate": {EVAL_KEYS}, "predict":
    {"min_person_score"}, "serve": params serve}`` taken from the whole params.yaml dict.
    Raises KeyError naming a missing key."""
    from pose.decode.persons import EVAL_KEYS

    ev, pr, sv = params["evaluate"], params["predict"], params["serve"]
    return {"evaluate": {k: ev[k] for k in EVAL_KEYS}, "predict": {"min_person_score": pr["min_person_score"]},
            "serve": {k: sv[k] for k in SERVE_KEYS}}


def request_settings(settings: dict, overrides: dict | None) -> tuple[dict, float, str]:
    """``(eval_params, min_person_score, output)`` of one request: the stored ``settings``
    (:func:`model_settings`) with the request's ``params`` applied.

    Raises RequestError naming the param for an unknown name or a value outside what
    params.yaml allows (`pose.params.check_section_values`)."""
    from pose.params import ParamsError, check_section_values

    ev = dict(settings["evaluate"])
    min_score = settings["predict"]["min_person_score"]
    output = OUTPUTS[0]
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(given) - set(REQUEST_PARAMS))
    if unknown:
        raise RequestError(f"params {', '.join(unknown)}: unknown; allowed: {', '.join(REQUEST_PARAMS)}")
    if "output" in given:
        output = str(given.pop("output"))
        if output not in OUTPUTS:
            raise RequestError(f"params output = {output!r}: must be one of {' | '.join(OUTPUTS)}")
    for key, value in given.items():
        if isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, np.generic):
            value = value.item()
        section = REQUEST_PARAMS[key][0]
        try:
            check_section_values(section, {key: value}, "request params")
        except ParamsError as exc:
            raise RequestError(str(exc)) from None
        if key == "min_person_score":
            min_score = value
        else:
            ev[key] = value
    return ev, float(min_score), output


# ----------------------------------------------------------------------------- images

def _encoded_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from an encoded image's header (Pillow reads the header only), or
    None when Pillow does not know the format (OpenCV may still decode it)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                return int(im.width), int(im.height)
    except Image.DecompressionBombError as exc:   # more pixels than Pillow opens at all
        raise RequestError(f"image too large: {exc}") from None
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def _check_pixels(width: int, height: int, max_pixels: int, what: str) -> None:
    if width * height > max_pixels:
        raise RequestError(f"{what}: {width} x {height} = {width * height} pixels is more than serve.max_pixels = "
                           f"{max_pixels}; send a smaller image")


def decode_image(value, *, max_pixels: int, what: str = "image") -> np.ndarray:
    """One request image as the (H, W, 3) uint8 BGR array ``pose predict`` reads from a file.

    Args:
        value: encoded image bytes (JPEG, PNG, ... decoded with ``cv2.imdecode``, as
            ``cv2.imread`` decodes the file), a base64 string of them, or a uint8 (H, W, 3)
            RGB array (flipped to BGR).
        max_pixels: params ``serve.max_pixels``; an encoded image's size is read from its
            header before decoding.
        what: how errors name the image (e.g. ``"image 2"``).

    Raises RequestError for an empty value, bytes that are not an image, a wrong array shape
    or dtype, or more than ``max_pixels`` pixels.
    """
    import cv2

    if isinstance(value, np.ndarray) and value.dtype != object:
        if value.ndim != 3 or value.shape[2] != 3 or value.dtype != np.uint8 or 0 in value.shape:
            raise RequestError(f"{what}: an array must be uint8 (H, W, 3) RGB, got {value.dtype} {value.shape}")
        _check_pixels(value.shape[1], value.shape[0], max_pixels, what)
        return np.ascontiguousarray(value[:, :, ::-1])
    if isinstance(value, (bytearray, memoryview)):
        value = bytes(value)
    if isinstance(value, bytes) and _BASE64_TEXT.fullmatch(value) and value.strip():
        # base64 text, not image bytes: MLflow decodes base64 for `dataframe_split` /
        # `dataframe_records` but hands `inputs` / `instances` over as the text's bytes; an
        # encoded image never consists of base64 characters only (JPEG starts 0xFF 0xD8, PNG 0x89)
        value = value.decode("ascii")
    if isinstance(value, str):
        try:
            value = base64.b64decode("".join(value.split()), validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(f"{what}: not a JPEG or PNG image, nor the base64 text of one; send the base64 "
                               "of a JPEG or PNG file") from None
    if not isinstance(value, bytes):
        raise RequestError(f"{what}: expected encoded image bytes (base64 in JSON) or a uint8 (H, W, 3) RGB "
                           f"array, got {type(value).__name__}")
    if not value:
        raise RequestError(f"{what}: empty; send the bytes of a JPEG or PNG file (base64 in JSON)")
    size = _encoded_size(value)
    if size is not None:
        _check_pixels(*size, max_pixels, what)
    image = cv2.imdecode(np.frombuffer(value, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise RequestError(f"{what}: not a decodable image ({len(value)} bytes); send a JPEG or PNG file")
    _check_pixels(image.shape[1], image.shape[0], max_pixels, what)
    return image


def input_images(model_input) -> list:
    """The per-image values of a request: the ``image`` column of a DataFrame or mapping, a
    list / tuple of values, or one value (bytes, base64 string, (H, W, 3) array).
    Raises RequestError when there is no ``image`` column or no row."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        if IMAGE_COLUMN not in model_input.columns:
            raise RequestError(f"no column {IMAGE_COLUMN!r} in the input (columns: {list(model_input.columns)})")
        values = list(model_input[IMAGE_COLUMN])
    elif isinstance(model_input, dict):
        if IMAGE_COLUMN not in model_input:
            raise RequestError(f"no key {IMAGE_COLUMN!r} in the input (keys: {list(model_input)})")
        col = model_input[IMAGE_COLUMN]
        values = list(col) if isinstance(col, (list, tuple, pd.Series)) else [col]
    elif isinstance(model_input, (list, tuple)):
        values = list(model_input)
    else:
        values = [model_input]
    if not values:
        raise RequestError("no image in the request; send at least one row in column 'image'")
    return values


# ----------------------------------------------------------------------------- outputs

def serve_persons(predictor, image_bgr: np.ndarray, *, min_person_score: float) -> list[dict]:
    """The served persons of one image (module docstring): ``pose predict``'s persons
    (the :func:`pose.predict.make_predictor` predictor, then :func:`pose.predict.limit_persons`
    with its ``evaluate.max_people``) with score ``>= min_person_score``, as JSON-able dicts
    ``{"keypoints": [[x, y, score] x K] image px, "score", "bbox": [x, y, w, h] image px}``."""
    from pose.decode.persons import person_json
    from pose.predict import limit_persons

    persons = limit_persons(predictor(image_bgr), int(predictor.eval_params["max_people"]))
    return [person_json(p) for p in persons if p["score"] >= min_person_score]


def serve_maps(predictor, image_bgr: np.ndarray) -> dict:
    """The maps the persons of one image are decoded from (``output: maps``):
    :func:`pose.decode.inference.multi_scale_maps` of the predictor's torch model with its
    settings, as NumPy ``{"heatmaps": (K, Hg, Wg) float32, "tags": (K, Hg, Wg, T*n) float32,
    "affine": (2, 3) float64 image px -> base input px, "stride": int input px per map px}``."""
    from pose.decode.inference import multi_scale_maps

    ev = predictor.eval_params
    m = multi_scale_maps(predictor.model, image_bgr, input_size=int(ev["input_size"]), resize=str(ev["resize"]),
                         test_scales=[float(s) for s in ev["test_scales"]], flip_test=bool(ev["flip_test"]),
                         project2image=bool(ev["project2image"]), convention=None)
    return {"heatmaps": m.heatmaps.float().cpu().numpy(), "tags": m.tags.float().cpu().numpy(),
            "affine": np.asarray(m.affine, np.float64), "stride": int(m.stride)}


class PoseService:
    """The served model without MLflow: weights + stored settings -> answers to requests.

    Predictors (:func:`pose.predict.make_predictor`, backend ``torch``, the one inference path
    of ``pose predict``) are built per distinct ``evaluate`` settings and the
    ``serve.predictor_cache`` most recently used are kept; the stored settings' one is built
    at once, so a broken model fails at load, not at the first request.

    Args:
        weights: the slim checkpoint (``weights.pt``).
        settings: :func:`model_settings` of the params the model was evaluated with.
        device: ``cpu`` / ``cuda`` / ``cuda:N``.
    """

    def __init__(self, weights: Path, settings: dict, *, device: str) -> None:
        from collections import OrderedDict

        self.weights = Path(weights)
        self.settings = settings
        self.device = str(device)
        self._predictors: OrderedDict[str, object] = OrderedDict()
        self.predictor(settings["evaluate"])

    def predictor(self, eval_params: dict):
        """The (cached) predictor of these ``evaluate`` settings."""
        from pose.predict import make_predictor

        key = json.dumps(eval_params, sort_keys=True, default=str)
        if key in self._predictors:
            self._predictors.move_to_end(key)
            return self._predictors[key]
        pred = make_predictor(str(self.weights), backend="torch", eval_params=eval_params, tracking_uri=None,
                              device=self.device)
        self._predictors[key] = pred
        while len(self._predictors) > int(self.settings["serve"]["predictor_cache"]):
            self._predictors.popitem(last=False)
        return pred

    def predict(self, model_input, params: dict | None) -> list:
        """Answer one request (module docstring): per image a list of persons, or a maps dict.
        Raises RequestError for a bad request."""
        eval_params, min_score, output = request_settings(self.settings, params)
        serve = self.settings["serve"]
        values = input_images(model_input)
        if len(values) > int(serve["max_images"]):
            raise RequestError(f"{len(values)} images in one request: more than serve.max_images = "
                               f"{serve['max_images']}")
        images = [decode_image(v, max_pixels=int(serve["max_pixels"]), what=f"image {i}")
                  for i, v in enumerate(values)]
        try:   # settings the inference rejects (e.g. test scales off the size grid) are the request's fault
            predictor = self.predictor(eval_params)
            if output == "maps":
                return [serve_maps(predictor, image) for image in images]
            return [serve_persons(predictor, image, min_person_score=min_score) for image in images]
        except ValueError as exc:
            raise RequestError(str(exc)) from None


try:
    import mlflow.pyfunc

    class PoseModel(mlflow.pyfunc.PythonModel):
        """pyfunc model: images in, persons out (module docstring)."""

        def load_context(self, context) -> None:
            from pose.device import pick_device

            settings = json.loads(Path(context.artifacts["settings"]).read_text())
            self.service = PoseService(Path(context.artifacts["weights"]), settings, device=str(pick_device()))

        def predict(self, context, model_input, params=None):
            from mlflow.exceptions import MlflowException
            from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE

            try:
                return self.service.predict(model_input, params)
            except RequestError as exc:
                raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
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


def example_image(params: dict, size: int) -> bytes:
    """JPEG bytes of one generated ``size`` x ``size`` image with one figure
    (`pose.datasets.generated`, seed params ``generated.seed``): the logged input example."""
    from pose.datasets.generated import generate_dataset

    with tempfile.TemporaryDirectory(prefix="pose-example-") as tmp:
        generate_dataset(Path(tmp), seed=int(params["generated"]["seed"]), num_train=0, num_val=1, width=size,
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


def save_pyfunc_model(checkpoint: Path, path: Path, *, params: dict) -> Path:
    """Save the checkpoint as an MLflow pyfunc model directory at ``path`` (module docstring):
    weights, test-time settings (:func:`model_settings` of ``params``, the whole params.yaml
    dict the model was evaluated with), signature, a generated input example of
    ``serve.example_size`` px, and metadata (keypoint names, skeleton, model params); with
    ``serve.log_onnx`` also the ONNX export (:func:`pose.export.export_onnx` with the
    ``evaluate`` settings) as ``<path>/model.onnx``. Returns ``path``."""
    import mlflow
    import pandas as pd
    import torch

    from pose.datasets.schema import KEYPOINT_NAMES, SKELETON

    path = Path(path)
    settings = model_settings(params)
    tmp = Path(tempfile.mkdtemp(prefix=".weights-", dir=path.parent))
    try:
        weights = slim_weights(checkpoint, tmp / WEIGHTS_NAME)
        (tmp / SETTINGS_NAME).write_text(json.dumps(settings, indent=2, sort_keys=True))
        example = pd.DataFrame({IMAGE_COLUMN: [example_image(params, int(settings["serve"]["example_size"]))]})
        # explicit requirements: MLflow would otherwise load the model in a subprocess to infer them
        reqs = [f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}",
                f"numpy=={np.__version__}"]
        model_params = _model_params(weights)
        mlflow.pyfunc.save_model(str(path), python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
                                 artifacts={"weights": str(weights), "settings": str(tmp / SETTINGS_NAME)},
                                 signature=signature(settings), input_example=example, pip_requirements=reqs,
                                 metadata={"task": "bottom-up multi-person pose estimation",
                                           "output": "per image: [{keypoints: [[x, y, score] x K] image px, score, "
                                                     "bbox: [x, y, w, h] image px}] (params output=maps: raw maps)",
                                           "keypoint_names": list(KEYPOINT_NAMES)[:int(model_params["num_joints"])],
                                           "skeleton": [list(pair) for pair in SKELETON],
                                           "model_params": model_params, "settings": settings})
        if settings["serve"]["log_onnx"]:
            from pose.export import export_onnx
            from pose.train.checkpoint import load_trained_model

            export_onnx(load_trained_model(weights, "cpu"), path / ONNX_NAME, eval_params=params["evaluate"])
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


__all__ = ["PoseModel", "PoseService", "RequestError", "save_pyfunc_model", "checkpoint_from_uri",
           "load_registered_model", "decode_image", "serve_persons", "serve_maps", "model_settings",
           "request_settings", "signature", "REQUEST_PARAMS", "OUTPUTS", "IMAGE_COLUMN"]
