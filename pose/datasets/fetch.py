"""Materialise one catalogued dataset as ``<out_dir>/`` in COCO layout, with a checksum manifest.

Output layout (COCO 2017, cocodataset.org/#download)::

    <out_dir>/annotations/person_keypoints_<train_split>.json
    <out_dir>/annotations/person_keypoints_<val_split>.json
    <out_dir>/<train_split>/<file_name>      (only images the annotation file references)
    <out_dir>/<val_split>/<file_name>
    <out_dir>/MANIFEST.sha256                ("<sha256 hex>  <relative posix path>" per file, sorted)

Where the data comes from (params.yaml ``catalogue.<name>``):

* ``kind: generated`` -> `pose.datasets.generated.generate_dataset` with params ``generated``
  (synthetic data, see that module).
* ``kind: coco`` with a ``mirror`` folder existing under ``mirror_root`` (params
  ``data.mirror``) -> the two annotation files are copied and the referenced images
  hard-linked (copied when linking is impossible) from the mirror. Never downloaded.
  Hard-linked images share their inode with the mirror: never edit files under
  ``out_dir`` in place (replace them), or pass ``link=False``.
* a native kind (one with a parser in `pose.datasets.formats`: ``crowdpose``, ``aic``,
  ``mpii``, ...) with a ``mirror`` folder -> the native annotation files named by
  ``native: {<split>: {annotations: <rel file>, images: <rel dir>}}`` are converted to
  COCO-17 by `pose.datasets.convert` (the native keypoints are kept per annotation as
  ``native_keypoints``) and the images linked.
* otherwise the entry's ``sources`` are tried in order, the first that works wins:

  - ``"<url>"`` or ``{url: <url>, sha256: <hex>, size: <bytes>}`` where the URL ends in
    ``.zip``, ``.tar``, ``.tar.gz``, ``.tgz``, ``.tar.bz2`` or ``.tar.xz``: an archive,
    downloaded with `pose.datasets.sources.download` and unpacked with
    `pose.datasets.extract.safe_extract`; ``md5`` / ``sha1`` may pin it instead of (or
    besides) ``sha256``, for releases that publish only those (COCO);
  - ``{archives: [{url, sha256 | md5 | sha1, size}, ...]}``: several archives that
    together hold the dataset (COCO: ``annotations_trainval2017.zip`` + ``train2017.zip``
    + ``val2017.zip``);
  - any other URL (``file://`` / plain directory, ``s3://bucket/prefix``,
    ``https://host/prefix``): a COCO-layout tree; the annotation files are fetched
    from ``<url>/annotations/`` and each referenced image from ``<url>/<split>/``.
    A source may name its own S3 ``endpoint_url``.

  For the native kinds a source is a list of archives or a local folder, and may carry
  its own ``native`` layout (paths inside the unpacked archives, each found up to 3
  levels deep), since a release's layout differs from the mirror's.

  In unpacked archives the COCO root is searched for (up to 3 levels deep), so a
  top-level folder in the archive does not matter. Downloads are kept, resumable,
  under ``<out_dir parent>/.downloads/<name>/`` until the fetch succeeds.

* then each batch of new annotated images named by the entry's ``ingest`` list (and the
  ``ingest`` argument) is merged into the train split by `pose.datasets.ingest`
  (new ids, duplicates by content hash dropped, ``ingest_record.json``), inside the
  same temporary folder, so the fetch stays atomic and reproducible. Every batch is read,
  its JSON parsed and every image decoded (`pose.datasets.ingest.prepare_batch`) *first*,
  before anything is downloaded, generated or written: a bad batch fails the fetch at once
  with one `IngestError` line and leaves ``out_dir`` as it was.

``MANIFEST.sha256`` is written and verified by `pose.datasets.manifest`.
Everything is written into a temporary folder beside ``out_dir`` and renamed into
place only when complete and verified; an existing ``out_dir`` is removed only then.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pose.datasets import sources as src_mod
from pose.datasets.formats import KINDS, NATIVE_KINDS
from pose.datasets.manifest import MANIFEST_NAME, ManifestError, all_files, verify_manifest, write_manifest

log = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


class FetchError(RuntimeError):
    """No way to obtain a dataset worked; the message lists what was tried. ``transient``: every
    source failed on the network (`pose.datasets.sources.NetworkError`), so a later retry may work."""

    def __init__(self, message: str, transient: bool = False):
        super().__init__(message)
        self.transient = transient


# ----------------------------------------------------------------------------- helpers

def _link_or_copy(src: Path, dst: Path, link: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copyfile(src, dst)


def _ann_name(split: str) -> str:
    return f"person_keypoints_{split}.json"


def _referenced_files(ann_path: Path) -> tuple[list[str], int, int]:
    """(image file names, image count, annotation count) of a COCO annotation file."""
    try:
        doc = json.loads(Path(ann_path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise FetchError(f"{ann_path}: not valid JSON ({exc})") from exc
    for key in ("images", "annotations"):
        if not isinstance(doc.get(key), list):
            raise FetchError(f"{ann_path}: no '{key}' list, not a COCO annotation file")
    names = []
    for img in doc["images"]:
        fn = str(img.get("file_name", ""))
        p = Path(fn)
        if not fn or p.is_absolute() or ".." in p.parts:
            raise FetchError(f"{ann_path}: unsafe or empty image file_name {fn!r}")
        names.append(fn)
    return sorted(set(names)), len(doc["images"]), len(doc["annotations"])


def _assemble(dst: Path, splits: tuple[str, str], ann_files: dict[str, Path], image_dirs: dict[str, Path],
              link: bool) -> dict[str, dict[str, int]]:
    """Put each split's annotation file and the images it references into ``dst`` (COCO layout)."""
    counts = {}
    for split in splits:
        ann = ann_files[split]
        if not ann.is_file():
            raise FileNotFoundError(f"annotation file missing: {ann}")
        names, n_img, n_ann = _referenced_files(ann)
        # annotation files are always copied (small, and the likeliest to be edited in place:
        # an in-place edit of a hard link would change the mirror); images are linked
        _link_or_copy(ann, dst / "annotations" / _ann_name(split), False)
        (dst / split).mkdir(parents=True, exist_ok=True)
        for fn in names:
            s = image_dirs[split] / fn
            if not s.is_file():
                raise FileNotFoundError(f"image {fn!r} referenced by {ann} is missing: {s}")
            _link_or_copy(s, dst / split / fn, link)
        counts[split] = {"images": n_img, "annotations": n_ann}
    return counts


