"""The checksum manifest of a dataset folder: ``<root>/MANIFEST.sha256`` in ``sha256sum`` format
(``<sha256 hex>  <relative posix path>\\n`` per file, sorted by path, the manifest itself
excluded), so ``cd <root> && sha256sum -c MANIFEST.sha256`` checks it too.

Written by `pose.datasets.fetch` and updated by `pose.datasets.ingest`; files are hashed with
`pose.io.sha256_file` and the manifest is written atomically (`pose.io`).
"""

from __future__ import annotations

import os
from pathlib import Path

from pose.io import atomic_write_text, sha256_file

MANIFEST_NAME = "MANIFEST.sha256"


class ManifestError(ValueError):
    """A directory does not match its ``MANIFEST.sha256`` (message names the file)."""


def all_files(root: Path) -> list[str]:
    """Relative posix paths of every file below ``root`` except the manifest, sorted."""
    root = Path(root)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in filenames:
            rel = (Path(dirpath) / fn).relative_to(root).as_posix()
            if rel != MANIFEST_NAME:
                out.append(rel)
    return sorted(out)


def _write(root: Path, entries: dict[str, str]) -> Path:
    path = Path(root) / MANIFEST_NAME
    atomic_write_text(path, "".join(f"{entries[rel]}  {rel}\n" for rel in sorted(entries)))
    return path


def write_manifest(root: Path) -> Path:
    """Hash every file below ``root`` and write ``root/MANIFEST.sha256``. Returns its path."""
    root = Path(root)
    return _write(root, {rel: sha256_file(root / rel) for rel in all_files(root)})


def read_manifest(root: Path) -> dict[str, str] | None:
    """``{relative path: sha256 hex}`` of ``root/MANIFEST.sha256``; None when there is none.

    Raises ManifestError on a malformed line (naming the file and line)."""
    mpath = Path(root) / MANIFEST_NAME
    if not mpath.is_file():
        return None
    out: dict[str, str] = {}
    for n, line in enumerate(mpath.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, rel = line.partition("  ")
        if not sep or len(digest) != 64:
            raise ManifestError(f"{mpath}:{n}: malformed line {line!r}")
        out[rel] = digest.lower()
    return out


def update_manifest(root: Path, old: dict[str, str], changed: list[str]) -> Path:
    """Rewrite ``root/MANIFEST.sha256`` from ``old`` with the ``changed`` files re-hashed (the others'
    hashes taken over, not recomputed). Raises ManifestError when the listed and present files
    then differ (naming a few of each)."""
    root = Path(root)
    entries = dict(old)
    for rel in changed:
        entries[rel] = sha256_file(root / rel)
    present = set(all_files(root))
    if present != set(entries):
        extra, missing = sorted(present - set(entries)), sorted(set(entries) - present)
        raise ManifestError(f"{root}: files and {MANIFEST_NAME} disagree "
                            f"(unlisted: {extra[:3]}, missing: {missing[:3]})")
    return _write(root, entries)


def check_listing(root: Path) -> None:
    """Cheap check that the manifest lists exactly the files present (no hashing). Raises ManifestError."""
    listed = set(read_manifest(root) or {})
    if listed != set(all_files(root)):
        raise ManifestError(f"{root}: manifest and files disagree")


def verify_manifest(root: Path) -> None:
    """Check every file under ``root`` against ``root/MANIFEST.sha256`` (files not listed are
    errors too).

    Raises:
        ManifestError: the manifest is missing or malformed, a listed file is missing,
            its SHA-256 differs (message names the file, expected and actual hash), or
            a file is not listed.
    """
    root = Path(root)
    expected = read_manifest(root)
    if expected is None:
        raise ManifestError(f"no {MANIFEST_NAME} in {root}")
    present = set(all_files(root))
    for rel in sorted(expected):
        if rel not in present:
            raise ManifestError(f"{root / rel}: listed in {MANIFEST_NAME} but missing")
        actual = sha256_file(root / rel)
        if actual != expected[rel]:
            raise ManifestError(f"{root / rel}: SHA-256 differs from {MANIFEST_NAME} "
                                f"(expected {expected[rel]}, got {actual})")
    extra = sorted(present - set(expected))
    if extra:
        raise ManifestError(f"{root / extra[0]}: not listed in {MANIFEST_NAME}"
                            + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))


__all__ = ["MANIFEST_NAME", "ManifestError", "all_files", "write_manifest", "read_manifest", "update_manifest",
           "check_listing", "verify_manifest"]
