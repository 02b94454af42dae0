"""Reading and checking params.yaml: the single place every tunable lives (no defaults in code).

`load_params` parses the file into a nested dict. `validate_params` checks that dict against
a typed schema (pydantic v2, one model per params.yaml section, unknown keys rejected,
ranges and enumerations checked, cross-section rules such as "``data.dataset`` is a
``catalogue`` key") and raises `ParamsError` with ONE line naming the file, the key path,
the value and what is allowed, e.g.::

    params.yaml: train.lr = -0.1: must be > 0
    params.yaml: train.curriculum[0].sizes[1] = 136: must be a positive multiple of 32 ... (nearest: 128 or 160)

`load_sections` does both and is what every ``pose`` command, the first DVC stage (``check_params``)
and the flows call once before any compute, so a bad value fails in about a second, before DVC
removes any stage's previous outputs. It returns the typed `Params`: the command line and the flows
hand each library function the frozen sections it reads (``p.train``, ``p.evaluate``, ...), which the
code reads by attribute (``tp.lr``, ``ev.nms_kernel``); a changed copy is ``section.model_copy(update=
{...})`` (a user's values checked first with `check_section_values`). `load_checked_params` returns the
file's dict once it passes the schema.

The schema only checks; it adds no defaults: a key missing from params.yaml is an error. A section's
`Section.as_dict` is the section as the file writes it (values keep their written type, ``48`` not
``48.0``): what is stored or logged (checkpoints, a registered model's settings, MLflow params via
`flatten`, data fingerprints) is that dict, so stored bytes and hashes do not depend on the schema's types.

The input-size rule of HRNet (input sides are positive multiples of 32, the stride of the
lowest-resolution branch: Sun et al., CVPR 2019; HigherHRNet lib/dataset/transforms,
which letterboxes to multiples of 32 too) lives here once, as `input_size_error` /
`check_input_size`; the schema applies it to ``train.curriculum[*].sizes`` and
``evaluate.input_size``, and the ``train`` and ``check-scales`` commands apply it to the sizes
they run.
"""

from __future__ import annotations

import copy
import difflib
import re
import zoneinfo
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from pose.codec import OUTPUT_STRIDES
from pose.datasets.formats import KINDS as FORMAT_KINDS
from pose.datasets.formats import NATIVE_SCHEMAS

#: input sides must be multiples of this (HRNet's 4th branch runs at 1/32 of the input)
SIZE_DIVISOR = 32

#: eval.json metrics a ``registry.rules`` entry may name (the one list: pose.registry.rules reads it;
#: tests/test_params.py checks that the evaluate stage writes each)
RULE_METRICS = ("AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL",
                "keypoint_precision", "keypoint_recall", "keypoint_f1", "grouping_accuracy",
                "AP_easy", "AP_medium", "AP_hard")
#: registry.rules kinds and their allowed value ranges (closed intervals)
RULE_RANGES = {"min": (0.0, 1.0), "min_delta": (-1.0, 1.0), "max_drop": (0.0, 1.0)}


class ParamsError(ValueError):
    """params.yaml is unreadable or breaks the schema.

    ``str(exc)`` is one line: ``<file>: <key path> = <value>: <what is allowed>``, followed
    by ``(+N more: <paths>)`` when several keys are wrong. ``problems`` holds every
    ``(key path, message)``; ``key`` is the first key path (``""`` for file-level errors).
    """

    def __init__(self, message: str, problems: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.problems = problems or []
        self.key = self.problems[0][0] if self.problems else ""


# ----------------------------------------------------------------------------- reading

def load_params(path: Path | str = "params.yaml") -> dict:
    """Parse params.yaml into a nested dict (no schema check: see `load_checked_params`).

    Raises FileNotFoundError / ValueError (a `ParamsError`) naming the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: params file not found (run from the repo root or pass --params)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ParamsError(f"{path}: invalid YAML at{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: top level must be a mapping of sections (data, train, ...)")
    return data


def load_checked_params(path: Path | str = "params.yaml") -> dict:
    """`load_params` + `validate_params`: the file's dict, unchanged, once it passes the schema.

    Raises FileNotFoundError when the file is missing and `ParamsError` (one line naming
    the key, the value and what is allowed) for invalid YAML or values."""
    params = load_params(path)
    validate_params(params, source=str(path))
    return params


def load_sections(path: Path | str = "params.yaml") -> Params:
    """params.yaml loaded and checked once: the typed `Params` (one frozen section per params.yaml
    section: ``p.train``, ``p.model``, ``p.evaluate``, ``p.validate_`` ...). What the ``pose`` commands
    and the flows call; they hand each library function the sections it reads.

    Raises FileNotFoundError when the file is missing and `ParamsError` (one line naming the key, the
    value and what is allowed) for invalid YAML or values."""
    return validate_params(load_params(path), source=str(path))


def flatten(params: dict, prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}} -> {"a.b": "1"}``: params.yaml flattened for MLflow ``log_params``."""
    out: dict[str, str] = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)
    return out