def _find_coco_root(base: Path, splits: tuple[str, str], max_depth: int = 3) -> tuple[dict, dict]:
    """Locate ``annotations/person_keypoints_<split>.json`` and ``<split>/`` image folders under ``base``."""
    anns: dict[str, Path] = {}
    dirs: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        d = Path(dirpath)
        depth = len(d.relative_to(base).parts)
        dirnames.sort()
        if depth >= max_depth + 1:
            dirnames[:] = []
        for split in splits:
            if d.name == "annotations" and _ann_name(split) in filenames and split not in anns:
                anns[split] = d / _ann_name(split)
            if d.name == split and split not in dirs:
                dirs[split] = d
    missing = [f"annotations/{_ann_name(s)}" for s in splits if s not in anns]
    if missing:
        raise FetchError(f"{base}: no {', '.join(missing)} found (COCO layout expected)")
    for split in splits:  # a split whose annotation file lists no image needs no folder
        dirs.setdefault(split, anns[split].parent.parent / split)
    return anns, dirs


def _is_archive(url: str) -> bool:
    path = urlparse(url).path if "://" in url else url
    return path.lower().endswith(ARCHIVE_SUFFIXES)


def _archive_name(url: str) -> str:
    path = urlparse(url).path if "://" in url else url
    return Path(path).name


def _checks(arc: dict) -> dict:
    """The size / checksum keyword arguments of `download` pinned by an archive spec."""
    return {"size": arc.get("size"), "sha256": arc.get("sha256"), "md5": arc.get("md5"), "sha1": arc.get("sha1")}


def _unpack_archives(archives: list[dict], downloads: Path, work: Path, dl_kwargs: dict, limits: dict) -> Path:
    """Download (verified) and safely extract each archive into ``work/unpacked/<NN>``; returns ``work/unpacked``."""
    from pose.datasets.extract import safe_extract

    unpacked = work / "unpacked"
    unpacked.mkdir(parents=True, exist_ok=True)
    for i, arc in enumerate(archives):
        url = arc["url"]
        local = src_mod.local_path(url)
        checks = _checks(arc)
        if local is not None and local.is_file() and not any(v for k, v in checks.items() if k != "size"):
            path = local  # a local archive without a checksum is read in place
        else:
            path = src_mod.download(url, downloads / _archive_name(url), **checks,
                                    **{**dl_kwargs, **({"endpoint_url": arc["endpoint_url"]}
                                                       if arc.get("endpoint_url") else {})})
        safe_extract(path, unpacked / f"{i:02d}", **limits)
    return unpacked


