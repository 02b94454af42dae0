"""Safe extraction of zip and tar archives (tar, tar.gz, tar.bz2, tar.xz).

Every member is checked *before* anything is written, and the archive is refused
(`UnsafeArchiveError`, naming the archive and the member) when a member

* has an absolute path (``/x``, ``C:\\x``, ``\\\\server\\x``) or a ``..`` component
  ("zip slip", CVE-2018-1002200 class; Python docs, tarfile "Extraction filters");
* is a symbolic or hard link whose target resolves outside the extraction folder;
* is a device, FIFO or other special file (tar);
* or when the archive as a whole looks like a decompression bomb: more than
  ``max_entries`` members, more than ``max_total_bytes`` declared uncompressed bytes,
  or a declared-uncompressed / archive-size ratio above ``max_ratio`` (checked only
  when the total exceeds ``ratio_min_bytes``, so tiny archives of zeros pass).

While writing, the bytes actually produced are counted too, so a member whose header
under-declares its size cannot exceed the limits. Extraction goes into a temporary
folder beside the target, which is renamed to the target only when complete.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import uuid
import zipfile
from pathlib import Path, PurePosixPath

DEFAULT_MAX_TOTAL_BYTES = 256 * 1024 ** 3   # 256 GiB: COCO train2017 is ~19 GB
DEFAULT_MAX_ENTRIES = 5_000_000
DEFAULT_MAX_RATIO = 200.0                   # uncompressed / compressed; JSON compresses ~10x
DEFAULT_RATIO_MIN_BYTES = 64 * 1024 ** 2    # the ratio rule applies above 64 MiB uncompressed


class UnsafeArchiveError(ValueError):
    """An archive member (or the archive as a whole) is unsafe to extract."""


def _check_name(archive: Path, name: str) -> PurePosixPath:
    """Normalise a member name to a relative POSIX path inside the target, or raise."""
    raw = name.replace("\\", "/")
    if raw.startswith("/") or (len(raw) > 1 and raw[1] == ":") or raw.startswith("//"):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} contains '..' (path traversal)")
    if not parts:
        return PurePosixPath(".")
    return PurePosixPath(*parts)


def _check_link(archive: Path, name: str, rel: PurePosixPath, target: str, hard: bool) -> PurePosixPath:
    """Resolve a link's target relative to the extraction root; raise when it leaves it."""
    t = target.replace("\\", "/")
    if t.startswith("/") or (len(t) > 1 and t[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: member {name!r} links to absolute path {target!r}")
    base = [] if hard else list(rel.parent.parts)  # hard link targets are archive-root relative
    for part in t.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not base:
                raise UnsafeArchiveError(f"{archive}: member {name!r} links to {target!r}, outside the target")
            base.pop()
        else:
            base.append(part)
    return PurePosixPath(*base) if base else PurePosixPath(".")


def _check_totals(archive: Path, n: int, total: int, max_entries: int, max_total_bytes: int,
                  max_ratio: float, ratio_min_bytes: int, biggest: str) -> None:
    if n > max_entries:
        raise UnsafeArchiveError(f"{archive}: {n} members exceed the limit of {max_entries}")
    if total > max_total_bytes:
        raise UnsafeArchiveError(f"{archive}: {total} uncompressed bytes exceed the limit of {max_total_bytes} "
                                 f"(largest member {biggest!r})")
    size = max(archive.stat().st_size, 1)
    if total > ratio_min_bytes and total / size > max_ratio:
        raise UnsafeArchiveError(f"{archive}: {total} uncompressed bytes from {size} archive bytes "
                                 f"(ratio {total / size:.0f} > {max_ratio:g}); largest member {biggest!r}")


def _dest(archive: Path, root: Path, rel: PurePosixPath, name: str) -> Path:
    """Output path of a member; its parent must physically resolve inside ``root`` (a file
    must not be written through an already extracted symlink that leads outside)."""
    path = root.joinpath(*rel.parts)
    real_root = root.resolve()
    parent = path.parent.resolve()
    if parent != real_root and real_root not in parent.parents:
        raise UnsafeArchiveError(f"{archive}: member {name!r} would be written outside the target "
                                 f"(through a link, to {parent})")
    return path


def _check_created_link(archive: Path, root: Path, path: Path, name: str) -> None:
    real_root = root.resolve()
    resolved = path.resolve()
    if resolved != real_root and real_root not in resolved.parents:
        path.unlink()
        raise UnsafeArchiveError(f"{archive}: member {name!r} resolves to {resolved}, outside the target")


class _Budget:
    def __init__(self, archive: Path, limit: int):
        self.archive, self.limit, self.used = archive, limit, 0

    def copy(self, src, dst_path: Path, name: str, declared: int) -> None:
        written = 0
        with open(dst_path, "wb") as dst:
            while True:
                block = src.read(1 << 20)
                if not block:
                    break
                written += len(block)
                self.used += len(block)
                if written > declared or self.used > self.limit:
                    raise UnsafeArchiveError(f"{self.archive}: member {name!r} expands beyond its declared size "
                                             f"({declared} bytes) or the total limit ({self.limit} bytes)")
                dst.write(block)


def _extract_zip(archive: Path, dest: Path, limits: dict) -> int:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        plan = []
        total, biggest, big = 0, "", -1
        for info in infos:
            rel = _check_name(archive, info.filename)
            mode = (info.external_attr >> 16) & 0xFFFF
            if stat.S_ISLNK(mode):
                target = zf.read(info).decode("utf-8", "replace")
                _check_link(archive, info.filename, rel, target, hard=False)
                plan.append(("link", info, rel, target))
                continue
            if info.is_dir():
                plan.append(("dir", info, rel, None))
                continue
            if mode and not stat.S_ISREG(mode) and stat.S_IFMT(mode):
                raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is a special file")
            total += info.file_size
            if info.file_size > big:
                big, biggest = info.file_size, info.filename
            plan.append(("file", info, rel, None))
        _check_totals(archive, len(infos), total, biggest=biggest, **limits)
        budget = _Budget(archive, limits["max_total_bytes"])
        for kind, info, rel, target in plan:
            if kind == "dir":
                dest.joinpath(*rel.parts).mkdir(parents=True, exist_ok=True)
                _dest(archive, dest, rel, info.filename)
                continue
            dest.joinpath(*rel.parts).parent.mkdir(parents=True, exist_ok=True)
            path = _dest(archive, dest, rel, info.filename)
            if kind == "file":
                with zf.open(info) as src:
                    budget.copy(src, path, info.filename, info.file_size)
            else:
                os.symlink(target, path)
                _check_created_link(archive, dest, path, info.filename)
    return len(infos)


def _extract_tar(archive: Path, dest: Path, limits: dict) -> int:
    with tarfile.open(archive, "r:*") as tf:
        members = tf.getmembers()
        total, biggest, big = 0, "", -1
        plan = []
        for m in members:
            rel = _check_name(archive, m.name)
            if m.issym() or m.islnk():
                _check_link(archive, m.name, rel, m.linkname, hard=m.islnk())
            elif not (m.isfile() or m.isdir()):
                raise UnsafeArchiveError(f"{archive}: member {m.name!r} is a device, FIFO or other special file")
            if m.isfile():
                total += m.size
                if m.size > big:
                    big, biggest = m.size, m.name
            plan.append((m, rel))
        _check_totals(archive, len(members), total, biggest=biggest, **limits)
        budget = _Budget(archive, limits["max_total_bytes"])
        for m, rel in plan:
            if m.isdir():
                dest.joinpath(*rel.parts).mkdir(parents=True, exist_ok=True)
                _dest(archive, dest, rel, m.name)
                continue
            dest.joinpath(*rel.parts).parent.mkdir(parents=True, exist_ok=True)
            path = _dest(archive, dest, rel, m.name)
            if m.issym():
                os.symlink(m.linkname, path)
                _check_created_link(archive, dest, path, m.name)
            elif m.islnk():
                src = dest.joinpath(*_check_link(archive, m.name, rel, m.linkname, hard=True).parts)
                if not src.is_file() or src.is_symlink():
                    raise UnsafeArchiveError(f"{archive}: hard link {m.name!r} -> {m.linkname!r} has no "
                                             f"regular file to point to")
                shutil.copyfile(src, path)
            else:
                f = tf.extractfile(m)
                if f is None:
                    raise UnsafeArchiveError(f"{archive}: member {m.name!r} cannot be read")
                with f:
                    budget.copy(f, path, m.name, m.size)
                os.chmod(path, 0o644 | (0o111 if m.mode & 0o100 else 0))
    return len(members)


def _verify_links(archive: Path, root: Path) -> None:
    """After extraction: no symlink may resolve outside ``root`` (catches chains of links)."""
    real_root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            if p.is_symlink():
                resolved = p.resolve()
                if resolved != real_root and real_root not in resolved.parents:
                    raise UnsafeArchiveError(f"{archive}: member {p.relative_to(root).as_posix()!r} resolves to "
                                             f"{resolved}, outside the target")


def safe_extract(archive: Path, target: Path, *, max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
                 max_entries: int = DEFAULT_MAX_ENTRIES, max_ratio: float = DEFAULT_MAX_RATIO,
                 ratio_min_bytes: int = DEFAULT_RATIO_MIN_BYTES, overwrite: bool = False) -> dict:
    """Extract a zip or tar archive into the folder ``target``, refusing unsafe content.

    Args:
        archive: path of a ``.zip`` or tar (optionally gz / bz2 / xz compressed) file;
            the format is detected from the content, not the name.
        target: folder to create; the archive's members appear directly inside it.
        max_total_bytes: limit on the summed uncompressed member sizes (bytes).
        max_entries: limit on the number of members.
        max_ratio: limit on uncompressed bytes / archive file bytes.
        ratio_min_bytes: the ratio limit applies only above this many uncompressed bytes.
        overwrite: replace an existing ``target`` (only after a successful extraction).

    Returns:
        ``{"archive": str, "target": str, "members": int, "format": "zip" | "tar"}``.

    Raises:
        UnsafeArchiveError: an unsafe member or bomb-like archive (message names the
            archive and member); nothing is left behind.
        FileExistsError: ``target`` exists and ``overwrite`` is False.
        ValueError: not a zip or tar archive.
    """
    archive, target = Path(archive), Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(f"extraction target exists: {target}")
    limits = {"max_total_bytes": int(max_total_bytes), "max_entries": int(max_entries),
              "max_ratio": float(max_ratio), "ratio_min_bytes": int(ratio_min_bytes)}
    if zipfile.is_zipfile(archive):
        fmt, fn = "zip", _extract_zip
    elif tarfile.is_tarfile(archive):
        fmt, fn = "tar", _extract_tar
    else:
        raise ValueError(f"{archive}: neither a zip nor a tar archive")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.extract-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        n = fn(archive, tmp, limits)
        _verify_links(archive, tmp)
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"archive": str(archive), "target": str(target), "members": n, "format": fmt}


__all__ = ["safe_extract", "UnsafeArchiveError"]
