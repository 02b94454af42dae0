"""The dataset catalogue (params.yaml ``catalogue``): keypoint schemas and evaluation sigmas.

Each entry names its ``kind`` (a format of `pose.datasets.formats.FORMATS`), the schema fetch
writes (``schema``: always ``coco17``), the schema of the source (``native_schema``, for
converted kinds: the format's schema), and OKS sigmas for each: ``sigmas`` (17, used for the
COCO-17 OKS of `pose evaluate`) and ``native_sigmas``
(the format's joints, used by its native metric) are either a list of floats or the name of a
format's constant (`pose.datasets.formats.SIGMA_CONSTANTS`: ``COCO_SIGMAS``,
``CROWDPOSE_SIGMAS``, ``AIC_SIGMAS``, ``MPII_SIGMAS``, ...). Absent: ``COCO_SIGMAS`` / the
format's own sigmas.

`evaluation` turns an entry into what the evaluate stage needs: the COCO-17 sigmas and the
format's native metric bound to the entry's native sigmas. `exif_orientation` says how the
dataset's images are read (``exif_orientation``: ``ignore`` | ``apply``; absent: the format's,
``ignore`` for every COCO-style format: the annotations are in the stored pixel frame).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from pose.datasets.formats import FORMATS, KINDS, NATIVE_KINDS, SCHEMA_JOINTS, SIGMA_CONSTANTS, get_format


def resolve_sigmas(value) -> np.ndarray:
    """OKS sigmas from a constant name (`SIGMA_CONSTANTS`) or a list of floats, as float64.
    Raises ValueError on an unknown name or a non-positive / non-numeric list."""
    if isinstance(value, str):
        if value not in SIGMA_CONSTANTS:
            raise ValueError(f"unknown sigmas {value!r}; known: {', '.join(sorted(SIGMA_CONSTANTS))} or a list")
        return np.array(SIGMA_CONSTANTS[value], dtype=np.float64)
    try:
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"sigmas must be a constant name or a list of numbers, got {value!r}") from exc
    if arr.size == 0 or not (arr > 0).all():
        raise ValueError(f"sigmas must be positive numbers, got {value!r}")
    return arr


def entry_sigmas(entry: dict, native: bool = False) -> np.ndarray:
    """(17,) float64: the entry's ``sigmas`` (absent: ``COCO_SIGMAS``); with ``native``, (K,) its
    ``native_sigmas`` (absent: its format's sigmas). Raises ValueError on an unknown constant
    name or kind."""
    if native:
        if "native_sigmas" in entry:
            return resolve_sigmas(entry["native_sigmas"])
        return np.array(get_format(entry.get("kind")).sigmas, dtype=np.float64)
    return resolve_sigmas(entry.get("sigmas", "COCO_SIGMAS"))


def evaluation(entry: dict) -> tuple[np.ndarray, Callable[[dict, list], dict] | None]:
    """What the evaluate stage scores a dataset with: ``(sigmas, native)`` where ``sigmas`` is the
    entry's (17,) COCO-17 OKS sigmas and ``native(gt, results) -> {metric: value}`` its format's
    native metric (`pose.datasets.formats.base.DatasetFormat.native_metrics`) with the entry's
    native sigmas, or None for formats without one (coco, generated). Raises ValueError as
    `check_entry`."""
    fmt = get_format(entry.get("kind"))
    sigmas = entry_sigmas(entry)
    if fmt.native_metrics is None:
        return sigmas, None
    native_sigmas = entry_sigmas(entry, native=True)
    metric = fmt.native_metrics

    def native(gt: dict, results: list) -> dict:
        return metric(gt, results, native_sigmas)

    return sigmas, native


def exif_orientation(entry: dict) -> str:
    """How the images of a catalogue entry are read (`pose.io.EXIF_MODES`): its
    ``exif_orientation``, else its format's (``ignore``). Raises ValueError on an unknown value
    or kind."""
    mode = entry.get("exif_orientation") or get_format(entry.get("kind")).exif_orientation
    if mode not in ("ignore", "apply"):
        raise ValueError(f"exif_orientation must be ignore or apply, got {mode!r}")
    return mode


def check_entry(name: str, entry: dict) -> None:
    """Raise ValueError (naming the entry) when ``entry`` is inconsistent: unknown kind,
    schema other than coco17, sigmas whose length does not match the schema, a native
    kind without ``native_schema`` matching it or without a ``mirror`` / ``sources``."""
    if not isinstance(entry, dict):
        raise ValueError(f"catalogue.{name}: must be a mapping")
    kind = entry.get("kind")
    if kind not in FORMATS:
        raise ValueError(f"catalogue.{name}: unknown kind {kind!r} ({', '.join(KINDS)})")
    if entry.get("schema", "coco17") != "coco17":
        raise ValueError(f"catalogue.{name}: schema must be coco17 (what fetch writes), got {entry.get('schema')!r}")
    n = len(entry_sigmas(entry))
    if n != SCHEMA_JOINTS["coco17"]:
        raise ValueError(f"catalogue.{name}: sigmas have {n} values, coco17 has 17 keypoints")
    if kind in NATIVE_KINDS:
        ns = entry.get("native_schema")
        if ns != FORMATS[kind].schema:
            raise ValueError(f"catalogue.{name}: kind {kind} needs native_schema {FORMATS[kind].schema}, got {ns!r}")
        if "native_sigmas" in entry:
            k = len(entry_sigmas(entry, native=True))
            if k != SCHEMA_JOINTS[ns]:
                raise ValueError(f"catalogue.{name}: native_sigmas have {k} values, {ns} has {SCHEMA_JOINTS[ns]}")
    if kind != "generated" and not entry.get("mirror") and not entry.get("sources"):
        raise ValueError(f"catalogue.{name}: needs a mirror folder or sources")


def check_catalogue(catalogue: dict) -> None:
    """`check_entry` for every entry."""
    for name, entry in catalogue.items():
        check_entry(name, entry)


__all__ = ["resolve_sigmas", "entry_sigmas", "evaluation", "exif_orientation", "check_entry", "check_catalogue"]
