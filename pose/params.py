"""Reading params.yaml: the single place every tunable lives (no defaults in code)."""

from __future__ import annotations

from pathlib import Path

import yaml


def load_params(path: Path | str = "params.yaml") -> dict:
    """Parse params.yaml into a nested dict. Raises FileNotFoundError / ValueError naming the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: params file not found (run from the repo root or pass --params)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: top level must be a mapping")
    return data


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
