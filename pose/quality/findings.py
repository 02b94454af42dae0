"""Findings of the data quality checks and their JSON form.

A finding is a dict ``{severity: "error"|"warning", check, file, image_id, annotation_id, field,
message}`` (``joint`` / ``row`` / ``value`` / ``line`` / ``column`` added where they apply);
``file`` is the file to fix. Reports are written with `pose.io.atomic_write_bytes` of
:func:`json_bytes` (numpy scalars allowed, NaN -> null).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

try:
    import orjson as _orjson
except ImportError:  # pragma: no cover
    _orjson = None


def py_value(v: Any) -> Any:
    """numpy / pandas scalar -> JSON-serialisable Python scalar (NaN -> None)."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def fmt(v: Any) -> str:
    """A table value for a message: integral floats without ``.0``, strings quoted."""
    v = py_value(v)
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return repr(v) if isinstance(v, str) else str(v)


def json_bytes(obj: Any) -> bytes:
    """``obj`` as indented JSON bytes (orjson when installed; numpy scalars allowed)."""
    if _orjson is not None:
        return _orjson.dumps(obj, option=_orjson.OPT_INDENT_2 | _orjson.OPT_SERIALIZE_NUMPY)
    return json.dumps(obj, indent=2, default=py_value).encode()


def json_bytes_compact(obj: Any) -> bytes:
    """``obj`` as compact JSON bytes (orjson when installed)."""
    if _orjson is not None:
        return _orjson.dumps(obj)
    return json.dumps(obj, separators=(",", ":")).encode()



def finding(severity: str, check: str, file: Any, message: str, *, image_id: Any = None,
             annotation_id: Any = None, field: str | None = None, **extra: Any) -> dict:
    """One finding dict (module docstring of :mod:`pose.quality.validate`): ``severity``, ``check``,
    ``file``, ``image_id``, ``annotation_id``, ``field``, ``message`` and the ``extra`` keys."""
    out = {"severity": severity, "check": check, "file": None if file is None else str(file),
           "image_id": py_value(image_id), "annotation_id": py_value(annotation_id), "field": field, "message": message}
    out.update({k: py_value(v) for k, v in extra.items()})
    return out


__all__ = ["py_value", "fmt", "json_bytes", "json_bytes_compact", "finding"]
