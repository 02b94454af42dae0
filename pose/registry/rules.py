"""Promotion rules: ``registry.rules`` in params, parsed, evaluated on two metrics dicts, and
stored as JSON in the version tag ``promotion.rules``.

The rules are data, a list of ``{metric: <eval.json metric>, <kind>: <number>}`` evaluated in
order; a challenger becomes ``champion`` only when every rule passes:

* ``min``: challenger metric >= the number. An absolute floor that also applies to the first
  model: with no champion, a model below the floor is not promoted (decision ``rejected``).
* ``min_delta``: challenger - champion >= the number (e.g. AP must gain 0.005).
* ``max_drop``: champion - challenger <= the number (e.g. APM may lose at most 0.02).

A relative rule on a metric COCO reports as -1 on that data (no person at that scale) is not
applicable and does not block. Each rule gives a :class:`RuleResult` (metric, kind, threshold,
challenger / champion values, delta, passed, bootstrap CI); the results are read back from the
tag by the model card, ``pose compare`` and the tests. The English sentences (:meth:`RuleResult.text`)
are generated from them and never parsed.

Params sections read: ``registry`` (:func:`parse_rules`; `pose.params.RegistrySection`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pose.codec import section_mapping
from pose.params import RULE_METRICS, RULE_RANGES
from pose.registry.errors import RuleError

if TYPE_CHECKING:
    from pose.params import RegistrySection

#: rule kinds of ``registry.rules`` (module docstring) and the metrics a rule may name (scalar
#: keys of eval.json): one definition, shared with the params schema (pose.params)
RULE_KINDS = tuple(RULE_RANGES)
#: float slack of the comparisons (0.505 >= 0.5 + 0.005 must pass despite binary rounding)
_EPS = 1e-9
#: longest tag value written (older MLflow servers cap model-version tags at 5000 characters)
MAX_TAG = 4900


@dataclass(frozen=True)
class Rule:
    """One promotion rule of ``registry.rules``.

    ``kind``: ``min`` (challenger metric >= threshold, also when there is no champion),
    ``min_delta`` (challenger - champion >= threshold), ``max_drop`` (champion - challenger
    <= threshold). Metric values are COCO numbers in [0, 1]."""

    metric: str
    kind: str
    threshold: float

    def describe(self) -> str:
        """``"AP >= 0.1"``, ``"AP >= champion + 0.005"``, ``"APM >= champion - 0.02"``."""
        if self.kind == "min":
            return f"{self.metric} >= {self.threshold:g}"
        if self.kind == "min_delta":
            return f"{self.metric} >= champion {'+' if self.threshold >= 0 else '-'} {abs(self.threshold):g}"
        return f"{self.metric} >= champion - {self.threshold:g}"


@dataclass
class RuleResult:
    """A rule evaluated on a challenger (and the champion on the same evaluation data).

    ``challenger`` / ``champion``: metric values (None: no champion, not logged, or undefined,
    i.e. COCO's -1 when the evaluation data has no person at that scale); ``delta`` =
    challenger - champion; ``passed``: the rule does not block the promotion; ``applicable``:
    False when the rule could not be checked and does not count (relative rule without a
    champion, metric undefined on this data); ``ci_low`` / ``ci_high`` / ``ci_level``: paired
    image-bootstrap CI of ``delta`` (None when the results were not logged); ``note``: why a
    rule is not applicable or failed for lack of evidence."""

    metric: str
    kind: str
    threshold: float
    challenger: float | None
    champion: float | None
    delta: float | None
    passed: bool
    applicable: bool = True
    ci_low: float | None = None
    ci_high: float | None = None
    ci_level: float | None = None
    note: str = ""

    @property
    def status(self) -> str:
        """``pass`` / ``fail`` / ``n/a``."""
        return "n/a" if not self.applicable else ("pass" if self.passed else "fail")

    @property
    def rule(self) -> Rule:
        return Rule(self.metric, self.kind, self.threshold)

    def to_dict(self) -> dict:
        """JSON-ready dict (floats rounded to 6 decimals), as stored in tag ``promotion.rules``."""
        d = dict(self.__dict__)
        for k in ("threshold", "challenger", "champion", "delta", "ci_low", "ci_high", "ci_level"):
            if d[k] is not None:
                d[k] = round(float(d[k]), 6)
        d["status"] = self.status
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RuleResult":
        """Inverse of :meth:`to_dict` (``status`` is derived, so ignored)."""
        return cls(**{k: d.get(k) for k in ("metric", "kind", "threshold", "challenger", "champion", "delta",
                                            "passed", "applicable", "ci_low", "ci_high", "ci_level")},
                   note=d.get("note") or "")

    def text(self) -> str:
        """One generated sentence for the version description / logs (never parsed back)."""
        ci = (f", {int(round(100 * self.ci_level))}% CI [{self.ci_low:+.4f}, {self.ci_high:+.4f}]"
              if self.ci_low is not None and self.ci_high is not None and self.ci_level is not None else "")
        head = f"{self.status}: {self.rule.describe()}"
        if not self.applicable or self.challenger is None or (self.kind != "min" and self.champion is None):
            return f"{head} ({self.note or 'not checked'})"
        if self.kind == "min":
            return f"{head} ({self.metric} {self.challenger:.4f})"
        return (f"{head} ({self.metric} {self.challenger:.4f} vs champion {self.champion:.4f}, "
                f"delta {self.delta:+.4f}{ci})")


def parse_rules(reg: RegistrySection | Mapping) -> list[Rule]:
    """``registry.rules`` of params as :class:`Rule` s (in order). ``reg``: the params ``registry``
    section (`pose.params.RegistrySection`), or the section as a mapping (as params.yaml writes it).

    Each entry is a mapping with ``metric`` (one of :data:`RULE_METRICS`) and exactly one of
    ``min`` (in [0, 1]), ``min_delta`` (in [-1, 1]) or ``max_drop`` (in [0, 1]).

    Raises RuleError naming ``registry.rules[i]`` and what is allowed (also for the replaced
    keys ``promotion_margin`` / ``scale_tolerance`` and for an empty list)."""
    reg = section_mapping(reg) if reg else {}
    for old, new in (("promotion_margin", "{metric: AP, min_delta: <margin>}"),
                     ("scale_tolerance", "{metric: APM, max_drop: <tolerance>} and {metric: APL, ...}")):
        if old in reg:
            raise RuleError(f"registry.{old} was replaced by registry.rules: write it as {new}")
    raw = reg.get("rules")
    if not isinstance(raw, list) or not raw:
        raise RuleError(f"registry.rules must be a non-empty list of {{metric: <name>, "
                        f"<{'|'.join(RULE_KINDS)}>: <number>}}, got {raw!r}")
    ranges = RULE_RANGES
    rules = []
    for i, entry in enumerate(raw):
        where = f"registry.rules[{i}]"
        if not isinstance(entry, dict):
            raise RuleError(f"{where} must be a mapping like {{metric: AP, min: 0.1}}, got {entry!r}")
        unknown = sorted(set(entry) - {"metric", *RULE_KINDS})
        if unknown:
            raise RuleError(f"{where}: unknown key(s) {unknown}; allowed: metric and one of {', '.join(RULE_KINDS)}")
        metric = entry.get("metric")
        if metric not in RULE_METRICS:
            raise RuleError(f"{where}.metric {metric!r} is not an eval.json metric; allowed: {', '.join(RULE_METRICS)}")
        kinds = [k for k in RULE_KINDS if k in entry]
        if len(kinds) != 1:
            raise RuleError(f"{where} needs exactly one of {', '.join(RULE_KINDS)}, got {kinds or 'none'}")
        kind, value = kinds[0], entry[kinds[0]]
        lo, hi = ranges[kind]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not lo <= float(value) <= hi:
            raise RuleError(f"{where}.{kind} must be a number in [{lo:g}, {hi:g}], got {value!r}")
        rules.append(Rule(str(metric), kind, float(value)))
    return rules



def metric_value(metrics: dict | None, key: str) -> float | None:
    """A defined metric value: None when absent, not a number, NaN or negative (COCO's -1: undefined)."""
    v = (metrics or {}).get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        return None
    return float(v)


def evaluate_rules(rules: list[Rule], challenger: dict, champion: dict | None, *, ci: dict | None = None,
                   champion_unavailable: str | None = None) -> list[RuleResult]:
    """Evaluate ``rules`` on two metrics dicts (eval.json of the challenger and of the champion
    on the SAME evaluation data).

    Args:
        challenger / champion: ``{"AP": float, "APM": float, ...}``; ``champion`` None when there
            is no champion (relative rules are then not applicable; ``min`` still applies).
        ci: :func:`pose.registry.bootstrap.bootstrap_diff` output (a = champion, b = challenger);
            its percentile CI of each metric's delta is attached to the results.
        champion_unavailable: there is a champion but no like-for-like numbers (e.g. it cannot be
            re-evaluated on the challenger's data): relative rules fail with this note.

    Returns one :class:`RuleResult` per rule, in order. ``min`` fails when the challenger's value
    is undefined (a floor cannot be shown); relative rules are not applicable when the metric is
    undefined on either side (no ground truth at that scale), as COCO reports -1 there.
    """
    out = []
    for r in rules:
        v, c = metric_value(challenger, r.metric), metric_value(champion, r.metric)
        delta = v - c if v is not None and c is not None else None
        e = (ci or {}).get("metrics", {}).get(r.metric) if champion is not None else None
        ci_kw = {}
        if e and e.get("ci_low") is not None:
            ci_kw = {"ci_low": float(e["ci_low"]), "ci_high": float(e["ci_high"]), "ci_level": float(ci["level"])}
        res = RuleResult(r.metric, r.kind, r.threshold, v, c, delta, passed=True, **ci_kw)
        if r.kind == "min":
            if v is None:
                res.passed, res.note = False, f"challenger {r.metric} undefined or not logged"
            else:
                res.passed = v >= r.threshold - _EPS
                if not res.passed:
                    res.note = "below the absolute floor"
        elif champion is None:
            if champion_unavailable:
                res.passed, res.note = False, champion_unavailable
            else:
                res.applicable, res.note = False, "no champion yet"
        elif v is None or c is None:
            res.applicable, res.note = False, f"{r.metric} undefined on this evaluation data (no ground truth there)"
        elif r.kind == "min_delta":
            res.passed = delta >= r.threshold - _EPS
        else:  # max_drop
            res.passed = delta >= -r.threshold - _EPS
        out.append(res)
    return out


def gate_passed(results: list[RuleResult]) -> bool:
    """The gate's decision: every rule passed (a not-applicable rule does not block)."""
    return all(r.passed for r in results)


def rules_tag(results: list[RuleResult]) -> str:
    """JSON of the rule results for tag ``promotion.rules`` (notes dropped when too long for a tag)."""
    items = [r.to_dict() for r in results]
    text = json.dumps(items, separators=(",", ":"))
    if len(text) > MAX_TAG:
        text = json.dumps([{**d, "note": ""} for d in items], separators=(",", ":"))
    return text


def rules_from_tags(tags: dict) -> list[RuleResult] | None:
    """The rule results a version's tag ``promotion.rules`` holds (None when absent or unreadable)."""
    raw = (tags or {}).get("promotion.rules")
    try:
        return [RuleResult.from_dict(d) for d in json.loads(raw)] if raw else None
    except (ValueError, TypeError):
        return None


__all__ = ["RULE_KINDS", "Rule", "RuleResult", "RuleError", "parse_rules", "metric_value", "evaluate_rules",
           "gate_passed", "rules_tag", "rules_from_tags"]