# ----------------------------------------------------------------------------- the size rule

def input_size_error(size: Any) -> str | None:
    """The one input-size rule shared by ``check_scales``, ``train`` and ``evaluate``.

    ``size`` is a square network input side in input px. Returns None when it is a positive
    multiple of `SIZE_DIVISOR` (32), else what is allowed, naming the nearest valid sizes.
    HRNet's four branches run at 1/4 .. 1/32 of the input and are fused by exact 2x
    up/down-sampling, so other sides break the fusion (HRNet, Sun et al. CVPR 2019)."""
    if isinstance(size, bool) or not isinstance(size, int):
        return f"must be an integer multiple of {SIZE_DIVISOR} (input px)"
    if size > 0 and size % SIZE_DIVISOR == 0:
        return None
    lo = max(SIZE_DIVISOR, (size // SIZE_DIVISOR) * SIZE_DIVISOR)
    hi = lo + SIZE_DIVISOR if size > lo else lo
    nearest = f"{lo}" if lo == hi else f"{lo} or {hi}"
    return (f"must be a positive multiple of {SIZE_DIVISOR} (HRNet's lowest branch runs at 1/{SIZE_DIVISOR} "
            f"of the input; nearest: {nearest})")


def check_input_size(size: Any, key: str = "input size", source: str = "params.yaml") -> int:
    """Apply `input_size_error` to one size; return it as int.

    Raises `ParamsError` ``<source>: <key> = <size>: must be a positive multiple of 32 ...``."""
    problem = input_size_error(size)
    if problem is not None:
        raise ParamsError(f"{source}: {key} = {_show(size)}: {problem}", [(key, problem)])
    return int(size)


# ----------------------------------------------------------------------------- field types

def _reject_bool(value: Any) -> Any:
    # pydantic's lax mode reads true as 1; YAML `true` in a numeric field is always a typo
    if isinstance(value, bool):
        raise PydanticCustomError("number_type", "must be a number, not true/false")
    return value


def _bounded(tp: type, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
             unit: str = "") -> Any:
    """``tp`` (int or float) within [lo, hi] (``lo_open``: > lo), with one message naming the range."""
    if lo is not None and hi is not None:
        allowed = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}]"
    elif lo is not None:
        allowed = f"{'>' if lo_open else '>='} {lo:g}"
    else:
        allowed = ""
    allowed += unit

    def check(value):
        if (lo is not None and (value <= lo if lo_open else value < lo)) or (hi is not None and value > hi):
            raise PydanticCustomError("out_of_range", "must be {allowed}", {"allowed": allowed.strip()})
        return value

    return Annotated[tp, BeforeValidator(_reject_bool), AfterValidator(check)]


def _input_size(value: int) -> int:
    problem = input_size_error(value)
    if problem is not None:
        raise PydanticCustomError("input_size", problem)
    return value


def _non_empty(what: str):
    def check(value):
        if not value:
            raise PydanticCustomError("too_short", "must not be empty ({what})", {"what": what})
        return value
    return AfterValidator(check)


Int = _bounded(int)
PosInt = _bounded(int, 1)
NonNegInt = _bounded(int, 0)
PosFloat = _bounded(float, 0, lo_open=True)
NonNegFloat = _bounded(float, 0)
Prob = _bounded(float, 0, 1)
Str = Annotated[str, _non_empty("a non-empty string")]
InputSize = Annotated[int, BeforeValidator(_reject_bool), AfterValidator(_input_size)]


