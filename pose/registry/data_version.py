"""Data versions: what the pipeline trained on, and whether the configured source has changed.

Two different hashes, both recorded on every MLflow run / model version:

* ``data.source_fingerprint`` (:func:`source_fingerprint`): a hash of everything the
  ``fetch`` stage would read for ``data.dataset``, as it is now, computed without fetching
  it: the dataset source (the mirror folder ``data.mirror`` / ``catalogue.<name>.mirror``,
  a ``file://`` / plain folder source, an ``s3://bucket/prefix`` listing (key, size, ETag
  of each object), an archive entry's pinned checksums, or the ``generated`` params for
  the synthetic set) **and** every batch listed under ``catalogue.<name>.ingest``
  (:func:`ingest_fingerprints`: folder content / stat, or S3 listing). The scheduled
  ``retrain`` flow compares it with the registered model's tag ``data.fingerprint`` (the
  fingerprint of the last data a retrain processed) to decide whether there is new data:
  a new batch in the list, or a changed file in a listed batch, is new data.
* ``dataset.version`` (:func:`dataset_version`): the sha256 of the fetched dataset's
  ``MANIFEST.sha256`` (which lists the sha256 of every file the ``fetch`` stage wrote), i.e.
  the content version of the data actually trained and evaluated on.

Folder fingerprints hash every file's bytes (``mode="content"``) or, for very large
folders, only each file's relative path, size and mtime (``mode="stat"``, params
``schedule.fingerprint``).

Params sections read (handed in by the caller, `pose.params`): ``data``, ``catalogue``, ``generated``
and ``schedule`` (``fingerprint``); catalogue entries and ``generated`` are hashed as params.yaml writes
them (`pose.params.Section.as_dict`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from pose.io import sha256_file

if TYPE_CHECKING:
    from pose.params import CatalogueEntry, DataSection, GeneratedSection, ScheduleSection


def folder_fingerprint(root: Path, mode: str = "content") -> tuple[str, int]:
    """(sha256 hex, file count) over every file under ``root`` (sorted relative posix paths).

    ``mode="content"``: path + sha256 of the bytes of each file; ``mode="stat"``: path +
    size + mtime (ns). Hidden files and folders (``.name``) are skipped. Raises
    FileNotFoundError when ``root`` is not a folder, ValueError on an unknown mode."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: source folder not found")
    if mode not in ("content", "stat"):
        raise ValueError(f"fingerprint mode must be content | stat, got {mode!r}")
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in filenames:
            if not fn.startswith("."):
                files.append(Path(dirpath) / fn)
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    total = hashlib.sha256()
    for p in files:
        rel = p.relative_to(root).as_posix()
        total.update(rel.encode() + b"\0")
        if mode == "content":
            total.update(bytes.fromhex(sha256_file(p)))
        else:
            st = p.stat()
            total.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return total.hexdigest(), len(files)


def s3_fingerprint(prefix_url: str, endpoint_url: str | None = None) -> tuple[str, int]:
    """(sha256 hex, object count) over (key, size, ETag) of every object under ``s3://bucket/prefix``."""
    from pose.datasets.sources import parse_s3_url, s3_client

    bucket, prefix = parse_s3_url(prefix_url)
    client = s3_client(endpoint_url)
    rows = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            rows.append(f"{obj['Key']}\0{obj['Size']}\0{obj.get('ETag', '')}")
    rows.sort()
    return hashlib.sha256("\n".join(rows).encode()).hexdigest(), len(rows)


