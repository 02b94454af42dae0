"""The registered model as an MLflow pyfunc model that answers images with persons, and
loading it back as a torch module.

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
override any of them (:data:`REQUEST_PARAMS`), e.g. ``"params": {"input_size": 256,
"flip_test": false, "min_person_score": 0.0}``; overrides are checked against the params
schema (`pose.params`).

Bad requests (not an image, an empty body, more pixels than ``serve.max_pixels`` (checked on
the image header, before decoding), more rows than ``serve.max_images``, a bad params value)
and requests over a cost limit (``serve.max_input_size``, ``serve.max_test_scales``,
``serve.max_input_pixels``: :func:`check_settings_limits`, :func:`check_input_pixels`, all
checked before any network pass) raise an ``MlflowException`` with error code
``INVALID_PARAMETER_VALUE``, which MLflow's scoring server answers with HTTP 400 and
``{"error_code": ..., "message": ...}``, without a stack trace (other exceptions from
``predict`` become a 400 *with* the trace: ``mlflow.pyfunc.scoring_server.invocations``). A
request whose work passes its deadline (:func:`request_deadline`, ``serve.request_timeout_s``)
stops at the next checkpoint (`pose.decode.deadline`) and is answered ``DEADLINE_EXCEEDED``
(504), or ``CANCELLED`` (499) when its client disconnected (``pose serve``); one that finds no
free slot (``serve.concurrent_requests``) before its deadline ``TEMPORARILY_UNAVAILABLE`` (503).
Unexpected failures are logged with their trace on the server and answered as
``INTERNAL_ERROR`` (HTTP 500) with a one-line message. MLflow's scoring server puts the parsed
input in front of these messages; ``pose serve`` (`pose.serve`) sends the message alone.

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
#: request limits of params.yaml ``serve``: stored with the model (``mlflow models serve`` and
#: ``mlflow.pyfunc.load_model`` apply them); ``pose serve`` applies those of its params.yaml instead
#: (env :data:`SERVE_SETTINGS_ENV`)
LIMIT_KEYS = ("max_pixels", "max_images", "max_input_size", "max_test_scales", "max_input_pixels", "request_timeout_s",
              "concurrent_requests", "predictor_cache")
#: keys of params.yaml ``serve`` stored with the model
SERVE_KEYS = (*LIMIT_KEYS, "example_size", "log_onnx")
#: environment variable through which ``pose serve`` hands its params.yaml ``serve`` section (JSON) to the
#: workers: its :data:`LIMIT_KEYS` replace the stored ones
SERVE_SETTINGS_ENV = "POSE_SERVE_SETTINGS"
#: MLflow's scoring-server timeout (s) and its flag of a serving process (set by ``scoring_server.init``)
MLFLOW_TIMEOUT_ENV = "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"
MLFLOW_SERVING_ENV = "_MLFLOW_IS_IN_SERVING_ENVIRONMENT"
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
    "project_maps": ("evaluate", "boolean", None),
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


class ServerBusy(RuntimeError):
    """No worker slot (``serve.concurrent_requests``) became free before the request's deadline: HTTP 503."""


class ModelRefError(LookupError):
    """A ``models:/<name>@<alias>`` reference that does not resolve; the message (one line) lists
    the versions that exist with their promotion decision, and the URI of the newest one."""


# ----------------------------------------------------------------------------- settings

