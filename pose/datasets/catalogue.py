"""The dataset catalogue (params.yaml ``catalogue``): keypoint schemas and evaluation sigmas.

Each entry names the schema fetch writes (``schema``: always ``coco17``), the schema of
the source (``native_schema``, for converted datasets), and OKS sigmas for each:
``sigmas`` / ``native_sigmas`` are either a list of floats or the name of a constant:

=================  ======================  =======  ==========================================
name               module                  joints   origin
=================  ======================  =======  ==========================================
COCO_SIGMAS        pose.datasets.schema    17       pycocotools COCOeval
CROWDPOSE_SIGMAS   pose.datasets.convert   14       crowdpose-api COCOeval
AIC_SIGMAS         pose.datasets.convert   14       AI Challenger keypoint_eval.py
MPII_SIGMAS        pose.datasets.convert   16       mmpose (MPII's own metric is PCKh)
=================  ======================  =======  ==========================================
"""

from __future__ import annotations

import importlib

import numpy as np

#: constant name -> module defining it
SIGMA_CONSTANTS = {
    "COCO_SIGMAS": "pose.datasets.schema",
    "CROWDPOSE_SIGMAS": "pose.datasets.convert",
    "AIC_SIGMAS": "pose.datasets.convert",
    "MPII_SIGMAS": "pose.datasets.convert",
}
#: schema name -> number of keypoints
SCHEMA_JOINTS = {"coco17": 17, "crowdpose14": 14, "aic14": 14, "mpii16": 16}
#: the native schema of each converted kind
KIND_SCHEMA = {"crowdpose": "crowdpose14", "aic": "aic14", "mpii": "mpii16"}
KINDS = ("generated", "coco", *KIND_SCHEMA)


def resolve_sigmas(value) -> np.ndarray:
    """OKS sigmas from a constant name (table above) or a list of floats, as float64.
    Raises ValueError on an unknown name or a non-positive / non-numeric list."""
    if isinstance(value, str):
        if value not in SIGMA_CONSTANTS:
            raise ValueError(f"unknown sigmas {value!r}; known: {', '.join(sorted(SIGMA_CONSTANTS))} or a list")
        return np.asarray(getattr(importlib.import_module(SIGMA_CONSTANTS[value]), value), dtype=np.float64)
    try:
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"sigmas must be a constant name or a list of numbers, got {value!r}") from exc
    if arr.size == 0 or not (arr > 0).all():
        raise ValueError(f"sigmas must be positive numbers, got {value!r}")
    return arr


def entry_sigmas(entry: dict, native: bool = False) -> np.ndarray:
    """The entry's ``sigmas`` (COCO-17, default COCO_SIGMAS) or ``native_sigmas``."""
    if native:
        if "native_sigmas" not in entry:
            raise ValueError("catalogue entry has no native_sigmas")
        return resolve_sigmas(entry["native_sigmas"])
    return resolve_sigmas(entry.get("sigmas", "COCO_SIGMAS"))


def check_entry(name: str, entry: dict) -> None:
    """Raise ValueError (naming the entry) when ``entry`` is inconsistent: unknown kind,
    schema other than coco17, sigmas whose length does not match the schema, a native
    kind without ``native_schema`` matching it or without a ``mirror`` / ``sources``."""
    if not isinstance(entry, dict):
        raise ValueError(f"catalogue.{name}: must be a mapping")
    kind = entry.get("kind")
    if kind not in KINDS:
        raise ValueError(f"catalogue.{name}: unknown kind {kind!r} ({', '.join(KINDS)})")
    if entry.get("schema", "coco17") != "coco17":
        raise ValueError(f"catalogue.{name}: schema must be coco17 (what fetch writes), got {entry.get('schema')!r}")
    n = len(entry_sigmas(entry))
    if n != SCHEMA_JOINTS["coco17"]:
        raise ValueError(f"catalogue.{name}: sigmas have {n} values, coco17 has 17 keypoints")
    if kind in KIND_SCHEMA:
        ns = entry.get("native_schema")
        if ns != KIND_SCHEMA[kind]:
            raise ValueError(f"catalogue.{name}: kind {kind} needs native_schema {KIND_SCHEMA[kind]}, got {ns!r}")
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


__all__ = ["resolve_sigmas", "entry_sigmas", "check_entry", "check_catalogue", "SIGMA_CONSTANTS", "SCHEMA_JOINTS"]
