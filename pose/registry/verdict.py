"""The verdict of ``pose compare``: which model is better by AP (paired bootstrap CI) and what
the promotion gate (``registry.rules``) decides for B as challenger against A as champion."""

from __future__ import annotations

from pose.registry.report import delta, num
from pose.registry.rules import RuleResult, gate_passed, metric_value, rules_from_tags
from pose.registry.sides import Basis, Side


def make_verdict(a: Side, b: Side, basis: Basis, ci: dict | None, rules: list[RuleResult]) -> dict:
    """Which model is better by AP, by how much, with the paired CI, and the gate's decision.

    Returns ``{"better": "A" | "B" | "neither" | None, "significant": bool | None, "basis",
    "AP_a", "AP_b", "AP_delta", "ci_low", "ci_high", "level", "n_images", "gate_decided",
    "gate_passed", "failed_rules": [{"metric", "kind"}], "rules": [RuleResult dicts],
    "recorded": {"decision", "champion_before", "at", "rules"} | None}``. ``better`` is the side
    whose AP is higher when the CI excludes 0 (``significant``), ``neither`` when the CI
    includes 0, the higher side without a CI, None when the numbers are not comparable."""
    va, vb = metric_value(basis.a_metrics, "AP"), metric_value(basis.b_metrics, "AP")
    e = (ci or {}).get("metrics", {}).get("AP") or {}
    if basis.kind == "common_images":   # the like-for-like numbers are the bootstrap's full-sample ones
        va, vb = (e.get("a"), e.get("b")) if e.get("delta") is not None else (None, None)
    ap_delta = vb - va if va is not None and vb is not None else None
    lo, hi = e.get("ci_low"), e.get("ci_high")
    better = significant = None
    if ap_delta is not None:
        if lo is not None and hi is not None:
            significant = lo > 0 or hi < 0
            better = ("B" if lo > 0 else "A") if significant else "neither"
        else:
            better = "B" if ap_delta > 0 else ("A" if ap_delta < 0 else "neither")
    recorded = None
    if b.version_tags.get("promotion.decision"):
        t = b.version_tags
        recorded = {"decision": t["promotion.decision"], "champion_before": t.get("promotion.champion_before"),
                    "at": t.get("promotion.at"),
                    "rules": [r.to_dict() for r in rules_from_tags(t) or []]}
    return {"better": better, "significant": significant, "basis": basis.kind, "AP_a": va, "AP_b": vb,
            "AP_delta": ap_delta, "ci_low": lo, "ci_high": hi, "level": (ci or {}).get("level"),
            "n_images": (ci or {}).get("n_images"), "gate_decided": basis.like_for_like,
            "gate_passed": gate_passed(rules) if basis.like_for_like else None,
            "failed_rules": [{"metric": r.metric, "kind": r.kind} for r in rules if not r.passed],
            "rules": [r.to_dict() for r in rules], "recorded": recorded}


def verdict_lines(v: dict, a: Side, b: Side) -> list[str]:
    """Markdown lines of the verdict (generated from :func:`make_verdict`'s dict)."""
    lines = []
    ap = f"(A {num(v['AP_a'])} → B {num(v['AP_b'])})"
    ci = (f"paired {int(round(100 * v['level']))}% CI [{v['ci_low']:+.4f}, {v['ci_high']:+.4f}] over "
          f"{v['n_images']} images" + (" common to both evaluation sets" if v["basis"] == "common_images" else "")
          if v["ci_low"] is not None else None)
    if v["better"] is None:
        lines.append(f"**No like-for-like verdict**: A and B were scored on different data. Logged AP: "
                     f"A {num(metric_value(a.metrics, 'AP'))}, B {num(metric_value(b.metrics, 'AP'))}.")
    elif v["better"] == "neither":
        lines.append(f"**No clear winner**: AP {delta(v['AP_delta'])} {ap}"
                     + (f"; the {ci} includes 0." if ci else "."))
    else:
        word = "B (candidate)" if v["better"] == "B" else "A (baseline)"
        lines.append(f"**{word} is better: AP {delta(v['AP_delta'])}** {ap}"
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



RULE_HEADER = ["rule", "A (champion)", "B (challenger)", "Δ (B−A)", "95% CI of Δ", "result"]


def rule_rows(rules: list[RuleResult]) -> list[list[str]]:
    """The rows of the gate's rule table (:data:`RULE_HEADER`), one per rule."""
    rows = []
    for r in rules:
        ci = f"[{r.ci_low:+.4f}, {r.ci_high:+.4f}]" if r.ci_low is not None and r.ci_high is not None else "n/a"
        res = r.status.upper() if r.status != "n/a" else "n/a"
        rows.append([f"`{r.rule.describe()}` ({r.kind})", num(r.champion), num(r.challenger), delta(r.delta), ci,
                     res + (f" ({r.note})" if r.note else "")])
    return rows


def promotion_line(record: dict) -> str:
    """The one human line ``pose promote`` prints before its JSON record
    (:func:`pose.registry.promotion.promote`): what happened to the champion and why, e.g.
    ``higherhrnet-generated v3 not promoted (kept_champion): champion stays v1; fail: AP >= champion + 0.005 ...``."""
    name, v, decision = record["model_name"], record["version"], record["decision"]
    before = record.get("champion_before")
    was = f"was v{before}" if before is not None else "no champion before"
    if decision == "already_champion":
        return f"{name} v{v} already is the champion: nothing changed"
    if record.get("promoted"):
        why = (record.get("reasons") or [record.get("reason", "")])[0] if decision == "forced" else \
            "every rule of registry.rules passed"
        return f"{name} v{v} is the new champion ({decision}; {was}; AP {float(record['AP']):.4f}): {why}"
    failed = [RuleResult.from_dict(r).text() for r in record.get("rules") or []
              if r.get("applicable") and not r.get("passed")]
    why = "; ".join(failed) if failed else (record.get("reason") or "")
    stays = f"champion stays v{before}" if before is not None else "no champion"
    return f"{name} v{v} not promoted ({decision}): {stays}; {why}"


__all__ = ["make_verdict", "verdict_lines", "promotion_line", "RULE_HEADER", "rule_rows"]
