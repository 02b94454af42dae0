"""``pose predict``: load a model (checkpoint, MLflow registry URI or exported ONNX file),
say what data it was trained on, detect the persons of images, write skeleton overlays and a
COCO results JSON. A service (it loads models from the registry and writes files) on top of
the core decoding (``pose.decode``) and drawing (``pose.draw``).

Backends (:func:`make_predictor`, :data:`BACKENDS`): ``torch`` runs a checkpoint or a
logged / registered model with :func:`pose.decode.inference.predict_image`;
``onnxruntime`` runs a ``.onnx`` file written by ``pose export`` (``pose.export``) with
:class:`pose.decode.onnx_backend.OnnxPoseModel`, NumPy decoding, no torch import. Both
return the same persons for the same params (the same :class:`~pose.decode.inference.InferenceNet`
graph, the same NumPy grouping). ``auto`` (the default of ``pose predict``) picks onnxruntime
wherever an exported graph of the requested settings exists (:func:`pick_backend`). Threads:
the free cores (``pose.decode.onnx_backend.available_threads``).

The command's steps (``pose.cli`` calls them): :func:`check_predict_inputs` (before anything heavy is
imported), :func:`prediction_settings`, then :func:`predict_images` (videos:
`pose.video.predict_video_file`). Params sections read (handed in by the caller, `pose.params`):
``evaluate`` (the inference settings) and ``predict`` (which persons and joints are drawn).

Domain: a model trained on generated figures (its ``train_data`` record, :func:`model_domain`)
that is given a photo (:func:`looks_like_photo`) says so once (:func:`domain_notice`).

Persons of an image (what the predictor of :func:`make_predictor` returns) are cleaned before use
(:func:`limit_persons`):

* **scores clamped to [0, 1].** A joint score is the aggregated heatmap value at the joint,
  a regression of a Gaussian whose peak is 1; the output layer is linear, so values overshoot
  (1.12 was seen on a trained model; a Kaiming-initialised one reaches 40 after ``refine``,
  which copies the heatmap value of whatever pixel it picks). The person score is the mean
  of its joint scores, so it overshoots with them. Clamping, not normalising: dividing by the
  image's maximum or a sigmoid would make scores relative or compress them, while a
  clamped score keeps its meaning ("the predicted Gaussian value") and the order of every
  person below 1;
* **joints outside the image dropped, identical duplicates removed, sorted by the calibrated
  ``confidence``** (:func:`limit_persons`);
* **at most ``evaluate.max_people`` persons, the most confident.** The grouping opens a new
  person for every candidate joint whose tag matches no existing group, so its output is
  bounded by K * ``max_people`` (85 with max_people 5), not by ``max_people``: ``max_people``
  bounds the peaks per joint and the groups taking part in matching, as in the reference
  (HigherHRNet ``lib/core/group.py``, whose output is not capped either). Poorly separated
  tags make many such fragments, and flip / multi-scale test add more: their tags are
  concatenated, so tag distances grow and fewer candidates join a group (54 persons with a
  cap of 30 were seen). Capping keeps the best ones; COCOeval itself keeps only the 20
  best (maxDets).

Outputs in ``out_dir``:

* ``<stem>_pose.png`` per image: the confident persons (:func:`confident_persons`: calibrated
  confidence >= ``predict.min_person_score`` and at least ``predict.min_joints`` joints scoring >
  ``predict.joint_threshold``), each in its own colour, joints <= ``joint_threshold``
  hidden (:func:`pose.draw.draw_persons`), and a legend naming these thresholds
  (:func:`pose.draw.thresholds_legend`); ``<name>_pose.png`` (suffix kept) when
  two inputs share a stem;
* ``results.json``: COCO keypoint results, one entry per person after cleaning (not only
  the drawn ones; AP needs the low-score ones too) ``{"image_id", "category_id": 1,
  "keypoints": [x, y, score] * K (image px), "score", "confidence", "file_name"}``. ``image_id`` is
  the number in the file name when every input's stem is a distinct integer (COCO's
  ``000000123456.jpg`` -> 123456, so the file scores against COCO ground truth directly),
  else the 1-based position in the sorted input list.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pose.decode.persons import to_coco_results
from pose.draw import overlay, thresholds_legend
from pose.io import atomic_write_text, read_image

if TYPE_CHECKING:  # torch is imported only by the torch backend
    import torch

    from pose.decode.persons import InferenceSettings
    from pose.params import EvaluateSection, PredictSection

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
REMOTE_PREFIXES = ("models:/", "runs:/", "mlflow-artifacts:/")
#: values of ``pose predict --backend`` / :func:`make_predictor` ``backend`` (``auto``: :func:`pick_backend`)
BACKENDS: tuple[str, ...] = ("auto", "torch", "onnxruntime")
#: :func:`looks_like_photo`: an image is taken for a photo when its share of pure, bright pixels (HSV
#: saturation and value both > 240: the generated figures' joint markers and clothes) is below this
#: fraction of its share of grey pixels (saturation < 40: walls, skin, sky, road; the generated
#: backgrounds are colourful), the grey share counted as at least PHOTO_MIN_GREY_SHARE, or when its
#: colour detail is below PHOTO_MAX_CHROMA_DETAIL of its brightness detail (mean |x - 3x3 mean| of
#: YCrCb's Cr + Cb over that of Y): the generator adds independent noise to each colour channel
#: (`pose.datasets.generated`), so its colour is as detailed as its brightness (0.97-3.5 over the
#: 1124 images of the default set), while a camera's colour is smoothed by demosaicing and
#: chroma subsampling (median 0.33 over coco-mini's 159 photos). Measured over those images and the
#: 10 CrowdPose / AIC / MPII fixtures: the pure / grey test alone took 4 generated images for photos
#: and missed 4 vividly coloured photos (flowers, suitcases, pizza, bananas; 3 of them in coco-mini
#: val, where the default model's persons that its confidence kept were all found); with the
#: colour-detail test no photo is missed (their colour detail 0.40-0.84) and the same 4 generated
#: images are taken for photos.
PHOTO_PURE_PER_GREY = 0.02
PHOTO_MIN_GREY_SHARE = 0.003
PHOTO_MAX_CHROMA_DETAIL = 0.9
#: an image (H, W, 3) uint8 BGR -> its persons (as ``pose.decode.inference.predict_image`` returns them)
PredictFn = Callable[[np.ndarray], list[dict]]
#: (image, off_domain) -> persons: the backend function inside a :class:`Predictor`
BackendFn = Callable[[np.ndarray, bool], list[dict]]


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


def _model_version(client, model_uri: str):
    """The registered version ``models:/<name>@<alias>`` or ``models:/<name>/<version>`` names."""
    name, _, rest = model_uri[len("models:/"):].partition("/")
    if "@" in name:
        name, alias = name.split("@", 1)
        return client.get_model_version_by_alias(name, alias)
    return client.get_model_version(name, rest.split("/")[0])


def _version_source(model_uri: str, tracking_uri: str | None) -> str:
    """``model_uri`` with a ``models:/`` reference resolved to its version's artifact location
    in the registry at ``tracking_uri`` (other URIs unchanged)."""
    if not model_uri.startswith("models:/"):
        return model_uri
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    mv = _model_version(client, model_uri)
    return client.get_model_version_download_uri(mv.name, mv.version)


def download_model_file(model_uri: str, suffix: str, preferred: Sequence[str], *, tracking_uri: str | None) -> Path:
    """The ``*<suffix>`` file of a logged / registered model (``models:/...``, ``runs:/...``,
    ``mlflow-artifacts:/...``): its artifacts are downloaded from the tracking server /
    registry at ``tracking_uri`` (None: MLflow's default; the process-wide setting is not
    touched) and the file named in ``preferred`` is picked first, else the first
    ``*<suffix>`` by path.

    Raises FileNotFoundError when the artifacts hold no such file."""
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=_version_source(model_uri, tracking_uri),
                                                     tracking_uri=tracking_uri))
    if local.is_file():
        return local
    found = sorted(local.rglob(f"*{suffix}"))
    for name in preferred:
        for f in found:
            if f.name == name:
                return f
    if not found:
        raise FileNotFoundError(f"{model_uri}: no {suffix} file in the model's artifacts")
    return found[0]


def _download_checkpoint(model_uri: str, tracking_uri: str | None) -> Path:
    return download_model_file(model_uri, ".pt", ("weights.pt", "best.pt"), tracking_uri=tracking_uri)


def load_model(ref: str, *, tracking_uri: str | None, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The torch model behind ``ref`` in eval mode on ``device``.

    ``ref`` is a training checkpoint path (``{"model": state_dict, "model_params": json}``,
    :func:`pose.train.checkpoint.load_trained_model`) or an MLflow URI (``models:/<name>@<alias>``,
    ``models:/<name>/<version>``, ``runs:/<run>/<path>``) whose artifacts hold such a
    checkpoint (``weights.pt`` or ``best.pt`` first, :func:`download_model_file`).

    Raises FileNotFoundError for a missing checkpoint, RuntimeError when a URI cannot be
    loaded.
    """
    import torch

    from pose.train.checkpoint import load_trained_model

    device = torch.device(device)
    if not ref.startswith(REMOTE_PREFIXES):
        return load_trained_model(Path(ref), device)
    try:
        return load_trained_model(_download_checkpoint(ref, tracking_uri), device)
    except Exception as exc:  # noqa: BLE001 - any MLflow / checkpoint failure is one message
        raise RuntimeError(f"cannot load {ref}: {exc}") from exc