def _spec_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def ingest_fingerprints(data: DataSection, catalogue: Mapping[str, CatalogueEntry], schedule: ScheduleSection,
                        repo: Path | str = ".", mode: str | None = None) -> list[dict]:
    """Fingerprint of every batch listed under ``catalogue.<data.dataset>.ingest``, in list order.

    These are the batches the ``fetch`` stage merges into the train split after fetching
    (`pose.datasets.fetch.fetch_dataset`), so they are part of what DVC would fetch.

    Args:
        data: the params ``data`` section (`pose.params.DataSection`; ``dataset``).
        catalogue: the params ``catalogue`` section (name -> `pose.params.CatalogueEntry`).
        schedule: the params ``schedule`` section (`pose.params.ScheduleSection`; ``fingerprint``).
        repo: folder relative batch paths are resolved against (the repo root, the working
            directory of the DVC stages).
        mode: ``content`` | ``stat`` for folder batches (default: params ``schedule.fingerprint``).

    Returns ``[{"batch": str as listed, "fingerprint": hex, "files": count}]`` (empty when
    nothing is listed). A folder batch is hashed by :func:`folder_fingerprint`, an
    ``s3://`` batch by :func:`s3_fingerprint` (network).

    Raises:
        FileNotFoundError: a local batch folder does not exist (message names the params key).
        ValueError: a batch is neither a folder, a ``file://`` URL nor an ``s3://`` prefix.
    """
    from pose.datasets.sources import local_path

    repo = Path(repo)
    mode = mode or schedule.fingerprint
    name = data.dataset
    out = []
    for i, raw in enumerate(catalogue[name].ingest or []):
        batch, key = str(raw), f"catalogue.{name}.ingest[{i}]"
        if batch.startswith("s3://"):
            fp, n = s3_fingerprint(batch if batch.endswith("/") else batch + "/")
        else:
            path = local_path(batch)
            if path is None:
                raise ValueError(f"params.yaml {key}: unsupported batch location {batch!r} "
                                 f"(allowed: a folder, a file:// URL or an s3://bucket/prefix)")
            path = path if path.is_absolute() else repo / path
            if not path.is_dir():
                raise FileNotFoundError(f"params.yaml {key}: batch folder {path} not found")
            fp, n = folder_fingerprint(path, mode)
        out.append({"batch": batch, "fingerprint": fp, "files": n})
    return out


def fingerprint_uses_network(data: DataSection, catalogue: Mapping[str, CatalogueEntry]) -> bool:
    """True when fingerprinting ``data.dataset`` may list an S3 prefix (an ``s3://`` source or
    ingest batch): the retrain flow retries only such network-bound checks. ``data``: the params
    ``data`` section (`pose.params.DataSection`); ``catalogue``: the params ``catalogue`` section."""
    entry = catalogue[data.dataset].as_dict() if data.dataset in catalogue else {}
    urls = [str(s.get("url", "")) if isinstance(s, dict) else str(s) for s in entry.get("sources") or []]
    return any(u.startswith("s3://") for u in urls + [str(b) for b in entry.get("ingest") or []])


def source_fingerprint(data: DataSection, catalogue: Mapping[str, CatalogueEntry], generated: GeneratedSection,
                       schedule: ScheduleSection, repo: Path | str = ".", mode: str | None = None) -> dict:
    """Fingerprint of what the ``fetch`` stage would read for ``data.dataset``:
    its source and its ingest batches (module docstring).

    Args:
        data: the params ``data`` section (`pose.params.DataSection`).
        catalogue: the params ``catalogue`` section (name -> `pose.params.CatalogueEntry`).
        generated: the params ``generated`` section (`pose.params.GeneratedSection`; hashed as written).
        schedule: the params ``schedule`` section (`pose.params.ScheduleSection`; ``fingerprint``).
        repo: folder relative paths in params are resolved against (the repo root).
        mode: ``content`` | ``stat`` (default: params ``schedule.fingerprint``).

    Returns ``{"fingerprint": hex, "dataset", "kind", "source": what was hashed, "files": count,
    "ingest": [per-batch dicts of :func:`ingest_fingerprints`]}``. Without ingest batches the
    fingerprint is the source's alone (unchanged from before batches were hashed).

    Raises FileNotFoundError / ValueError (a source or listed batch that cannot be read; the
    message names the params key) or botocore errors (S3).
    """
    src = _dataset_source_fingerprint(data, catalogue, generated, Path(repo), mode or schedule.fingerprint)
    batches = ingest_fingerprints(data, catalogue, schedule, repo, mode)
    if not batches:
        return {**src, "ingest": []}
    fp = _spec_hash([src["fingerprint"], [[b["batch"], b["fingerprint"]] for b in batches]])
    return {**src, "fingerprint": fp, "ingest": batches, "files": src["files"] + sum(b["files"] for b in batches),
            "source": f"{src['source']} + {len(batches)} ingest batch{'es' if len(batches) > 1 else ''}"}


