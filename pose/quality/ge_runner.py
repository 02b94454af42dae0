"""Runs the great-expectations (1.x) suite of :mod:`pose.quality.suite` and maps its results back
to findings.

An ephemeral context, a pandas data source, one expectation suite per table,
``result_format=COMPLETE`` with the id columns as ``unexpected_index_column_names``: every
unexpected row becomes a finding naming its image / annotation id. GE also renders the Data
Docs HTML site, built in a temporary folder and swapped in as a whole (:func:`install_docs`).
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import pandas as pd

from pose.quality.findings import finding, py_value
from pose.quality.suite import ID_COLUMNS, ROW_COLUMN

log = logging.getLogger(__name__)


def run_suite(frames: dict[str, pd.DataFrame], specs: list[dict],
              docs_build_dir: Path | None) -> list[tuple[dict, Any]]:
    """Run one suite per table in an ephemeral GE context; returns (spec, ExpectationValidationResult)
    pairs. Data Docs are built into ``docs_build_dir`` when given."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    site_names: list[str] = []
    if docs_build_dir is not None:
        for name in list(ctx.get_config().data_docs_sites or {}):
            try:
                ctx.delete_data_docs_site(name)
            except Exception:  # pragma: no cover - a GE version without a default site
                pass
        ctx.add_data_docs_site(site_name="pose_quality", site_config={
            "class_name": "SiteBuilder",
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                              "base_directory": str(Path(docs_build_dir).resolve())},
        })
        site_names = ["pose_quality"]
    source = ctx.data_sources.add_pandas("coco_tables")
    by_id: dict[str, dict] = {}
    pairs: list[tuple[dict, Any]] = []
    for table, frame in frames.items():
        table_specs = [s for s in specs if s["table"] == table]
        suite = gx.ExpectationSuite(name=f"coco_{table}")
        for i, s in enumerate(table_specs):
            exp = s["exp"]
            exp.meta = {"check": s["check"], "field": s["field"], "table": table, "key": f"{table}:{i}"}
            exp.severity = "critical" if s["severity"] == "error" else "warning"
            suite.add_expectation(exp)
            by_id[f"{table}:{i}"] = s
        suite = ctx.suites.add(suite)
        batch_def = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe("all")
        vdef = ctx.validation_definitions.add(
            gx.ValidationDefinition(name=f"validate_{table}", data=batch_def, suite=suite))
        checkpoint = ctx.checkpoints.add(gx.Checkpoint(
            name=f"checkpoint_{table}", validation_definitions=[vdef], actions=[],
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ID_COLUMNS[table],
                           "partial_unexpected_count": 20, "return_unexpected_index_query": False}))
        cp_result = checkpoint.run(batch_parameters={"dataframe": frame})
        for run_result in cp_result.run_results.values():
            for r in run_result.results:
                pairs.append((by_id[r.expectation_config.meta["key"]], r))
    try:
        if site_names:  # one build for the three stored validation results (not one per checkpoint)
            ctx.build_data_docs(site_names=site_names)
    finally:
        _release_context(ctx, source.name)
    return pairs


def _release_context(ctx: Any, source_name: str) -> None:
    """Let the context and the DataFrames its batches hold be freed: GE keeps the
    last context in a module-level project manager, which would otherwise pin the
    tables (hundreds of MB at COCO scale) until the next `get_context`."""
    try:
        ctx.data_sources.delete(source_name)
    except Exception:  # pragma: no cover - best effort
        log.debug("could not delete GE data source %s", source_name, exc_info=True)
    try:
        from great_expectations.data_context.data_context.context_factory import project_manager
        if getattr(project_manager, "_ProjectManager__project", None) is ctx:
            project_manager.set_project(None)
    except Exception:  # pragma: no cover - GE internals moved
        log.debug("could not reset the GE project manager", exc_info=True)
    gc.collect()  # GE's object graph has cycles: free it (and the batches' DataFrames) now


def suite_findings(pairs: list[tuple[dict, Any]], frames: dict[str, pd.DataFrame],
                   ann_file: Path) -> tuple[list[dict], list[dict]]:
    """Map each failed expectation's unexpected rows back to findings; also returns
    a per-expectation summary list."""
    findings: list[dict] = []
    summary: list[dict] = []
    for spec, r in pairs:
        table = spec["table"]
        res = r.result or {}
        exc = (r.exception_info or {}) if hasattr(r, "exception_info") else {}
        raised = bool(exc.get("raised_exception")) if isinstance(exc, dict) else False
        summary.append({"check": spec["check"], "table": table, "field": spec["field"],
                        "expectation": r.expectation_config.type, "severity": spec["severity"],
                        "success": bool(r.success), "element_count": py_value(res.get("element_count")),
                        "unexpected_count": py_value(res.get("unexpected_count"))})
        if r.success:
            continue
        if raised:
            findings.append(finding("error", spec["check"], ann_file,
                                     f"expectation {r.expectation_config.type} on {table}.{spec['field']} could not be "
                                     f"evaluated: {exc.get('exception_message')}; check the column's type",
                                     field=spec["field"]))
            continue
        rows = [int(d[ROW_COLUMN[table]]) for d in res.get("unexpected_index_list") or []]
        frame = frames[table]
        sub = frame.iloc[rows]
        for rec in sub.to_dict("records"):
            extra = {"row": rec.get("ann_row", rec.get("image_row"))}
            if table == "keypoints":
                extra["joint"] = rec["joint"]
            findings.append(finding(spec["severity"], spec["check"], ann_file, spec["msg"](rec),
                                     image_id=rec.get("image_id"), annotation_id=rec.get("annotation_id"),
                                     field=spec["field"], table=table, **extra))
    return findings, summary



def install_docs(build_dir: Path, docs_dir: Path) -> None:
    """Replace ``docs_dir`` by the freshly built site (refuses to delete a folder that
    is not empty and does not look like a GE site)."""
    docs_dir = Path(docs_dir)
    if docs_dir.exists():
        entries = list(docs_dir.iterdir())
        if entries and not (docs_dir / "index.html").exists():
            raise ValueError(f"docs_dir {docs_dir} is not empty and holds no Data Docs site; refusing to replace it")
        old = docs_dir.with_name(f".{docs_dir.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(docs_dir, old)
        os.replace(build_dir, docs_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        docs_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(build_dir, docs_dir)


__all__ = ["run_suite", "suite_findings", "install_docs"]