def _fetch_archives(archives: list[dict], dst: Path, splits: tuple[str, str], downloads: Path,
                    work: Path, dl_kwargs: dict, limits: dict) -> dict:
    unpacked = _unpack_archives(archives, downloads, work, dl_kwargs, limits)
    # COCO's archives each hold one top-level folder; search all unpacked trees
    anns: dict[str, Path] = {}
    dirs: dict[str, Path] = {}
    for sub in sorted(unpacked.iterdir()):
        for split in splits:
            for p in sorted(sub.rglob(_ann_name(split))):
                if p.parent.name == "annotations" and split not in anns:
                    anns[split] = p
            for p in sorted(sub.rglob(split)):
                if p.is_dir() and split not in dirs:
                    dirs[split] = p
    missing = [_ann_name(s) for s in splits if s not in anns]
    if missing:
        raise FetchError(f"archives {[a['url'] for a in archives]} hold no annotations/{missing}")
    for split in splits:
        dirs.setdefault(split, anns[split].parent.parent / split)
    # unpacked files are ours: move (link) them rather than copy
    return _assemble(dst, splits, anns, dirs, link=True)


def _fetch_tree(url: str, dst: Path, splits: tuple[str, str], dl_kwargs: dict, link: bool) -> dict:
    local = src_mod.local_path(url)
    if local is not None:
        if not local.is_dir():
            raise FetchError(f"source {url!r} is not a directory")
        anns, dirs = _find_coco_root(local, splits)
        return _assemble(dst, splits, anns, dirs, link)
    base = url.rstrip("/")
    counts = {}
    for split in splits:
        ann = dst / "annotations" / _ann_name(split)
        src_mod.download(f"{base}/annotations/{_ann_name(split)}", ann, **dl_kwargs)
        names, n_img, n_ann = _referenced_files(ann)
        for fn in names:
            src_mod.download(f"{base}/{split}/{fn}", dst / split / fn, **dl_kwargs)
        (dst / split).mkdir(parents=True, exist_ok=True)
        counts[split] = {"images": n_img, "annotations": n_ann}
    return counts


def _normalise_source(s: Any) -> dict:
    if isinstance(s, str):
        s = {"url": s}
    if not isinstance(s, dict):
        raise ValueError(f"a source must be a URL string or a mapping, got {s!r}")
    extra = {k: s[k] for k in ("native", "endpoint_url") if s.get(k)}
    if "archives" in s:
        arcs = [a if isinstance(a, dict) else {"url": a} for a in s["archives"]]
        if not arcs or any("url" not in a for a in arcs):
            raise ValueError(f"source {s!r}: 'archives' must be a non-empty list of URLs / {{url: ...}}")
        return {"archives": arcs, **extra}
    if "url" not in s:
        raise ValueError(f"source {s!r} has neither 'url' nor 'archives'")
    if _is_archive(str(s["url"])):
        return {"archives": [s], **extra}
    return {"tree": str(s["url"]), **extra}


def _describe(s: dict) -> str:
    return ", ".join(a["url"] for a in s["archives"]) if "archives" in s else s["tree"]


def _fetch_native_source(kind: str, s: dict, entry: dict, dst: Path, splits: tuple[str, str], downloads: Path,
                         work: Path, dl_kwargs: dict, limits: dict, link: bool) -> dict:
    """A native-format source (`pose.datasets.formats.NATIVE_KINDS`): archives (downloaded, verified, unpacked)
    or a local folder."""
    native = s.get("native") or entry.get("native")
    if "archives" in s:
        unpacked = _unpack_archives(s["archives"], downloads, work, dl_kwargs, limits)
        # unpacked files are ours: link them rather than copy
        return _convert_native(kind, sorted(unpacked.iterdir()), native, dst, splits, link=True, search=True)
    local = src_mod.local_path(s["tree"])
    if local is None or not local.is_dir():
        raise FetchError(f"{kind} source {s['tree']!r}: only archives and local folders are supported for "
                         f"native-format datasets")
    return _convert_native(kind, local, native, dst, splits, link)


def _find_rel(roots: list[Path], rel: str, is_dir: bool, max_depth: int = 3) -> Path | None:
    """``<d>/<rel>`` for the first folder ``d`` (breadth first, sorted) up to ``max_depth`` below one of
    ``roots`` where it exists as a folder (``is_dir``) or file; None when nowhere."""
    for root in roots:
        level = [root]
        for _ in range(max_depth + 1):
            nxt = []
            for d in level:
                cand = d / rel
                if (cand.is_dir() if is_dir else cand.is_file()):
                    return cand
                nxt.extend(sorted(p for p in d.iterdir() if p.is_dir() and not p.is_symlink()))
            level = nxt
    return None