def _dataset_source_fingerprint(data: DataSection, catalogue: Mapping[str, CatalogueEntry],
                                generated: GeneratedSection, repo: Path, mode: str) -> dict:
    """Fingerprint of the dataset source alone (mirror, folder, S3 listing, pinned archives, generated params)."""
    name = data.dataset
    entry = catalogue[name].as_dict()          # as written: the hashed specs stay those of the file
    kind = entry.get("kind", "coco")
    splits = [data.train_split, data.val_split]
    base = {"dataset": name, "kind": kind}
    if kind == "generated":
        fp = _spec_hash({"generated": generated.as_dict(), "splits": splits})
        return {**base, "fingerprint": fp, "source": "generated params", "files": 0}
    if entry.get("mirror") and data.mirror:
        mdir = Path(data.mirror) / entry["mirror"]
        mdir = mdir if mdir.is_absolute() else repo / mdir
        if mdir.is_dir():
            fp, n = folder_fingerprint(mdir, mode)
            return {**base, "fingerprint": _spec_hash([fp, splits]), "source": f"mirror:{mdir.resolve()}", "files": n}
    for s in entry.get("sources") or []:
        spec = s if isinstance(s, dict) else {"url": s}
        if "archives" in spec or spec.get("sha256"):
            return {**base, "fingerprint": _spec_hash([spec, splits]), "source": "pinned archives", "files": 0}
        url = str(spec["url"])
        scheme = urlparse(url).scheme
        if scheme == "s3":
            fp, n = s3_fingerprint(url, spec.get("endpoint_url"))
            return {**base, "fingerprint": _spec_hash([fp, splits]), "source": url, "files": n}
        if scheme in ("", "file"):
            path = Path(urlparse(url).path if scheme == "file" else url)
            path = path if path.is_absolute() else repo / path
            if path.is_dir():
                fp, n = folder_fingerprint(path, mode)
                return {**base, "fingerprint": _spec_hash([fp, splits]), "source": f"folder:{path.resolve()}",
                        "files": n}
            if path.is_file():
                return {**base, "fingerprint": _spec_hash([sha256_file(path), splits]), "source": f"file:{path}",
                        "files": 1}
            continue
        # https without a pinned checksum: the URL spec is all we can know without downloading
        return {**base, "fingerprint": _spec_hash([spec, splits]), "source": url, "files": 0}
    raise FileNotFoundError(f"dataset {name!r}: no mirror folder and no readable source to fingerprint")


def dataset_version(raw_dir: Path | str) -> str | None:
    """sha256 of ``<raw_dir>/MANIFEST.sha256`` (the fetched dataset's content version), None if absent."""
    m = Path(raw_dir) / "MANIFEST.sha256"
    if not m.is_file():
        return None
    return sha256_file(m)


def image_list(annotations: Path | str) -> list[dict]:
    """``[{"id", "file_name", "persons"}]`` of a COCO annotation file, sorted by id (``persons``:
    non-crowd annotations with keypoints). Used to diff the data of two runs."""
    data = json.loads(Path(annotations).read_text())
    persons: dict[int, int] = {}
    for a in data.get("annotations", []):
        if not a.get("iscrowd", 0) and a.get("num_keypoints", 0) > 0:
            persons[a["image_id"]] = persons.get(a["image_id"], 0) + 1
    return sorted(({"id": int(im["id"]), "file_name": im.get("file_name", ""), "persons": persons.get(im["id"], 0)}
                   for im in data.get("images", [])), key=lambda r: r["id"])
