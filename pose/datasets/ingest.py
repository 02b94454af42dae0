"""Merge a batch of new annotated images into a fetched dataset's training split.

A *batch* is a folder (plain path or ``file://``) or an ``s3://bucket/prefix`` holding one
COCO keypoint JSON and the images it names::

    <batch>/<anything>.json  or  <batch>/annotations/<anything>.json   (exactly one, or pass
                                                                         ``annotations=``)
    <batch>/<file_name>  or  <batch>/images/<file_name>  or  <batch>/<json stem split>/<file_name>

(``person_keypoints_val2017.json`` also finds its images in ``<batch>/val2017/``, so a
COCO release folder is a valid batch.) ``fmt=<kind>`` of a native format (`FORMATS`:
``crowdpose``, ``aic``, ``mpii``, ...) converts the batch with `pose.datasets.convert` first.

What `ingest_batch` does to ``<into>`` (a folder written by `pose.datasets.fetch`):

* every batch image is hashed (SHA-256 of the bytes); one whose content is already in the
  dataset (hashes from ``MANIFEST.sha256``), or repeated within the batch, is dropped with
  its annotations (recorded as a duplicate). That includes images of the *other* splits:
  a validation image must not leak into training (``skipped_in_other_splits``);
* the others get new image ids above the split's largest (the same for annotation ids,
  above the largest id of *both* splits, so ids stay unique dataset-wide); an image whose
  ``file_name`` is taken by a different image is stored as ``<stem>-<sha256[:12]><ext>``;
* the split's annotation file is rewritten with the new images and annotations,
  ``ingest_record.json`` gets one more entry (source, batch digest, counts, id map,
  duplicates), and ``MANIFEST.sha256`` is rewritten (`pose.datasets.manifest`; only new /
  changed files re-hashed);
* all of it in a temporary copy of ``<into>`` (files hard-linked, the rewritten ones
  copied) that is exchanged with ``<into>`` in one atomic rename (``renameat2``
  ``RENAME_EXCHANGE``) only when complete and verified; concurrent ingests of one folder are
  serialised by an ``flock`` on the folder. A failure leaves ``<into>``
  untouched and no temporary folder behind.

A batch whose images are all duplicates changes nothing (no record, no rewrite): ingesting
the same batch twice is a no-op.

Validation (`prepare_batch`; `IngestError`, one line naming the batch, the file and the
offending record), all of it **before** the dataset is locked, copied or written: exactly one
annotation file that parses as JSON (else: file, line and column), COCO structure (``images`` /
``annotations`` lists, unique image ids, safe relative ``file_name`` s), 17 keypoints per
annotation (names, when the category lists them, equal to COCO's), ``[x, y, w, h]`` boxes,
every annotation on a listed image, every image present and **fully decoded** by Pillow
(truncated files refused), and its size equal to the JSON's ``width`` / ``height``. These are
data errors: the batch is wrong, and no retry can help (only downloads from S3 are retried,
by `pose.datasets.sources`).
"""

from __future__ import annotations

import copy
import ctypes
import datetime as _dt
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pose.datasets import sources as src_mod
from pose.datasets.formats import NATIVE_KINDS
from pose.datasets.manifest import MANIFEST_NAME, check_listing, read_manifest, update_manifest
from pose.datasets.schema import KEYPOINT_NAMES, NUM_JOINTS
from pose.io import atomic_write_json, sha256_file

log = logging.getLogger(__name__)

RECORD_NAME = "ingest_record.json"
#: batch formats ``ingest_batch(fmt=...)`` accepts: COCO-17 as is, or a native format converted first
FORMATS = ("coco", *NATIVE_KINDS)
_REWRITTEN = {MANIFEST_NAME, RECORD_NAME}


class IngestError(ValueError):
    """A batch cannot be merged (malformed, missing images, unknown target); nothing was changed."""


# ----------------------------------------------------------------------------- batch access

def _ann_name(split: str) -> str:
    return f"person_keypoints_{split}.json"


