"""Run an exported pose model with onnxruntime: preprocessing (``pose.decode.preprocess``),
the ONNX graph of :class:`pose.decode.inference.InferenceNet` (written by
``pose.export.export_onnx``), NumPy grouping (``pose.decode.persons``), persons in image px.
NumPy, OpenCV and onnxruntime only: this module never imports torch.

The file carries what decoding needs in its ONNX ``metadata_props`` (:data:`METADATA_KEYS`,
values are strings, JSON where structured), so no checkpoint or params file is needed:

* ``pose.format`` (:data:`FORMAT`), ``num_joints``, ``tag_dim``, ``convention``,
  ``flip_test``, ``project2image``, ``stride`` (input px per output map px),
  ``input_size``, ``resize``;
* ``keypoint_names``, ``flip_index``, ``skeleton`` (JSON lists);
* ``eval_params``: JSON of the params.yaml ``evaluate`` settings at export
  (``pose.decode.persons.EVAL_KEYS``), used when the caller gives none;
* optional ``train_data`` (JSON record of the training data) and ``source`` (the model
  reference it was exported from).

Graph: input ``input`` (B, 3, H, W) float32 (H, W multiples of 32, dynamic), outputs
``heatmaps`` (B, K, Hg, Wg) and ``tags`` (B, K, Hg, Wg, T * n) float32 on the decode grid
(``Hg = H / stride``). The flip test and ``project2image`` are part of the graph.

Multi-scale test: not supported here (one clear error); the torch backend runs it.

Params sections read: ``evaluate`` (as `pose.decode.persons.InferenceSettings`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pose.codec import with_overrides
from pose.decode.deadline import checkpoint
from pose.decode.persons import InferenceSettings, decode_persons, resolve_eval_params
from pose.decode.preprocess import check_convention, check_image, check_input_multiple, input_batch, input_geometry

if TYPE_CHECKING:
    from pose.params import EvaluateSection

#: value of metadata ``pose.format`` of files this package writes
FORMAT = "pose-onnx/1"
#: metadata keys every exported file has
METADATA_KEYS: tuple[str, ...] = ("pose.format", "num_joints", "tag_dim", "convention", "flip_test", "project2image",
                                  "stride", "input_size", "resize", "keypoint_names", "flip_index", "skeleton",
                                  "eval_params")
#: names of the graph's input and outputs
INPUT_NAME = "input"
OUTPUT_NAMES: tuple[str, str] = ("heatmaps", "tags")


def read_metadata(path: Path | str) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict (weights not loaded).

    Raises FileNotFoundError for a missing file, ValueError for a file that is not ONNX."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ONNX file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several kinds
        raise ValueError(f"{path}: not an ONNX model ({exc})") from None
    return {p.key: p.value for p in proto.metadata_props}


def available_threads() -> int:
    """Intra-op threads for inference (onnxruntime's pool; ``pose.predict.make_predictor`` gives
    torch the same): ``OMP_NUM_THREADS`` when set, else the cores this process may run on
    (``sched_getaffinity``) that are free now: ``round(cores - 1-minute load average)``, at
    least 1. On a busy machine more threads than free cores make every thread wait for the
    others at each operator's barrier (2 torch threads on 2 busy cores: 0.5-5.5 s per photo
    against 0.13-0.25 s with 1; README *Prediction speed*)."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        cores = max(1, os.cpu_count() or 1)
    try:
        load = os.getloadavg()[0]
    except OSError:  # pragma: no cover - no load average
        load = 0.0
    return max(1, min(cores, int(round(cores - load))))


def _as_bool(value: str) -> bool:
    return str(value).strip().lower() in ("1", "true")


def graph_projects_of(meta: dict[str, str]) -> bool:
    """Whether an exported graph resamples its maps to the input (``stride`` 1): files written
    before ``project_maps`` existed project exactly when ``project2image`` is true."""
    return int(meta.get("stride", 2)) == 1


def graph_settings_match(meta: dict[str, str], eval_params: EvaluateSection | InferenceSettings | dict) -> bool:
    """True when a file exported with metadata ``meta`` computes the maps the settings
    ``eval_params`` (the params ``evaluate`` section, `pose.params.EvaluateSection`, or
    `pose.decode.persons.InferenceSettings`) decode: the same flip test and map projection
    (``pose.decode.persons.graph_projects``), and the single test scale ``[1.0]``."""
    from pose.decode.persons import graph_projects

    try:
        cfg = resolve_eval_params(eval_params)
    except ValueError:
        return False
    return (bool(cfg.flip_test) == _as_bool(meta.get("flip_test", "")) and
            graph_projects(cfg) == graph_projects_of(meta) and
            [float(v) for v in cfg.test_scales] == [1.0])


