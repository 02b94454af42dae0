"""What one request to the served model may be, and what it may cost: parsing its params and
images, and the limits checked before any network pass (`pose.serving.model.PoseService` applies
them to every request).

Request params (:data:`REQUEST_PARAMS`): the stored test-time settings (the ``evaluate``
section the model was evaluated with, ``predict.min_person_score``; `pose.serving.model`) are the
defaults; a request may override any of them, e.g. ``"params": {"input_size": 256,
"flip_test": false, "min_person_score": 0.0}``; overrides are checked against the params
schema (`pose.params`): :func:`request_settings`.

Images (:func:`input_images`, :func:`read_image_value`, :func:`decode_image`): one column
``image`` (:data:`IMAGE_COLUMN`), each row an encoded JPEG / PNG file (base64 text over HTTP)
or, in Python, a uint8 ``(H, W, 3)`` RGB array.

Bad requests (not an image, an empty body, more pixels than ``serve.max_pixels`` (checked on
the image header, before decoding), more rows than ``serve.max_images``, a bad params value)
and requests over a cost limit (``serve.max_input_size``, ``serve.max_test_scales``,
``serve.max_input_pixels``: :func:`check_settings_limits`, :func:`check_input_pixels`, all
checked before any network pass) raise :class:`RequestError` (HTTP 400). A request whose work
passes its deadline (:func:`request_deadline`, ``serve.request_timeout_s``) stops at the next
checkpoint (`pose.decode.deadline`); one that finds no free slot (``serve.concurrent_requests``)
before its deadline raises :class:`ServerBusy` (HTTP 503). The limits a served model applies are
:func:`serve_settings`: those stored with it, or the serving host's (``pose serve``,
:data:`SERVE_SETTINGS_ENV`).

Params sections: none directly; the stored ``evaluate`` settings are read as
`pose.decode.persons.InferenceSettings` and request overrides are checked against the ``evaluate`` /
``predict`` schema (`pose.params.check_section_values`) before they replace a setting.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pose.decode.persons import InferenceSettings
    from pose.params import EvaluateSection

#: the input column of the signature
IMAGE_COLUMN = "image"
#: request limits of params.yaml ``serve``: stored with the model (``mlflow models serve`` and
#: ``mlflow.pyfunc.load_model`` apply them); ``pose serve`` applies those of its params.yaml instead
#: (env :data:`SERVE_SETTINGS_ENV`)
LIMIT_KEYS = ("max_pixels", "max_images", "max_input_size", "max_test_scales", "max_input_pixels", "request_timeout_s",
              "concurrent_requests", "predictor_cache")
#: environment variable through which ``pose serve`` hands its params.yaml ``serve`` section (JSON) to the
#: workers: its :data:`LIMIT_KEYS` replace the stored ones
SERVE_SETTINGS_ENV = "POSE_SERVE_SETTINGS"
#: MLflow's scoring-server timeout (s) and its flag of a serving process (set by ``scoring_server.init``)
MLFLOW_TIMEOUT_ENV = "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"
MLFLOW_SERVING_ENV = "_MLFLOW_IS_IN_SERVING_ENVIRONMENT"
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



# ----------------------------------------------------------------------------- settings

def request_settings(settings: dict, overrides: dict | None) -> tuple[InferenceSettings, float, str]:
    """``(eval_params, min_person_score, output)`` of one request: the stored ``settings``
    (:func:`pose.serving.model.model_settings`; its ``evaluate`` read as
    `pose.decode.persons.InferenceSettings`) with the request's ``params`` applied.

    Raises RequestError naming the param for an unknown name or a value outside what
    params.yaml allows (`pose.params.check_section_values`)."""
    from pose.decode.persons import resolve_eval_params
    from pose.params import ParamsError, check_section_values

    stored = settings["evaluate"]
    updates: dict = {}
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
            updates[key] = value
    try:
        ev = resolve_eval_params(stored, **updates)
    except ValueError as exc:
        raise RequestError(str(exc)) from None
    return ev, float(min_score), output


def check_settings_limits(eval_params: InferenceSettings | EvaluateSection, serve: dict) -> None:
    """The limits a request's settings must keep before any image is looked at: at most
    ``serve.max_test_scales`` test scales, and ``input_size`` x every test scale at most
    ``serve.max_input_size`` (the nominal network input side; the actual one is rounded to the
    size grid, :func:`pose.decode.preprocess.input_geometry`). ``serve``: :func:`serve_settings`.

    Raises RequestError (one line naming the ``serve`` key and its value)."""
    scales = [float(s) for s in eval_params.test_scales]
    limit = int(serve["max_test_scales"])
    if len(scales) > limit:
        raise RequestError(f"params test_scales: {len(scales)} scales is more than serve.max_test_scales = {limit}")
    size, limit = int(eval_params.input_size), int(serve["max_input_size"])
    for scale in scales:
        if size * scale > limit:
            what = (f"input_size = {size}" if scale == 1.0
                    else f"input_size {size} x test scale {scale:g} = {size * scale:g}")
            raise RequestError(f"params {what}: more than serve.max_input_size = {limit}; ask for a smaller input "
                               "size or test scale")


def network_input_pixels(size: tuple[int, int], eval_params: InferenceSettings | EvaluateSection) -> int:
    """Network input pixels one ``(width, height)`` image costs with these ``evaluate`` settings:
    the sum over the test scales of the input's width x height
    (:func:`pose.decode.preprocess.input_geometry`), x2 with ``flip_test`` (the flipped copy is a
    second network input). Raises RequestError for settings the geometry rejects."""
    from pose.decode.preprocess import input_geometry

    scales = [float(s) for s in eval_params.test_scales]
    total = 0
    try:
        for scale in scales:
            g = input_geometry(int(size[0]), int(size[1]), resize=str(eval_params.resize),
                               input_size=int(eval_params.input_size), scale=scale, min_scale=min(scales))
            total += g.width * g.height
    except ValueError as exc:
        raise RequestError(str(exc)) from None
    return total * (2 if eval_params.flip_test else 1)


def check_input_pixels(sizes: list[tuple[int, int]], eval_params: InferenceSettings | EvaluateSection,
                       serve: dict) -> int:
    """Total network input pixels of a request's images (:func:`network_input_pixels` of each
    ``(width, height)``); raises RequestError when it is more than ``serve.max_input_pixels``.
    Returns the total."""
    total = sum(network_input_pixels(sz, eval_params) for sz in sizes)
    limit = int(serve["max_input_pixels"])
    if total > limit:
        flip = " x 2 (flip_test)" if eval_params.flip_test else ""
        raise RequestError(f"{len(sizes)} image(s) x {len(eval_params.test_scales)} test scale(s){flip} at "
                           f"input_size {int(eval_params.input_size)} = {total} network input pixels: more than "
                           f"serve.max_input_pixels = {limit}; send fewer images or ask for a smaller input_size")
    return total


def serve_settings(settings: dict, host: dict | None = None) -> dict:
    """The ``serve`` settings a served model applies: those stored with it
    (:func:`pose.serving.model.model_settings`), with the :data:`LIMIT_KEYS` of ``host`` (the serving
    host's params.yaml ``serve``, handed over by ``pose serve`` in env :data:`SERVE_SETTINGS_ENV`) in
    their place.

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


__all__ = ["RequestError", "ServerBusy", "request_settings", "check_settings_limits", "network_input_pixels",
           "check_input_pixels", "serve_settings", "request_deadline", "read_image_value", "decode_image",
           "decode_payload", "input_images", "REQUEST_PARAMS", "OUTPUTS", "IMAGE_COLUMN", "LIMIT_KEYS",
           "SERVE_SETTINGS_ENV", "MLFLOW_TIMEOUT_ENV", "MLFLOW_SERVING_ENV"]
