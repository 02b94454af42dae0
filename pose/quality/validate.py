"""``pose validate``: data validation of a COCO person-keypoint annotation file and its images.

Two kinds of checks, one report:

* **Annotation checks** run as a great-expectations (1.x) suite over the pandas
  tables of `pose.quality.tables` (ephemeral context, pandas data source, one
  expectation suite per table, ``result_format=COMPLETE`` with the id columns as
  ``unexpected_index_column_names``). Every unexpected row is mapped back to a
  finding naming its image / annotation id. GE also renders the Data Docs HTML site.
* **Image checks** (not GE): the file exists, decodes fully with Pillow
  (``ImageFile.LOAD_TRUNCATED_IMAGES = False``: a truncated JPEG is an error), its
  decoded size equals the declared ``width``/``height``, and no two images have
  the same content (sha256). Files are inspected in parallel threads; results are
  cached by content sha256 (and the sha256 by path + size + mtime) in a JSON file so
  an unchanged re-run decodes nothing.

Findings are dicts ``{severity: "error"|"warning", check, file, image_id,
annotation_id, field, message}`` (``joint``/``row``/``value``/``line``/``column``
added where they apply). ``file`` is the file to fix: the annotation JSON for
annotation findings, the image for image-file findings.

The pieces: :mod:`pose.quality.suite` (the expectations, the left/right heuristic),
:mod:`pose.quality.ge_runner` (running GE, Data Docs), :mod:`pose.quality.images` (image
checks), :mod:`pose.quality.quarantine` and :mod:`pose.quality.findings`.

Source of the rules: COCO data format spec (cocodataset.org/#format-data,
"Keypoint Detection"): ``bbox = [x, y, w, h]`` in image px, ``keypoints`` = 17
``(x, y, v)`` triples with ``v`` in {0, 1, 2}, ``num_keypoints`` = count of
``v > 0``, crowd regions (``iscrowd = 1``) carry no keypoints.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from pose.io import EXIF_MODES, atomic_write_bytes
from pose.quality.findings import finding, json_bytes, json_bytes_compact
from pose.quality.ge_runner import install_docs, run_suite, suite_findings
from pose.quality.images import check_image_files
from pose.quality.quarantine import quarantine
from pose.quality.suite import check_specs, frames_for_ge
from pose.quality.tables import AnnotationFileError, build_tables, gc_paused, load_coco_json

POLICIES = ("fail", "quarantine")


def validate_dataset(annotations: Path, images_dir: Path, *, on_error: str, bbox_tolerance: float,
                     min_labeled_keypoints: int, lr_swap_min_shoulder_reversal: float, workers: int,
                     report_path: Path, docs_dir: Path | None, cache_path: Path | None,
                     cleaned_path: Path | None = None, check_images: bool = True,
                     exif_orientation: str = "ignore") -> dict:
    """Validate a COCO person-keypoint annotation file and its images; write a JSON report.

    Args:
        annotations: COCO keypoint JSON (cocodataset.org/#format-data).
        images_dir: folder holding the ``file_name`` of every image.
        on_error: ``"fail"`` (``ok`` is False when any error is found) or
            ``"quarantine"`` (errors are removed into ``cleaned_path``; ``ok`` True).
        bbox_tolerance: px a bbox may extend past the image border (params ``validate``).
        min_labeled_keypoints: persons with 0 < labeled keypoints < this are warned about.
        lr_swap_min_shoulder_reversal: torso fraction of the left/right swap warning
            (:func:`pose.quality.suite.suspicious_lr_swaps`, params ``validate``).
        report_path: JSON report, written atomically (temp file + ``os.replace``).
        docs_dir: folder the great-expectations Data Docs HTML site is built into
            (replaced as a whole); ``None`` skips the docs.
        cleaned_path: annotation JSON downstream stages read. Without errors it is a
            byte-identical copy of ``annotations``; with ``quarantine`` the offending
            images/annotations are removed; with ``fail`` and errors (or an unreadable
            file) a stale one is deleted so nothing reads unvalidated data.
        workers: threads for the image checks (params ``validate.workers``).
        cache_path: JSON cache of the image checks (content sha256, params ``validate.image_cache``);
            ``None`` disables it.
        check_images: ``False`` skips the image-file checks (annotation checks only).
        exif_orientation: how the dataset's images are read (`pose.io.EXIF_MODES`; params
            ``catalogue.<dataset>.exif_orientation``, the COCO convention ``ignore`` by
            default): image checks use that frame, an image whose EXIF tag would turn it is
            flagged (`pose.quality.images`), and ``apply`` is written into the cleaned file's
            ``info.exif_orientation`` so every stage reads the images that way
            (`pose.io.dataset_exif`; with ``ignore`` the cleaned file stays byte-identical).

    Returns:
        The report dict: ``ok`` bool, ``policy``, ``summary`` (counts of images,
        annotations, labeled keypoints, errors, warnings, per check), ``expectations``
        (one row per GE expectation), ``findings`` (list of finding dicts, see the
        module docstring), ``removed`` ({"images": [...], "annotations": [...]} each
        with ``row``, ids and ``reasons``; empty unless quarantining), ``cleaned_path``,
        ``docs_dir``, ``timings_s``.

    Raises:
        ValueError: unknown ``on_error`` or a ``docs_dir`` that is a non-site folder.
        A malformed annotation file raises nothing: it becomes one ``json_parse``
        error finding with the parser's line and column, and ``ok`` is False.
    """
    if on_error not in POLICIES:
        raise ValueError(f"on_error must be one of {POLICIES}, got {on_error!r}")
    if exif_orientation not in EXIF_MODES:
        raise ValueError(f"exif_orientation must be one of {EXIF_MODES}, got {exif_orientation!r}")
    annotations, images_dir, report_path = Path(annotations), Path(images_dir), Path(report_path)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    report: dict[str, Any] = {
        "ok": False, "policy": on_error, "annotations": str(annotations), "images_dir": str(images_dir),
        "cleaned_path": None if cleaned_path is None else str(cleaned_path),
        "docs_dir": None if docs_dir is None else str(docs_dir),
        "params": {"bbox_tolerance": float(bbox_tolerance), "min_labeled_keypoints": int(min_labeled_keypoints)},
    }
    try:
        data = load_coco_json(annotations)
    except AnnotationFileError as exc:
        parse_error = finding("error", "json_parse", exc.file, f"{exc.reason}" + (
            f" at line {exc.line}, column {exc.column}" if exc.line is not None else "") +
            "; fix the file (or re-download it) and re-run", field=None, line=exc.line, column=exc.column)
        report.update(summary={"images": 0, "annotations": 0, "errors": 1, "warnings": 0,
                               "by_check": {"json_parse": {"severity": "error", "count": 1}}},
                      expectations=[], findings=[parse_error], removed={"images": [], "annotations": []},
                      timings_s={"total": round(time.perf_counter() - t0, 3)})
        if cleaned_path is not None:
            Path(cleaned_path).unlink(missing_ok=True)
        atomic_write_bytes(report_path, json_bytes(_without_timings(report)))
        return report
    timings["load"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    with gc_paused():
        tables = build_tables(data, annotations)
        frames = frames_for_ge(tables, lr_swap_min_shoulder_reversal)
    timings["tables"] = time.perf_counter() - t1

    person_ids = [c.get("id") for c in data.get("categories", []) if isinstance(c, dict) and c.get("name") == "person"]
    person_ids = person_ids or [1]
    t1 = time.perf_counter()
    specs = check_specs(bbox_tolerance, min_labeled_keypoints, person_ids)
    build_dir = None
    if docs_dir is not None:
        Path(docs_dir).resolve().parent.mkdir(parents=True, exist_ok=True)
        build_dir = Path(tempfile.mkdtemp(prefix=f".{Path(docs_dir).name}.build-", dir=Path(docs_dir).resolve().parent))
    try:
        pairs = run_suite(frames, specs, build_dir)
        if build_dir is not None:
            install_docs(build_dir, Path(docs_dir))
            build_dir = None
    finally:
        if build_dir is not None:
            shutil.rmtree(build_dir, ignore_errors=True)
    timings["great_expectations"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    findings, expectation_summary = suite_findings(pairs, frames, annotations)
    timings["findings"] = time.perf_counter() - t1

    image_stats: dict[str, int] = {}
    if check_images:
        t1 = time.perf_counter()
        img_findings, image_stats = check_image_files(tables.images, images_dir, workers=workers, cache_path=cache_path,
                                                      exif_orientation=exif_orientation)
        for f in img_findings:
            f["table"] = "images"
        findings.extend(img_findings)
        timings["images"] = time.perf_counter() - t1

    errors = sum(f["severity"] == "error" for f in findings)
    warnings = len(findings) - errors
    by_check: dict[str, dict] = {}
    for f in findings:
        entry = by_check.setdefault(f["check"], {"severity": f["severity"], "count": 0})
        entry["count"] += 1
    removed: dict[str, list] = {"images": [], "annotations": []}
    t1 = time.perf_counter()
    if errors and on_error == "quarantine":
        cleaned, removed = quarantine(tables, findings)
        if cleaned_path is not None:
            atomic_write_bytes(Path(cleaned_path), json_bytes_compact(_stamp_exif(cleaned, exif_orientation)))
        ok = True
    elif errors:
        ok = False
        if cleaned_path is not None:
            Path(cleaned_path).unlink(missing_ok=True)
    else:
        ok = True
        if cleaned_path is not None:
            atomic_write_bytes(Path(cleaned_path), annotations.read_bytes() if exif_orientation == "ignore" else
                               json_bytes_compact(_stamp_exif(data, exif_orientation)))
    timings["write"] = time.perf_counter() - t1
    timings["total"] = time.perf_counter() - t0
    report.update(
        ok=ok,
        summary={"images": len(tables.images), "annotations": len(tables.annotations),
                 "labeled_keypoints": int(tables.annotations["n_labeled"].sum()),
                 "errors": errors, "warnings": warnings, "by_check": by_check,
                 "removed_images": len(removed["images"]), "removed_annotations": len(removed["annotations"]),
                 **{f"image_{k}": v for k, v in image_stats.items()}},
        expectations=expectation_summary, findings=findings, removed=removed,
        timings_s={k: round(v, 3) for k, v in timings.items()},
    )
    atomic_write_bytes(report_path, json_bytes(_without_timings(report)))
    return report


def _stamp_exif(coco: dict, mode: str) -> dict:
    """``coco`` with ``info.exif_orientation = mode`` when ``mode`` is ``apply`` (`pose.io.dataset_exif`
    reads it; ``ignore`` is the COCO default and is not written)."""
    if mode == "ignore":
        return coco
    info = coco.get("info") if isinstance(coco.get("info"), dict) else {}
    return {**coco, "info": {**info, "exif_orientation": mode}}


def _without_timings(report: dict) -> dict:
    """The report as written to disk: wall-clock ``timings_s`` stay in the returned dict
    only, so the same data always gives a byte-identical report (DVC outputs compare by hash)."""
    return {k: v for k, v in report.items() if k != "timings_s"}


__all__ = ["validate_dataset", "POLICIES"]