def _stage_batch(batch: str, work: Path, *, retries: int, backoff: float, progress: bool,
                 endpoint_url: str | None) -> Path:
    """A local folder holding the batch: the batch itself, or a download of an S3 prefix into ``work``."""
    if batch.startswith("s3://"):
        prefix = batch if batch.endswith("/") else batch + "/"
        urls = src_mod.list_s3(prefix, endpoint_url=endpoint_url)
        if not urls:
            raise IngestError(f"batch {batch}: no objects under this S3 prefix")
        local = work / "s3-batch"
        local.mkdir(parents=True, exist_ok=True)
        for url in urls:
            rel = PurePosixPath(url[len(prefix):])
            if not rel.parts or rel.is_absolute() or ".." in rel.parts:
                raise IngestError(f"batch {batch}: unsafe object key {url!r}")
            src_mod.download(url, local.joinpath(*rel.parts), retries=retries, backoff=backoff,
                             progress=progress, endpoint_url=endpoint_url)
        return local
    if "://" in batch and not batch.startswith("file://"):
        raise IngestError(f"batch {batch}: unsupported location (a folder, file:// URL or s3://bucket/prefix)")
    path = src_mod.local_path(batch)
    if path is None or not path.is_dir():
        raise IngestError(f"batch {batch}: not a folder")
    return path


def _find_annotations(root: Path, batch: str, annotations: str | None) -> Path:
    if annotations:
        p = root / annotations
        if not p.is_file():
            raise IngestError(f"batch {batch}: annotation file {annotations!r} not found")
        return p
    found = sorted(root.glob("*.json")) + sorted((root / "annotations").glob("*.json"))
    found = [p for p in found if p.name != RECORD_NAME]
    if len(found) != 1:
        raise IngestError(f"batch {batch}: expected exactly one annotation JSON in the batch folder or its "
                          f"annotations/ folder, found {len(found)} ({', '.join(p.name for p in found) or 'none'}); "
                          f"pass annotations=<relative path>")
    return found[0]


def _image_dirs(root: Path, ann: Path) -> list[Path]:
    dirs = [root, root / "images"]
    stem = ann.stem
    if stem.startswith("person_keypoints_"):
        dirs.append(root / stem[len("person_keypoints_"):])
    dirs.append(ann.parent)
    out = []
    for d in dirs:
        if d not in out:
            out.append(d)
    return out


