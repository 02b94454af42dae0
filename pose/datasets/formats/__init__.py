"""The dataset-format registry: `FORMATS`, one `DatasetFormat` per module of this package.

==========  ===========  ======  ============================================================
kind        schema       joints  module
==========  ===========  ======  ============================================================
generated   coco17       17      generated.py (synthetic, `pose.datasets.generated`)
coco        coco17       17      coco.py
crowdpose   crowdpose14  14      crowdpose.py
aic         aic14        14      aic.py
mpii        mpii16       16      mpii.py
posetrack   posetrack17  17      posetrack.py (PoseTrack 2018)
==========  ===========  ======  ============================================================

Everything that lists formats derives the list from here: the catalogue check
(`pose.datasets.catalogue`), params.yaml's schema (``catalogue.<name>.kind`` / ``native_schema``),
fetch, ingest (``--format``), and the evaluate stage (sigmas, native metric).

Adding a format: write ``<name>.py`` here defining ``FORMAT = DatasetFormat(...)`` (joint names,
sigmas, ``to_coco``, ``parse``, ``native_metrics``; see `base.DatasetFormat`), add it to the tuple
below, add a ``catalogue`` entry to params.yaml and a test with a small native file under
``tests/data/<name>/``.
"""

from __future__ import annotations

import numpy as np

from pose.datasets.formats import aic, coco, crowdpose, generated, mpii, posetrack
from pose.datasets.formats.base import DOMAINS, ConversionError, DatasetFormat

#: kind -> format (catalogue ``kind``), in this order
FORMATS: dict[str, DatasetFormat] = {f.kind: f for f in (
    generated.FORMAT, coco.FORMAT, crowdpose.FORMAT, aic.FORMAT, mpii.FORMAT, posetrack.FORMAT)}
#: every catalogue ``kind``
KINDS: tuple[str, ...] = tuple(FORMATS)
#: the kinds fetch / ingest convert from a native file (those with a parser)
NATIVE_KINDS: tuple[str, ...] = tuple(k for k, f in FORMATS.items() if f.parse is not None)
#: the native schemas of the converted kinds (catalogue ``native_schema``)
NATIVE_SCHEMAS: tuple[str, ...] = tuple(FORMATS[k].schema for k in NATIVE_KINDS)
#: sigma constant name -> (K,) float64 sigmas (catalogue ``sigmas`` / ``native_sigmas`` by name)
SIGMA_CONSTANTS: dict[str, np.ndarray] = {f.sigmas_name: f.sigmas for f in FORMATS.values()}
#: schema name -> number of joints
SCHEMA_JOINTS: dict[str, int] = {f.schema: len(f.keypoint_names) for f in FORMATS.values()}


def get_format(kind: str) -> DatasetFormat:
    """The format of catalogue kind ``kind``. Raises ValueError listing the known kinds."""
    if kind not in FORMATS:
        raise ValueError(f"unknown dataset format {kind!r} ({' | '.join(KINDS)})")
    return FORMATS[kind]


def dataset_domain(catalogue, dataset: str) -> str:
    """The image domain (`base.DOMAINS`: ``photos`` | ``generated``) of catalogue entry ``dataset``
    of the params ``catalogue`` section (name -> `pose.params.CatalogueEntry`): its format's
    `DatasetFormat.domain`. Raises ValueError for a name that is not a catalogue key or an unknown kind."""
    entry = (catalogue or {}).get(dataset)
    if entry is None:
        raise ValueError(f"data.dataset {dataset!r}: not a catalogue key")
    return get_format(str(entry.kind)).domain


__all__ = ["DOMAINS", "FORMATS", "KINDS", "NATIVE_KINDS", "NATIVE_SCHEMAS", "SIGMA_CONSTANTS", "SCHEMA_JOINTS",
           "DatasetFormat", "ConversionError", "dataset_domain", "get_format"]