def _convert_native(kind: str, root: Path | list[Path], native: Any, dst: Path, splits: tuple[str, str],
                    link: bool, search: bool = False) -> dict:
    """Convert each split's native annotation file (paths of ``native`` relative to ``root``, or
    searched for below the ``root`` folders when ``search``) into ``dst`` in COCO layout."""
    from pose.datasets.convert import convert

    if not isinstance(native, dict):
        raise ValueError(f"catalogue entry of kind {kind!r} needs 'native: {{<split>: {{annotations: <json>, "
                         f"images: <dir>}}}}'")
    roots = root if isinstance(root, list) else [root]
    counts = {}
    for split in splits:
        spec = native.get(split)
        if not isinstance(spec, dict) or "annotations" not in spec or "images" not in spec:
            raise ValueError(f"catalogue entry of kind {kind!r}: native.{split} needs 'annotations' and 'images'")
        if search:
            native_json = _find_rel(roots, str(spec["annotations"]), is_dir=False)
            images_dir = _find_rel(roots, str(spec["images"]), is_dir=True)
            for what, found in (("annotation file", native_json), ("image folder", images_dir)):
                if found is None:
                    key = "annotations" if what == "annotation file" else "images"
                    raise FetchError(f"{kind} {split}: {what} {spec[key]!r} not found in the unpacked sources")
        else:
            native_json, images_dir = roots[0] / spec["annotations"], roots[0] / spec["images"]
        ann = dst / "annotations" / _ann_name(split)
        ann.parent.mkdir(parents=True, exist_ok=True)
        convert(kind, native_json, images_dir, ann)
        names, n_img, n_ann = _referenced_files(ann)
        (dst / split).mkdir(parents=True, exist_ok=True)
        for fn in names:
            _link_or_copy(images_dir / fn, dst / split / fn, link)
        counts[split] = {"images": n_img, "annotations": n_ann}
    return counts


# ----------------------------------------------------------------------------- entry point

