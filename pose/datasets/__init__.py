"""Datasets: the COCO-17 schema, the dataset-format registry (`pose.datasets.formats`: one
module per format with its joints, sigmas, mapping to COCO-17, parser and native metric),
GENERATED (synthetic) data, fetching real data into COCO layout (offline mirror, https / s3 /
file sources, verified downloads, safe archive extraction, `pose.datasets.manifest`), the
catalogue's schemas and sigmas, and ingesting batches of new annotated images.

Submodules are imported lazily (``from pose.datasets import fetch_dataset`` works, but
importing ``pose.datasets.schema`` does not pull in OpenCV, boto3 or requests).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "generate_dataset": "pose.datasets.generated",
    "fetch_dataset": "pose.datasets.fetch",
    "verify_manifest": "pose.datasets.manifest",
    "write_manifest": "pose.datasets.manifest",
    "ManifestError": "pose.datasets.manifest",
    "FORMATS": "pose.datasets.formats",
    "FetchError": "pose.datasets.fetch",
    "download": "pose.datasets.sources",
    "list_s3": "pose.datasets.sources",
    "upload_s3": "pose.datasets.sources",
    "DownloadError": "pose.datasets.sources",
    "ChecksumError": "pose.datasets.sources",
    "CredentialsError": "pose.datasets.sources",
    "ingest_batch": "pose.datasets.ingest",
    "IngestError": "pose.datasets.ingest",
    "check_catalogue": "pose.datasets.catalogue",
    "entry_sigmas": "pose.datasets.catalogue",
    "safe_extract": "pose.datasets.extract",
    "UnsafeArchiveError": "pose.datasets.extract",
    "convert": "pose.datasets.convert",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pose.datasets' has no attribute {name!r}")