class Section(BaseModel):
    """Base of every section: unknown keys are errors (with a "did you mean"), no inf / NaN,
    no defaults (every field is required unless typed ``| None``).

    Sections are frozen: the code reads them by attribute (``tp.lr``, ``ev.nms_kernel``) and
    makes a changed copy with ``section.model_copy(update={...})``. `as_dict` gives the section
    as params.yaml wrote it (the values as written: ``48``, not ``48.0``), for what is stored or
    logged (checkpoints, registered models, MLflow params, fingerprints)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True, protected_namespaces=(),
                              populate_by_name=False)
    #: the mapping this section was validated from (a deep copy), or None when built otherwise
    _raw: dict | None = PrivateAttr(default=None)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_raw(cls, data: Any, handler: Any) -> Any:
        model = handler(data)
        if isinstance(data, dict) and isinstance(model, Section) and model._raw is None:
            model._raw = copy.deepcopy(data)
        return model

    def as_dict(self) -> dict:
        """The section as a plain dict keyed as in params.yaml (aliases: ``validate``, ``schema``):
        the mapping it was validated from, with the updates of `model_copy` applied, so values keep
        the type they were written with; ``model_dump(by_alias=True)`` for a section built otherwise."""
        if self._raw is None:
            return self.model_dump(by_alias=True)
        return copy.deepcopy(self._raw)

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> Any:
        """A copy with ``update`` (field names or params.yaml keys) applied, as pydantic's
        ``model_copy`` (the values are not validated: check a user's values with
        `check_section_values` first); `as_dict` of the copy has the updated values."""
        fields = type(self).model_fields
        by_alias = {(f.alias or name): name for name, f in fields.items()}
        named = {by_alias.get(k, k): v for k, v in (update or {}).items()}
        out = super().model_copy(update=named, deep=deep)
        if self._raw is not None:
            raw = copy.deepcopy(self._raw)
            for name, value in named.items():
                key = fields[name].alias or name if name in fields else name
                raw[key] = value.as_dict() if isinstance(value, Section) else copy.deepcopy(value)
            out._raw = raw
        return out

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            allowed = [f.alias or name for name, f in cls.model_fields.items()]
            for key in data:
                if key not in allowed:
                    close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
                    hint = f"did you mean {close[0]}? " if close else ""
                    raise PydanticCustomError(
                        "unknown_key", "unknown key; {hint}allowed: {allowed}",
                        {"key": str(key), "value": data[key], "hint": hint, "allowed": ", ".join(allowed)})
        return data


def _problem(rel: tuple, value: Any, message: str) -> PydanticCustomError:
    """An error at ``rel`` (key path relative to the validated model) with ``value``."""
    return PydanticCustomError("params", "{message}", {"rel": rel, "value": value, "message": message})


# ----------------------------------------------------------------------------- sections

class DataSection(Section):
    dataset: Str
    mirror: str
    raw_dir: Str
    train_split: Str
    val_split: Str

    @model_validator(mode="after")
    def _splits_differ(self):
        if self.train_split == self.val_split:
            raise _problem(("val_split",), self.val_split, "must differ from data.train_split")
        return self


_HEX = {"md5": 32, "sha1": 40, "sha256": 64}


def _hex(n: int):
    def check(value: str) -> str:
        if not re.fullmatch(rf"[0-9a-fA-F]{{{n}}}", value):
            raise PydanticCustomError("hex", "must be {n} hex digits", {"n": n})
        return value
    return Annotated[str, AfterValidator(check)]


def _url_or_mapping(value: Any) -> Any:
    return {"url": value} if isinstance(value, str) else value


class NativeSplit(Section):
    annotations: Str
    images: Str


class Archive(Section):
    url: Str
    size: PosInt | None = None
    md5: _hex(32) | None = None
    sha1: _hex(40) | None = None
    sha256: _hex(64) | None = None
    endpoint_url: str | None = None


ArchiveItem = Annotated[Archive, BeforeValidator(_url_or_mapping)]


class Source(Section):
    """One dataset source (pose.datasets.fetch module docstring): a URL, or a list of archives."""
    url: Str | None = None
    archives: Annotated[list[ArchiveItem], _non_empty("at least one archive")] | None = None
    size: PosInt | None = None
    md5: _hex(32) | None = None
    sha1: _hex(40) | None = None
    sha256: _hex(64) | None = None
    endpoint_url: str | None = None
    native: dict[str, NativeSplit] | None = None

    @model_validator(mode="after")
    def _url_or_archives(self):
        if (self.url is None) == (self.archives is None):
            raise _problem((), None, "needs exactly one of url or archives")
        return self


SourceItem = Annotated[Source, BeforeValidator(_url_or_mapping)]


class CatalogueEntry(Section):
    """``catalogue.<name>`` (pose.datasets.catalogue / pose.datasets.fetch): the allowed ``kind`` and
    ``native_schema`` values are the formats of `pose.datasets.formats`; which keys a kind needs is
    checked by `pose.datasets.catalogue.check_entry` in `Params`."""
    kind: Literal[FORMAT_KINDS]
    schema_: Literal["coco17"] | None = Field(None, alias="schema")
    native_schema: Literal[NATIVE_SCHEMAS] | None = None
    sigmas: Str | list[PosFloat] | None = None
    native_sigmas: Str | list[PosFloat] | None = None
    mirror: str | None = None
    native: dict[str, NativeSplit] | None = None
    sources: list[SourceItem] | None = None
    ingest: list[Str] | None = None
    exif_orientation: Literal["ignore", "apply"] | None = None  # absent: the format's (ignore: COCO-style)


class GeneratedSection(Section):
    seed: Int
    num_train: PosInt
    num_val: PosInt
    width: PosInt
    height: PosInt
    max_people: PosInt
    min_person_height: PosFloat
    max_person_height: PosFloat

    @model_validator(mode="after")
    def _heights(self):
        if self.max_person_height < self.min_person_height:
            raise _problem(("max_person_height",), self.max_person_height,
                           f"must be >= generated.min_person_height ({self.min_person_height:g})")
        return self


class ValidateSection(Section):
    on_error: Literal["fail", "quarantine"]
    bbox_tolerance: NonNegFloat
    min_labeled_keypoints: NonNegInt
    lr_swap_min_shoulder_reversal: NonNegFloat
    workers: NonNegInt
    image_cache: str


class CheckScalesSection(Section):
    max_roundtrip_error: PosFloat
    max_peak_error: PosFloat
    min_torso_heatmap_px: NonNegFloat


def _backbone(value: str) -> str:
    from pose.models.factory import BACKBONES  # torch-free: the names only

    if value not in BACKBONES:
        raise PydanticCustomError("backbone", "must be one of {allowed}", {"allowed": " | ".join(BACKBONES)})
    return value


class ModelSection(Section):
    backbone: Annotated[str, AfterValidator(_backbone)]
    width: PosInt
    num_joints: Annotated[int, BeforeValidator(_reject_bool)]
    tag_dim: PosInt
    stage_blocks: list[PosInt]
    stem_blocks: PosInt
    deconv_blocks: NonNegInt
    convention: Literal["project", "reference"]
    init: Literal["kaiming", "reference"]
    pretrained_backbone: str
    pretrained: str

    @model_validator(mode="after")
    def _shape(self):
        if self.num_joints != 17:
            raise _problem(("num_joints",), self.num_joints, "must be 17: every dataset is fetched as COCO-17")
        if len(self.stage_blocks) != 3:
            raise _problem(("stage_blocks",), self.stage_blocks,
                           "must list 3 module counts (HRNet stages 2, 3, 4; published [1, 4, 3])")
        return self


class TargetsSection(Section):
    sigma: PosFloat
    subpixel: bool
    max_people: PosInt


class AugmentSection(Section):
    crop: Literal["letterbox", "short_side"]
    max_rotation: _bounded(float, 0, 180, unit=" degrees")
    min_scale: PosFloat
    max_scale: PosFloat
    max_translate: NonNegFloat
    flip_prob: Prob
    color_jitter: Prob

    @model_validator(mode="after")
    def _scales(self):
        if self.max_scale < self.min_scale:
            raise _problem(("max_scale",), self.max_scale, f"must be >= augment.min_scale ({self.min_scale:g})")
        if self.crop == "letterbox" and self.max_translate > 1:
            raise _problem(("max_translate",), self.max_translate,
                           "must be in [0, 1] with crop: letterbox (a fraction of the image size)")
        return self


class LossSection(Section):
    heatmap_weights: Annotated[list[NonNegFloat], _non_empty("one weight per output resolution")]
    foreground_weight: NonNegFloat
    push_weight: NonNegFloat
    pull_weight: NonNegFloat
    push_type: Literal["exp", "hinge"]
    push_margin: PosFloat


class CurriculumStage(Section):
    sizes: Annotated[list[InputSize], _non_empty("at least one input size")]
    epochs: PosInt


def _ema_decay(value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise PydanticCustomError("out_of_range", "must be in [0, 1) (0: no EMA of the weights; e.g. 0.998)")
    return value


class TrainSection(Section):
    seed: Int
    batch_size: PosInt
    workers: NonNegInt
    optimizer: Literal["adam", "adamw"]
    lr: PosFloat
    weight_decay: NonNegFloat
    lr_schedule: Literal["cosine", "step"]
    warmup_steps: NonNegInt
    ema_decay: Annotated[float, BeforeValidator(_reject_bool), AfterValidator(_ema_decay)]
    ema_warmup_steps: NonNegInt
    grad_clip: PosFloat
    amp: bool
    channels_last: bool
    max_steps_per_epoch: NonNegInt
    log_every: PosInt
    checkpoint_every: NonNegInt
    curriculum: Annotated[list[CurriculumStage], _non_empty("at least one {sizes, epochs} stage")]
    multi_scale: bool
    use_curriculum: bool
    val_every: NonNegInt
    val_max_images: NonNegInt


def _odd_kernel(value: int) -> int:
    if value < 1 or value % 2 == 0:
        raise PydanticCustomError("odd", "must be a positive odd window size in px (reference 5)")
    return value


class ConventionOverrides(Section):
    """``evaluate.convention_overrides``: test-time fields of the model's coordinate convention
    replaced by another value (`pose.codec.with_overrides`; absent: the convention's own)."""
    keypoint_mapping: Literal["centred", "raw"] | None = None
    input_affine: Literal["float64", "float32"] | None = None
    assignment: Literal["scipy", "munkres"] | None = None
    adjust_equal: Literal[0.0, -0.25] | None = None
    keep_all_groups: bool | None = None
    missing_joint: Literal["zero", "origin"] | None = None
    peak_ties: Literal["index", "torch"] | None = None


class EvaluateSection(Section):
    input_size: InputSize
    resize: Literal["letterbox", "short_side"]
    detection_threshold: Prob
    tag_threshold: PosFloat
    max_people: PosInt
    nms_kernel: Annotated[int, BeforeValidator(_reject_bool), AfterValidator(_odd_kernel)]
    tie_break: bool
    flip_test: bool
    test_scales: Annotated[list[PosFloat], _non_empty("at least one scale; [1.0]: single scale")]
    project2image: bool
    project_maps: bool
    adjust: bool
    refine: bool
    nms_oks: Prob
    convention_overrides: ConventionOverrides
    oks_threshold: Prob
    area_bins: Annotated[list[PosFloat], _non_empty("sqrt(area) px bin bounds")]
    overlay_count: PosInt
    latency_samples: PosInt
    latency_warmup: NonNegInt

    @model_validator(mode="after")
    def _increasing(self):
        if any(b <= a for a, b in zip(self.area_bins, self.area_bins[1:])):
            raise _problem(("area_bins",), self.area_bins, "must be strictly increasing")
        return self


def _fourcc(value: str) -> str:
    if len(value) != 4 or not value.isprintable():
        raise PydanticCustomError("fourcc", "must be a 4-character FourCC code (e.g. mp4v, MJPG)", {})
    return value


FourCC = Annotated[str, AfterValidator(_fourcc)]


class VideoFourcc(Section):
    """FourCC of `pose predict`'s overlay video per container (pose.video)."""
    mp4: FourCC
    avi: FourCC


class PredictSection(Section):
    min_person_score: Prob
    min_joints: _bounded(int, 0, 17)
    joint_threshold: Prob
    video_frame_stride: PosInt
    video_fourcc: VideoFourcc
    int8_calibration_images: PosInt


class ServeSection(Section):
    """The served model (`pose.serving`, `pose serve`): request limits, deadline, workers and the logged
    input example."""
    max_pixels: PosInt
    max_images: PosInt
    max_input_size: InputSize
    max_test_scales: PosInt
    max_input_pixels: PosInt
    request_timeout_s: PosFloat
    concurrent_requests: PosInt
    max_request_bytes: PosInt
    workers: PosInt
    worker_healthcheck_s: PosFloat
    malloc_arenas: PosInt
    host: Str
    port: _bounded(int, 1, 65535)
    example_size: InputSize
    predictor_cache: PosInt
    log_onnx: bool


class Rule(Section):
    """One promotion rule (pose.registry.promotion.parse_rules): a metric and exactly one kind."""
    metric: Literal[RULE_METRICS]  # type: ignore[valid-type]
    min: float | None = None
    min_delta: float | None = None
    max_drop: float | None = None

    @model_validator(mode="after")
    def _one_kind(self):
        kinds = [k for k in RULE_RANGES if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise _problem((), None, f"needs exactly one of {', '.join(RULE_RANGES)} (e.g. {{metric: AP, min: 0.1}})")
        lo, hi = RULE_RANGES[kinds[0]]
        value = getattr(self, kinds[0])
        if not lo <= value <= hi:
            raise _problem((kinds[0],), value, f"must be in [{lo:g}, {hi:g}]")
        return self


_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _model_name(value: str) -> str:
    rest = value.replace("{dataset}", "dataset")
    if not _MODEL_NAME.fullmatch(rest):
        raise PydanticCustomError("model_name", "{allowed}", {"allowed": "allowed: letters, digits, '.', '_', '-' "
                                                                         "and the placeholder {dataset} "
                                                                         "(data.dataset)"})
    return value


class RegistrySection(Section):
    model_name: Annotated[str, AfterValidator(_model_name)]
    tracking_uri: Str
    experiment: Str
    rules: Annotated[list[Rule], _non_empty("at least one {metric, min | min_delta | max_drop} rule")]
    bootstrap_samples: PosInt
    bootstrap_seed: Int
    lock_timeout_s: PosFloat
    compare_overlays: NonNegInt


def _cron(value: str) -> str:
    fields = value.split()
    if len(fields) != 5 or not all(re.fullmatch(r"[0-9A-Za-z*/,?-]+", f) for f in fields):
        raise PydanticCustomError("cron", "must be a 5-field cron expression (minute hour day month weekday), "
                                          "e.g. '0 3 * * 1'")
    return value


def _timezone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise PydanticCustomError("timezone", "must be an IANA time zone, e.g. UTC or Europe/Berlin") from None
    return value


def _webhook(value: str) -> str:
    if value and not value.startswith(("http://", "https://")):
        raise PydanticCustomError("url", "must be empty or an http(s):// URL")
    return value


class RetryDelays(Section):
    """Delays (s) before each retry of the network-bound tasks of flows/retrain.py."""
    fetch: list[PosFloat]
    push: list[PosFloat]
    listing: list[PosFloat]


class ScheduleSection(Section):
    deployment: Str
    cron: Annotated[str, AfterValidator(_cron)]
    timezone: Annotated[str, AfterValidator(_timezone)]
    fingerprint: Literal["content", "stat"]
    push: bool
    retry_delays_s: RetryDelays
    notify_webhook: Annotated[str, AfterValidator(_webhook)]


class Params(Section):
    """The whole params.yaml. Cross-section rules: ``data.dataset`` is a ``catalogue`` key,
    each catalogue entry is consistent for its kind (`pose.datasets.catalogue.check_entry`),
    ``loss.heatmap_weights`` has one weight per model output (`pose.codec.OUTPUT_STRIDES`)."""
    data: DataSection
    catalogue: Annotated[dict[str, CatalogueEntry], _non_empty("at least one dataset")]
    generated: GeneratedSection
    validate_: ValidateSection = Field(alias="validate")
    check_scales: CheckScalesSection
    model: ModelSection
    targets: TargetsSection
    augment: AugmentSection
    loss: LossSection
    train: TrainSection
    evaluate: EvaluateSection
    predict: PredictSection
    serve: ServeSection
    registry: RegistrySection
    schedule: ScheduleSection

    @model_validator(mode="after")
    def _cross(self):
        if self.data.dataset not in self.catalogue:
            raise _problem(("data", "dataset"), self.data.dataset,
                           f"must be a catalogue key: {' | '.join(self.catalogue)}")
        n_out = len(OUTPUT_STRIDES)
        if len(self.loss.heatmap_weights) != n_out:
            raise _problem(("loss", "heatmap_weights"), self.loss.heatmap_weights,
                           f"must have {n_out} weights, one per output stride "
                           f"{' and '.join(map(str, OUTPUT_STRIDES))} (pose.codec)")
        return self


def _check_catalogue_entries(params: dict) -> list[tuple[str, Any, str]]:
    """`pose.datasets.catalogue.check_entry` on every entry (kind-specific keys, sigma lengths)."""
    from pose.datasets.catalogue import check_entry

    problems = []
    for name, entry in params["catalogue"].items():
        try:
            check_entry(name, entry)
        except ValueError as exc:
            msg = str(exc)
            prefix = f"catalogue.{name}: "
            problems.append((f"catalogue.{name}", None, msg[len(prefix):] if msg.startswith(prefix) else msg))
    return problems


# ----------------------------------------------------------------------------- errors

def _show(value: Any, limit: int = 60) -> str:
    """A value as the user wrote it (YAML flow style), shortened."""
    if isinstance(value, str):
        text = repr(value)
    else:
        try:
            text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
            text = text.removesuffix("\n...").removesuffix("...").strip()
        except yaml.YAMLError:
            text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


_TYPE_MESSAGES = {
    "missing": "missing; add it (the code has no defaults: every tunable is set in params.yaml)",
    "int_type": "must be an integer", "int_parsing": "must be an integer", "int_from_float": "must be an integer",
    "float_type": "must be a number", "float_parsing": "must be a number", "finite_number": "must be a finite number",
    "bool_type": "must be true or false", "bool_parsing": "must be true or false",
    "string_type": "must be a string", "list_type": "must be a list", "dict_type": "must be a mapping",
    "model_type": "must be a mapping", "model_attributes_type": "must be a mapping",
}


def _describe(err: dict) -> tuple[str, str]:
    """(key path, "<path> = <value>: <allowed>") of one pydantic error."""
    loc, ctx, kind = tuple(err["loc"]), err.get("ctx") or {}, err["type"]
    value: Any = err.get("input")
    show_value = kind != "missing"
    if kind == "unknown_key":
        where = _path(loc) or "params.yaml"
        loc, value = loc + (ctx["key"],), ctx["value"]
        message = f"unknown key; {ctx['hint']}{where} has: {ctx['allowed']}"
    elif kind == "params":
        loc, value, message = loc + tuple(ctx["rel"]), ctx["value"], ctx["message"]
        show_value = value is not None
    elif kind == "literal_error":
        expected = str(ctx.get("expected", ""))
        message = "must be one of: " + " | ".join(re.findall(r"'([^']*)'", expected) or [expected])
    elif kind in ("too_short", "too_long") and "what" not in ctx:
        n = ctx.get("min_length", ctx.get("max_length"))
        message = f"must have {'at least' if kind == 'too_short' else 'at most'} {n} item(s)"
    elif kind in ("value_error", "assertion_error"):
        message = str(ctx.get("error", err["msg"]))
    elif kind in _TYPE_MESSAGES:
        message = _TYPE_MESSAGES[kind]
    else:
        message = err["msg"]
    path = _path(loc) or "(top level)"
    head = f"{path} = {_show(value)}" if show_value else path
    return path, f"{head}: {message}"


def validate_params(params: dict, source: str = "params.yaml") -> Params:
    """Check the params.yaml dict against the schema; return the typed `Params`.

    Raises `ParamsError` whose message is one line: ``<source>: <key path> = <value>: <what is
    allowed>`` for the first problem, plus ``(+N more: <paths>)`` when there are others."""
    problems: list[tuple[str, str]] = []
    model = None
    try:
        model = Params.model_validate(params)
    except ValidationError as exc:
        problems = [_describe(e) for e in exc.errors(include_url=False)]
    if model is not None:
        for path, value, message in _check_catalogue_entries(params):
            problems.append((path, f"{path}: {message}" if value is None else f"{path} = {_show(value)}: {message}"))
    if problems:
        first = problems[0][1]
        more = problems[1:]
        tail = f" (+{len(more)} more: {', '.join(p for p, _ in more[:5])}{', ...' if len(more) > 5 else ''})" \
            if more else ""
        raise ParamsError(f"{source}: {first}{tail}", [(p, m) for p, m in problems])
    return model


def check_section_values(section: str, values: dict, source: str) -> dict:
    """Check some keys of one params.yaml section against the schema's type and range of each
    key (not the section's cross-key rules): e.g. a served model's request overrides of its
    ``evaluate`` settings. Returns ``values`` unchanged.

    Raises `ParamsError`, one line ``<source>: <section>.<key> = <value>: <what is allowed>``
    for the first problem (an unknown key included), ``(+N more: ...)`` when there are others."""
    from pydantic import TypeAdapter

    fields = Params.model_fields
    field = fields.get(section) or next((f for f in fields.values() if f.alias == section), None)
    if field is None:
        raise ParamsError(f"{source}: {section}: unknown params section")
    model = field.annotation
    by_key = {(f.alias or name): f for name, f in model.model_fields.items()}
    problems: list[tuple[str, str]] = []
    for key, value in values.items():
        if key not in by_key:
            problems.append((f"{section}.{key}", f"{section}.{key}: unknown key; allowed: {', '.join(by_key)}"))
            continue
        f = by_key[key]
        try:
            TypeAdapter(Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation).validate_python(value)
        except ValidationError as exc:
            problems += [_describe({**e, "loc": (section, key, *e["loc"])}) for e in exc.errors(include_url=False)]
    if problems:
        more = problems[1:]
        tail = f" (+{len(more)} more: {', '.join(p for p, _ in more[:5])})" if more else ""
        raise ParamsError(f"{source}: {problems[0][1]}{tail}", problems)
    return values


#: keys of ``catalogue.<name>`` that the stages after ``fetch`` read: how the images are read and how the
#: results are scored. The others (mirror, native, sources, ingest) say where the data comes from: only
#: ``fetch`` reads them, and its output folder carries their effect.
READING_KEYS = ("kind", "schema", "native_schema", "sigmas", "native_sigmas", "exif_orientation")


def dataset_reading_entry(params: Params) -> dict:
    """``{"dataset": data.dataset, <READING_KEYS>: value or None}``: what validate, evaluate and register read of
    the catalogue entry of ``data.dataset``. The ``check_params`` stage writes it (``pose check-params
    --dataset-entry``) for those stages to depend on instead of the whole ``catalogue`` section, so listing an
    ingest batch or a source reruns ``fetch`` and, when the fetched folder is unchanged, nothing after it
    (issue 22). ``params``: the checked `Params` (``data`` and ``catalogue`` are read). Raises KeyError when
    ``data.dataset`` is not in the catalogue (the check reports that first)."""
    name = params.data.dataset
    entry = params.catalogue[name].as_dict()
    return {"dataset": name, **{k: entry.get(k) for k in READING_KEYS}}


def restore_hint(path: Path | str = "params.yaml") -> str:
    """How to get back to the committed params file after a bad value, for the end of a params
    error line: ``" (params.yaml differs from the last commit, e.g. left by a failed `dvc exp run -S
    ...`: restore it with `git checkout params.yaml` or `dvc exp apply HEAD`)"``. Empty when the file
    is as committed, untracked, or not in a git repository (git is asked: ``git diff --quiet HEAD``).

    Why: `dvc exp run -S key=value` writes the value into the workspace file before the stages run
    and leaves it there when the `check_params` stage refuses it, so the next `dvc repro` or
    scheduled run fails on the same value."""
    import subprocess

    path = Path(path)
    folder = path.resolve().parent
    try:
        # outside a repository `git diff` falls back to --no-index and exits 1: ask for the repository first
        inside = subprocess.run(["git", "-C", str(folder), "rev-parse", "--verify", "--quiet", "HEAD"],
                                capture_output=True, timeout=10)
        if inside.returncode != 0:    # no repository, or no commit yet
            return ""
        proc = subprocess.run(["git", "-C", str(folder), "diff", "--quiet", "HEAD", "--", path.name],
                              capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    if proc.returncode != 1:          # 0: as committed; 128: untracked / not in the repository
        return ""
    return (f" ({path} differs from the last commit, e.g. left by a failed `dvc exp run -S ...`: restore it "
            f"with `git checkout {path}` or `dvc exp apply HEAD`)")


__all__ = ["load_params", "load_checked_params", "load_sections", "validate_params", "check_section_values",
           "ParamsError",
           "Params", "Section", "DataSection", "CatalogueEntry", "GeneratedSection", "ValidateSection",
           "CheckScalesSection", "ModelSection", "TargetsSection", "AugmentSection", "LossSection", "TrainSection",
           "EvaluateSection", "PredictSection", "ServeSection", "RegistrySection", "ScheduleSection", "flatten",
           "input_size_error", "check_input_size", "SIZE_DIVISOR", "RULE_METRICS", "restore_hint",
           "READING_KEYS", "dataset_reading_entry"]
