"""Image-file checks of ``pose validate`` (not great-expectations): the file exists, decodes fully
with Pillow (``ImageFile.LOAD_TRUNCATED_IMAGES = False``: a truncated JPEG is an error), its
decoded size equals the declared ``width`` / ``height`` (in the frame the dataset's images are read
in: `pose.io.EXIF_MODES`), no two images have the same content (sha256), and an EXIF orientation
tag that would turn the pixels (2-8) is flagged with the image id. Files are inspected in parallel
threads (params ``validate.workers``); results are cached by content sha256 (and the sha256 by
path + size + mtime) in a JSON file (``validate.image_cache``) so an unchanged re-run decodes
nothing.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pose.io import atomic_write_bytes, sha256_file
from pose.quality.findings import finding, fmt, json_bytes_compact

try:
    import orjson as _orjson
except ImportError:  # pragma: no cover
    _orjson = None

CACHE_VERSION = 2  # 2: decode results carry the EXIF orientation

#: EXIF orientation tag values (TIFF/EXIF 0x0112): what a viewer does to the stored pixels
EXIF_ORIENTATIONS = {1: "none", 2: "mirror left-right", 3: "rotate 180", 4: "mirror top-bottom",
                     5: "transpose (mirror, rotate 90 CCW)", 6: "rotate 90 CW", 7: "transverse (mirror, rotate 90 CW)",
                     8: "rotate 90 CCW"}


def _load_cache(cache_path: Path | None) -> dict:
    """The image-check cache (an empty one when absent, damaged or of another version)."""
    empty = {"version": CACHE_VERSION, "files": {}, "decoded": {}}
    if cache_path is None or not Path(cache_path).is_file():
        return empty
    try:
        raw = Path(cache_path).read_bytes()
        data = _orjson.loads(raw) if _orjson is not None else json.loads(raw)
    except (OSError, ValueError):
        return empty  # a damaged cache is rebuilt, never trusted
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return empty
    data.setdefault("files", {})
    data.setdefault("decoded", {})
    return data


def _stat_and_hash(path: str, memo: dict | None) -> dict:
    """Stat one image file and get its sha256: from ``memo`` ({size, mtime_ns, sha256}
    cached for this path) when size and mtime are unchanged, else by reading it."""
    out: dict[str, Any] = {"path": path, "exists": False, "sha256": None, "error": None, "hashed": False}
    try:
        st = os.stat(path)
    except OSError:
        return out
    out.update(exists=True, size=st.st_size, mtime_ns=st.st_mtime_ns)
    if memo and memo.get("size") == st.st_size and memo.get("mtime_ns") == st.st_mtime_ns and memo.get("sha256"):
        out["sha256"] = memo["sha256"]
        return out
    try:
        digest = sha256_file(path)
    except OSError as exc:
        out["error"] = f"cannot read: {exc.strerror or exc}"
        return out
    out.update(sha256=digest, hashed=True)
    return out


def _decode(path: str) -> dict:
    """Fully decode one image with Pillow; {width, height, orientation, error} (stored size,
    EXIF orientation tag or None, error None when it decodes)."""
    from PIL import Image

    out: dict[str, Any] = {"width": None, "height": None, "orientation": None, "error": None}
    try:
        with Image.open(path) as im:
            out["width"], out["height"] = im.size
            tag = im.getexif().get(0x0112)
            out["orientation"] = int(tag) if isinstance(tag, int) else None
            im.load()  # decodes every scanline; a truncated file raises OSError
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError...
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


def check_image_files(images: pd.DataFrame, images_dir: Path, *, workers: int,
                      cache_path: Path | None, exif_orientation: str = "ignore") -> tuple[list[dict], dict]:
    """Image-file checks for the rows of an ``images`` table (`pose.quality.tables`).

    Checks, each an ``error`` finding: ``image_file_exists``, ``image_decodes``
    (full Pillow decode with truncated images refused), ``image_size_matches``
    (decoded size == declared width/height, in the frame ``exif_orientation`` reads it: the
    stored one with ``ignore``, turned by the tag with ``apply``), ``image_duplicate`` (same
    sha256 as an earlier image row; the first is kept, the later ones are flagged); and a
    ``warning`` ``image_exif_orientation`` for an image whose EXIF orientation tag (2-8) would
    turn its pixels (with ``ignore`` the annotations and the pipeline use the stored frame, a
    viewer and `pose predict` show it turned; with ``apply`` the annotations must be in the
    turned frame).

    Args:
        images: the images table (``image_row, image_id, file_name, width, height``).
        images_dir: folder the ``file_name`` values are relative to.
        workers: threads for hashing/decoding (Pillow releases the GIL while decoding).
        cache_path: JSON cache {path -> (size, mtime_ns, sha256)}, {sha256 -> decode result};
            written atomically; ``None`` disables caching.
        exif_orientation: how the dataset's images are read (`pose.io.EXIF_MODES`; catalogue
            ``exif_orientation``).

    Returns: (findings, stats) with stats counting files hashed / decoded / from cache.
    """
    from PIL import ImageFile

    images_dir = Path(images_dir)
    cache = _load_cache(cache_path)
    names = images["file_name"].to_numpy()
    has_name = np.array([isinstance(n, str) and n != "" for n in names], dtype=bool)
    prefix = os.path.join(str(images_dir), "")
    paths = np.array([prefix + n if ok else "" for n, ok in zip(names, has_name)], dtype=object)
    unique_paths = sorted(set(paths[has_name].tolist()))

    files, decoded = cache["files"], cache["decoded"]
    pool = ThreadPoolExecutor(max_workers=int(workers)) if workers and workers > 1 else None
    mapper = pool.map if pool is not None else map
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        # 1. stat + sha256 of every distinct path (sha256 memoised by path, size, mtime)
        chunks = [unique_paths[i:i + 512] for i in range(0, len(unique_paths), 512)]  # few tasks, little overhead
        results = [r for part in mapper(lambda ps: [_stat_and_hash(p, files.get(p)) for p in ps], chunks) for r in part]
        # 2. decode each distinct content once, unless an earlier run did
        todo: dict[str, str] = {}
        for r in results:
            if r["sha256"] is not None and r["sha256"] not in decoded and r["sha256"] not in todo:
                todo[r["sha256"]] = r["path"]
        fresh = dict(zip(todo, mapper(_decode, list(todo.values()))))
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
        if pool is not None:
            pool.shutdown()
    decoded.update(fresh)
    for r in results:
        if r["sha256"] is not None:
            r.update(decoded[r["sha256"]])
            files[r["path"]] = {"size": r["size"], "mtime_ns": r["mtime_ns"], "sha256": r["sha256"]}

    info = {r["path"]: r for r in results}
    stats = {"files": len(unique_paths), "hashed": sum(r["hashed"] for r in results), "decoded": len(fresh),
             "from_cache": sum(r["exists"] and r["sha256"] is not None and r["sha256"] not in fresh for r in results)}
    if cache_path is not None:
        atomic_write_bytes(Path(cache_path), json_bytes_compact(cache))

    findings: list[dict] = []
    ids = images["image_id"].to_numpy()
    rows = images["image_row"].to_numpy()
    dw = images["width"].to_numpy()
    dh = images["height"].to_numpy()
    sha_col = np.empty(len(images), dtype=object)
    for i in range(len(images)):
        iid, row = ids[i], rows[i]
        if not has_name[i]:
            continue  # reported by the GE check image_file_name_present
        p = paths[i]
        r = info[p]
        if not r["exists"]:
            findings.append(finding("error", "image_file_exists", p,
                                     f"image {fmt(iid)}: file {p} does not exist; restore it or remove the image "
                                     f"and its annotations", image_id=iid, field="file_name", row=row))
            continue
        sha_col[i] = r["sha256"]
        if r["error"]:
            findings.append(finding("error", "image_decodes", p,
                                     f"image {fmt(iid)}: {p} does not decode completely ({r['error']}); re-download "
                                     f"or re-encode the file", image_id=iid, field="file_name", row=row))
            continue
        tag = r.get("orientation")
        turned = tag in (5, 6, 7, 8) and exif_orientation == "apply"
        width, height = (r["height"], r["width"]) if turned else (r["width"], r["height"])
        if tag is not None and tag != 1:
            how = EXIF_ORIENTATIONS.get(tag, f"unknown value {tag}")
            frame = ("the pipeline reads the stored pixels, the frame the annotations must be in (catalogue "
                     "exif_orientation: ignore); a viewer and `pose predict` show it turned" if exif_orientation ==
                     "ignore" else "the pipeline turns the pixels first (catalogue exif_orientation: apply), so "
                     "the annotations must be in the turned frame")
            findings.append(finding("warning", "image_exif_orientation", p,
                                     f"image {fmt(iid)}: EXIF orientation {tag} ({how}) would change the frame; "
                                     f"{frame}", image_id=iid, field="file_name", row=row, orientation=tag))
        if np.isfinite(dw[i]) and np.isfinite(dh[i]) and (width != dw[i] or height != dh[i]):
            findings.append(finding("error", "image_size_matches", p,
                                     f"image {fmt(iid)}: declared {fmt(dw[i])}x{fmt(dh[i])} px but the file decodes "
                                     f"to {width}x{height} px{' (EXIF orientation applied)' if turned else ''}; fix "
                                     f"width/height in images[] (keypoints and boxes are in the declared frame)",
                                     image_id=iid, field="width" if width != dw[i] else "height", row=row,
                                     decoded_width=width, decoded_height=height))
    # Duplicates by content: vectorised group-by over the sha column.
    sha = pd.Series(sha_col)
    dup = sha.notna() & sha.duplicated(keep="first")
    if dup.any():
        first_of = sha[sha.notna()].drop_duplicates(keep="first")
        first_pos = dict(zip(first_of.to_numpy(), first_of.index.to_numpy()))
        for i in np.flatnonzero(dup.to_numpy()):
            j = int(first_pos[sha_col[i]])
            findings.append(finding("error", "image_duplicate", paths[i],
                                     f"image {fmt(ids[i])} ({names[i]}) has the same content (sha256 "
                                     f"{sha_col[i][:12]}...) as image {fmt(ids[j])} ({names[j]}); remove the "
                                     f"duplicate and merge its annotations", image_id=ids[i], field="file_name",
                                     row=rows[i], duplicate_of=ids[j]))
    return findings, stats


__all__ = ["check_image_files", "CACHE_VERSION", "EXIF_ORIENTATIONS"]