def model_settings(params: dict) -> dict:
    """The test-time settings stored with a model: ``{"evaluate": {EVAL_KEYS, and the
    OPTIONAL_EVAL_KEYS params sets}, "predict":
    {"min_person_score"}, "serve": params serve}`` taken from the whole params.yaml dict.
    Raises KeyError naming a missing key."""
    from pose.decode.persons import EVAL_KEYS, OPTIONAL_EVAL_KEYS

    ev, pr, sv = params["evaluate"], params["predict"], params["serve"]
    return {"evaluate": {k: ev[k] for k in EVAL_KEYS + OPTIONAL_EVAL_KEYS if k in ev},
            "predict": {"min_person_score": pr["min_person_score"]},
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


def check_settings_limits(eval_params: dict, serve: dict) -> None:
    """The limits a request's settings must keep before any image is looked at: at most
    ``serve.max_test_scales`` test scales, and ``input_size`` x every test scale at most
    ``serve.max_input_size`` (the nominal network input side; the actual one is rounded to the
    size grid, :func:`pose.decode.preprocess.input_geometry`).

    Raises RequestError (one line naming the ``serve`` key and its value)."""
    scales = [float(s) for s in eval_params["test_scales"]]
    limit = int(serve["max_test_scales"])
    if len(scales) > limit:
        raise RequestError(f"params test_scales: {len(scales)} scales is more than serve.max_test_scales = {limit}")
    size, limit = int(eval_params["input_size"]), int(serve["max_input_size"])
    for scale in scales:
        if size * scale > limit:
            what = (f"input_size = {size}" if scale == 1.0
                    else f"input_size {size} x test scale {scale:g} = {size * scale:g}")
            raise RequestError(f"params {what}: more than serve.max_input_size = {limit}; ask for a smaller input "
                               "size or test scale")


def network_input_pixels(size: tuple[int, int], eval_params: dict) -> int:
    """Network input pixels one ``(width, height)`` image costs with these ``evaluate`` settings:
    the sum over the test scales of the input's width x height
    (:func:`pose.decode.preprocess.input_geometry`), x2 with ``flip_test`` (the flipped copy is a
    second network input). Raises RequestError for settings the geometry rejects."""
    from pose.decode.preprocess import input_geometry

    scales = [float(s) for s in eval_params["test_scales"]]
    total = 0
    try:
        for scale in scales:
            g = input_geometry(int(size[0]), int(size[1]), resize=str(eval_params["resize"]),
                               input_size=int(eval_params["input_size"]), scale=scale, min_scale=min(scales))
            total += g.width * g.height
    except ValueError as exc:
        raise RequestError(str(exc)) from None
    return total * (2 if eval_params["flip_test"] else 1)


def check_input_pixels(sizes: list[tuple[int, int]], eval_params: dict, serve: dict) -> int:
    """Total network input pixels of a request's images (:func:`network_input_pixels` of each
    ``(width, height)``); raises RequestError when it is more than ``serve.max_input_pixels``.
    Returns the total."""
    total = sum(network_input_pixels(sz, eval_params) for sz in sizes)
    limit = int(serve["max_input_pixels"])
    if total > limit:
        flip = " x 2 (flip_test)" if eval_params["flip_test"] else ""
        raise RequestError(f"{len(sizes)} image(s) x {len(eval_params['test_scales'])} test scale(s){flip} at "
                           f"input_size {int(eval_params['input_size'])} = {total} network input pixels: more than "
                           f"serve.max_input_pixels = {limit}; send fewer images or ask for a smaller input_size")
    return total


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


def read_image_value(value, *, max_pixels: int, what: str = "image") -> tuple[bytes | np.ndarray, tuple | None]:
    """A request image before decoding: ``(payload, size)`` with ``payload`` the encoded bytes
    (base64 text decoded) or the uint8 (H, W, 3) RGB array, and ``size`` its ``(width, height)``
    (an encoded image's from its header; None when Pillow cannot read the header).

    Raises RequestError as :func:`decode_image` does (except for undecodable bytes with an
    unreadable header, which only decoding finds)."""
    if isinstance(value, np.ndarray) and value.dtype != object:
        if value.ndim != 3 or value.shape[2] != 3 or value.dtype != np.uint8 or 0 in value.shape:
            raise RequestError(f"{what}: an array must be uint8 (H, W, 3) RGB, got {value.dtype} {value.shape}")
        _check_pixels(value.shape[1], value.shape[0], max_pixels, what)
        return value, (int(value.shape[1]), int(value.shape[0]))
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
    return value, size


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
    payload, _ = read_image_value(value, max_pixels=max_pixels, what=what)
    return decode_payload(payload, max_pixels=max_pixels, what=what)


def decode_payload(value: bytes | np.ndarray, *, max_pixels: int, what: str = "image") -> np.ndarray:
    """The (H, W, 3) uint8 BGR image of a :func:`read_image_value` payload (RGB array flipped,
    encoded bytes decoded with ``cv2.imdecode``). Raises RequestError as :func:`decode_image`."""
    import cv2

    if isinstance(value, np.ndarray):
        return np.ascontiguousarray(value[:, :, ::-1])
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
    from pose.predict import limit_persons, person_confidence_of

    persons = limit_persons(predictor(image_bgr), int(predictor.eval_params["max_people"]))
    return [person_json(p) for p in persons if person_confidence_of(p) >= min_person_score]


def serve_maps(predictor, image_bgr: np.ndarray) -> dict:
    """The maps the persons of one image are decoded from (``output: maps``):
    :func:`pose.decode.inference.multi_scale_maps` of the predictor's torch model with its
    settings, as NumPy ``{"heatmaps": (K, Hg, Wg) float32, "tags": (K, Hg, Wg, T*n) float32,
    "affine": (2, 3) float64 image px -> base input px, "stride": int input px per map px}``."""
    from pose.decode.inference import multi_scale_maps
    from pose.decode.persons import graph_projects

    ev = predictor.eval_params
    m = multi_scale_maps(predictor.model, image_bgr, input_size=int(ev["input_size"]), resize=str(ev["resize"]),
                         test_scales=[float(s) for s in ev["test_scales"]], flip_test=bool(ev["flip_test"]),
                         project2image=graph_projects(ev), convention=None)
    return {"heatmaps": m.heatmaps.float().cpu().numpy(), "tags": m.tags.float().cpu().numpy(),
            "affine": np.asarray(m.affine, np.float64), "stride": int(m.stride)}


def serve_settings(settings: dict, host: dict | None = None) -> dict:
    """The ``serve`` settings a served model applies: those stored with it (:func:`model_settings`),
    with the :data:`LIMIT_KEYS` of ``host`` (the serving host's params.yaml ``serve``, handed over
    by ``pose serve`` in env :data:`SERVE_SETTINGS_ENV`) in their place.

    Raises KeyError naming a limit that neither holds (a model registered before the limit existed,
    served without ``pose serve``)."""
    out = dict(settings["serve"])
    out.update({k: v for k, v in (host or {}).items() if k in LIMIT_KEYS})
    missing = [k for k in LIMIT_KEYS if k not in out]
    if missing:
        raise KeyError(f"the model's settings lack serve.{', serve.'.join(missing)} (registered before these "
                       "limits existed): serve it with `pose serve`, which applies params.yaml serve")
    return out


def request_deadline(serve: dict):
    """The deadline of a request in this process: the current one (`pose.decode.deadline`, set
    by ``pose serve`` from the request's arrival), else, inside MLflow's scoring server
    (``mlflow models serve``), ``serve.request_timeout_s`` (or MLflow's own
    ``MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT`` when shorter) from now; None in a plain Python
    process (``mlflow.pyfunc.load_model(...).predict``)."""
    import os

    from pose.decode.deadline import Deadline, current

    d = current()
    if d is not None or os.environ.get(MLFLOW_SERVING_ENV, "").lower() != "true":
        return d
    timeout = float(serve["request_timeout_s"])
    try:
        timeout = min(timeout, float(os.environ.get(MLFLOW_TIMEOUT_ENV, "") or timeout))
    except ValueError:
        pass
    return Deadline.after(timeout, f"serve.request_timeout_s = {timeout:g}")


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
        settings: :func:`model_settings` of the params the model was evaluated with.
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
        self.predictor(settings["evaluate"])

    def predictor(self, eval_params: dict):
        """The (cached) predictor of these ``evaluate`` settings."""
        from pose.predict import make_predictor

        key = json.dumps(eval_params, sort_keys=True, default=str)
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
                                                     "confidence, bbox: [x, y, w, h] image px}] (params "
                                                     "output=maps: raw maps)",
                                           "keypoint_names": list(KEYPOINT_NAMES)[:int(model_params["num_joints"])],
                                           "skeleton": [list(pair) for pair in SKELETON],
                                           "model_params": model_params, "settings": settings})
        if settings["serve"]["log_onnx"]:
            from pose.export import export_checkpoint
            from pose.train.checkpoint import load_checkpoint, load_trained_model

            # the version's ONNX carries its training data and domain (pose predict's notice)
            export_checkpoint(str(checkpoint), path / ONNX_NAME, eval_params=params["evaluate"],
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


#: ``models:/<name>@<alias>``
_ALIAS_URI = re.compile(r"models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)")
#: MLflow error codes of a registered model or alias that does not exist
_NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND", "ENDPOINT_NOT_FOUND")
#: versions listed by :func:`version_decisions`, newest first
LISTED_VERSIONS = 5


def version_line(mv) -> str:
    """``v3 rejected: <promotion.reason> [aliases: challenger]`` of an MLflow ``ModelVersion``,
    from the tags ``promotion.decision`` / ``promotion.reason`` the gate writes (``not gated``
    without them); at most about 300 characters."""
    tags = mv.tags or {}
    decision = tags.get("promotion.decision", "not gated")
    reason = " ".join(str(tags.get("promotion.reason", "")).split())
    line = f"v{mv.version} {decision}" + (f": {reason}" if reason else "")
    if len(line) > 240:
        line = line[:237] + "..."
    aliases = sorted(getattr(mv, "aliases", []) or [])
    return line + (f" [aliases: {', '.join(aliases)}]" if aliases else "")


def version_decisions(client, name: str) -> list[str]:
    """One short line per registered version of ``name``, newest first (at most
    :data:`LISTED_VERSIONS`, then ``+N older``): ``v3 rejected: <promotion.reason>
    [aliases: challenger]``, from the version tags ``promotion.decision`` / ``promotion.reason``
    that the gate writes (``pose register`` / ``pose promote``; ``not gated`` without them)."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return []
    versions = sorted(versions, key=lambda v: int(v.version), reverse=True)
    out = []
    for v in versions[:LISTED_VERSIONS]:
        try:   # the search results of some stores lack the aliases
            v = client.get_model_version(name, v.version)
        except MlflowException:
            pass
        out.append(version_line(v))
    if len(versions) > LISTED_VERSIONS:
        out.append(f"+{len(versions) - LISTED_VERSIONS} older")
    return out


def check_model_ref(model_uri: str, *, tracking_uri: str | None) -> None:
    """Check that a ``models:/<name>@<alias>`` reference resolves in the registry at
    ``tracking_uri`` (other references: nothing is checked).

    Raises ModelRefError, one line: the registry cannot be read, no registered model of that
    name (with the names that exist), or no version holding the alias, listing the versions with
    their promotion decision
    (:func:`version_decisions`, e.g. ``v1 rejected: no champion yet; AP 0.000 < 0.1``) and the
    URI of the newest version whatever its alias (``models:/<name>/latest``)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    m = _ALIAS_URI.fullmatch(model_uri)
    if not m:
        return
    name, alias = m["name"], m["alias"]
    client = MlflowClient(tracking_uri)
    try:
        client.get_model_version_by_alias(name, alias)
        return
    except MlflowException as exc:
        if exc.error_code not in _NOT_FOUND:   # an unreachable server, a broken store: not "no such alias"
            raise ModelRefError(f"{model_uri}: cannot read the registry at {tracking_uri}: "
                                f"{' '.join(str(exc.message).split())[:300]}") from None
    versions = version_decisions(client, name)
    if not versions:
        try:
            names = sorted(rm.name for rm in client.search_registered_models(max_results=20))
        except MlflowException:
            names = []
        known = f"registered models: {', '.join(names)}" if names else "no registered model"
        raise ModelRefError(f"{model_uri}: no version of a registered model {name!r} in {tracking_uri} ({known}); "
                            "`pose register` (the last stage of `dvc repro` / `make run`) registers one")
    why = f"no version has alias {alias!r}"
    if alias == "champion":
        why += " (a version becomes champion when it passes every rule of registry.rules)"
    raise ModelRefError(f"{model_uri}: {why}; versions: {' | '.join(versions)}; the newest, whatever its alias: "
                        f"models:/{name}/latest")


#: ``models:/<name>/latest``
_LATEST_URI = re.compile(r"models:/(?P<name>[^/@]+)/latest")


def resolve_model_ref(model_uri: str, *, tracking_uri: str | None) -> str:
    """``model_uri`` with ``models:/<name>/latest`` replaced by the newest version,
    ``models:/<name>/<n>`` (the highest version number, whatever its alias or promotion
    decision); other references are returned unchanged after :func:`check_model_ref`.

    Raises ModelRefError (one line) when an alias does not resolve or ``name`` has no version."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    check_model_ref(model_uri, tracking_uri=tracking_uri)
    m = _LATEST_URI.fullmatch(model_uri)
    if not m:
        return model_uri
    try:
        versions = MlflowClient(tracking_uri).search_model_versions(f"name='{m['name']}'")
    except MlflowException:
        versions = []
    if not versions:
        check_model_ref(f"models:/{m['name']}@latest", tracking_uri=tracking_uri)   # raises: lists the models
    return f"models:/{m['name']}/{max(int(v.version) for v in versions)}"


__all__ = ["PoseModel", "PoseService", "RequestError", "ServerBusy", "ModelRefError", "check_model_ref",
           "resolve_model_ref",
           "version_decisions", "version_line", "check_settings_limits", "check_input_pixels", "network_input_pixels",
           "serve_settings", "request_deadline", "read_image_value", "decode_payload", "save_pyfunc_model",
           "checkpoint_from_uri", "load_registered_model", "decode_image", "serve_persons", "serve_maps",
           "model_settings", "SERVE_SETTINGS_ENV", "LIMIT_KEYS",
           "request_settings", "signature", "REQUEST_PARAMS", "OUTPUTS", "IMAGE_COLUMN"]
