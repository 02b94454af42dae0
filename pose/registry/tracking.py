"""Where the MLflow tracking server / registry is, and the registered model's name.

The registry is env ``MLFLOW_TRACKING_URI`` when set (team mode: a shared server), else
params ``registry.tracking_uri`` (a local SQLite file by default). The registered model
name is ``registry.model_name`` with ``{dataset}`` replaced by ``data.dataset``, so models
trained on different datasets never compete for the same ``champion``.

Params sections read (handed in by the caller, `pose.params`): ``registry`` and ``data.dataset``.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from pose.registry.errors import RuleError

if TYPE_CHECKING:
    from pose.params import RegistrySection

#: registered model names MLflow round-trips in ``models:/<name>@<alias>`` URIs
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def tracking_uri(reg: RegistrySection) -> str:
    """The tracking / registry URI: env ``MLFLOW_TRACKING_URI`` when set (team mode: a shared
    server), else params ``registry.tracking_uri`` (local SQLite by default).

    Args:
        reg: the params ``registry`` section (`pose.params.RegistrySection`; ``tracking_uri``)."""
    return os.environ.get("MLFLOW_TRACKING_URI", "").strip() or str(reg.tracking_uri)


def registered_model_name(reg: RegistrySection, dataset: str) -> str:
    """``registry.model_name`` with ``{dataset}`` replaced by ``dataset`` (params ``data.dataset``, the
    training data), e.g. ``higherhrnet-{dataset}`` -> ``higherhrnet-coco2017``. A name without placeholder
    is used as is. ``reg``: the params ``registry`` section (`pose.params.RegistrySection`; ``model_name``).

    Raises RuleError for another placeholder or a name MLflow would not round-trip in
    ``models:/<name>@<alias>`` URIs (allowed: letters, digits, ``.``, ``_``, ``-``)."""
    template = str(reg.model_name)
    try:
        name = template.format(dataset=dataset)
    except (KeyError, IndexError, ValueError) as exc:
        raise RuleError(f"registry.model_name {template!r}: the only placeholder is {{dataset}} "
                        f"(data.dataset) ({exc})") from None
    if not NAME_RE.fullmatch(name):
        raise RuleError(f"registry.model_name {template!r} gives {name!r}: allowed are letters, digits, '.', '_', '-'")
    return name


__all__ = ["tracking_uri", "registered_model_name"]
