"""What differs between the two sides of ``pose compare``, as report rows: metrics (with the
paired bootstrap deltas), evaluation / training image lists, data tags and params."""

from __future__ import annotations

from pose.registry.report import delta, num, short
from pose.registry.rules import metric_value
from pose.registry.sides import Side

FAMILY = ("AP", "AP50", "AP75", "AR", "AR50", "AR75")
SCALES = ("APM", "APL", "ARM", "ARL")
DIAGNOSTICS = ("keypoint_precision", "keypoint_recall", "keypoint_f1", "grouping_accuracy")
#: run tags of the data diff and their labels
DATA_TAGS = (("dataset", "dataset"), ("dataset.version", "dataset version (sha256 of MANIFEST.sha256)"),
             ("eval_data_hash", "eval annotations sha256"), ("data.train_hash", "train annotations sha256"),
             ("data.source_fingerprint", "data source fingerprint"), ("git.commit", "git commit"),
             ("git.dirty", "uncommitted changes"))
#: image names listed per added / removed set in the data diff
SHOW_NAMES = 5


def metric_rows(a_metrics: dict, b_metrics: dict, keys, ci: dict | None) -> list[list[str]]:
    """Rows ``[metric, A, B, B - A, paired delta [CI]]`` of the ``keys`` either side has; ``ci``:
    :func:`pose.registry.bootstrap.bootstrap_diff` output or None."""
    rows = []
    for k in keys:
        va, vb = a_metrics.get(k), b_metrics.get(k)
        if va is None and vb is None:
            continue
        va, vb = metric_value(a_metrics, k), metric_value(b_metrics, k)
        d = vb - va if va is not None and vb is not None else None
        e = (ci or {}).get("metrics", {}).get(k)
        paired = "n/a"
        if e and e.get("delta") is not None:
            paired = delta(e["delta"])
            if e.get("ci_low") is not None:
                paired += f" [{e['ci_low']:+.4f}, {e['ci_high']:+.4f}]"
        rows.append([k, num(va), num(vb), delta(d), paired])
    return rows


def diff_ids(a: list | None, b: list | None) -> dict:
    """Image lists (``[{"id", "file_name"}]``) of A and B compared: counts and the added / removed
    entries; ``{"available": False}`` when a side has none."""
    if a is None or b is None:
        return {"available": False}
    ia, ib = {r["id"]: r for r in a}, {r["id"]: r for r in b}
    added = sorted(set(ib) - set(ia))
    removed = sorted(set(ia) - set(ib))
    return {"available": True, "a": len(ia), "b": len(ib), "common": len(set(ia) & set(ib)),
            "added": [ib[i] for i in added], "removed": [ia[i] for i in removed]}


def params_diff(a: dict, b: dict) -> list[list[str]]:
    """Rows ``[key, A, B]`` of the flattened params that differ ("(absent)" where a side lacks one)."""
    rows = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            rows.append([k, a.get(k, "(absent)"), b.get(k, "(absent)")])
    return rows



def data_tag_items(a: Side, b: Side) -> list[str]:
    """One bullet per data tag of :data:`DATA_TAGS` either run has: A's value -> B's, shortened."""
    lines = []
    for key, label in DATA_TAGS:
        va, vb = a.tags.get(key), b.tags.get(key)
        if va is None and vb is None:
            continue
        same = " (same)" if va == vb else ""
        lines.append(f"{label}: `{short(va)}` -> `{short(vb)}`{same}")
    return lines


def image_diff_items(kind: str, diff: dict) -> list[str]:
    """The bullet of a :func:`diff_ids` result, naming the first :data:`SHOW_NAMES` images added / removed."""
    if not diff.get("available"):
        return [f"{kind} images: n/a (image lists not logged for both runs)"]
    line = (f"{kind} images: A {diff['a']}, B {diff['b']}, {diff['common']} in common; "
            f"added in B {len(diff['added'])}, removed in B {len(diff['removed'])}")
    for what in ("added", "removed"):
        items = diff[what]
        if items:
            shown = ", ".join(str(r.get("file_name") or r["id"]) for r in items[:SHOW_NAMES])
            more = f", … and {len(items) - SHOW_NAMES} more" if len(items) > SHOW_NAMES else ""
            line += f"; {what}: {shown}{more}"
    return [line]


__all__ = ["FAMILY", "SCALES", "DIAGNOSTICS", "DATA_TAGS", "SHOW_NAMES", "metric_rows", "diff_ids", "params_diff",
           "data_tag_items", "image_diff_items"]