def _load_batch(root: Path, batch: str, fmt: str, annotations: str | None, work: Path) -> tuple[dict, list[Path]]:
    """The batch's COCO document (converted when ``fmt`` is native) and the folders its images are in."""
    if fmt not in FORMATS:
        raise IngestError(f"batch {batch}: unknown format {fmt!r} ({', '.join(FORMATS)})")
    ann = _find_annotations(root, batch, annotations)
    dirs = _image_dirs(root, ann)
    if fmt != "coco":
        from pose.datasets.convert import convert

        images_dir = next((d for d in dirs if d.is_dir() and any(d.iterdir())), root)
        work.mkdir(parents=True, exist_ok=True)
        out = work / "converted.json"
        try:
            convert(fmt, ann, images_dir, out)
        except (ValueError, FileNotFoundError) as exc:
            raise IngestError(f"batch {batch}: {fmt} conversion failed: {exc}") from exc
        ann, dirs = out, [images_dir]
    try:
        doc = json.loads(ann.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise IngestError(f"batch {batch}: {ann} is not valid JSON: {exc.msg} at line {exc.lineno} column "
                          f"{exc.colno}") from exc
    except UnicodeDecodeError as exc:
        raise IngestError(f"batch {batch}: {ann} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    return doc, dirs


# ----------------------------------------------------------------------------- validation

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _validate(doc: Any, batch: str) -> None:
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) or \
            not isinstance(doc.get("annotations"), list):
        raise IngestError(f"batch {batch}: not a COCO annotation file (needs 'images' and 'annotations' lists)")
    for cat in doc.get("categories") or []:
        names = cat.get("keypoints")
        if names is not None and list(names) != list(KEYPOINT_NAMES):
            raise IngestError(f"batch {batch}: category {cat.get('name')!r} has keypoints {names!r}, not COCO-17 "
                              f"(convert it first: format {' | '.join(NATIVE_KINDS)})")
    ids = set()
    for img in doc["images"]:
        if not isinstance(img, dict) or not _is_int(img.get("id")):
            raise IngestError(f"batch {batch}: image record without an integer id: {img!r}")
        if img["id"] in ids:
            raise IngestError(f"batch {batch}: image id {img['id']} appears twice")
        ids.add(img["id"])
        fn = img.get("file_name")
        p = PurePosixPath(str(fn or "").replace("\\", "/"))
        if not fn or p.is_absolute() or ".." in p.parts or str(fn).startswith("/"):
            raise IngestError(f"batch {batch}: image {img['id']} has an unsafe or empty file_name {fn!r}")
    for a in doc["annotations"]:
        if not isinstance(a, dict):
            raise IngestError(f"batch {batch}: annotation is not an object: {a!r}")
        aid = a.get("id")
        if a.get("image_id") not in ids:
            raise IngestError(f"batch {batch}: annotation {aid} refers to image {a.get('image_id')!r}, not in 'images'")
        kps = a.get("keypoints")
        if not isinstance(kps, list) or len(kps) != 3 * NUM_JOINTS:
            raise IngestError(f"batch {batch}: annotation {aid} has {None if kps is None else len(kps)} keypoint "
                              f"values, COCO-17 needs {3 * NUM_JOINTS}")
        bbox = a.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise IngestError(f"batch {batch}: annotation {aid} has no [x, y, w, h] bbox")
        if a.get("category_id", 1) != 1:
            raise IngestError(f"batch {batch}: annotation {aid} has category_id {a.get('category_id')}, "
                              f"person (1) expected")


def _locate(img: dict, dirs: list[Path], batch: str) -> Path:
    for d in dirs:
        p = d / img["file_name"]
        if p.is_file():
            return p
    raise IngestError(f"batch {batch}: image {img['file_name']!r} (id {img['id']}) not found in "
                      f"{', '.join(str(d) for d in dirs)}")


def _check_image(path: Path, img: dict, batch: str) -> tuple[int, int]:
    """(width, height) of the batch image ``path`` after decoding every scanline with Pillow
    (``ImageFile.LOAD_TRUNCATED_IMAGES`` off: a truncated JPEG is an error, as in `pose validate`).
    Raises IngestError naming the file and the image record."""
    from PIL import Image, ImageFile

    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(path) as im:
            w, h = im.size
            im.load()  # decodes the whole image: a truncated or corrupt file raises here
    except Exception as exc:  # Pillow: OSError, SyntaxError, ValueError, DecompressionBombError, ...
        raise IngestError(f"batch {batch}: image {img['file_name']!r} (id {img['id']}, {path}) does not decode: "
                          f"{type(exc).__name__}: {exc}") from exc
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
    if (img.get("width") and img["width"] != w) or (img.get("height") and img["height"] != h):
        raise IngestError(f"batch {batch}: image {img['file_name']!r} (id {img['id']}) is {w}x{h} but the JSON "
                          f"says {img.get('width')}x{img.get('height')}")
    return w, h


@dataclass
class PreparedBatch:
    """A batch read and checked in full (`prepare_batch`), ready to merge into any dataset folder.

    ``located``: per batch image, sorted by batch id: (image record, local path, sha256 hex,
    decoded width, decoded height)."""
    batch: str
    fmt: str
    doc: dict
    located: list[tuple[dict, Path, str, int, int]]


def prepare_batch(batch: str | Path, work: Path, *, fmt: str = "coco", annotations: str | None = None,
                  retries: int = 3, backoff: float = 1.0, progress: bool = False,
                  endpoint_url: str | None = None) -> PreparedBatch:
    """Read and check a whole batch before anything of a dataset is touched: stage it (an S3
    prefix is downloaded into ``work``, a native format converted there; a local COCO batch is
    read in place and ``work`` stays uncreated), parse its JSON, check its structure, locate and
    fully decode every image (`_check_image`) and hash it.

    Raises:
        IngestError: malformed JSON (file, line and column), a bad record (batch, image / annotation
            id, field), a missing or undecodable image (file and image id). Data errors: retrying
            cannot help.
        DownloadError (`NetworkError` for network failures after the retries): an S3 batch could
            not be read."""
    batch = str(batch)
    root = _stage_batch(batch, Path(work), retries=retries, backoff=backoff, progress=progress,
                        endpoint_url=endpoint_url)
    doc, dirs = _load_batch(root, batch, fmt, annotations, Path(work))
    _validate(doc, batch)
    located = []
    for img in sorted(doc["images"], key=lambda i: i["id"]):
        path = _locate(img, dirs, batch)
        w, h = _check_image(path, img, batch)
        located.append((img, path, sha256_file(path), w, h))
    return PreparedBatch(batch=batch, fmt=fmt, doc=doc, located=located)


# ----------------------------------------------------------------------------- target

def _splits_of(root: Path, split: str) -> list[str]:
    """``split`` first, then every other split with an annotation file in ``root/annotations``."""
    others = sorted(p.name[len("person_keypoints_"):-len(".json")]
                    for p in (root / "annotations").glob("person_keypoints_*.json"))
    return [split] + [s for s in others if s != split]


def _image_hashes(root: Path, splits: list[str], manifest: dict[str, str] | None) -> dict[str, str]:
    """sha256 -> ``<split>/<file>`` of every image of ``splits`` (first split wins on a tie); from
    the manifest when there is one, else by hashing."""
    out: dict[str, str] = {}
    for split in splits:
        prefix = f"{split}/"
        if manifest is not None:
            for rel, digest in sorted(manifest.items()):
                if rel.startswith(prefix):
                    out.setdefault(digest, rel)
        elif (root / split).is_dir():
            for p in sorted((root / split).rglob("*")):
                if p.is_file():
                    out.setdefault(sha256_file(p), p.relative_to(root).as_posix())
    return out


def _max_ids(root: Path) -> tuple[int, int]:
    """(largest image id of any split, largest annotation id of any split) in ``root/annotations``."""
    max_img = max_ann = 0
    for p in sorted((root / "annotations").glob("person_keypoints_*.json")):
        doc = json.loads(p.read_text(encoding="utf-8"))
        for img in doc.get("images", []):
            if _is_int(img.get("id")):
                max_img = max(max_img, img["id"])
        for a in doc.get("annotations", []):
            if _is_int(a.get("id")):
                max_ann = max(max_ann, a["id"])
    return max_img, max_ann


class _FolderLock:
    """``flock`` on the folder itself (re-taken when the folder was replaced while waiting)."""

    def __init__(self, path: Path):
        self.path, self.fd = path, None

    def __enter__(self):
        for _ in range(1000):
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:  # only between the two renames of `_swap_dirs`' fallback
                time.sleep(0.01)
                continue
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                return self
            os.close(fd)  # the folder was swapped by the ingest we waited for: lock the new one
        raise OSError(errno.EDEADLK, f"could not lock {self.path}")

    def __exit__(self, *exc):
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _swap_dirs(a: Path, b: Path) -> None:
    """Exchange the folders ``a`` and ``b`` atomically (Linux ``renameat2(RENAME_EXCHANGE)``), so
    ``b`` never stops existing for a concurrent reader or ingest. Where the call is missing (not
    Linux, old glibc, a file system without it) two renames are used: ``b`` is then absent for the
    instant between them."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        renameat2 = None
    if renameat2 is not None:
        at_fdcwd, rename_exchange = -100, 2
        if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), str(a), None, str(b))
    side = a.with_name(a.name + ".swap")
    os.replace(b, side)
    os.replace(a, b)
    os.replace(side, a)


def _copy_tree_linked(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst``: annotation files and the files ingest rewrites are copied, every
    other file hard-linked (copied when linking is impossible). Nothing is ever edited in place."""
    for dirpath, _dirnames, filenames in os.walk(src):
        d = Path(dirpath)
        rel = d.relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        for fn in filenames:
            s, t = d / fn, dst / rel / fn
            if (rel == Path(".") and fn in _REWRITTEN) or rel == Path("annotations"):
                shutil.copyfile(s, t)
                continue
            try:
                os.link(s, t)
            except OSError:
                shutil.copyfile(s, t)


# ----------------------------------------------------------------------------- merge

def merge_batch(batch: str | Path, target: Path, *, split: str, fmt: str = "coco", annotations: str | None = None,
                work: Path | None = None, record_time: bool = True, retries: int = 3, backoff: float = 1.0,
                progress: bool = False, endpoint_url: str | None = None) -> dict:
    """`prepare_batch` then `apply_batch` into ``target`` **in place** (no copy, no lock). Same
    arguments and result as `ingest_batch`; ``work`` is a scratch folder (removed)."""
    target = Path(target)
    work = Path(work) if work is not None else target.parent / f".{target.name}.ingest-work-{uuid.uuid4().hex[:8]}"
    try:
        prepared = prepare_batch(batch, work, fmt=fmt, annotations=annotations, retries=retries, backoff=backoff,
                                 progress=progress, endpoint_url=endpoint_url)
        return apply_batch(prepared, target, split=split, record_time=record_time)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def apply_batch(prepared: PreparedBatch, target: Path, *, split: str, record_time: bool = True) -> dict:
    """Merge an already checked batch (`prepare_batch`) into split ``split`` of ``target`` **in
    place** (no copy, no lock): the building block of `ingest_batch` (which runs it in a
    temporary copy) and of `pose.datasets.fetch.fetch_dataset` (in its temporary folder).
    Returns the summary of `ingest_batch`; raises IngestError when ``target`` has no such split."""
    batch, fmt, doc, located = prepared.batch, prepared.fmt, prepared.doc, prepared.located
    target = Path(target)
    ann_path = target / "annotations" / _ann_name(split)
    if not ann_path.is_file():
        raise IngestError(f"{target}: no annotations/{_ann_name(split)} (is it a dataset written by `pose fetch`, "
                          f"and is {split!r} its split?)")
    manifest = read_manifest(target)
    known = _image_hashes(target, _splits_of(target, split), manifest)
    max_img, max_ann = _max_ids(target)
    target_doc = json.loads(ann_path.read_text(encoding="utf-8"))
    taken = {str(i.get("file_name")) for i in target_doc.get("images", [])}
    if (target / split).is_dir():
        taken |= {p.relative_to(target / split).as_posix() for p in (target / split).rglob("*") if p.is_file()}
    anns_by_image: dict[int, list[dict]] = {}
    for a in doc["annotations"]:
        anns_by_image.setdefault(a["image_id"], []).append(a)
    added_images, added_anns, duplicates, id_map, files, changed = [], [], [], {}, [], []
    for img, path, digest, w, h in located:
        if digest in known:  # in this split, in the batch before, or in another split (leakage)
            duplicates.append({"file_name": img["file_name"], "sha256": digest, "duplicate_of": known[digest]})
            continue
        name = str(img["file_name"]).replace("\\", "/")
        if name in taken:
            p = PurePosixPath(name)
            name = str(p.with_name(f"{p.stem}-{digest[:12]}{p.suffix}"))
        max_img += 1
        new = {k: v for k, v in img.items()}
        new.update(id=max_img, file_name=name, width=w, height=h)
        added_images.append(new)
        id_map[str(img["id"])] = max_img
        known[digest] = f"{split}/{name}"
        taken.add(name)
        files.append(name)
        dst = target / split / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dst)
        changed.append(f"{split}/{name}")
        for a in sorted(anns_by_image.get(img["id"], []), key=lambda a: (str(a.get("id")),)):
            max_ann += 1
            na = copy.deepcopy(a)
            na.update(id=max_ann, image_id=max_img, category_id=1)
            na.setdefault("iscrowd", 0)
            if "num_keypoints" not in na:
                na["num_keypoints"] = sum(1 for v in na["keypoints"][2::3] if v > 0)
            if "area" not in na:
                na["area"] = float(na["bbox"][2]) * float(na["bbox"][3])
            added_anns.append(na)
    summary = {
        "batch": batch, "split": split, "format": fmt,
        "batch_sha256": _batch_digest(doc, located),
        "added_images": len(added_images), "added_annotations": len(added_anns),
        "skipped_duplicate_images": len(duplicates),
        "skipped_in_other_splits": sum(1 for d in duplicates if not d["duplicate_of"].startswith(f"{split}/")),
        "skipped_annotations": sum(len(anns_by_image.get(i["id"], [])) for i, *_ in located) - len(added_anns),
        "changed": bool(added_images),
    }
    if not added_images:
        log.info("batch %s: nothing new (%d duplicate images)", batch, len(duplicates))
        return summary
    target_doc.setdefault("images", []).extend(added_images)
    target_doc.setdefault("annotations", []).extend(added_anns)
    atomic_write_json(ann_path, target_doc)
    changed.append(f"annotations/{_ann_name(split)}")
    record_path = target / RECORD_NAME
    record = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else {"batches": []}
    entry = {**summary, "image_id_map": id_map, "files": files, "duplicates": duplicates,
             "annotation_ids": [added_anns[0]["id"], added_anns[-1]["id"]] if added_anns else []}
    if record_time:
        entry["ingested_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    record["batches"].append(entry)
    atomic_write_json(record_path, record, indent=1, sort_keys=True)
    changed.append(RECORD_NAME)
    if manifest is not None:
        update_manifest(target, manifest, changed)
    return summary


def _batch_digest(doc: dict, located: list) -> str:
    h = hashlib.sha256(json.dumps(doc, sort_keys=True).encode())
    for _, _, digest, _, _ in located:
        h.update(bytes.fromhex(digest))
    return h.hexdigest()


def ingest_batch(batch: str | Path, into: Path, *, split: str, fmt: str = "coco", annotations: str | None = None,
                 retries: int = 3, backoff: float = 1.0, progress: bool = False,
                 endpoint_url: str | None = None) -> dict:
    """Merge the batch ``batch`` into split ``split`` of the dataset folder ``into``, atomically.

    Args:
        batch: a folder, ``file://`` URL or ``s3://bucket/prefix`` (layout: module docstring).
        into: a dataset folder written by `pose fetch` (``annotations/person_keypoints_<split>.json``,
            ``<split>/``, ``MANIFEST.sha256``), e.g. ``data/raw/<name>``.
        split: the split to add to (params ``data.train_split``).
        fmt: ``coco`` (default) or a native format converted first (`FORMATS`).
        annotations: the batch's annotation file relative to the batch (default: the only JSON).
        retries, backoff, progress, endpoint_url: for downloading an S3 batch (`sources.download`).

    Returns:
        ``{"batch", "split", "format", "batch_sha256", "added_images", "added_annotations",
        "skipped_duplicate_images" (all dropped images), "skipped_in_other_splits" (of those, the
        ones found in another split), "skipped_annotations", "changed"}``; ``changed`` is False
        when nothing was new (then nothing was written).

    Raises:
        IngestError: malformed batch or target (nothing changed).
        CredentialsError / DownloadError: an S3 batch cannot be read (nothing changed).
    """
    into = Path(into)
    if not into.is_dir():
        raise IngestError(f"{into}: no such dataset folder (run `pose fetch` first)")
    if not (into / "annotations" / _ann_name(split)).is_file():
        raise IngestError(f"{into}: no annotations/{_ann_name(split)} (is it a dataset written by `pose fetch`, "
                          f"and is {split!r} its split?)")
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    work = into.parent / f".{into.name}.ingest-work-{tag}"
    tmp = into.parent / f".{into.name}.ingest-{tag}"
    try:
        # the whole batch is read, parsed and decoded before the dataset is locked, copied or touched
        prepared = prepare_batch(batch, work, fmt=fmt, annotations=annotations, retries=retries, backoff=backoff,
                                 progress=progress, endpoint_url=endpoint_url)
        with _FolderLock(into):
            _copy_tree_linked(into, tmp)
            summary = apply_batch(prepared, tmp, split=split)
            if not summary["changed"]:
                return summary
            if (tmp / MANIFEST_NAME).is_file():
                check_listing(tmp)  # hashes of unchanged files were taken over, the changed ones computed
            _swap_dirs(tmp, into)  # `into` is the new folder, `tmp` the old one (removed below)
            return summary
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


__all__ = ["ingest_batch", "merge_batch", "prepare_batch", "apply_batch", "PreparedBatch", "IngestError",
           "RECORD_NAME", "FORMATS"]