class OnnxPoseModel:
    """An exported pose model in an onnxruntime session (module docstring).

    Args:
        path: ``.onnx`` file written by ``pose.export.export_onnx``.
        device: ``cpu``, or ``cuda`` / ``cuda:N`` to use onnxruntime's CUDA provider when
            it is installed (else the CPU).
        threads: intra-op threads (None: :func:`available_threads`).

    Attributes: ``path``, ``metadata`` (dict of strings), ``num_joints``, ``tag_dim``,
    ``convention``, ``flip_test``, ``project2image``, ``stride``, ``keypoint_names``,
    ``flip_index``, ``skeleton``, ``eval_params`` (stored at export).

    Raises FileNotFoundError for a missing file, ValueError for a file that is not an
    exported pose model (the message names the file and the missing metadata).
    """

    def __init__(self, path: Path | str, *, device: str, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        meta = read_metadata(self.path)
        missing = [k for k in METADATA_KEYS if k not in meta]
        if missing:
            raise ValueError(f"{self.path}: not a model exported by `pose export` (metadata lacks "
                             f"{', '.join(missing)})")
        if meta["pose.format"] != FORMAT:
            raise ValueError(f"{self.path}: format {meta['pose.format']!r}, this version reads {FORMAT!r}")
        self.metadata = meta
        self.num_joints = int(meta["num_joints"])
        self.tag_dim = int(meta["tag_dim"])
        self.convention = check_convention(meta["convention"])
        self.flip_test = _as_bool(meta["flip_test"])
        self.project2image = _as_bool(meta["project2image"])
        self.stride = int(meta["stride"])
        self.keypoint_names = list(json.loads(meta["keypoint_names"]))
        self.flip_index = [int(i) for i in json.loads(meta["flip_index"])]
        self.skeleton = [tuple(int(j) for j in limb) for limb in json.loads(meta["skeleton"])]
        self.eval_params = dict(json.loads(meta["eval_params"]))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads) if threads else available_threads()
        opts.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=providers)

    def settings(self, eval_params: EvaluateSection | InferenceSettings | dict | None) -> InferenceSettings:
        """The inference settings for this model: ``eval_params`` (the params ``evaluate`` section,
        `pose.params.EvaluateSection`, or `pose.decode.persons.InferenceSettings`, or a stored mapping)
        or, when None, those stored at export; checked (:func:`resolve_eval_params`).

        Raises ValueError when ``flip_test`` / ``project2image`` differ from the exported
        graph's, or ``test_scales`` is not ``[1.0]`` (no multi-scale test with onnxruntime)."""
        from pose.decode.persons import graph_projects

        cfg = resolve_eval_params(eval_params if eval_params is not None else self.eval_params)
        if bool(cfg.flip_test) != self.flip_test:
            raise ValueError(f"evaluate.flip_test = {bool(cfg.flip_test)}, but {self.path} was exported with "
                             f"flip_test = {self.flip_test} (part of the graph): export again with "
                             f"evaluate.flip_test: {str(bool(cfg.flip_test)).lower()}, or use --backend torch")
        if graph_projects(cfg) != (self.stride == 1):
            raise ValueError(f"evaluate.project2image = {bool(cfg.project2image)}, project_maps = "
                             f"{bool(cfg.project_maps)}: the graph must {'' if graph_projects(cfg) else 'not '}"
                             f"resample every map to the input, but {self.path} was exported "
                             f"{'with' if self.stride == 1 else 'without'} it (stride {self.stride}): export again "
                             "with these settings, or use --backend torch")
        scales = [float(s) for s in cfg.test_scales]
        if scales != [1.0]:
            raise ValueError(f"evaluate.test_scales = {scales}: the onnxruntime backend runs the single scale [1.0]; "
                             "use --backend torch for the multi-scale test")
        return cfg

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The graph on a (B, 3, H, W) float32 input batch (H, W multiples of 32): heatmaps
        (B, K, Hg, Wg) and tags (B, K, Hg, Wg, T * n) float32."""
        heatmaps, tags = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(batch, np.float32)})
        return heatmaps, tags

    def maps(self, image_bgr: np.ndarray, cfg: InferenceSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """Aggregated maps of one (H, W, 3) uint8 BGR image: ``(heatmaps (K, Hg, Wg), tags
        (K, Hg, Wg, T * n), affine (2, 3) image px -> input px, stride)``, as
        ``pose.decode.inference.multi_scale_maps`` for the single scale 1.0.
        ``cfg``: :meth:`settings`. Raises ValueError on a bad image."""
        img = check_image(image_bgr)
        height, width = img.shape[:2]
        geo = input_geometry(width, height, resize=str(cfg.resize), input_size=int(cfg.input_size),
                             scale=1.0, min_scale=1.0,
                             convention=with_overrides(self.convention, cfg.convention_overrides))
        check_input_multiple(geo, 1.0)
        heatmaps, tags = self.run(input_batch(img, geo))
        return heatmaps[0], tags[0], geo.affine, self.stride

    def predict(self, image_bgr: np.ndarray, cfg: InferenceSettings, off_domain: bool = False) -> list[dict]:
        """Persons of one (H, W, 3) uint8 BGR image, as ``pose.decode.inference.predict_image``
        returns them (image px, sorted by score). ``cfg``: :meth:`settings`; ``off_domain``: as
        ``predict_image``. Raises ValueError on a bad image."""
        checkpoint("network")   # a served request past its deadline stops here
        heatmaps, tags, affine, stride = self.maps(image_bgr, cfg)
        checkpoint("decoding")
        return decode_persons(heatmaps, tags, affine, stride, cfg=cfg,
                              convention=with_overrides(self.convention, cfg.convention_overrides),
                              image_size=(image_bgr.shape[1], image_bgr.shape[0]), off_domain=off_domain)


__all__ = ["FORMAT", "INPUT_NAME", "METADATA_KEYS", "OUTPUT_NAMES", "OnnxPoseModel", "available_threads",
           "graph_projects_of", "graph_settings_match", "read_metadata"]
