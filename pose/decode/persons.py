"""From aggregated maps to persons in image px, NumPy only (no torch): the settings of
params.yaml ``evaluate`` that decoding reads, the grouping (``pose.decode.group``), the
mapping back to image px (``pose.decode.preprocess.heatmap_to_image``), pose NMS and COCO
results entries. Shared by the torch path (``pose.decode.inference.predict_image``) and
the onnxruntime path (``pose.decode.onnx_backend``), so both return the same persons for
the same maps.

Params sections read: ``evaluate`` (`pose.params.EvaluateSection`), turned into
`InferenceSettings` by :func:`resolve_eval_params`, which also reads the same keys stored with a model
(ONNX metadata, a registered version's settings).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pose.codec import section_mapping
from pose.datasets.schema import COCO_SIGMAS
from pose.decode.group import group_keypoints, oks_nms
from pose.decode.preprocess import RESIZE_MODES, heatmap_to_image

if TYPE_CHECKING:
    from pose.params import EvaluateSection

#: Keys of params.yaml ``evaluate`` that inference reads.
EVAL_KEYS = ("input_size", "resize", "flip_test", "test_scales", "detection_threshold", "tag_threshold",
             "max_people", "nms_kernel", "tie_break", "project2image", "project_maps", "adjust", "refine", "nms_oks")
#: Keys inference reads when present: ``convention_overrides`` (`pose.codec.with_overrides`; absent:
#: none, e.g. the settings stored with a model registered before it existed).
OPTIONAL_EVAL_KEYS = ("convention_overrides",)


@dataclasses.dataclass(frozen=True)
class InferenceSettings:
    """The inference settings (:func:`resolve_eval_params`): the :data:`EVAL_KEYS` of the params
    ``evaluate`` section, or of settings stored with a model, read by attribute (``cfg.nms_kernel``).
    Values are kept as given (what `as_dict` stores again). Frozen: `replace` makes a changed copy."""

    input_size: Any
    resize: Any
    flip_test: Any
    test_scales: Any
    detection_threshold: Any
    tag_threshold: Any
    max_people: Any
    nms_kernel: Any
    tie_break: Any
    project2image: Any
    project_maps: Any
    adjust: Any
    refine: Any
    nms_oks: Any
    #: ``evaluate.convention_overrides`` (`pose.codec.with_overrides`), None when the settings have none
    convention_overrides: Any = None

    def as_dict(self) -> dict:
        """The settings as stored (ONNX metadata, a registered version's settings, a predictor's cache
        key): the :data:`EVAL_KEYS`, and ``convention_overrides`` when set."""
        out = {k: getattr(self, k) for k in EVAL_KEYS}
        if self.convention_overrides is not None:
            out["convention_overrides"] = self.convention_overrides
        return out

    def replace(self, **changes) -> InferenceSettings:
        """A copy with ``changes`` (setting name -> value) applied; not checked (see :func:`resolve_eval_params`)."""
        return dataclasses.replace(self, **changes)


def _settings_dict(eval_params: EvaluateSection | InferenceSettings | dict | None) -> dict:
    """The settings of the params ``evaluate`` section, an `InferenceSettings` or a stored mapping, as a dict."""
    return {} if eval_params is None else dict(section_mapping(eval_params))


def resolve_eval_params(eval_params: EvaluateSection | InferenceSettings | dict | None,
                        **explicit) -> InferenceSettings:
    """The inference settings: the :data:`EVAL_KEYS` of ``eval_params`` (the params ``evaluate``
    section, `pose.params.EvaluateSection`; or `InferenceSettings`; or the settings stored with a
    model, a mapping: other keys ignored), each overridden by an ``explicit`` keyword that is
    not None.

    Settings stored before ``project_maps`` existed (a registered version's settings.json, an
    ONNX file's ``eval_params``) lack it; they were decoded with every map projected, so it is
    read as True there.

    Returns `InferenceSettings`. Raises ValueError naming the params key when a setting is missing, ``resize`` is not
    one of :data:`RESIZE_MODES` or ``nms_kernel`` is not an odd positive integer.
    """
    merged = {k: v for k, v in _settings_dict(eval_params).items() if k in EVAL_KEYS + OPTIONAL_EVAL_KEYS}
    merged.update({k: v for k, v in explicit.items() if v is not None})
    if "project_maps" not in merged and "project2image" in merged:
        merged["project_maps"] = True
    missing = [k for k in EVAL_KEYS if k not in merged]
    if missing:
        raise ValueError(f"inference settings missing (params.yaml `evaluate`): {', '.join(missing)}")
    if merged["resize"] not in RESIZE_MODES:
        raise ValueError(f"evaluate.resize must be one of {', '.join(RESIZE_MODES)}; got {merged['resize']!r}")
    kernel = merged["nms_kernel"]
    if isinstance(kernel, bool) or not isinstance(kernel, (int, np.integer)) or kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"evaluate.nms_kernel must be an odd positive integer (reference 5); got {kernel!r}")
    return InferenceSettings(**merged)


def graph_projects(cfg: InferenceSettings) -> bool:
    """Whether the network graph resamples every aggregated map to the input (stride 1):
    ``project2image`` with ``project_maps`` (the reference's ``TEST.PROJECT2IMAGE``). With
    ``project2image`` and not ``project_maps`` the graph stops at the 1/2 maps and
    :func:`decode_persons` projects only the joints (:func:`project_joints`)."""
    return bool(cfg.project2image) and bool(cfg.project_maps)


def _upsample_positions(index: np.ndarray, n: int, offset: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For input-resolution pixel indices ``index`` of a 2x upsampling of an ``n``-pixel axis: the
    two source pixels and the weight of the second (``pose.decode.inference`` ``_upsample2``: pixel
    ``j`` samples ``(j + o) / 2 - o``, bilinear, border replicated)."""
    pos = np.clip((index + offset) / 2.0 - offset, 0.0, n - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    return lo, hi, (pos - lo).astype(np.float32)


def project_joints(heatmaps: np.ndarray, persons: np.ndarray, *, convention, adjust: bool) -> np.ndarray:
    """The joints of persons grouped on the 1/2 maps, located on the 2x-upsampled heatmaps (input
    px) without upsampling the maps: for each found joint the 6 x 6 input pixels around its 1/2-map
    pixel ``(x, y)`` (input ``2x - 2 .. 2x + 3``) are resampled as ``project2image`` resamples the
    whole map (``pose.decode.inference`` ``_upsample2``); the joint moves to the highest of the
    central 4 x 4 (``2x - 1 .. 2x + 2``; first in row-major order on ties, as the peak search), its
    score becomes the resampled value there, and with ``adjust`` it gets the quarter-pixel shift
    toward the higher neighbour on the input grid (``pose.decode.group.quarter_offsets``' rule).

    For a peak of the 1/2 map the highest upsampled pixel lies in its own 2 x 2 input pixels, so a
    person keeps its joints, each where ``project2image`` puts it up to the difference between the
    two NMS windows; this replaces resampling every heatmap and tag map to the input, the bulk of
    decoding at input resolution (README *Prediction speed*). Not in the reference.

    Args:
        heatmaps: (K, h, w) float32 aggregated 1/2-resolution heatmaps.
        persons: (N, K, >=3) ``[x, y, score, ...]`` in 1/2-map px (``group_keypoints``; joints
            with score 0 are not found).
        convention: params ``model.convention`` or a `pose.codec.Convention` (pixel offset,
            ``adjust_equal``).
        adjust: apply the quarter-pixel shift (params ``evaluate.adjust``).

    Returns a copy of ``persons`` with x, y in input px (map indices at stride 1) and joint scores
    from the upsampled heatmap.
    """
    from pose.codec import convention_rules
    from pose.targets.heatmaps import pixel_offset

    out = np.array(persons, dtype=np.float32, copy=True)
    n_i, j_i = np.nonzero(out[:, :, 2] > 0)
    if not n_i.size:
        return out
    num_joints, h, w = heatmaps.shape
    o = pixel_offset(convention)
    xi = np.rint(out[n_i, j_i, 0]).astype(np.int64)
    yi = np.rint(out[n_i, j_i, 1]).astype(np.int64)
    d = np.arange(-2, 4)
    rows = np.clip(2 * yi[:, None] + d, 0, 2 * h - 1)           # (M, 6) input rows, border replicated
    cols = np.clip(2 * xi[:, None] + d, 0, 2 * w - 1)
    r0, r1, wr = _upsample_positions(rows, h, o)
    c0, c1, wc = _upsample_positions(cols, w, o)
    jj = j_i[:, None, None]
    top = heatmaps[jj, r0[:, :, None], c0[:, None, :]] * (1 - wc[:, None, :]) + \
        heatmaps[jj, r0[:, :, None], c1[:, None, :]] * wc[:, None, :]
    bottom = heatmaps[jj, r1[:, :, None], c0[:, None, :]] * (1 - wc[:, None, :]) + \
        heatmaps[jj, r1[:, :, None], c1[:, None, :]] * wc[:, None, :]
    win = top * (1 - wr[:, :, None]) + bottom * wr[:, :, None]    # (M, 6, 6) upsampled values
    centre = win[:, 1:5, 1:5].reshape(len(n_i), -1)
    arg = centre.argmax(axis=1)
    ay, ax = arg // 4 + 1, arg % 4 + 1
    m = np.arange(len(n_i))
    x = (2 * xi + ax - 2).astype(np.float32)
    y = (2 * yi + ay - 2).astype(np.float32)
    if adjust:
        # quarter_offsets on the input grid: neighbours clamped at the map border
        inside_x = (x + 1 <= 2 * w - 1, x - 1 >= 0)
        inside_y = (y + 1 <= 2 * h - 1, y - 1 >= 0)
        right = np.where(inside_x[0], win[m, ay, ax + 1], win[m, ay, ax])
        left = np.where(inside_x[1], win[m, ay, ax - 1], win[m, ay, ax])
        down = np.where(inside_y[0], win[m, ay + 1, ax], win[m, ay, ax])
        up = np.where(inside_y[1], win[m, ay - 1, ax], win[m, ay, ax])
        equal = float(convention_rules(convention).adjust_equal)   # the shift when both neighbours are equal
        x += np.where(right > left, 0.25, np.where(right < left, -0.25, equal)).astype(np.float32)
        y += np.where(down > up, 0.25, np.where(down < up, -0.25, equal)).astype(np.float32)
    out[n_i, j_i, 0] = x
    out[n_i, j_i, 1] = y
    out[n_i, j_i, 2] = win[m, ay, ax]
    return out


def decode_persons(heatmaps: np.ndarray, tags: np.ndarray, affine: np.ndarray, stride: float, *, cfg: InferenceSettings,
                   convention: str, image_size: tuple[int, int] | None = None,
                   with_features: bool = False, off_domain: bool = False) -> list[dict]:
    """Group one image's aggregated maps into persons in image px.

    Args:
        heatmaps: (K, Hg, Wg) float32 aggregated heatmaps on the decode grid.
        tags: (K, Hg, Wg, T * n) float32 tags on the same grid.
        affine: (2, 3) float64 image px -> base input px.
        stride: base input px per grid pixel (1 when the graph projected the maps, else 2).
        cfg: :func:`resolve_eval_params` output. With ``project2image`` and maps at stride 2
            (``project_maps`` false, :func:`graph_projects`) the persons are grouped on the 1/2
            maps (NMS window ``nms_kernel`` px of those maps, 10 input px for 5) and their joints
            located at input resolution by :func:`project_joints`.
        convention: params ``model.convention`` of the model.
        image_size: ``(width, height)`` of the image in px, for the per-joint ``inside`` flags
            (None: every joint counts as inside).
        with_features: also return each person's :func:`person_features` row as ``features``
            (the calibration script's input).
        off_domain: the model was trained on generated figures and the image is a photo
            (:func:`person_confidence`).

    Returns:
        Persons sorted by score (descending), each ``{"keypoints": (K, 3) float64 [x, y,
        score] in IMAGE px (x = y = 0 where the joint was not found), "score": float,
        "bbox": [x, y, w, h] image px, "confidence": float in [0, 1], "inside": (K,) bool}``
        (the person contract of ``pose.codec``, what ``pose predict``, the video JSON Lines
        and serving return after ``pose.predict.limit_persons``). The score is the mean of
        the K joint scores (associative embedding; the official score, unchanged);
        ``confidence`` is the calibrated probability that the person is a true one
        (:func:`person_confidence`); ``inside`` says which joints lie inside the image
        (``0 <= x <= width``, ``0 <= y <= height``; a joint not found counts as inside).
        Keypoints and bbox are not clipped here (COCO results keep the official ones). With
        ``nms_oks < 1`` persons whose OKS (COCO sigmas; their mean for K != 17) with a
        higher-scoring person exceeds it are dropped (:func:`pose.decode.group.oks_nms`).

    Raises ValueError on bad shapes or an unknown convention.
    """
    hm = np.asarray(heatmaps, np.float32)
    persons, scores = group_keypoints(hm, np.asarray(tags, np.float32),
                                      detection_threshold=float(cfg.detection_threshold),
                                      tag_threshold=float(cfg.tag_threshold),
                                      max_people=int(cfg.max_people), nms_kernel=int(cfg.nms_kernel),
                                      tie_break=bool(cfg.tie_break), convention=convention,
                                      adjust=bool(cfg.adjust), refine=bool(cfg.refine))
    tg = np.asarray(tags, np.float32)
    tg = tg[..., None] if tg.ndim == 3 else tg
    _, gh, gw = hm.shape
    xi = np.clip(np.rint(persons[:, :, 0]).astype(np.int64), 0, gw - 1)
    yi = np.clip(np.rint(persons[:, :, 1]).astype(np.int64), 0, gh - 1)
    joint_tags = tg[np.arange(hm.shape[0])[None, :], yi, xi]          # (N, K, C) tag channels at each joint
    if bool(cfg.project2image) and float(stride) == 2.0 and not graph_projects(cfg):
        persons = project_joints(hm, persons, convention=convention, adjust=bool(cfg.adjust))
        stride = 1
    kps = heatmap_to_image(persons, affine, stride, convention=convention)
    num_joints = kps.shape[1]  # (N, K, 3), also for N = 0
    inside = joints_inside(kps, image_size)
    features = person_features(persons, scores, kps, inside, float(cfg.tag_threshold), joint_tags)
    confidence = person_confidence(features, off_domain)
    sigmas = COCO_SIGMAS if num_joints == len(COCO_SIGMAS) else np.full(num_joints, float(np.mean(COCO_SIGMAS)))
    order = oks_nms(kps, scores, sigmas, float(cfg.nms_oks))
    out = [{"keypoints": kps[i], "score": float(scores[i]), "bbox": keypoint_bbox(kps[i]),
            "confidence": float(confidence[i]), "inside": inside[i]} for i in order]
    if with_features:
        for person, i in zip(out, order):
            person["features"] = features[i]
    return out


def joints_inside(keypoints: np.ndarray, image_size: tuple[int, int] | None) -> np.ndarray:
    """(N, K) bool: the joint of (N, K, 3) image-px ``[x, y, score]`` keypoints lies inside the
    ``(width, height)`` image, ``0 <= x <= width`` and ``0 <= y <= height`` (the image's extent
    in either coordinate convention, to half a pixel); joints not found (score 0) count as
    inside; all True when ``image_size`` is None."""
    kp = np.asarray(keypoints, dtype=np.float64)
    inside = np.ones(kp.shape[:2], dtype=bool)
    if image_size is None or not kp.size:
        return inside
    w, h = float(image_size[0]), float(image_size[1])
    found = kp[..., 2] > 0
    ok = (kp[..., 0] >= 0) & (kp[..., 0] <= w) & (kp[..., 1] >= 0) & (kp[..., 1] <= h)
    return ~found | ok


#: names of the columns of :func:`person_features`
FEATURES: tuple[str, ...] = ("score", "mean_joint_score", "refined_share", "found_share", "tag_spread",
                             "outside_share", "limb_asymmetry", "height_spread", "tag_channel_spread")
#: left / right limb pairs (COCO-17 joint indices) whose length ratio :func:`person_features` compares
_LIMB_PAIRS = (((5, 7), (6, 8)), ((7, 9), (8, 10)), ((11, 13), (12, 14)), ((13, 15), (14, 16)), ((5, 11), (6, 12)))
#: bones (COCO-17 joint pairs) and their length as a share of body height (Drillis & Contini 1966, the
#: proportions `pose.datasets.generated` draws with): upper arms, forearms, thighs, shins, shoulder
#: width, hip width, torso sides
_BONES = (((5, 7), 0.186), ((6, 8), 0.186), ((7, 9), 0.146), ((8, 10), 0.146), ((11, 13), 0.245),
          ((12, 14), 0.245), ((13, 15), 0.246), ((14, 16), 0.246), ((5, 6), 0.259), ((11, 12), 0.191),
          ((5, 11), 0.288), ((6, 12), 0.288))


def person_features(persons: np.ndarray, scores: np.ndarray, keypoints: np.ndarray, inside: np.ndarray,
                    tag_threshold: float, joint_tags: np.ndarray | None = None) -> np.ndarray:
    """(N, len(FEATURES)) float64 features of decoded persons that tell true persons from tangles
    (joints of several people joined), in :data:`FEATURES` order:

    * ``score``: the official person score (mean over K of the grouped joints' heatmap values);
    * ``mean_joint_score``: mean over K of the joint scores after refinement;
    * ``refined_share``: share of the joint score mass added by refinement (``refine``);
    * ``found_share``: joints found / K;
    * ``tag_spread``: RMS distance of the found joints' tags (mean over the tag channels) from
      their mean, in units of ``tag_threshold`` (one person's tags agree: small);
    * ``outside_share``: share of the found joints outside the image (letterbox padding);
    * ``limb_asymmetry``: mean ``|log(left / right)|`` of the limb lengths found on both sides
      (upper arm, forearm, thigh, shin, torso side; 0 when none is), image px;
    * ``height_spread``: ``log(max / median)`` of the body heights the found bones imply (bone
      length / its share of the height, :data:`_BONES`; a true person's agree up to
      foreshortening, a tangle's bones join people of different sizes and places; 0 with fewer
      than 3 bones);
    * ``tag_channel_spread``: RMS spread of each found joint's tag channels (plain and flipped
      input, scales) around their mean, in units of ``tag_threshold``, averaged over the joints
      (the flipped pass agrees with the plain one on a true person; 0 without ``joint_tags``).

    Args: persons (N, K, 4) ``[x, y, score, tag]`` as ``group_keypoints`` returns them; scores (N,);
    keypoints (N, K, 3) image px; inside (N, K) bool (:func:`joints_inside`); joint_tags (N, K, C)
    the tag channels at each joint's pixel, or None."""
    persons = np.asarray(persons, dtype=np.float64)
    n, k = persons.shape[:2]
    out = np.zeros((n, len(FEATURES)), dtype=np.float64)
    if not n:
        return out
    js = persons[:, :, 2]
    found = js > 0
    nf = np.maximum(found.sum(axis=1), 1)
    mean_js = js.sum(axis=1) / k
    out[:, 0] = np.asarray(scores, dtype=np.float64)
    out[:, 1] = mean_js
    out[:, 2] = np.where(mean_js > 0, np.clip(1.0 - out[:, 0] / np.maximum(mean_js, 1e-12), 0.0, 1.0), 0.0)
    out[:, 3] = found.sum(axis=1) / k
    tags = persons[:, :, 3]
    mean_tag = (tags * found).sum(axis=1) / nf
    out[:, 4] = np.sqrt((((tags - mean_tag[:, None]) ** 2) * found).sum(axis=1) / nf) / max(tag_threshold, 1e-12)
    out[:, 5] = (found & ~np.asarray(inside, dtype=bool)).sum(axis=1) / nf
    if k >= 17:
        kp = np.asarray(keypoints, dtype=np.float64)
        logs, cnt = np.zeros(n), np.zeros(n)
        for (a, b), (c, d) in _LIMB_PAIRS:
            ok = found[:, a] & found[:, b] & found[:, c] & found[:, d]
            left = np.linalg.norm(kp[:, a, :2] - kp[:, b, :2], axis=1)
            right = np.linalg.norm(kp[:, c, :2] - kp[:, d, :2], axis=1)
            ratio = np.abs(np.log((left + 1.0) / (right + 1.0)))
            logs += np.where(ok, ratio, 0.0)
            cnt += ok
        out[:, 6] = logs / np.maximum(cnt, 1)
        heights = np.full((n, len(_BONES)), np.nan)
        for b, ((a, c), share) in enumerate(_BONES):
            ok = found[:, a] & found[:, c]
            length = np.linalg.norm(kp[:, a, :2] - kp[:, c, :2], axis=1)
            heights[ok, b] = (length[ok] + 1.0) / share
        enough = (~np.isnan(heights)).sum(axis=1) >= 3
        if enough.any():
            h = heights[enough]
            out[enough, 7] = np.log(np.nanmax(h, axis=1)) - np.log(np.nanmedian(h, axis=1))
    if joint_tags is not None and np.asarray(joint_tags).shape[-1] > 1:
        jt = np.asarray(joint_tags, dtype=np.float64)
        spread = np.sqrt(((jt - jt.mean(axis=-1, keepdims=True)) ** 2).mean(axis=-1))   # (N, K)
        out[:, 8] = (spread * found).sum(axis=1) / nf / max(tag_threshold, 1e-12)
    return out


#: The fitted calibration of :func:`person_confidence`, written by
#: ``benchmarks/calibrate_confidence.py --write`` (README *Person confidence*). It is data fitted to
#: one checkpoint, like weights, so it is a JSON file beside this module and not code: the train
#: stage does not read it (validation AP ranks by the official score), the stages and servers that
#: report or filter on ``confidence`` do (evaluate, register, predict, serving).
CALIBRATION_FILE = Path(__file__).with_name("confidence.json")


@dataclasses.dataclass(frozen=True)
class ConfidenceCalibration:
    """Logistic-regression constants of :func:`person_confidence`: ``intercept``, one weight per
    :data:`FEATURES` column, and ``off_domain``, the shift of the log-odds for a model trained on
    generated figures given a photo (fitted by recalibration in the large on held-out photos,
    ``benchmarks/calibrate_confidence.py``). ``fit`` records what it was fitted on (checkpoint
    sha256, sets, counts)."""

    intercept: float
    weights: tuple[float, ...]
    off_domain: float
    fit: dict = dataclasses.field(default_factory=dict, compare=False)

    def as_dict(self) -> dict:
        """The JSON form :func:`load_calibration` reads (``features`` names the weights)."""
        return {"intercept": self.intercept, "features": list(FEATURES), "weights": list(self.weights),
                "off_domain": self.off_domain, "fit": self.fit}


def load_calibration(path: Path | str = CALIBRATION_FILE) -> ConfidenceCalibration:
    """Read a :class:`ConfidenceCalibration` from its JSON file (default :data:`CALIBRATION_FILE`).

    Raises ValueError naming the file and the field when it is not a calibration of the current
    :data:`FEATURES` (missing keys, other feature names or count, non-finite numbers), and
    FileNotFoundError when the file is missing."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected an object with intercept, features, weights, off_domain")
    for key in ("intercept", "features", "weights", "off_domain"):
        if key not in raw:
            raise ValueError(f"{path}: missing field '{key}'")
    if list(raw["features"]) != list(FEATURES):
        raise ValueError(f"{path}: field 'features' is {raw['features']}, this code computes {list(FEATURES)}; "
                         "refit with benchmarks/calibrate_confidence.py --write")
    values = [raw["intercept"], raw["off_domain"], *raw["weights"]]
    if len(raw["weights"]) != len(FEATURES) or not all(isinstance(v, (int, float)) and math.isfinite(v)
                                                         for v in values):
        raise ValueError(f"{path}: fields 'intercept', 'weights' ({len(FEATURES)} numbers) and 'off_domain' "
                         "must be finite numbers")
    return ConfidenceCalibration(float(raw["intercept"]), tuple(float(w) for w in raw["weights"]),
                                 float(raw["off_domain"]), dict(raw.get("fit") or {}))


@functools.lru_cache(maxsize=1)
def default_calibration() -> ConfidenceCalibration:
    """:func:`load_calibration` of :data:`CALIBRATION_FILE`, read once per process."""
    return load_calibration(CALIBRATION_FILE)


def person_confidence(features: np.ndarray, off_domain: bool = False,
                      calibration: ConfidenceCalibration | None = None) -> np.ndarray:
    """(N,) float64 calibrated person confidence in [0, 1]: the logistic
    ``1 / (1 + exp(-(intercept + features @ weights + off_domain_shift * off_domain)))`` of
    :func:`person_features` with the constants of ``calibration`` (default
    :func:`default_calibration`), an estimate of the probability that the person matches a true
    person at OKS >= 0.5. ``off_domain``: the model was trained on generated figures and the image
    is a photo (``pose.predict.Predictor`` decides it); its shift makes the mean confidence of such
    persons on held-out photos equal their observed share of true persons, with a half-person
    prior (the counts are in the calibration's ``fit`` record; for the default model a handful of
    true persons among thousands). The fit and its held-out precision:
    ``benchmarks/calibrate_confidence.py``."""
    cal = calibration or default_calibration()
    f = np.asarray(features, dtype=np.float64).reshape(-1, len(FEATURES))
    z = cal.intercept + f @ np.asarray(cal.weights, dtype=np.float64)
    if off_domain:
        z = z + cal.off_domain
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50.0, 50.0)))


def keypoint_bbox(keypoints: np.ndarray) -> list[float]:
    """``[x, y, w, h]`` (image px) around the joints of a (K, 3) ``[x, y, score]`` array that
    were found (score > 0); ``[0, 0, 0, 0]`` when none was. Bottom-up decoding has no box
    head: this is the box the persons of ``pose.codec`` carry."""
    kp = np.asarray(keypoints, dtype=np.float64).reshape(-1, 3)
    found = kp[kp[:, 2] > 0, :2]
    if not len(found):
        return [0.0, 0.0, 0.0, 0.0]
    lo, hi = found.min(axis=0), found.max(axis=0)
    return [float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])]


def person_json(person: dict) -> dict:
    """A person as JSON-able plain values (serving's answer, the video JSON Lines):
    ``{"keypoints": [[x, y, score] x K] image px, "score": float, "confidence": float (when the
    person has one), "bbox": [x, y, w, h] image px}``; a flat ``[x1, y1, s1, ...]`` keypoint list
    is reshaped, a missing box is computed (:func:`keypoint_bbox`)."""
    kp = np.asarray(person["keypoints"], dtype=np.float64).reshape(-1, 3)
    box = person.get("bbox")
    out = {"keypoints": kp.tolist(), "score": float(person["score"])}
    if "confidence" in person:
        out["confidence"] = float(person["confidence"])
    out["bbox"] = [float(v) for v in box] if box is not None else keypoint_bbox(kp)
    return out


def to_coco_results(persons: Sequence[dict], image_id: int, category_id: int = 1) -> list[dict]:
    """COCO keypoint results entries for one image: ``{"image_id", "category_id",
    "keypoints": [x1, y1, s1, ...] (3K floats, image px rounded to 1e-3, s = joint score),
    "score"}`` (the official score, what COCOeval ranks by) and ``"confidence"`` when the
    person has one (:func:`person_confidence`; COCOeval ignores it)."""
    out = []
    for p in persons:
        entry = {"image_id": int(image_id), "category_id": int(category_id),
                 "keypoints": [round(float(v), 3) for v in np.asarray(p["keypoints"], np.float64).reshape(-1)],
                 "score": float(p["score"])}
        if "confidence" in p:
            entry["confidence"] = float(p["confidence"])
        out.append(entry)
    return out
