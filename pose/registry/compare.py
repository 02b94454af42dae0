"""`pose compare A B`: a Markdown + HTML review report of two runs / model versions, verdict first.

A and B are MLflow run ids, model version numbers (``3`` / ``v3``), aliases
(``champion`` / ``challenger``) or ``models:/<name>@<alias>`` / ``models:/<name>/<N>``.
A is the baseline (the champion), B the candidate (the challenger); the report is logged as
an artifact of B's run under ``compare/<A>_vs_<B>/`` (``report.md``, ``report.html`` with the
figures embedded, PNGs, ``summary.json``).

Sections:

* **verdict**: which model has the better AP, by how much, the paired image-bootstrap 95% CI
  of the AP difference (:mod:`pose.registry.bootstrap`) and whether it excludes 0; the gate's
  decision for B as challenger against A as champion under ``registry.rules`` with each
  rule's result (:func:`pose.registry.promotion.evaluate_rules`); B's recorded gate decision
  (version tags ``promotion.decision`` / ``promotion.rules``);
* metrics (AP family, per scale, per keypoint, diagnostics) of both models on ONE evaluation
  set (:class:`Basis`): the same data, or, when the data differ, the champion's re-evaluation
  on the challenger's data that the gate cached under ``reeval/<hash16>/`` of its run; only
  without one, the images both evaluation sets contain. "n/a" marks missing values and COCO's
  -1 (no person in that area range);
* data diff: labelled dataset name / version / annotation hashes (shortened), and counts of the
  train / eval images added and removed with the first few file names (logged
  ``data/{train,eval}_images.json``); params diff (flattened params.yaml);
* training curves of both runs overlaid (MLflow per-step metrics ``train/*``);
* side-by-side overlays (ground truth | A | B) of the validation images where the two models
  disagree most (OKS >= 0.5 true positives per image), when the images are found.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pose.io import atomic_write_json, atomic_write_text
from pose.registry.bootstrap import bootstrap_diff
from pose.registry.promotion import (RegistryError, Rule, RuleResult, _download, _value, cached_reevaluation,
                                     evaluate_rules, gate_passed, parse_rules, registered_model_name,
                                     resolve_version, rules_from_tags, tracking_uri)

log = logging.getLogger(__name__)

FAMILY = ("AP", "AP50", "AP75", "AR", "AR50", "AR75")
SCALES = ("APM", "APL", "ARM", "ARL")
DIAGNOSTICS = ("keypoint_precision", "keypoint_recall", "keypoint_f1", "grouping_accuracy")
CURVES = ("loss", "heatmap_4", "heatmap_2", "push", "pull", "lr")


# ----------------------------------------------------------------------------- figures

def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(series: dict[str, dict[str, tuple[list, list]]], out_png: Path) -> Path | None:
    """One panel per curve (``loss``, ``lr``, ...), one line per run label. ``series``:
    ``{label: {curve: (steps, values)}}``. Returns the PNG path, None when there is no data."""
    curves = [c for c in CURVES if any(c in s and s[c][0] for s in series.values())]
    curves += sorted({c for s in series.values() for c in s if c not in curves and c not in ("images_per_s",)})
    if not curves:
        return None
    plt = _plt()
    cols = min(3, len(curves))
    rows = int(np.ceil(len(curves) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), dpi=100, squeeze=False)
    styles = ["-", "--", ":", "-."]
    try:
        for ax, c in zip(axes.ravel(), curves):
            for i, (label, s) in enumerate(series.items()):
                if c in s and s[c][0]:
                    ax.plot(s[c][0], s[c][1], styles[i % len(styles)], marker="." if len(s[c][0]) < 30 else None,
                            label=label)
            ax.set_title(c)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            if c != "lr" and all(v > 0 for s in series.values() if c in s for v in s[c][1]):
                ax.set_yscale("log")
            ax.legend(fontsize=7)
        for ax in axes.ravel()[len(curves):]:
            ax.axis("off")
        fig.tight_layout()
        out_png = Path(out_png)
        out_png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_png, format="png")
    finally:
        plt.close(fig)
    return out_png


def steps_csv_series(path: Path) -> dict[str, tuple[list, list]]:
    """``{column: (steps, values)}`` of a ``train_steps.csv``."""
    import csv

    out: dict[str, tuple[list, list]] = {}
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            for k, v in row.items():
                if k in ("step", "epoch") or v in ("", None):
                    continue
                s = out.setdefault(k, ([], []))
                s[0].append(int(row["step"]))
                s[1].append(float(v))
    return out


def _panel(image: np.ndarray, persons: list[dict], title: str) -> np.ndarray:
    import cv2

    from pose.evaluate.plots import draw_persons

    canvas = draw_persons(image, persons)
    scale = 320.0 / max(canvas.shape[:2])
    canvas = cv2.resize(canvas, (max(1, int(canvas.shape[1] * scale)), max(1, int(canvas.shape[0] * scale))))
    bar = np.full((24, canvas.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, title[:48], (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([bar, canvas])


def side_by_side(image: np.ndarray, panels: list[tuple[str, list[dict]]], out_png: Path) -> Path:
    """Write the image drawn once per ``(title, persons)`` panel, side by side."""
    from pose.evaluate.plots import _write_image

    tiles = [_panel(image, persons, title) for title, persons in panels]
    h = max(t.shape[0] for t in tiles)
    tiles = [np.vstack([t, np.full((h - t.shape[0], t.shape[1], 3), 255, np.uint8)]) for t in tiles]
    sep = np.full((h, 6, 3), 255, np.uint8)
    row = tiles[0]
    for t in tiles[1:]:
        row = np.hstack([row, sep, t])
    return _write_image(row, out_png)


# ----------------------------------------------------------------------------- sides

@dataclass
class Side:
    """One side of the comparison: a run, the registered version it belongs to, its logged evidence."""

    ref: str
    run_id: str
    version: int | None
    aliases: list[str]
    params: dict
    tags: dict
    run_metrics: dict
    metrics: dict = field(default_factory=dict)
    results: Path | None = None
    annotations: Path | None = None
    eval_images: list | None = None
    train_images: list | None = None
    version_tags: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        if self.version is not None:
            return f"v{self.version}" + (f" ({', '.join(self.aliases)})" if self.aliases else "")
        return f"run {self.run_id[:8]}"

    @property
    def slug(self) -> str:
        return f"v{self.version}" if self.version is not None else self.run_id[:8]


def resolve_side(client: MlflowClient, name: str, ref: str, workdir: Path) -> Side:
    """Resolve ``ref`` (module docstring) and download its ``eval/`` and ``data/`` artifacts."""
    ref = str(ref)
    mv = None
    if re.fullmatch(r"[0-9a-f]{32}", ref):
        run_id = ref
        found = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
        mv = found[0] if found else None
    else:
        mv = resolve_version(client, name, ref)
        run_id = mv.run_id
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise RegistryError(f"{ref!r}: no such run / version in {client.tracking_uri}") from exc
    if mv is not None:
        mv = client.get_model_version(mv.name, mv.version)
    side = Side(ref=ref, run_id=run_id, version=int(mv.version) if mv is not None else None,
                aliases=sorted(mv.aliases) if mv is not None else [], params=dict(run.data.params),
                tags=dict(run.data.tags), run_metrics=dict(run.data.metrics),
                version_tags=dict(mv.tags) if mv is not None else {})
    d = workdir / (side.slug + "-" + run_id[:8])
    ev = _download(run_id, "eval", d)
    if ev is not None:
        if (ev / "metrics.json").is_file():
            side.metrics = json.loads((ev / "metrics.json").read_text())
        side.results = ev / "results.json" if (ev / "results.json").is_file() else None
        side.annotations = ev / "annotations.json" if (ev / "annotations.json").is_file() else None
    if not side.metrics:
        side.metrics = {k: v for k, v in side.run_metrics.items() if "/" not in k}
    dd = _download(run_id, "data", d)
    if dd is not None:
        for attr, fn in (("eval_images", "eval_images.json"), ("train_images", "train_images.json")):
            if (dd / fn).is_file():
                setattr(side, attr, json.loads((dd / fn).read_text()))
    return side


# ----------------------------------------------------------------------------- like-for-like basis

@dataclass
class Basis:
    """The evaluation data A and B are compared on, and each side's numbers / results on it.

    ``kind``:

    * ``same_data``: both were evaluated on the same annotations (same ``eval_data_hash``);
    * ``a_reeval``: A's re-evaluation on B's data, cached on A's run under ``reeval/<hash16>/``
      by the promotion gate (:func:`pose.registry.promotion.cached_reevaluation`);
    * ``b_reeval``: B's re-evaluation on A's data (B was the champion when A was gated);
    * ``common_images``: different data and no re-evaluation: the bootstrap uses the images
      both evaluation sets contain, scored against B's annotations; the A / B metric columns
      are then each model's own numbers, not like-for-like;
    * ``none``: nothing comparable (no shared image, or annotations not logged).
    """

    kind: str
    annotations: Path | None
    side: str | None                    # "A" / "B": whose evaluation data ``annotations`` is
    a_metrics: dict
    b_metrics: dict
    a_results: Path | None
    b_results: Path | None
    img_ids: list[int] | None = None    # common_images: the shared image ids

    @property
    def like_for_like(self) -> bool:
        return self.kind in ("same_data", "a_reeval", "b_reeval")


def find_basis(a: Side, b: Side, workdir: Path) -> Basis:
    """The best like-for-like basis of A vs B (:class:`Basis`), in the order listed there."""
    ha, hb = a.tags.get("eval_data_hash"), b.tags.get("eval_data_hash")
    if ha is not None and ha == hb:
        return Basis("same_data", b.annotations, "B", a.metrics, b.metrics, a.results, b.results)
    got = cached_reevaluation(a.run_id, hb, workdir / f"{a.slug}-{a.run_id[:8]}-reeval")
    if got is not None and b.annotations is not None:
        return Basis("a_reeval", b.annotations, "B", got[0], b.metrics, got[1], b.results)
    got = cached_reevaluation(b.run_id, ha, workdir / f"{b.slug}-{b.run_id[:8]}-reeval")
    if got is not None and a.annotations is not None:
        return Basis("b_reeval", a.annotations, "A", a.metrics, got[0], a.results, got[1])
    common = sorted({r["id"] for r in a.eval_images or []} & {r["id"] for r in b.eval_images or []})
    if common and b.annotations is not None:
        return Basis("common_images", b.annotations, "B", a.metrics, b.metrics, a.results, b.results, common)
    return Basis("none", None, None, a.metrics, b.metrics, a.results, b.results)


def _basis_note(basis: Basis, a: Side, b: Side) -> str:
    h = (b.tags.get("eval_data_hash") if basis.side == "B" else a.tags.get("eval_data_hash")) or "?"
    own = f"{_num(_value(a.metrics, 'AP'))}" if basis.kind == "a_reeval" else f"{_num(_value(b.metrics, 'AP'))}"
    return {
        "same_data": f"Both models were evaluated on the same data (eval annotations sha256 `{_short(h)}`).",
        "a_reeval": f"A and B were evaluated on different data. A's numbers are its re-evaluation on B's evaluation "
                    f"data (eval annotations sha256 `{_short(h)}`), cached by the promotion gate under "
                    f"`reeval/{h[:16]}/` of A's run; A's AP on its own evaluation data was {own}.",
        "b_reeval": f"A and B were evaluated on different data. B's numbers are its re-evaluation on A's evaluation "
                    f"data (eval annotations sha256 `{_short(h)}`), cached under `reeval/{h[:16]}/` of B's run; "
                    f"B's AP on its own evaluation data was {own}.",
        "common_images": "A and B were evaluated on different data and no re-evaluation is cached (`pose promote` "
                         "caches one): the A / B columns are each model's own numbers, not like-for-like; the paired "
                         f"column uses the {len(basis.img_ids or [])} images common to both evaluation sets, scored "
                         "against B's annotations.",
        "none": "A and B were evaluated on different data with no image in common (or without logged annotations), "
                "and no re-evaluation is cached: nothing below is like-for-like.",
    }[basis.kind]


# ----------------------------------------------------------------------------- verdict

def make_verdict(a: Side, b: Side, basis: Basis, ci: dict | None, rules: list[RuleResult]) -> dict:
    """Which model is better by AP, by how much, with the paired CI, and the gate's decision.

    Returns ``{"better": "A" | "B" | "neither" | None, "significant": bool | None, "basis",
    "AP_a", "AP_b", "AP_delta", "ci_low", "ci_high", "level", "n_images", "gate_decided",
    "gate_passed", "failed_rules": [{"metric", "kind"}], "rules": [RuleResult dicts],
    "recorded": {"decision", "champion_before", "at", "rules"} | None}``. ``better`` is the side
    whose AP is higher when the CI excludes 0 (``significant``), ``neither`` when the CI
    includes 0, the higher side without a CI, None when the numbers are not comparable."""
    va, vb = _value(basis.a_metrics, "AP"), _value(basis.b_metrics, "AP")
    e = (ci or {}).get("metrics", {}).get("AP") or {}
    if basis.kind == "common_images":   # the like-for-like numbers are the bootstrap's full-sample ones
        va, vb = (e.get("a"), e.get("b")) if e.get("delta") is not None else (None, None)
    delta = vb - va if va is not None and vb is not None else None
    lo, hi = e.get("ci_low"), e.get("ci_high")
    better = significant = None
    if delta is not None:
        if lo is not None and hi is not None:
            significant = lo > 0 or hi < 0
            better = ("B" if lo > 0 else "A") if significant else "neither"
        else:
            better = "B" if delta > 0 else ("A" if delta < 0 else "neither")
    recorded = None
    if b.version_tags.get("promotion.decision"):
        t = b.version_tags
        recorded = {"decision": t["promotion.decision"], "champion_before": t.get("promotion.champion_before"),
                    "at": t.get("promotion.at"),
                    "rules": [r.to_dict() for r in rules_from_tags(t) or []]}
    return {"better": better, "significant": significant, "basis": basis.kind, "AP_a": va, "AP_b": vb,
            "AP_delta": delta, "ci_low": lo, "ci_high": hi, "level": (ci or {}).get("level"),
            "n_images": (ci or {}).get("n_images"), "gate_decided": basis.like_for_like,
            "gate_passed": gate_passed(rules) if basis.like_for_like else None,
            "failed_rules": [{"metric": r.metric, "kind": r.kind} for r in rules if not r.passed],
            "rules": [r.to_dict() for r in rules], "recorded": recorded}


def _verdict_md(v: dict, a: Side, b: Side) -> list[str]:
    """Markdown lines of the verdict (generated from :func:`make_verdict`'s dict)."""
    lines = []
    ap = f"(A {_num(v['AP_a'])} → B {_num(v['AP_b'])})"
    ci = (f"paired {int(round(100 * v['level']))}% CI [{v['ci_low']:+.4f}, {v['ci_high']:+.4f}] over "
          f"{v['n_images']} images" + (" common to both evaluation sets" if v["basis"] == "common_images" else "")
          if v["ci_low"] is not None else None)
    if v["better"] is None:
        lines.append(f"**No like-for-like verdict**: A and B were scored on different data. Logged AP: "
                     f"A {_num(_value(a.metrics, 'AP'))}, B {_num(_value(b.metrics, 'AP'))}.")
    elif v["better"] == "neither":
        lines.append(f"**No clear winner**: AP {_delta(v['AP_delta'])} {ap}"
                     + (f"; the {ci} includes 0." if ci else "."))
    else:
        word = "B (candidate)" if v["better"] == "B" else "A (baseline)"
        lines.append(f"**{word} is better: AP {_delta(v['AP_delta'])}** {ap}"
                     + (f", {ci}." if ci else "; no CI (a run did not log eval/results.json)."))
    if not v["gate_decided"]:
        lines.append("**Gate** (`registry.rules`, B as challenger vs A as champion): **cannot be decided here**: "
                     "A has no score on B's evaluation data (`pose promote` re-evaluates it).")
    else:
        failed = [RuleResult.from_dict(r).rule.describe() for r in v["rules"] if not r["passed"]]
        lines.append("**Gate** (`registry.rules`, B as challenger vs A as champion): "
                     + ("**PASS**: B would be promoted." if v["gate_passed"] else
                        f"**FAIL**: B would not be promoted ({', '.join(f'`{f}`' for f in failed)} failed)."))
    rec = v["recorded"]
    if rec:
        before = rec["champion_before"]
        same = " (the same comparison as this report)" if a.version is not None and before == str(a.version) else ""
        lines.append(f"Recorded gate decision of B = {b.slug}: **{rec['decision']}**, champion before: "
                     f"{'v' + before if before and before != 'none' else 'none'}{same}"
                     + (f", at {rec['at']}" if rec.get("at") else "") + "; rule results in its tag `promotion.rules`.")
    elif b.version is not None:
        lines.append(f"B = {b.slug} has no recorded gate decision (registered without the gate).")
    return lines


# ----------------------------------------------------------------------------- report pieces

def _num(v) -> str:
    """A metric value: 4 decimals; "n/a" when missing or undefined (COCO's -1)."""
    if v is None or float(v) < 0:
        return "n/a"
    return f"{float(v):.4f}"


def _delta(v) -> str:
    if v is None:
        return "n/a"
    return f"{float(v):+.4f}"


def _short(v, n: int = 12) -> str:
    """Hashes shortened to ``n`` characters + "…"; other values as they are; None -> "n/a"."""
    if v is None or v == "":
        return "n/a"
    v = str(v)
    return v[:n] + "…" if re.fullmatch(r"[0-9a-f]{20,}", v) else v


def _metric_rows(a_metrics: dict, b_metrics: dict, keys, ci: dict | None) -> list[list[str]]:
    rows = []
    for k in keys:
        va, vb = a_metrics.get(k), b_metrics.get(k)
        if va is None and vb is None:
            continue
        va, vb = _value(a_metrics, k), _value(b_metrics, k)
        d = vb - va if va is not None and vb is not None else None
        e = (ci or {}).get("metrics", {}).get(k)
        paired = "n/a"
        if e and e.get("delta") is not None:
            paired = _delta(e["delta"])
            if e.get("ci_low") is not None:
                paired += f" [{e['ci_low']:+.4f}, {e['ci_high']:+.4f}]"
        rows.append([k, _num(va), _num(vb), _delta(d), paired])
    return rows


def _diff_ids(a: list | None, b: list | None) -> dict:
    if a is None or b is None:
        return {"available": False}
    ia, ib = {r["id"]: r for r in a}, {r["id"]: r for r in b}
    added = sorted(set(ib) - set(ia))
    removed = sorted(set(ia) - set(ib))
    return {"available": True, "a": len(ia), "b": len(ib), "common": len(set(ia) & set(ib)),
            "added": [ib[i] for i in added], "removed": [ia[i] for i in removed]}


def _params_diff(a: dict, b: dict) -> list[list[str]]:
    rows = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            rows.append([k, a.get(k, "(absent)"), b.get(k, "(absent)")])
    return rows


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    if not rows:
        return "_(none)_\n"
    esc = [[str(c).replace("|", "\\|") for c in r] for r in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in esc]
    return "\n".join(lines) + "\n"


def _inline_html(text: str) -> str:
    """The inline Markdown these reports use (``**bold**``, ```code```) as escaped HTML."""
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", out)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    if not rows:
        return "<p><em>(none)</em></p>"

    def cell(c: str) -> str:
        c = str(c)
        cls = ""
        if re.match(r"^[+-]\d", c):
            cls = ' class="pos"' if c.startswith("+") and not c.startswith("+0.0000") else \
                  (' class="neg"' if c.startswith("-") and not c.startswith("-0.0000") else "")
        elif c.startswith(("PASS", "FAIL")):
            cls = ' class="pos"' if c.startswith("PASS") else ' class="neg"'
        return f"<td{cls}>{_inline_html(c)}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(c) for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img_b64(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def _rule_rows(rules: list[RuleResult]) -> list[list[str]]:
    rows = []
    for r in rules:
        ci = f"[{r.ci_low:+.4f}, {r.ci_high:+.4f}]" if r.ci_low is not None and r.ci_high is not None else "n/a"
        res = r.status.upper() if r.status != "n/a" else "n/a"
        rows.append([f"`{r.rule.describe()}` ({r.kind})", _num(r.champion), _num(r.challenger), _delta(r.delta), ci,
                     res + (f" ({r.note})" if r.note else "")])
    return rows


RULE_HEADER = ["rule", "A (champion)", "B (challenger)", "Δ (B−A)", "95% CI of Δ", "result"]

#: run tags of the data diff and their labels
DATA_TAGS = (("dataset", "dataset"), ("dataset.version", "dataset version (sha256 of MANIFEST.sha256)"),
             ("eval_data_hash", "eval annotations sha256"), ("data.train_hash", "train annotations sha256"),
             ("data.source_fingerprint", "data source fingerprint"), ("git.commit", "git commit"),
             ("git.dirty", "uncommitted changes"))
#: image names listed per added / removed set in the data diff
SHOW_NAMES = 5


def _data_tag_lines(a: Side, b: Side) -> list[str]:
    lines = []
    for key, label in DATA_TAGS:
        va, vb = a.tags.get(key), b.tags.get(key)
        if va is None and vb is None:
            continue
        same = " (same)" if va == vb else ""
        lines.append(f"- {label}: `{_short(va)}` -> `{_short(vb)}`{same}")
    return lines


def _data_lines(kind: str, diff: dict) -> list[str]:
    if not diff.get("available"):
        return [f"- {kind} images: n/a (image lists not logged for both runs)"]
    line = (f"- {kind} images: A {diff['a']}, B {diff['b']}, {diff['common']} in common; "
            f"added in B {len(diff['added'])}, removed in B {len(diff['removed'])}")
    for what in ("added", "removed"):
        items = diff[what]
        if items:
            shown = ", ".join(str(r.get("file_name") or r["id"]) for r in items[:SHOW_NAMES])
            more = f", … and {len(items) - SHOW_NAMES} more" if len(items) > SHOW_NAMES else ""
            line += f"; {what}: {shown}{more}"
    return [line]


# ----------------------------------------------------------------------------- main entry

def compare(params: dict, a_ref: str, b_ref: str, *, out_dir: Path | None = None, images_dir: Path | None = None,
            log_to_run: bool = True, max_overlays: int = 4, client: MlflowClient | None = None) -> dict:
    """Build the report of ``a_ref`` vs ``b_ref`` in ``out_dir`` and (``log_to_run``) log it to B's run.

    Args:
        params: params.yaml dict (``registry`` for the tracking URI, model name, rules and
            bootstrap; ``data`` to find validation images when ``images_dir`` is None).
        out_dir: report folder (default ``data/compare/<A>_vs_<B>``).
        images_dir: folder with the validation images of the comparison's evaluation data
            (default ``<raw_dir>/<that side's dataset>/<val_split>``).

    Returns ``{"markdown", "html", "out_dir", "artifact_path", "run_id", "summary", "verdict_lines"}``
    (``verdict_lines``: the verdict as Markdown lines); ``summary``
    (also ``summary.json``) holds the ``verdict`` (:func:`make_verdict`) first.
    Raises RegistryError when a reference cannot be resolved, RuleError on bad ``registry.rules``.
    """
    import mlflow

    rules = parse_rules(params)
    name = registered_model_name(params)
    uri = tracking_uri(params)
    mlflow.set_tracking_uri(uri)
    client = client or MlflowClient(uri)
    with tempfile.TemporaryDirectory(prefix="pose-compare-") as tmp:
        a = resolve_side(client, name, a_ref, Path(tmp))
        b = resolve_side(client, name, b_ref, Path(tmp))
        out_dir = Path(out_dir) if out_dir is not None else Path("data/compare") / f"{a.slug}_vs_{b.slug}"
        out_dir.mkdir(parents=True, exist_ok=True)
        basis = find_basis(a, b, Path(tmp))
        return _build(params, rules, client, a, b, basis, out_dir, images_dir, log_to_run, max_overlays)


def _build(params, rules: list[Rule], client, a: Side, b: Side, basis: Basis, out_dir: Path, images_dir,
           log_to_run: bool, max_overlays: int) -> dict:
    reg = params["registry"]
    notes: list[str] = [_basis_note(basis, a, b)]
    # --- paired bootstrap on the basis
    ci = None
    if basis.kind != "none" and basis.a_results and basis.b_results and basis.annotations:
        ci = bootstrap_diff(basis.annotations, basis.a_results, basis.b_results,
                            n_resamples=int(reg["bootstrap_samples"]), seed=int(reg["bootstrap_seed"]),
                            img_ids=basis.img_ids)
        notes.append(f"Paired Δ and {int(ci['level'] * 100)}% CI: image bootstrap, {ci['n_resamples']} "
                     f"resamples of {ci['n_images']} images"
                     + (" common to both evaluation sets, scored against B's annotations"
                        if basis.kind == "common_images" else "") + ".")
    elif basis.kind != "none":
        notes.append("No paired CI: a run lacks its logged results / annotations (eval/results.json).")
    if basis.like_for_like:
        rule_results = evaluate_rules(rules, basis.b_metrics, basis.a_metrics, ci=ci)
    else:
        rule_results = evaluate_rules(rules, b.metrics, None)   # relative rules: not applicable here
        for r in rule_results:
            if not r.applicable:
                r.note = "A has no score on B's evaluation data"
    verdict = make_verdict(a, b, basis, ci, rule_results)

    family = _metric_rows(basis.a_metrics, basis.b_metrics, FAMILY, ci)
    scales = _metric_rows(basis.a_metrics, basis.b_metrics, SCALES, ci)
    diag = _metric_rows(basis.a_metrics, basis.b_metrics, DIAGNOSTICS, None)
    kp_a, kp_b = basis.a_metrics.get("per_keypoint_AP") or {}, basis.b_metrics.get("per_keypoint_AP") or {}
    kp_rows = [[k, _num(kp_a.get(k)), _num(kp_b.get(k)),
                _delta(float(kp_b[k]) - float(kp_a[k]) if _value(kp_a, k) is not None and _value(kp_b, k) is not None
                       else None)]
               for k in (list(kp_b) or list(kp_a))]

    # --- training curves
    series = {}
    for side, tag in ((a, "A"), (b, "B")):
        s = {}
        for c in CURVES:
            try:
                hist = client.get_metric_history(side.run_id, f"train/{c}")
            except MlflowException:
                hist = []
            if hist:
                hist = sorted(hist, key=lambda m: m.step)
                s[c] = ([m.step for m in hist], [m.value for m in hist])
        series[f"{tag}: {side.label}"] = s
    curves_png = plot_training_curves(series, out_dir / "training_curves.png")

    # --- params / data diff
    params_rows = _params_diff(a.params, b.params)
    eval_diff = _diff_ids(a.eval_images, b.eval_images)
    train_diff = _diff_ids(a.train_images, b.train_images)
    data_lines = _data_tag_lines(a, b) + _data_lines("eval", eval_diff) + _data_lines("train", train_diff)

    # --- overlays on the basis' evaluation data
    overlays: list[Path] = []
    if images_dir is None:
        d = params.get("data", {})
        owner = a if basis.side == "A" else b
        ds = owner.params.get("data.dataset") or d.get("dataset")
        images_dir = Path(d.get("raw_dir", "data/raw")) / str(ds) / str(owner.params.get("data.val_split")
                                                                        or d.get("val_split"))
    if basis.annotations and basis.a_results and basis.b_results and Path(images_dir).is_dir():
        overlays = _overlays(a, b, basis, ci, Path(images_dir), out_dir / "overlays", max_overlays)
    elif not Path(images_dir).is_dir():
        notes.append(f"No overlays: validation images not found in {images_dir}.")
    else:
        notes.append("No overlays: a side has no results on the comparison's evaluation data.")

    # --- write
    title = f"Compare A = {a.label} vs B = {b.label}"
    summary = {"verdict": verdict,
               "a": {"ref": a.ref, "run_id": a.run_id, "version": a.version, "aliases": a.aliases},
               "b": {"ref": b.ref, "run_id": b.run_id, "version": b.version, "aliases": b.aliases},
               "same_eval_data": basis.kind == "same_data", "basis": basis.kind,
               "metrics": {r[0]: r[1:] for r in family + scales + diag},
               "bootstrap": {k: v for k, v in (ci or {}).items() if k not in ("per_image_tp", "img_ids")} or None,
               "params_changed": len(params_rows),
               "eval_images": {k: (len(v) if isinstance(v, list) else v) for k, v in eval_diff.items()},
               "train_images": {k: (len(v) if isinstance(v, list) else v) for k, v in train_diff.items()},
               "data_tags": {k: [a.tags.get(k), b.tags.get(k)] for k, _ in DATA_TAGS},
               "notes": notes}
    atomic_write_json(out_dir / "summary.json", summary, indent=2, default=str)
    parts = dict(title=title, a=a, b=b, verdict=_verdict_md(verdict, a, b), rules=_rule_rows(rule_results),
                 notes=notes, family=family, scales=scales, kp_rows=kp_rows, diag=diag, curves_png=curves_png,
                 params_rows=params_rows, data_lines=data_lines, overlays=overlays)
    atomic_write_text(out_dir / "report.md", _markdown(out_dir=out_dir, **parts))
    atomic_write_text(out_dir / "report.html", _html(**parts))
    artifact_path = f"compare/{a.slug}_vs_{b.slug}"
    if log_to_run:
        client.log_artifacts(b.run_id, str(out_dir), artifact_path=artifact_path)
    return {"markdown": str(out_dir / "report.md"), "html": str(out_dir / "report.html"), "out_dir": str(out_dir),
            "artifact_path": artifact_path if log_to_run else None, "run_id": b.run_id, "summary": summary,
            "verdict_lines": parts["verdict"]}


def _overlays(a: Side, b: Side, basis: Basis, ci: dict | None, images_dir: Path, out: Path, k: int) -> list[Path]:
    """Ground truth | A | B on the ``k`` images of the basis' data where A and B disagree most
    (difference of OKS >= 0.5 true positives per image, from the bootstrap's matching)."""
    import cv2

    gt = json.loads(Path(basis.annotations).read_text())
    res_a = json.loads(Path(basis.a_results).read_text())
    res_b = json.loads(Path(basis.b_results).read_text())
    by_img = {im["id"]: im for im in gt["images"]}
    common = set(by_img) & set(basis.img_ids) if basis.img_ids is not None else set(by_img)
    score = {i: 0 for i in common}
    if ci is not None:
        for i, ta, tb in zip(ci["img_ids"], ci["per_image_tp"]["a"], ci["per_image_tp"]["b"]):
            if i in score:
                score[i] = abs(int(tb) - int(ta))
    persons: dict[int, list] = {}
    for ann in gt["annotations"]:
        if not ann.get("iscrowd", 0) and ann.get("num_keypoints", 0) > 0:
            persons.setdefault(ann["image_id"], []).append({"keypoints": ann["keypoints"], "score": 1.0})
    order = sorted(common, key=lambda i: (-score[i], -len(persons.get(i, [])), i))[:k]

    def dets(res, i):
        return [{"keypoints": r["keypoints"], "score": r["score"]} for r in res
                if r["image_id"] == i and r["score"] >= 0.1][:10]

    paths = []
    for i in order:
        f = images_dir / by_img[i]["file_name"]
        img = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if img is None:
            continue
        paths.append(side_by_side(img, [(f"ground truth #{i}", persons.get(i, [])), (f"A {a.label}", dets(res_a, i)),
                                         (f"B {b.label}", dets(res_b, i))], out / f"{i}.png"))
    return paths


def _markdown(*, title, a, b, verdict, rules, notes, family, scales, kp_rows, diag, curves_png, params_rows,
              data_lines, overlays, out_dir) -> str:
    hdr = ["metric", "A", "B", "Δ (B−A)", "paired Δ [95% CI]"]
    parts = [f"# {title}\n", "## Verdict\n"]
    parts += [f"{line}\n" for line in verdict]
    parts += [_md_table(RULE_HEADER, rules)]
    parts += [f"- A (baseline): `{a.ref}` → {a.label}, run `{a.run_id}`",
              f"- B (candidate): `{b.ref}` → {b.label}, run `{b.run_id}`", ""]
    parts += [f"> {n}\n" for n in notes]
    parts += ["## AP family\n", _md_table(hdr, family), "## Per scale\n", _md_table(hdr, scales),
              "## Per keypoint AP\n", _md_table(["keypoint", "A", "B", "Δ (B−A)"], kp_rows),
              "## Diagnostics\n", _md_table(hdr, diag), "## Data diff\n"]
    parts += data_lines + [""]
    parts += ["## Params diff\n", _md_table(["param", "A", "B"], params_rows), "## Training curves\n"]
    parts.append(f"![training curves]({curves_png.relative_to(out_dir)})\n" if curves_png else "_(no per-step metrics)_\n")
    parts.append("## Overlays (ground truth | A | B)\n")
    parts += [f"![{p.stem}]({p.relative_to(out_dir)})\n" for p in overlays] or ["_(none)_\n"]
    return "\n".join(parts)


def _html(*, title, a, b, verdict, rules, notes, family, scales, kp_rows, diag, curves_png, params_rows,
          data_lines, overlays) -> str:
    hdr = ["metric", "A", "B", "Δ (B−A)", "paired Δ [95% CI]"]
    css = ("body{font-family:sans-serif;margin:24px;max-width:1100px}table{border-collapse:collapse;margin:8px 0 18px}"
           "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:right}th{background:#f0f0f0}"
           "td:first-child{text-align:left}.pos{color:#0a7a2a}.neg{color:#b00020}"
           ".verdict{background:#eef4ff;border-left:5px solid #2a5bd7;padding:8px 14px;margin:10px 0 18px}"
           ".verdict p{margin:6px 0}"
           ".note{background:#fff8e0;padding:6px 10px;border-left:4px solid #e0b000}img{max-width:100%}")
    body = [f"<h1>{html.escape(title)}</h1>", '<div class="verdict"><h2>Verdict</h2>']
    body += [f"<p>{_inline_html(line)}</p>" for line in verdict]
    body += [_html_table(RULE_HEADER, rules), "</div>",
             f"<p>A (baseline): <code>{html.escape(a.ref)}</code> → {html.escape(a.label)}, run <code>{a.run_id}</code><br>"
             f"B (candidate): <code>{html.escape(b.ref)}</code> → {html.escape(b.label)}, run <code>{b.run_id}</code></p>"]
    body += [f'<p class="note">{_inline_html(n)}</p>' for n in notes]
    body += ["<h2>AP family</h2>", _html_table(hdr, family), "<h2>Per scale</h2>", _html_table(hdr, scales),
             "<h2>Per keypoint AP</h2>", _html_table(["keypoint", "A", "B", "Δ (B−A)"], kp_rows),
             "<h2>Diagnostics</h2>", _html_table(hdr, diag),
             "<h2>Data diff</h2>",
             "<ul>" + "".join(f"<li>{_inline_html(line[2:] if line.startswith('- ') else line)}</li>"
                              for line in data_lines) + "</ul>",
             "<h2>Params diff</h2>", _html_table(["param", "A", "B"], params_rows),
             "<h2>Training curves</h2>",
             f'<img src="{_img_b64(curves_png)}" alt="training curves">' if curves_png else "<p>(no per-step metrics)</p>",
             "<h2>Overlays (ground truth | A | B)</h2>"]
    body += [f'<p><img src="{_img_b64(p)}" alt="{p.stem}"></p>' for p in overlays] or ["<p>(none)</p>"]
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{css}</style></head><body>{''.join(body)}</body></html>\n")


__all__ = ["compare", "find_basis", "make_verdict", "plot_training_curves", "steps_csv_series", "side_by_side",
           "resolve_side"]
