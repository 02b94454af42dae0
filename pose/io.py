"""Atomic file writes shared by every stage: a temp file in the target's folder, then
``os.replace``. Readers (and DVC) never see a half-written file, and a failed write
leaves the previous file untouched. Also the one file-hash helper (`sha256_file`) and the one
image decoder (`read_image`, with the EXIF orientation of a dataset: `dataset_exif`)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


def default_file_mode() -> int:
    """0666 minus the process umask (what ``open`` would give; mkstemp's files are 0600)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically with the usual file mode; creates parent folders.
    Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, default_file_mode())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path | str, text: str) -> Path:
    """`atomic_write_bytes` of UTF-8 ``text``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, obj: Any, **dumps_kwargs: Any) -> Path:
    """`atomic_write_text` of ``json.dumps(obj, **dumps_kwargs)``. Raises TypeError/ValueError
    from `json.dumps` before anything is written."""
    return atomic_write_text(path, json.dumps(obj, **dumps_kwargs))


#: bytes read per block by `sha256_file`
_HASH_BLOCK = 1 << 20


def sha256_file(path: Path | str) -> str:
    """Hex SHA-256 (64 lowercase chars, as ``sha256sum`` prints it) of a file's bytes, read in
    1 MiB blocks. Raises FileNotFoundError / OSError when the file cannot be read."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_HASH_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


#: How an image file's EXIF orientation tag is treated when it is decoded (catalogue
#: ``<dataset>.exif_orientation``): ``ignore`` keeps the stored pixel frame (what COCO-format
#: annotations are made in, and the official HigherHRNet reads: ``IMREAD_IGNORE_ORIENTATION``);
#: ``apply`` turns the pixels as a photo viewer shows them (a user's photo).
EXIF_MODES: tuple[str, ...] = ("ignore", "apply")


def read_image(path: Path | str, image_id: Any = None, *, exif: str = "apply") -> "np.ndarray":
    """Decode an image file as (H, W, 3) uint8 BGR (OpenCV order).

    ``exif`` (:data:`EXIF_MODES`): ``apply`` (a user's photo, `pose predict`; the default of
    ``cv2.imread``) turns the pixels by the file's EXIF orientation tag; ``ignore`` keeps the
    stored frame, as dataset images must be read (:func:`dataset_exif`: the frame their
    annotations were made in).

    Raises FileNotFoundError when the file is missing and ValueError when it cannot be
    decoded or ``exif`` is unknown; both name the file and, when given, the COCO image id.
    """
    import cv2

    path = Path(path)
    what = f"{path}" + (f" (image id {image_id})" if image_id is not None else "")
    if exif not in EXIF_MODES:
        raise ValueError(f"{what}: exif orientation mode must be one of {', '.join(EXIF_MODES)}, got {exif!r}")
    if not path.exists():
        raise FileNotFoundError(f"{what}: image file not found")
    flags = cv2.IMREAD_COLOR | (cv2.IMREAD_IGNORE_ORIENTATION if exif == "ignore" else 0)
    image = cv2.imread(str(path), flags)
    if image is None:
        raise ValueError(f"{what}: cannot decode image")
    return image


def dataset_exif(coco: dict, source: Path | str | None = None) -> str:
    """How the images of a COCO-format annotation dict are read (:data:`EXIF_MODES`): its
    ``info.exif_orientation``, which ``pose validate`` writes from the catalogue setting
    (params ``catalogue.<dataset>.exif_orientation``), else ``ignore``: COCO-format
    annotations are made in the stored pixel frame. Raises ValueError naming ``source``
    on another value."""
    info = coco.get("info") if isinstance(coco, dict) else None
    mode = info.get("exif_orientation", "ignore") if isinstance(info, dict) else "ignore"
    if mode not in EXIF_MODES:
        raise ValueError(f"{source or 'annotations'}: info.exif_orientation must be one of {', '.join(EXIF_MODES)}, "
                         f"got {mode!r}")
    return mode