def fetch_dataset(name: str, *, catalogue: dict, mirror_root: Path | None, out_dir: Path,
                  generated_params: dict, train_split: str, val_split: str, link: bool = True,
                  retries: int = 3, backoff: float = 1.0, progress: bool = True,
                  endpoint_url: str | None = None, extract_limits: dict | None = None,
                  ingest: list[str] | None = None) -> dict:
    """Materialise dataset ``name`` into ``out_dir`` (COCO layout + ``MANIFEST.sha256``).

    Args:
        name: a key of ``catalogue`` (params ``data.dataset``).
        catalogue: params ``catalogue`` (name -> entry with ``kind`` and, by kind,
            ``mirror``, ``sources``, ``native``); see the module docstring.
        mirror_root: offline mirror root (params ``data.mirror``) or None.
        out_dir: destination folder (params ``data.raw_dir`` / name); replaced atomically.
        generated_params: params ``generated`` (keyword arguments of `generate_dataset`).
        train_split, val_split: split names (params ``data.train_split`` / ``val_split``).
        link: hard-link files from a mirror instead of copying, where the filesystem allows.
        retries, backoff, progress, endpoint_url: passed to `pose.datasets.sources.download`.
        extract_limits: keyword arguments of `pose.datasets.extract.safe_extract`.
        ingest: batches (folders, ``file://`` or ``s3://`` prefixes) merged into the train
            split after the entry's own ``ingest`` list (`pose.datasets.ingest`).

    Returns:
        ``{"dataset": name, "kind": str, "schema": "coco17", "native_schema": str | None,
        "source": str, "out_dir": str, "splits": {split: {"images": int, "annotations": int}},
        "files": int, "ingested": [per-batch summaries]}``; ``source`` is ``"generated"``,
        ``"mirror:<path>"`` or the source URL(s) used; ``splits`` counts include ingested data.

    Raises:
        ValueError: unknown ``name`` (the message lists the known ones) or a malformed entry.
        FetchError: no mirror and no working source (the message lists each failure).
        IngestError: an ingest batch is malformed (nothing is written).
        ManifestError: the written tree does not verify (should not happen).
        FileNotFoundError: an annotation file or a referenced image is missing in a mirror.
    """
    if name not in catalogue:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(sorted(catalogue))}")
    entry = catalogue[name] or {}
    kind = entry.get("kind")
    splits = (train_split, val_split)
    if train_split == val_split:
        raise ValueError(f"train and val split names must differ, got {train_split!r} twice")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{tag}"
    work = out_dir.parent / f".{out_dir.name}.work-{tag}"
    downloads = out_dir.parent / ".downloads" / out_dir.name
    dl_kwargs = {"retries": retries, "backoff": backoff, "progress": progress, "endpoint_url": endpoint_url}
    # S3 batches are staged here (a local batch is read in place); kept apart from `work`, which a
    # failed source clears
    batch_work = out_dir.parent / f".{out_dir.name}.batches-{tag}"
    batches = [str(b) for b in (entry.get("ingest") or [])] + [str(b) for b in (ingest or [])]
    prepared = []
    if batches:  # every batch is read, parsed and decoded before anything is written or removed
        from pose.datasets.ingest import prepare_batch

        try:
            for i, batch in enumerate(batches):
                prepared.append(prepare_batch(batch, batch_work / str(i), retries=retries, backoff=backoff,
                                              progress=progress, endpoint_url=endpoint_url))
        except BaseException:
            shutil.rmtree(batch_work, ignore_errors=True)
            raise
    tmp.mkdir()
    try:
        if kind == "generated":
            from pose.datasets.generated import generate_dataset

            summary = generate_dataset(tmp, **dict(generated_params), train_split=train_split, val_split=val_split)
            counts = {s: {"images": v["images"], "annotations": v["annotations"]}
                      for s, v in summary["splits"].items()}
            source = "generated"
        elif kind == "coco" or kind in NATIVE_KINDS:
            mirror = entry.get("mirror")
            mdir = Path(mirror_root) / mirror if (mirror and mirror_root is not None) else None
            if mdir is not None and mdir.is_dir():
                if kind == "coco":
                    anns = {s: mdir / "annotations" / _ann_name(s) for s in splits}
                    counts = _assemble(tmp, splits, anns, {s: mdir / s for s in splits}, link)
                else:
                    counts = _convert_native(kind, mdir, entry.get("native"), tmp, splits, link)
                source = f"mirror:{mdir}"
            else:
                srcs = [_normalise_source(s) for s in (entry.get("sources") or [])]
                if not srcs:
                    raise FetchError(f"dataset {name!r}: mirror folder "
                                     f"{mdir if mdir is not None else '(none configured)'} does not exist "
                                     f"and the catalogue entry lists no sources")
                errors, network = [], []
                counts = None
                for s in srcs:
                    try:
                        kw = {**dl_kwargs, **({"endpoint_url": s["endpoint_url"]} if s.get("endpoint_url") else {})}
                        if kind != "coco":
                            counts = _fetch_native_source(kind, s, entry, tmp, splits, downloads, work, kw,
                                                          extract_limits or {}, link)
                        elif "archives" in s:
                            counts = _fetch_archives(s["archives"], tmp, splits, downloads, work, kw,
                                                     extract_limits or {})
                        else:
                            counts = _fetch_tree(s["tree"], tmp, splits, kw, link)
                        source = _describe(s)
                        break
                    except Exception as exc:  # try the next source
                        log.warning("source %s of %s failed: %s", _describe(s), name, exc)
                        errors.append(f"{_describe(s)}: {type(exc).__name__}: {exc}")
                        network.append(src_mod.is_network_error(exc))
                        shutil.rmtree(tmp, ignore_errors=True)
                        shutil.rmtree(work, ignore_errors=True)
                        tmp.mkdir()
                if counts is None:
                    raise FetchError(f"dataset {name!r}: every source failed:\n  " + "\n  ".join(errors),
                                     transient=bool(network) and all(network))
        else:
            raise ValueError(f"dataset {name!r}: unknown kind {kind!r} ({' | '.join(KINDS)})")
        ingested = []
        if prepared:
            from pose.datasets.ingest import apply_batch

            for batch in prepared:
                ingested.append(apply_batch(batch, tmp, split=train_split, record_time=False))
            for split in splits:
                _, n_img, n_ann = _referenced_files(tmp / "annotations" / _ann_name(split))
                counts[split] = {"images": n_img, "annotations": n_ann}
        write_manifest(tmp)
        verify_manifest(tmp)
        n_files = len(all_files(tmp))
        if out_dir.exists() or out_dir.is_symlink():
            old = out_dir.parent / f".{out_dir.name}.old-{tag}"
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            else:
                old.unlink()
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(batch_work, ignore_errors=True)
    shutil.rmtree(downloads, ignore_errors=True)
    try:
        downloads.parent.rmdir()  # only when empty
    except OSError:
        pass
    return {"dataset": name, "kind": kind, "schema": entry.get("schema", "coco17"),
            "native_schema": entry.get("native_schema"), "source": source, "out_dir": str(out_dir),
            "splits": counts, "files": n_files, "ingested": ingested}


__all__ = ["fetch_dataset", "FetchError", "ManifestError", "verify_manifest", "write_manifest", "MANIFEST_NAME"]