def looks_like_photo(image_bgr: np.ndarray) -> bool:
    """True when an (H, W, 3) uint8 BGR image looks like a photo rather than a generated figure
    image (`pose.datasets.generated`): its share of pure, bright pixels (HSV saturation and
    value > 240) is below :data:`PHOTO_PURE_PER_GREY` times its share of grey pixels (saturation
    < 40, at least :data:`PHOTO_MIN_GREY_SHARE`), or its colour detail is below
    :data:`PHOTO_MAX_CHROMA_DETAIL` of its brightness detail (:func:`chroma_detail`). A heuristic
    with measured error rates (the constants' comment); it decides whether a model trained on
    generated figures is off its domain (:class:`Predictor`: the notice, the confidence's
    off-domain term)."""
    import cv2

    small = np.asarray(image_bgr, dtype=np.uint8)
    step = max(1, int(max(small.shape[:2]) // 512))   # large photos: every n-th pixel is enough
    small = np.ascontiguousarray(small[::step, ::step])
    hsv = cv2.cvtColor(small, cv2.COLOR_BGR2HSV)
    pure = float(((hsv[..., 1] > 240) & (hsv[..., 2] > 240)).mean())
    grey = float((hsv[..., 1] < 40).mean())
    if pure < PHOTO_PURE_PER_GREY * max(grey, PHOTO_MIN_GREY_SHARE):
        return True
    return chroma_detail(small) < PHOTO_MAX_CHROMA_DETAIL


def chroma_detail(image_bgr: np.ndarray) -> float:
    """Colour detail over brightness detail of an (H, W, 3) uint8 BGR image: the mean absolute
    difference of each pixel from its 3 x 3 box mean, summed over YCrCb's Cr and Cb, divided by the
    same of Y (plus 1e-3 grey levels). Independent per-channel noise (the generated figures) gives
    about 1 or more; camera photos, whose colour is smoothed, give about 0.3 (:func:`looks_like_photo`)."""
    import cv2

    ycc = cv2.cvtColor(np.ascontiguousarray(image_bgr, dtype=np.uint8), cv2.COLOR_BGR2YCrCb).astype(np.float32)
    detail = [float(np.abs(ycc[..., c] - cv2.blur(ycc[..., c], (3, 3))).mean()) for c in range(3)]
    return (detail[1] + detail[2]) / (detail[0] + 1e-3)


def model_domain(train_data: dict | None) -> str:
    """The image domain a model was trained on, from its ``train_data`` record (written by
    ``pose.train.loop``): its ``domain`` (``photos`` | ``generated``,
    ``pose.datasets.formats.DOMAINS``); records written before the domain was recorded:
    ``generated`` when the dataset is ``generated``, else ``unknown``."""
    if not train_data:
        return "unknown"
    if train_data.get("domain"):
        return str(train_data["domain"])
    return "generated" if train_data.get("dataset") == "generated" else "unknown"


def domain_notice(model_ref: str, train_data: dict | None) -> str | None:
    """The one line ``pose predict``, serving and ``pose export`` print for a model trained on
    generated figures (None for other models): what it was trained on and what that means on
    photos (``predict.min_person_score`` applies to the calibrated confidence,
    ``pose.decode.persons.person_confidence``)."""
    if model_domain(train_data) != "generated":
        return None
    name = (train_data or {}).get("dataset") or "generated"
    return (f"model {model_ref} was trained on generated figures (dataset {name}), not photos: on photos its "
            "persons are mostly wrong (joints of several people joined); the calibrated confidence rejects "
            "most of them, and a model trained on photos (e.g. data.dataset coco2017) is needed for real use")


class Predictor:
    """An image -> persons function (:func:`make_predictor`): ``predictor(image_bgr)`` with
    an (H, W, 3) uint8 BGR image returns its persons as
    :func:`pose.decode.inference.predict_image` does (image px, official coordinates and
    score, plus ``confidence`` and ``inside``; not yet cleaned for users: :func:`limit_persons`).

    A photo (:func:`looks_like_photo`) given to a model trained on generated figures (``domain ==
    "generated"``) is decoded with ``off_domain`` (its persons' calibrated confidence then accounts
    for it, ``pose.decode.persons.person_confidence``); the first one makes it call ``notice`` once
    with :func:`domain_notice`'s line (``pose predict`` prints it, serving logs it). ``fn`` is
    called as ``fn(image_bgr, off_domain)``.

    Attributes: ``backend`` (``torch`` | ``onnxruntime``), ``num_joints`` (K),
    ``eval_params`` (the ``evaluate`` settings used, `pose.decode.persons.InferenceSettings`), ``model`` (the
    torch model or the
    :class:`pose.decode.onnx_backend.OnnxPoseModel`), ``threads`` (intra-op threads),
    ``train_data`` (the model's training-data record, a dict, or None), ``domain``
    (:func:`model_domain`).
    """

    def __init__(self, fn: BackendFn, *, backend: str, num_joints: int | None, eval_params: InferenceSettings,
                 model: object, threads: int | None = None, train_data: dict | None = None,
                 model_ref: str = "", notice: Callable[[str], None] | None = None) -> None:
        self._fn = fn
        self.backend = backend
        self.num_joints = None if num_joints is None else int(num_joints)
        self.eval_params = eval_params
        self.model = model
        self.threads = threads
        self.train_data = train_data
        self.domain = model_domain(train_data)
        self._notice_text = domain_notice(model_ref, train_data)
        self._notice = notice if notice is not None else log.warning

    def __call__(self, image_bgr: np.ndarray) -> list[dict]:
        off_domain = self.domain == "generated" and looks_like_photo(image_bgr)
        if off_domain and self._notice_text is not None:
            text, self._notice_text = self._notice_text, None
            self._notice(text)
        return self._fn(image_bgr, off_domain)


def read_train_data(path: Path | str) -> dict | None:
    """The training-data record (``pose.train.loop``: dataset, domain, annotation file, its sha256,
    image count) of a local checkpoint or ONNX file (metadata ``train_data``), or None when it
    has none or cannot be read."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".onnx":
            from pose.decode.onnx_backend import read_metadata

            record = read_metadata(path).get("train_data")
        else:
            from pose.train.checkpoint import load_checkpoint

            record = load_checkpoint(path).get("train_data")
        return dict(json.loads(record)) if record else None
    except Exception as exc:  # noqa: BLE001 - the record is informative only
        log.debug("no training data record in %s: %s", path, exc)
        return None


def pick_backend(model_ref: str, eval_params: EvaluateSection | InferenceSettings | None, *,
                 tracking_uri: str | None) -> tuple[str, Path | None]:
    """The backend ``auto`` runs (``pose predict`` and :func:`make_predictor` by default):
    ``onnxruntime`` for a ``.onnx`` file, and for an MLflow model whose artifacts hold
    ``model.onnx`` (what ``pose register`` logs with ``serve.log_onnx``) when that graph was
    exported with the requested settings (``flip_test``, ``project2image``; the single test scale
    ``[1.0]``): it computes the same persons (``tests/test_export.py``: keypoints within 1e-3 px)
    in about a quarter of torch's time on a CPU (README *Prediction speed*). Otherwise
    ``torch`` (a checkpoint file, multi-scale test, a graph of other settings).

    ``eval_params``: the params ``evaluate`` section (`pose.params.EvaluateSection`) or
    `pose.decode.persons.InferenceSettings`, None for the file's. Returns ``(backend, onnx file or None)``."""
    if model_ref.lower().endswith(".onnx") and not model_ref.startswith(REMOTE_PREFIXES):
        return "onnxruntime", Path(model_ref)
    if not model_ref.startswith(REMOTE_PREFIXES):
        return "torch", None
    try:
        path = download_model_file(model_ref, ".onnx", ("model.onnx",), tracking_uri=tracking_uri)
        from pose.decode.onnx_backend import read_metadata

        meta = read_metadata(path)
    except Exception as exc:  # noqa: BLE001 - no usable ONNX file: torch
        log.debug("%s: no ONNX export to run (%s); backend torch", model_ref, exc)
        return "torch", None
    if eval_params is not None:
        from pose.decode.onnx_backend import graph_settings_match

        if not graph_settings_match(meta, eval_params):
            return "torch", None
    return "onnxruntime", path


def make_predictor(model_ref: str, *, backend: str, eval_params: EvaluateSection | InferenceSettings | dict | None,
                   tracking_uri: str | None,
                   device: str, threads: int | None = None, notice: Callable[[str], None] | None = None) -> Predictor:
    """Load a model once and return a function image -> persons (:class:`Predictor`), the one
    entry point of ``pose predict`` (images and videos), serving and the benchmarks.

    Args:
        model_ref: ``torch``: a checkpoint path or an MLflow model URI (:func:`load_model`);
            ``onnxruntime``: a ``.onnx`` file written by ``pose export`` or an MLflow URI
            whose artifacts hold one; ``auto``: either (:func:`pick_backend`).
        backend: one of :data:`BACKENDS`.
        eval_params: the params ``evaluate`` section (`pose.params.EvaluateSection`), or
            `pose.decode.persons.InferenceSettings`, or settings stored with a model (a mapping; all of
            ``pose.decode.persons.EVAL_KEYS``).
            ``onnxruntime``: None uses the settings stored in the file at export; the
            flip test and ``project2image`` are part of the exported graph, so they must
            match it.
        tracking_uri: MLflow tracking URI for model URIs (None: MLflow's default).
        device: ``cpu`` / ``cuda`` / ``cuda:N`` (``onnxruntime``: CUDA when its provider is
            installed, else the CPU).
        threads: intra-op threads of torch / onnxruntime (None:
            :func:`pose.decode.onnx_backend.available_threads`, from the free cores;
            torch's setting is process-wide).
        notice: called once with the domain line (:func:`domain_notice`) at the first photo
            given to a model trained on generated figures (None: this module's logger, WARNING).

    Returns a :class:`Predictor`. With ``onnxruntime`` torch is never imported.

    Raises ValueError for an unknown backend, a file of the wrong kind or bad settings,
    FileNotFoundError for a missing file, RuntimeError when a URI cannot be loaded.
    """
    from pose.decode.onnx_backend import available_threads

    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: must be one of {', '.join(BACKENDS)}")
    onnx_path = None
    if backend == "auto":
        backend, onnx_path = pick_backend(model_ref, eval_params, tracking_uri=tracking_uri)
    n_threads = int(threads) if threads else available_threads()
    if backend == "onnxruntime":
        from pose.decode.onnx_backend import OnnxPoseModel

        path = onnx_path or Path(model_ref)
        if onnx_path is None and model_ref.startswith(REMOTE_PREFIXES):
            path = download_model_file(model_ref, ".onnx", ("model.onnx",), tracking_uri=tracking_uri)
        onnx_model = OnnxPoseModel(path, device=device, threads=n_threads)
        cfg = onnx_model.settings(eval_params)
        record = read_train_data(path)
        if record is None and model_ref.startswith(REMOTE_PREFIXES):   # a version's ONNX without the record
            record = _remote_train_data(model_ref, tracking_uri)
        return Predictor(lambda image, off: onnx_model.predict(image, cfg, off), backend=backend,
                         num_joints=onnx_model.num_joints, eval_params=cfg, model=onnx_model, threads=n_threads,
                         train_data=record, model_ref=model_ref, notice=notice)
    import torch

    from pose.decode.inference import inference_net, predict_image
    from pose.decode.persons import graph_projects, resolve_eval_params

    if eval_params is None:
        raise ValueError("backend torch needs the evaluate settings (params.yaml `evaluate`)")
    cfg = resolve_eval_params(eval_params)
    if not str(device).startswith("cuda"):
        torch.set_num_threads(n_threads)
    model = load_model(model_ref, tracking_uri=tracking_uri, device=device)
    net = inference_net(model, flip_test=bool(cfg.flip_test), project2image=graph_projects(cfg), convention=None)
    record = (_remote_train_data(model_ref, tracking_uri) if model_ref.startswith(REMOTE_PREFIXES)
              else read_train_data(model_ref))
    return Predictor(lambda image, off: predict_image(net, image, eval_params=cfg, device=device, off_domain=off),
                     backend=backend,
                     num_joints=net.num_joints, eval_params=cfg, model=model, threads=n_threads, train_data=record,
                     model_ref=model_ref, notice=notice)


def _remote_train_data(model_ref: str, tracking_uri: str | None) -> dict | None:
    """The training-data record of the checkpoint in a logged / registered model's artifacts."""
    try:
        return read_train_data(_download_checkpoint(model_ref, tracking_uri))
    except Exception as exc:  # noqa: BLE001 - informative only
        log.debug("no training data record for %s: %s", model_ref, exc)
        return None


def _keypoints(person: dict) -> np.ndarray:
    """(K, 3) float64 ``[x, y, score]`` of a person (``(K, 3)`` array or a flat COCO list)."""
    return np.asarray(person["keypoints"], dtype=np.float64).reshape(-1, 3)


def clamp_scores(persons: Sequence[dict]) -> list[dict]:
    """Copies of ``persons`` (``{"keypoints": (K, 3) [x, y, score], "score": float, ...}``)
    with every joint score and the person score (and ``confidence``, when present) clamped to
    [0, 1] (module docstring). Keypoints come back as (K, 3) float64 arrays; other keys are kept."""
    out = []
    for p in persons:
        kp = _keypoints(p).copy()
        kp[:, 2] = np.clip(kp[:, 2], 0.0, 1.0)
        q = {**p, "keypoints": kp, "score": float(np.clip(float(p["score"]), 0.0, 1.0))}
        if "confidence" in p:
            q["confidence"] = float(np.clip(float(p["confidence"]), 0.0, 1.0))
        out.append(q)
    return out


def _dedupe_key(kp: np.ndarray) -> tuple:
    found = kp[:, 2] > 0
    return (tuple(np.flatnonzero(found)), tuple(np.round(kp[found, :2], 3).reshape(-1)))


def limit_persons(persons: Sequence[dict], max_people: int) -> list[dict]:
    """The persons users get (``pose predict``'s overlays and results.json, the video JSON Lines,
    serving) from the decoder's (:class:`Predictor`, ``pose.decode.inference.predict_image``):

    1. :func:`clamp_scores` (joint and person scores in [0, 1]);
    2. joints outside the image (the decoder's per-joint ``inside`` flag is False: in the letterbox
       padding or beyond the image border, ``pose.decode.persons.decode_persons``) are dropped:
       ``[0, 0, 0]``, the convention of a joint not found, which is also how COCO and the generated
       set label joints outside the image; the ``bbox`` is recomputed from the joints kept, so
       keypoints and boxes lie inside the image (``[0, W] x [0, H]``);
    3. identical duplicates (the same found joints at the same place to 1e-3 px: two fragments of
       one person that the grouping's refine step filled with the same peaks) are dropped, the
       first by confidence kept;
    4. sorted by ``confidence`` (the calibrated person confidence; the ``score`` when a person has
       none, e.g. a COCO results entry), descending (ties: input order), at most ``max_people``.

    ``pose evaluate``'s results.json is not cleaned this way: it keeps the official coordinates.
    Raises ValueError when ``max_people < 1`` (params ``evaluate.max_people``)."""
    from pose.decode.persons import keypoint_bbox

    if int(max_people) < 1:
        raise ValueError(f"params evaluate.max_people: must be >= 1, got {max_people}")
    cleaned = []
    for p in clamp_scores(persons):
        inside = p.pop("inside", None)
        if inside is not None:
            kp = p["keypoints"]
            out = ~np.asarray(inside, dtype=bool).reshape(-1) & (kp[:, 2] > 0)
            if out.any():
                kp[out] = 0.0
                p["bbox"] = keypoint_bbox(kp)
        cleaned.append(p)
    order = sorted(range(len(cleaned)), key=lambda i: (-float(cleaned[i].get("confidence", cleaned[i]["score"])),
                                                        -cleaned[i]["score"]))
    kept, seen = [], set()
    for i in order:
        key = _dedupe_key(cleaned[i]["keypoints"])
        if key[0] and key in seen:
            continue
        seen.add(key)
        kept.append(cleaned[i])
        if len(kept) == int(max_people):
            break
    return kept


def check_predict_params(predict_params: PredictSection | Mapping, num_joints: int | None = None) -> dict:
    """The person / joint filters of the params ``predict`` section (`pose.params.PredictSection`, or a
    mapping of its keys) as the keyword arguments of :func:`confident_persons`: ``min_person_score``
    and ``joint_threshold`` in [0, 1], ``min_joints`` an integer in [0, K]. Raises ValueError naming the key."""
    values = predict_params if isinstance(predict_params, Mapping) else predict_params.as_dict()  # with overrides
    out = {}
    for key in ("min_person_score", "min_joints", "joint_threshold"):
        if key not in values:
            raise ValueError(f"params predict.{key}: missing")
    for key in ("min_person_score", "joint_threshold"):
        v = values[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"params predict.{key}: must be a number in [0, 1] (scores are clamped to it), got {v!r}")
        out[key] = float(v)
    joints = values["min_joints"]
    if isinstance(joints, bool) or not isinstance(joints, int) or joints < 0 or (
            num_joints is not None and joints > num_joints):
        allowed = f"0..{num_joints}" if num_joints is not None else ">= 0"
        raise ValueError(f"params predict.min_joints: must be an integer {allowed}, got {joints!r}")
    out["min_joints"] = joints
    return out


def person_confidence_of(person: dict) -> float:
    """The value ``predict.min_person_score`` applies to: the person's calibrated ``confidence``
    (``pose.decode.persons.person_confidence``), or its ``score`` when it has none."""
    return float(person.get("confidence", person["score"]))


def confident_persons(persons: Sequence[dict], *, min_person_score: float, min_joints: int,
                      joint_threshold: float) -> list[dict]:
    """The persons worth drawing: calibrated confidence ``>= min_person_score``
    (:func:`person_confidence_of`) and at least ``min_joints`` joints with score ``>
    joint_threshold`` (params ``predict``). Accepts ``predict_image`` persons and COCO results
    entries (flat ``keypoints``); returns the kept entries unchanged, in input order."""
    return [p for p in persons if person_confidence_of(p) >= min_person_score
            and int((_keypoints(p)[:, 2] > joint_threshold).sum()) >= min_joints]


def training_data(ref: str, *, tracking_uri: str | None) -> str:
    """What the model behind ``ref`` was trained on, in words, for ``pose predict`` to print.

    A checkpoint path: its ``train_data`` record (written by `pose.train.loop`: params
    ``data.dataset``, annotation file, its sha256, image count). An MLflow URI: the
    ``dataset`` / ``dataset.version`` tags of the registered version (``models:/<name>@<alias>``,
    ``models:/<name>/<version>``) or of the run (``runs:/``), as `pose register` sets them;
    when they are missing, the record of the checkpoint in the model's artifacts. Never
    raises: what cannot be found is reported as unknown, with the reason.
    """
    def describe(d: dict) -> str:
        return (f"{d.get('dataset') or 'an unnamed dataset'} ({d.get('images')} training images, "
                f"{d.get('annotations')} sha256 {str(d.get('annotations_sha256'))[:12]})")

    def from_checkpoint(path: Path) -> str:
        from pose.train.checkpoint import load_checkpoint

        try:
            record = load_checkpoint(path).get("train_data")
        except (FileNotFoundError, RuntimeError) as exc:
            return f"unknown ({exc})"
        if not record:
            return f"unknown ({path} records no training data: written before checkpoints recorded it)"
        return describe(json.loads(record))

    if ref.endswith(".onnx") and not ref.startswith(REMOTE_PREFIXES):
        from pose.decode.onnx_backend import read_metadata

        try:
            record = read_metadata(Path(ref)).get("train_data")
        except (FileNotFoundError, ValueError) as exc:
            return f"unknown ({exc})"
        return describe(json.loads(record)) if record else f"unknown ({ref} records no training data)"
    if not ref.startswith(REMOTE_PREFIXES):
        return from_checkpoint(Path(ref))
    where, tags = "", {}
    try:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        if ref.startswith("models:/"):
            mv = _model_version(client, ref)
            where, tags = f"registry tags of {mv.name} v{mv.version}", dict(mv.tags)
            if "dataset" not in tags and mv.run_id:
                tags = {**client.get_run(mv.run_id).data.tags, **tags}
        elif ref.startswith("runs:/"):
            run_id = ref[len("runs:/"):].split("/")[0]
            where, tags = f"tags of run {run_id}", dict(client.get_run(run_id).data.tags)
    except Exception as exc:  # noqa: BLE001 - the description must not stop a prediction
        log.debug("registry tags of %s unavailable: %s", ref, exc)
    if tags.get("dataset"):
        version = f", dataset version {tags['dataset.version']}" if tags.get("dataset.version") else ""
        return f"{tags['dataset']} ({where}{version})"
    try:
        return from_checkpoint(_download_checkpoint(ref, tracking_uri))
    except Exception as exc:  # noqa: BLE001
        return f"unknown (no dataset tag for {ref} and no checkpoint record: {exc})"


def training_data_record(ref: str, *, tracking_uri: str | None) -> str | None:
    """The ``train_data`` record (a JSON string, written by ``pose.train.loop``) of the
    checkpoint behind ``ref`` (a path or an MLflow URI whose artifacts hold one), or None
    when there is none or it cannot be read. ``pose export`` stores it in the ONNX file."""
    from pose.train.checkpoint import load_checkpoint

    try:
        if ref.startswith(REMOTE_PREFIXES):
            path = _download_checkpoint(ref, tracking_uri)
        else:
            path = Path(ref)
        record = load_checkpoint(path).get("train_data")
    except Exception as exc:  # noqa: BLE001 - the record is optional
        log.debug("no training data record for %s: %s", ref, exc)
        return None
    return str(record) if record else None


def predict_files(predictor: PredictFn, files: Sequence[Path], out_dir: Path | str, *,
                  eval_params: EvaluateSection | InferenceSettings, predict_params: PredictSection,
                  num_joints: int | None) -> dict:
    """Predict each image, write its overlay and ``results.json`` (module docstring).

    Args:
        predictor: image -> persons (:func:`make_predictor`).
        eval_params: the params ``evaluate`` section (`pose.params.EvaluateSection`; ``max_people`` caps
            the persons).
        predict_params: the params ``predict`` section (`pose.params.PredictSection`,
            :func:`check_predict_params`): which persons and joints are drawn.
        num_joints: K of the model (bounds ``predict.min_joints``), or None.

    Returns ``{"images", "persons", "drawn", "results", "overlays": [paths]}``: persons in
    results.json and drawn persons, over all images.
    Raises ValueError for an unreadable image, missing settings or a bad ``predict`` value.
    """
    show = check_predict_params(predict_params, num_joints)
    max_people = int(eval_params.max_people)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stems = [f.stem for f in files]
    ids = image_ids(files)
    records, overlays, drawn = [], [], 0
    for f, image_id in zip(files, ids):
        image = read_image(f)
        persons = limit_persons(predictor(image), max_people)
        shown = confident_persons(persons, **show)
        drawn += len(shown)
        name = f.stem if stems.count(f.stem) == 1 else f.name
        legend = thresholds_legend(**show, drawn=len(shown), total=len(persons))
        overlays.append(overlay(image, shown, out_dir / f"{name}_pose.png", min_score=show["joint_threshold"],
                                legend=legend))
        records += [{**r, "file_name": f.name} for r in to_coco_results(persons, image_id)]
    results = out_dir / "results.json"
    atomic_write_text(results, json.dumps(records))
    return {"images": len(files), "persons": len(records), "drawn": drawn, "results": results,
            "overlays": overlays}


# ----------------------------------------------------------------------------- the `pose predict` command

#: model references ``--model`` accepts besides a checkpoint file (:func:`load_model`)
MODEL_URI = re.compile(r"models:/[^/@]+(@[^/@]+|/[^/@]+)|runs:/[^/]+/.+|mlflow-artifacts:/.+")
#: what a ``--model`` argument that is an MLflow reference starts with
URI_PREFIXES = ("models:", "runs:", "mlflow-artifacts:")


def check_model_argument(model: str) -> None:
    """Check a ``--model`` argument before anything is imported or loaded: an existing checkpoint file
    or a well-formed MLflow model reference (``models:/<name>@<alias>``, ``models:/<name>/<version>``,
    ``runs:/<run_id>/<path>``).

    Raises ValueError (a malformed reference) or FileNotFoundError (no such file), one line naming
    the argument and what is allowed."""
    if "://" in model or model.startswith(URI_PREFIXES):
        if not MODEL_URI.fullmatch(model):
            raise ValueError(f"--model {model!r}: not a model reference; allowed: a checkpoint file, "
                             "models:/<name>@<alias>, models:/<name>/<version>, runs:/<run_id>/<path>")
    elif not Path(model).is_file():
        raise FileNotFoundError(f"--model {model}: no such checkpoint file (or give models:/<name>@<alias>, "
                                "models:/<name>/<version>, runs:/<run_id>/<path>)")


class OptionError(ValueError):
    """A command-line option value outside what is allowed (``pose predict``): the command line
    exits 2 for it, as for its usage errors."""


def check_predict_inputs(source: Path, model: str, *, input_size: int | None, min_score: float | None,
                         min_joints: int | None, backend: str = "torch", joint_threshold: float | None = None) -> None:
    """Cheap checks of ``pose predict``'s inputs before torch / MLflow are imported and a model is
    loaded; each failure is one line naming the argument and what is allowed.

    Raises OptionError for an option value out of range (``--backend``, ``--input-size``,
    ``--min-score``, ``--min-joints``, ``--joint-threshold``), FileNotFoundError / ValueError for a
    missing input or a malformed model reference
    (:func:`check_model_argument`)."""
    from pose.params import ParamsError, check_input_size

    if backend not in BACKENDS:
        raise OptionError(f"--backend {backend!r}: must be one of {', '.join(BACKENDS)}")
    if not source.exists():
        raise FileNotFoundError(f"source {source}: no such image or folder")
    if backend == "onnxruntime" and not model.startswith(URI_PREFIXES):
        if not Path(model).is_file() or Path(model).suffix.lower() != ".onnx":
            raise FileNotFoundError(f"--model {model}: no such .onnx file (--backend onnxruntime runs a file written "
                                    "by `pose export --format onnx`, or a models:/ / runs:/ URI whose artifacts "
                                    "hold one)")
    check_model_argument(model)
    if input_size is not None:
        try:
            check_input_size(input_size, "--input-size", "pose predict")
        except ParamsError as exc:
            raise OptionError(str(exc)) from None
    if min_score is not None and not 0.0 <= min_score <= 1.0:
        raise OptionError(f"--min-score {min_score:g}: must be in [0, 1]")
    if min_joints is not None and not 0 <= min_joints <= 17:
        raise OptionError(f"--min-joints {min_joints}: must be in [0, 17] (COCO-17 joints)")
    if joint_threshold is not None and not 0.0 <= joint_threshold <= 1.0:
        raise OptionError(f"--joint-threshold {joint_threshold:g}: must be in [0, 1]")


def prediction_settings(ev: EvaluateSection, pr: PredictSection, model: str, *, backend: str,
                        input_size: int | None = None, min_score: float | None = None, min_joints: int | None = None,
                        joint_threshold: float | None = None) -> tuple[EvaluateSection, PredictSection, str]:
    """``(evaluate settings, predict settings, device)`` of a ``pose predict`` run: the params ``evaluate``
    / ``predict`` sections (``ev``: `pose.params.EvaluateSection`, ``pr``: `pose.params.PredictSection`)
    with the command-line overrides given (not None; checked by :func:`check_predict_inputs`), and the
    device (:func:`pose.device.pick_device`; ``cpu`` for the onnxruntime backend or a ``.onnx`` model)."""
    if input_size is not None:
        ev = ev.model_copy(update={"input_size": input_size})
    overrides = {key: value for key, value in (("min_person_score", min_score), ("min_joints", min_joints),
                                               ("joint_threshold", joint_threshold)) if value is not None}
    show = pr.model_copy(update=overrides) if overrides else pr
    if backend != "onnxruntime" and not model.lower().endswith(".onnx"):
        from pose.device import pick_device

        return ev, show, str(pick_device())
    return ev, show, "cpu"


def predict_images(source: Path, model: str, out_dir: Path, *, eval_params: EvaluateSection,
                   predict_params: PredictSection,
                   backend: str, device: str, tracking_uri: str | None, notice: Callable[[str], None] | None = None,
                   echo: Callable[[str], None] = print) -> dict:
    """``pose predict`` on an image or a folder of images: the predictor of ``model``
    (:func:`make_predictor`), then :func:`predict_files` into ``out_dir``. ``echo`` gets the line
    saying what the model was trained on and its backend, before any image is predicted. ``eval_params``,
    ``predict_params``: the params ``evaluate`` / ``predict`` sections (`pose.params.EvaluateSection`,
    `pose.params.PredictSection`; :func:`prediction_settings`).

    Returns :func:`predict_files`' summary. An ``out_dir`` this call created is removed again when it
    fails (no empty or partial output folder is left behind). Raises FileNotFoundError, ValueError,
    RuntimeError as :func:`make_predictor` and :func:`predict_files` do."""
    import shutil

    created = not out_dir.exists()
    done = False
    try:
        files = list_images(source)
        predictor = make_predictor(model, backend=backend, eval_params=eval_params, tracking_uri=tracking_uri,
                                   device=device, notice=notice)
        echo(f"model {model}: trained on {training_data(model, tracking_uri=tracking_uri)}; "
             f"backend {predictor.backend}, {predictor.threads} thread(s)")
        summary = predict_files(predictor, files, out_dir, eval_params=eval_params, predict_params=predict_params,
                                num_joints=predictor.num_joints)
        done = True
    finally:
        if not done and created and out_dir.exists():  # no empty / partial output folder is left behind
            shutil.rmtree(out_dir, ignore_errors=True)
    return summary
