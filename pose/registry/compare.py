"""`pose compare A B`: a Markdown + HTML review report of two runs / model versions.

A and B are MLflow run ids, model version numbers (``3`` / ``v3``), aliases
(``champion`` / ``challenger``) or ``models:/<name>@<alias>`` / ``models:/<name>/<N>``.
B is the candidate (the challenger); the report is logged as an artifact of B's run under
``compare/<A>_vs_<B>/`` (``report.md``, ``report.html`` with the figures embedded, PNGs,
``summary.json``).

Sections:

* metrics (AP family, per scale, per keypoint, diagnostics): A, B, delta ``B - A`` and,
  where both runs logged their results (``eval/results.json``), the paired image
  bootstrap 95% CI of the delta (:mod:`pose.registry.bootstrap`). On the same evaluation
  data (same ``eval_data_hash``) the bootstrap uses all images; otherwise it uses the
  images both evaluation sets contain, scored against B's annotations (said in the report);
* training curves of both runs overlaid (MLflow per-step metrics ``train/*``);
* params diff (flattened params.yaml of both runs);
* data diff: dataset name / version / hashes and the images added / removed between the
  two runs' train and eval sets (from the logged ``data/{train,eval}_images.json``);
* side-by-side overlays (ground truth | A | B) of the validation images where the two
  models disagree most (OKS >= 0.5 true positives per image), when the images are found.
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

from pose.registry.bootstrap import bootstrap_diff
from pose.registry.promotion import RegistryError, _download, resolve_version, tracking_uri

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
                tags=dict(run.data.tags), run_metrics=dict(run.data.metrics))
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


# ----------------------------------------------------------------------------- report pieces

def _num(v) -> str:
    if v is None:
        return "–"
    return f"{float(v):.4f}"


def _delta(v) -> str:
    if v is None:
        return "–"
    return f"{float(v):+.4f}"


def _metric_rows(a: Side, b: Side, keys, ci: dict | None) -> list[list[str]]:
    rows = []
    for k in keys:
        va, vb = a.metrics.get(k), b.metrics.get(k)
        if va is None and vb is None:
            continue
        d = (float(vb) - float(va)) if va is not None and vb is not None and float(va) > -1 and float(vb) > -1 else None
        e = (ci or {}).get("metrics", {}).get(k)
        paired = "–"
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


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    if not rows:
        return "<p><em>(none)</em></p>"

    def cell(c: str) -> str:
        cls = ""
        if re.match(r"^[+-]\d", str(c)):
            cls = ' class="pos"' if str(c).startswith("+") and not str(c).startswith("+0.0000") else \
                  (' class="neg"' if str(c).startswith("-") and not str(c).startswith("-0.0000") else "")
        return f"<td{cls}>{html.escape(str(c))}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(c) for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img_b64(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


# ----------------------------------------------------------------------------- main entry

def compare(params: dict, a_ref: str, b_ref: str, *, out_dir: Path | None = None, images_dir: Path | None = None,
            log_to_run: bool = True, max_overlays: int = 4, client: MlflowClient | None = None) -> dict:
    """Build the report of ``a_ref`` vs ``b_ref`` in ``out_dir`` and (``log_to_run``) log it to B's run.

    Args:
        params: params.yaml dict (``registry`` for the tracking URI / model name / bootstrap,
            ``data`` to find validation images when ``images_dir`` is None).
        out_dir: report folder (default ``data/compare/<A>_vs_<B>``).
        images_dir: folder with the validation images (default ``<raw_dir>/<B's dataset>/<val_split>``).

    Returns ``{"markdown", "html", "out_dir", "artifact_path", "summary"}``.
    Raises RegistryError when a reference cannot be resolved.
    """
    reg = params["registry"]
    name = reg["model_name"]
    import mlflow

    uri = tracking_uri(params)
    mlflow.set_tracking_uri(uri)
    client = client or MlflowClient(uri)
    with tempfile.TemporaryDirectory(prefix="pose-compare-") as tmp:
        a = resolve_side(client, name, a_ref, Path(tmp))
        b = resolve_side(client, name, b_ref, Path(tmp))
        out_dir = Path(out_dir) if out_dir is not None else Path("data/compare") / f"{a.slug}_vs_{b.slug}"
        out_dir.mkdir(parents=True, exist_ok=True)
        return _build(params, client, a, b, out_dir, images_dir, log_to_run, max_overlays)


def _build(params, client, a: Side, b: Side, out_dir: Path, images_dir, log_to_run: bool, max_overlays: int) -> dict:
    reg = params["registry"]
    notes: list[str] = []
    # --- paired bootstrap
    ci = None
    same_data = a.tags.get("eval_data_hash") is not None and a.tags.get("eval_data_hash") == b.tags.get("eval_data_hash")
    if a.results and b.results and b.annotations:
        gt_ids = None
        if not same_data:
            ids_a = {r["id"] for r in a.eval_images or []}
            ids_b = {r["id"] for r in b.eval_images or []}
            gt_ids = sorted(ids_a & ids_b) if ids_a and ids_b else None
        if same_data or gt_ids:
            ci = bootstrap_diff(b.annotations, a.results, b.results, n_resamples=int(reg["bootstrap_samples"]),
                                seed=int(reg["bootstrap_seed"]), img_ids=gt_ids)
            notes.append(f"Paired delta and {int(ci['level'] * 100)}% CI: image bootstrap, {ci['n_resamples']} "
                         f"resamples of {ci['n_images']} images"
                         + ("" if same_data else " common to both evaluation sets, scored against B's annotations")
                         + ".")
        else:
            notes.append("No paired CI: the two runs share no evaluation images.")
    else:
        notes.append("No paired CI: a run lacks its logged results / annotations (eval/results.json).")
    if not same_data:
        notes.append("The runs were evaluated on different data: the A / B columns are not like-for-like.")

    family = _metric_rows(a, b, FAMILY, ci)
    scales = _metric_rows(a, b, SCALES, ci)
    diag = _metric_rows(a, b, DIAGNOSTICS, None)
    kp_a, kp_b = a.metrics.get("per_keypoint_AP") or {}, b.metrics.get("per_keypoint_AP") or {}
    kp_rows = [[k, _num(kp_a.get(k)), _num(kp_b.get(k)),
                _delta(float(kp_b[k]) - float(kp_a[k]) if k in kp_a and k in kp_b else None)]
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
    data_rows = [[k, a.tags.get(k, "–"), b.tags.get(k, "–")]
                 for k in ("dataset", "dataset.version", "eval_data_hash", "data.train_hash", "data.source_fingerprint",
                           "git.commit", "git.dirty")]
    eval_diff = _diff_ids(a.eval_images, b.eval_images)
    train_diff = _diff_ids(a.train_images, b.train_images)

    # --- overlays
    overlays: list[Path] = []
    if images_dir is None:
        d = params.get("data", {})
        ds = b.params.get("data.dataset") or d.get("dataset")
        images_dir = Path(d.get("raw_dir", "data/raw")) / str(ds) / str(b.params.get("data.val_split") or d.get("val_split"))
    if a.results and b.results and b.annotations and Path(images_dir).is_dir():
        overlays = _overlays(a, b, ci, Path(images_dir), out_dir / "overlays", max_overlays)
    elif not Path(images_dir).is_dir():
        notes.append(f"No overlays: validation images not found in {images_dir}.")

    # --- write
    title = f"Compare A = {a.label} vs B = {b.label}"
    summary = {"a": {"ref": a.ref, "run_id": a.run_id, "version": a.version, "aliases": a.aliases},
               "b": {"ref": b.ref, "run_id": b.run_id, "version": b.version, "aliases": b.aliases},
               "same_eval_data": same_data, "metrics": {r[0]: r[1:] for r in family + scales + diag},
               "bootstrap": {k: v for k, v in (ci or {}).items() if k not in ("per_image_tp", "img_ids")} or None,
               "params_changed": len(params_rows),
               "eval_images": {k: (len(v) if isinstance(v, list) else v) for k, v in eval_diff.items()},
               "train_images": {k: (len(v) if isinstance(v, list) else v) for k, v in train_diff.items()},
               "notes": notes}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    md = _markdown(title, a, b, notes, family, scales, kp_rows, diag, curves_png, params_rows, data_rows,
                   eval_diff, train_diff, overlays, out_dir)
    (out_dir / "report.md").write_text(md)
    page = _html(title, a, b, notes, family, scales, kp_rows, diag, curves_png, params_rows, data_rows,
                 eval_diff, train_diff, overlays)
    (out_dir / "report.html").write_text(page)
    artifact_path = f"compare/{a.slug}_vs_{b.slug}"
    if log_to_run:
        client.log_artifacts(b.run_id, str(out_dir), artifact_path=artifact_path)
    return {"markdown": str(out_dir / "report.md"), "html": str(out_dir / "report.html"), "out_dir": str(out_dir),
            "artifact_path": artifact_path if log_to_run else None, "run_id": b.run_id, "summary": summary}


def _overlays(a: Side, b: Side, ci: dict | None, images_dir: Path, out: Path, k: int) -> list[Path]:
    import cv2

    gt = json.loads(Path(b.annotations).read_text())
    res_a = json.loads(Path(a.results).read_text())
    res_b = json.loads(Path(b.results).read_text())
    by_img = {im["id"]: im for im in gt["images"]}
    common = set(by_img) & {r["id"] for r in (a.eval_images or gt["images"])}
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


def _data_lines(kind: str, diff: dict) -> list[str]:
    if not diff.get("available"):
        return [f"- {kind} images: image lists not logged for both runs."]
    lines = [f"- {kind} images: A {diff['a']}, B {diff['b']}, common {diff['common']}, "
             f"added in B {len(diff['added'])}, removed in B {len(diff['removed'])}"]
    for what in ("added", "removed"):
        items = diff[what]
        if items:
            shown = ", ".join(f"{r['id']} ({r['file_name']})" for r in items[:20])
            lines.append(f"  - {what}: {shown}" + (f" … and {len(items) - 20} more" if len(items) > 20 else ""))
    return lines


def _markdown(title, a, b, notes, family, scales, kp_rows, diag, curves_png, params_rows, data_rows,
              eval_diff, train_diff, overlays, out_dir) -> str:
    hdr = ["metric", "A", "B", "Δ (B−A)", "paired Δ [95% CI]"]
    parts = [f"# {title}\n",
             f"- A: `{a.ref}` → {a.label}, run `{a.run_id}`",
             f"- B (candidate): `{b.ref}` → {b.label}, run `{b.run_id}`", ""]
    parts += [f"> {n}" for n in notes] + [""]
    parts += ["## AP family\n", _md_table(hdr, family), "## Per scale\n", _md_table(hdr, scales),
              "## Per keypoint AP\n", _md_table(["keypoint", "A", "B", "Δ (B−A)"], kp_rows),
              "## Diagnostics\n", _md_table(hdr, diag), "## Training curves\n"]
    parts.append(f"![training curves]({curves_png.relative_to(out_dir)})\n" if curves_png else "_(no per-step metrics)_\n")
    parts += ["## Params diff\n", _md_table(["param", "A", "B"], params_rows), "## Data diff\n",
              _md_table(["tag", "A", "B"], data_rows)]
    parts += _data_lines("eval", eval_diff) + _data_lines("train", train_diff) + [""]
    parts.append("## Overlays (ground truth | A | B)\n")
    parts += [f"![{p.stem}]({p.relative_to(out_dir)})\n" for p in overlays] or ["_(none)_\n"]
    return "\n".join(parts)


def _html(title, a, b, notes, family, scales, kp_rows, diag, curves_png, params_rows, data_rows,
          eval_diff, train_diff, overlays) -> str:
    hdr = ["metric", "A", "B", "Δ (B−A)", "paired Δ [95% CI]"]
    css = ("body{font-family:sans-serif;margin:24px;max-width:1100px}table{border-collapse:collapse;margin:8px 0 18px}"
           "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:right}th{background:#f0f0f0}"
           "td:first-child{text-align:left}.pos{color:#0a7a2a}.neg{color:#b00020}"
           ".note{background:#fff8e0;padding:6px 10px;border-left:4px solid #e0b000}img{max-width:100%}")
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p>A: <code>{html.escape(a.ref)}</code> → {html.escape(a.label)}, run <code>{a.run_id}</code><br>"
            f"B (candidate): <code>{html.escape(b.ref)}</code> → {html.escape(b.label)}, run <code>{b.run_id}</code></p>"]
    body += [f'<p class="note">{html.escape(n)}</p>' for n in notes]
    body += ["<h2>AP family</h2>", _html_table(hdr, family), "<h2>Per scale</h2>", _html_table(hdr, scales),
             "<h2>Per keypoint AP</h2>", _html_table(["keypoint", "A", "B", "Δ (B−A)"], kp_rows),
             "<h2>Diagnostics</h2>", _html_table(hdr, diag), "<h2>Training curves</h2>",
             f'<img src="{_img_b64(curves_png)}" alt="training curves">' if curves_png else "<p>(no per-step metrics)</p>",
             "<h2>Params diff</h2>", _html_table(["param", "A", "B"], params_rows),
             "<h2>Data diff</h2>", _html_table(["tag", "A", "B"], data_rows),
             "<ul>" + "".join(f"<li>{html.escape(line.strip('- '))}</li>"
                              for line in _data_lines("eval", eval_diff) + _data_lines("train", train_diff)) + "</ul>",
             "<h2>Overlays (ground truth | A | B)</h2>"]
    body += [f'<p><img src="{_img_b64(p)}" alt="{p.stem}"></p>' for p in overlays] or ["<p>(none)</p>"]
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{css}</style></head><body>{''.join(body)}</body></html>\n")


__all__ = ["compare", "plot_training_curves", "steps_csv_series", "side_by_side", "resolve_side"]
