"""Champion / challenger promotion gate, manual override and rollback, made race safe with a lock.

Gate (:func:`evaluate_rules`): the rules are data, ``registry.rules`` in params, a list of
``{metric: <eval.json metric>, <kind>: <number>}`` evaluated in order; the challenger becomes
``champion`` only when every rule passes:

* ``min``: challenger metric >= the number. An absolute floor that also applies to the first
  model: with no champion, a model below the floor is not promoted (decision ``rejected``).
* ``min_delta``: challenger - champion >= the number (e.g. AP must gain 0.005).
* ``max_drop``: champion - challenger <= the number (e.g. APM may lose at most 0.02).

Relative rules compare both models on the SAME evaluation data (same ``eval_data_hash``);
otherwise the champion is re-evaluated on the challenger's data first, and the
re-evaluation is cached on the champion's run under ``reeval/<hash16>/``. A relative rule
on a metric COCO reports as -1 on that data (no person at that scale) is not applicable
and does not block. Each rule gives a :class:`RuleResult` (metric, kind, threshold,
challenger / champion values, delta, passed, bootstrap CI); the results are stored as
JSON in the version tag ``promotion.rules`` and read from there by the model card,
``pose compare`` and the tests. The English reasons (``promotion.reason``, description)
are generated from them and never parsed.

A paired image bootstrap (:mod:`pose.registry.bootstrap`, ``registry.bootstrap_samples``
resamples, seed ``registry.bootstrap_seed``) gives the 95% CI of every metric difference from
the results JSONs logged with each run (``eval/results.json``); the CI is reported with each
rule, the rules decide.

The registered model name is ``registry.model_name`` with ``{dataset}`` replaced by
``data.dataset`` (:func:`registered_model_name`), so models trained on different datasets
never compete for the same ``champion``.

Registry state kept consistent under the lock:

* alias ``champion``; registered-model tag ``champion.history``: JSON list of the versions
  that held ``champion``, oldest first, the last one being the current champion;
  ``champion.changed_at`` / ``champion.change``.
* ``pose rollback`` moves ``champion`` to the previous entry of the history (and drops the
  last one); ``pose promote --version N --force --reason "..."`` overrides the gate.

Race safety: every read-decide-write sequence (:func:`promote`, :func:`rollback`) runs
holding an exclusive lock (:func:`registry_lock`): ``fcntl.flock`` on ``<db>.lock`` beside
a SQLite registry (``<dir>/.promotion.lock`` for a file store). Inside the lock the
current champion is re-read, so of two concurrent promotions the second is gated against
the winner of the first: the champion can never end up worse than either candidate, and
alias, history and tags are written by one process at a time. After writing, the alias is
read back (compare-and-set check); a mismatch raises :class:`RegistryConflict`.

The registry is env ``MLFLOW_TRACKING_URI`` when set (team mode), else params
``registry.tracking_uri`` (:func:`tracking_uri`). For a tracking *server* (``http(s)://``)
a file lock only serializes promotions started on the same host (the lock file is
``~/.cache/pose-registry/<uri hash>.lock``). With several
hosts, run promotions from one place (the Prefect deployment with ``concurrency_limit=1``)
or use an advisory lock in the server's database (e.g. PostgreSQL ``pg_advisory_lock``)
around the same sequence; the read-back check after the write turns a lost race into a
:class:`RegistryConflict` that the caller retries instead of silently leaving a worse
champion.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import getpass
import hashlib
import inspect
import json
import logging
import math
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pose.params import RULE_METRICS, RULE_RANGES

log = logging.getLogger(__name__)

HISTORY_TAG = "champion.history"
SCALE_KEYS = ("APM", "APL")
#: test hook: called inside the lock right after the champion is read (widens a race window)
_critical_hook: Callable[[], None] | None = None


class RegistryError(RuntimeError):
    """A registry operation cannot be done (unknown version, no previous champion, ...)."""


class RegistryConflict(RegistryError):
    """The champion alias changed under us (a writer that does not take the lock)."""


def tracking_uri(params: dict) -> str:
    """The tracking / registry URI: env ``MLFLOW_TRACKING_URI`` when set (team mode: a shared
    server), else params ``registry.tracking_uri`` (local SQLite by default)."""
    return os.environ.get("MLFLOW_TRACKING_URI", "").strip() or str(params["registry"]["tracking_uri"])


# ----------------------------------------------------------------------------- lock

def lock_path_for(tracking_uri: str) -> Path:
    """The lock file that serializes promotions for ``tracking_uri`` (module docstring)."""
    uri = str(tracking_uri)
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):] + ".lock")
    if uri.startswith("file:"):
        return Path(uri[len("file://"):] if uri.startswith("file://") else uri[len("file:"):]) / ".promotion.lock"
    if "://" not in uri:
        return Path(uri) / ".promotion.lock"
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    return Path.home() / ".cache" / "pose-registry" / f"{digest}.lock"


@contextlib.contextmanager
def registry_lock(tracking_uri: str, timeout: float):
    """Hold an exclusive ``flock`` on :func:`lock_path_for` (waits up to ``timeout`` s).

    Yields ``{"path", "wait_s"}``. Raises TimeoutError when the lock is not obtained."""
    path = lock_path_for(tracking_uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    t0 = time.monotonic()
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() - t0 > timeout:
                    raise TimeoutError(f"registry lock {path} not obtained within {timeout} s") from None
                time.sleep(0.05)
        wait = time.monotonic() - t0
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}@{socket.gethostname()} since {time.time():.3f}\n".encode())
        try:
            yield {"path": str(path), "wait_s": wait}
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- rules

#: rule kinds of ``registry.rules`` (module docstring) and the metrics a rule may name (scalar
#: keys of eval.json): one definition, shared with the params schema (pose.params)
RULE_KINDS = tuple(RULE_RANGES)
#: float slack of the comparisons (0.505 >= 0.5 + 0.005 must pass despite binary rounding)
_EPS = 1e-9
#: longest tag value written (older MLflow servers cap model-version tags at 5000 characters)
_MAX_TAG = 4900
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class RuleError(RegistryError, ValueError):
    """``registry.rules`` or ``registry.model_name`` in params is malformed (the message names the key)."""


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


def parse_rules(params: dict) -> list[Rule]:
    """``registry.rules`` of params as :class:`Rule` s (in order).

    Each entry is a mapping with ``metric`` (one of :data:`RULE_METRICS`) and exactly one of
    ``min`` (in [0, 1]), ``min_delta`` (in [-1, 1]) or ``max_drop`` (in [0, 1]).

    Raises RuleError naming ``registry.rules[i]`` and what is allowed (also for the replaced
    keys ``promotion_margin`` / ``scale_tolerance`` and for an empty list)."""
    reg = params.get("registry") or {}
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


def registered_model_name(params: dict) -> str:
    """``registry.model_name`` with ``{dataset}`` replaced by ``data.dataset`` (the training data),
    e.g. ``higherhrnet-{dataset}`` -> ``higherhrnet-coco2017``. A name without placeholder is used as is.

    Raises RuleError for another placeholder or a name MLflow would not round-trip in
    ``models:/<name>@<alias>`` URIs (allowed: letters, digits, ``.``, ``_``, ``-``)."""
    template = str(params["registry"]["model_name"])
    try:
        name = template.format(dataset=params["data"]["dataset"])
    except (KeyError, IndexError, ValueError) as exc:
        raise RuleError(f"registry.model_name {template!r}: the only placeholder is {{dataset}} "
                        f"(data.dataset) ({exc})") from None
    if not _NAME_RE.fullmatch(name):
        raise RuleError(f"registry.model_name {template!r} gives {name!r}: allowed are letters, digits, '.', '_', '-'")
    return name


def _value(metrics: dict | None, key: str) -> float | None:
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
        v, c = _value(challenger, r.metric), _value(champion, r.metric)
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
    if len(text) > _MAX_TAG:
        text = json.dumps([{**d, "note": ""} for d in items], separators=(",", ":"))
    return text


def rules_from_tags(tags: dict) -> list[RuleResult] | None:
    """The rule results a version's tag ``promotion.rules`` holds (None when absent or unreadable)."""
    raw = (tags or {}).get("promotion.rules")
    try:
        return [RuleResult.from_dict(d) for d in json.loads(raw)] if raw else None
    except (ValueError, TypeError):
        return None


# ----------------------------------------------------------------------------- evidence

@dataclass
class Evidence:
    """What a model version was scored on and how: metrics, results and ground truth files."""

    version: str
    run_id: str
    data_hash: str | None
    metrics: dict
    results: Path | None = None
    annotations: Path | None = None


def _download(run_id: str, artifact_path: str, dst: Path) -> Path | None:
    dst.mkdir(parents=True, exist_ok=True)
    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=str(dst)))
    except (MlflowException, OSError):
        return None


def load_evidence(client: MlflowClient, mv, workdir: Path) -> Evidence:
    """Metrics / results / annotations logged with ``mv``'s run (``eval/``), downloaded into ``workdir``."""
    local = _download(mv.run_id, "eval", Path(workdir) / f"v{mv.version}")
    metrics = None
    results = annotations = None
    if local is not None:
        if (local / "metrics.json").is_file():
            metrics = json.loads((local / "metrics.json").read_text())
        results = local / "results.json" if (local / "results.json").is_file() else None
        annotations = local / "annotations.json" if (local / "annotations.json").is_file() else None
    if metrics is None:  # runs of the first registry version: metrics only in the run / version tags
        metrics = dict(client.get_run(mv.run_id).data.metrics)
        if "AP" not in metrics and "AP" in mv.tags:
            metrics["AP"] = float(mv.tags["AP"])
    return Evidence(str(mv.version), mv.run_id, mv.tags.get("eval_data_hash"), metrics, results, annotations)


def _call_reevaluate(fn: Callable, checkpoint: Path, annotations: Path | None):
    """Call ``reevaluate(checkpoint[, annotations])``; returns (metrics, results or None)."""
    params = inspect.signature(fn).parameters.values()
    n = len([p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)])
    varargs = any(p.kind == p.VAR_POSITIONAL for p in params)
    out = fn(checkpoint, annotations) if (n >= 2 or varargs) and annotations is not None else fn(checkpoint)
    if isinstance(out, tuple):
        return out[0], out[1]
    return out, None


def cached_reevaluation(run_id: str, data_hash: str | None, workdir: Path) -> tuple[dict, Path | None] | None:
    """The re-evaluation of ``run_id``'s model on the evaluation data with sha256 ``data_hash``,
    cached by the gate under ``reeval/<hash16>/`` of that run: (metrics, results.json path or
    None), or None when there is none."""
    if not data_hash:
        return None
    cached = _download(run_id, f"reeval/{data_hash[:16]}", Path(workdir))
    if cached is None or not (cached / "metrics.json").is_file():
        return None
    res = cached / "results.json"
    return json.loads((cached / "metrics.json").read_text()), (res if res.is_file() else None)


def champion_on_data(client: MlflowClient, name: str, champ, challenger: Evidence, workdir: Path,
                     reevaluate: Callable | None) -> tuple[Evidence | None, str]:
    """The champion's evidence on the challenger's evaluation data: its own (same hash), a cached
    re-evaluation (``reeval/<hash16>/`` in its run), or a fresh ``reevaluate`` (then cached).

    Returns (evidence or None, how it was obtained)."""
    ev = load_evidence(client, champ, workdir)
    h = challenger.data_hash
    if h is not None and ev.data_hash == h:
        return ev, "same evaluation data"
    h16 = (h or "unknown")[:16]
    cached = cached_reevaluation(champ.run_id, h, Path(workdir) / f"v{champ.version}-reeval")
    if cached is not None:
        return Evidence(ev.version, ev.run_id, h, cached[0], cached[1], challenger.annotations), \
            f"cached re-evaluation on {h16}"
    if reevaluate is None or challenger.annotations is None:
        why = "no re-evaluation callback" if reevaluate is None else "the challenger's annotations are not logged"
        return None, (f"champion v{champ.version} was evaluated on other data ({(ev.data_hash or '?')[:16]}) "
                      f"and cannot be re-evaluated here ({why})")
    from pose.registry.serving import checkpoint_from_uri

    ckpt = checkpoint_from_uri(f"models:/{name}/{champ.version}")
    metrics, results = _call_reevaluate(reevaluate, ckpt, challenger.annotations)
    out = Path(workdir) / f"v{champ.version}-reeval-new"
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True, default=float))
    res_path = None
    if results is not None:
        res_path = out / "results.json"
        res_path.write_text(json.dumps(results))
    client.log_artifacts(champ.run_id, str(out), artifact_path=f"reeval/{h16}")
    client.set_model_version_tag(name, champ.version, f"reeval.{h16}.AP", f"{float(metrics['AP']):.6f}")
    return Evidence(ev.version, ev.run_id, h, metrics, res_path, challenger.annotations), f"re-evaluated on {h16}"


# ----------------------------------------------------------------------------- registry state

def champion_version(client: MlflowClient, name: str):
    """The model version holding alias ``champion``, or None."""
    try:
        return client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None


def history(client: MlflowClient, name: str) -> list[int]:
    """``champion.history`` of the registered model (oldest first)."""
    raw = client.get_registered_model(name).tags.get(HISTORY_TAG)
    try:
        return [int(v) for v in json.loads(raw)] if raw else []
    except (ValueError, TypeError):
        return []


def _set_history(client: MlflowClient, name: str, hist: list[int]) -> None:
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(hist[-200:]))


def _reconcile(client: MlflowClient, name: str) -> list[int]:
    """Make ``champion.history`` end with the current champion (repairs an interrupted write)."""
    hist = history(client, name)
    champ = champion_version(client, name)
    if champ is not None and (not hist or hist[-1] != int(champ.version)):
        log.warning("champion history %s does not end with champion v%s: appending it", hist, champ.version)
        hist.append(int(champ.version))
        _set_history(client, name, hist)
    return hist


def resolve_version(client: MlflowClient, name: str, ref: str | int | None):
    """A model version from ``None`` (alias challenger), ``N`` / ``"vN"``, an alias, or ``models:/name/N|@alias``."""
    ref = "challenger" if ref is None else str(ref)
    if ref.startswith("models:/"):
        body = ref[len("models:/"):]
        if "@" in body:
            name, ref = body.split("@", 1)
        else:
            name, ref = body.rsplit("/", 1)
    try:
        if ref.lstrip("v").isdigit():
            return client.get_model_version(name, ref.lstrip("v"))
        return client.get_model_version_by_alias(name, ref)
    except MlflowException as exc:
        raise RegistryError(f"model {name!r} has no version {ref!r}") from exc


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _write_decision(client: MlflowClient, name: str, mv, *, decision: str, reasons: list[str], champ_before,
                    extra_tags: dict, promote: bool, summary: str) -> None:
    tags = {"promotion.decision": decision, "promotion.reason": "; ".join(reasons)[:4900],
            "promotion.champion_before": str(champ_before.version) if champ_before is not None else "none",
            "promotion.at": _now(), **extra_tags}
    if promote:
        hist = history(client, name)
        client.set_registered_model_alias(name, "champion", mv.version)
        hist.append(int(mv.version))
        _set_history(client, name, hist)
        client.set_registered_model_tag(name, "champion.changed_at", tags["promotion.at"])
        client.set_registered_model_tag(name, "champion.change", f"v{mv.version}: {decision}: {tags['promotion.reason']}"[:4900])
        if champ_before is not None:
            client.set_model_version_tag(name, champ_before.version, "promotion.replaced_by", str(mv.version))
    for k, v in tags.items():
        client.set_model_version_tag(name, mv.version, k, str(v))
    old = client.get_model_version(name, mv.version).description or ""
    head = old.split("\n\n[promotion]")[0]
    client.update_model_version(name, mv.version, description=f"{head}\n\n[promotion] {summary}".strip())
    if promote:
        now = champion_version(client, name)
        if now is None or str(now.version) != str(mv.version):
            raise RegistryConflict(f"champion is v{getattr(now, 'version', None)} right after setting it to "
                                   f"v{mv.version}: a concurrent writer bypassed the lock; re-run the promotion")


# ----------------------------------------------------------------------------- operations

def promote(params: dict, *, version: str | int | None = None, force: bool = False, reason: str | None = None,
            reevaluate: Callable | None = None, client: MlflowClient | None = None) -> dict:
    """Gate ``version`` (default: alias ``challenger``) against the champion with ``registry.rules``
    and apply the decision.

    Args:
        params: whole params.yaml dict (``registry`` section; ``data.dataset`` for the model name).
        force: promote regardless of the gate (``reason`` required); recorded as ``forced``.
        reevaluate: ``(checkpoint[, annotations]) -> metrics | (metrics, results)`` scoring the
            champion on the challenger's evaluation data when it was scored on other data.

    Returns the decision record (also written into the version's tags and description):
    ``decision`` (``promoted``, ``kept_champion``, ``rejected``: no champion and a ``min`` rule
    failed, ``forced``, ``already_champion``), ``promoted``, ``rules`` (:meth:`RuleResult.to_dict`
    of each rule, in order; empty when forced or already champion), ``reasons`` (generated text),
    ``ci`` (bootstrap output or None), ``compared_on`` (how the champion's numbers on the
    challenger's data were obtained; absent without a champion), AP and champion numbers.
    Raises RegistryError (unknown version, force without reason), RuleError (bad
    ``registry.rules`` / ``registry.model_name``), TimeoutError (lock).
    """
    reg = params["registry"]
    rules = parse_rules(params)
    name = registered_model_name(params)
    if force and not (reason and reason.strip()):
        raise RegistryError("--force needs --reason: say why the gate is overridden")
    uri = tracking_uri(params)
    mlflow.set_tracking_uri(uri)
    client = client or MlflowClient(uri)
    with registry_lock(uri, float(reg["lock_timeout_s"])) as lock, \
            tempfile.TemporaryDirectory(prefix="pose-promote-") as tmp:
        _reconcile(client, name)
        mv = resolve_version(client, name, version)
        champ = champion_version(client, name)
        if _critical_hook is not None:
            _critical_hook()
        chal = load_evidence(client, mv, Path(tmp))
        record = {"model_name": name, "version": int(mv.version), "run_id": mv.run_id,
                  "AP": float(chal.metrics.get("AP", float("nan"))), "eval_data_hash": chal.data_hash,
                  "champion_before": int(champ.version) if champ is not None else None,
                  "champion_AP_before": None, "ci": None, "forced": bool(force), "lock_wait_s": lock["wait_s"]}
        extra: dict = {}
        results: list[RuleResult] = []
        if champ is not None and str(champ.version) == str(mv.version):
            promote_it, decision, reasons = False, "already_champion", [f"v{mv.version} already is the champion"]
        elif force:
            promote_it, decision = True, "forced"
            reasons = [f"forced by {_actor()}: {reason.strip()}"]
            extra["promotion.forced_by"] = _actor()
        elif champ is None:
            results = evaluate_rules(rules, chal.metrics, None)
            promote_it = gate_passed(results)
            decision = "promoted" if promote_it else "rejected"
            reasons = ["no champion yet"] + [r.text() for r in results if r.applicable]
        else:
            cev, how = champion_on_data(client, name, champ, chal, Path(tmp), reevaluate)
            if cev is None:
                results = evaluate_rules(rules, chal.metrics, None, champion_unavailable=how)
                record["compared_on"] = how
                promote_it, decision = False, "kept_champion"
                reasons = [f"no like-for-like comparison: {how}"] + [r.text() for r in results]
            else:
                ci = None
                if chal.results and cev.results and chal.annotations:
                    from pose.registry.bootstrap import bootstrap_diff

                    ci = bootstrap_diff(chal.annotations, cev.results, chal.results,
                                        n_resamples=int(reg["bootstrap_samples"]), seed=int(reg["bootstrap_seed"]))
                    ci.pop("per_image_tp", None)
                    ci.pop("img_ids", None)
                    record["ci"] = ci
                    e = ci["metrics"]["AP"]
                    if e["ci_low"] is not None:
                        extra["promotion.AP_delta_ci95"] = f"[{e['ci_low']:+.4f}, {e['ci_high']:+.4f}]"
                results = evaluate_rules(rules, chal.metrics, cev.metrics, ci=ci)
                promote_it = gate_passed(results)
                reasons = [f"vs champion v{champ.version} ({how})"] + [r.text() for r in results]
                record["compared_on"] = how
                if ci is None:
                    reasons.append("no bootstrap CI (results JSON of a version not logged)")
                decision = "promoted" if promote_it else "kept_champion"
                record["champion_AP_before"] = _value(cev.metrics, "AP")
                if _value(cev.metrics, "AP") is not None and _value(chal.metrics, "AP") is not None:
                    extra["promotion.AP_delta"] = f"{float(chal.metrics['AP']) - float(cev.metrics['AP']):+.6f}"
                for key in SCALE_KEYS:
                    if _value(chal.metrics, key) is not None and _value(cev.metrics, key) is not None:
                        extra[f"promotion.{key}_delta"] = f"{float(chal.metrics[key]) - float(cev.metrics[key]):+.6f}"
                extra["promotion.compared_on"] = chal.data_hash or "unknown"
        if results:
            extra["promotion.rules"] = rules_tag(results)
        summary = (f"{'PROMOTED to champion' if promote_it else 'not promoted'} ({decision}) at {_now()}: "
                   + "; ".join(reasons))
        _write_decision(client, name, mv, decision=decision, reasons=reasons, champ_before=champ,
                        extra_tags=extra, promote=promote_it, summary=summary)
        after = champion_version(client, name)
        record.update(promoted=bool(promote_it), decision=decision, reason="; ".join(reasons), reasons=reasons,
                      rules=[r.to_dict() for r in results], gate_passed=gate_passed(results) if results else None,
                      champion_after=int(after.version) if after is not None else None,
                      history=history(client, name),
                      aliases=sorted(client.get_model_version(name, mv.version).aliases))
    return record


def rollback(params: dict, *, reason: str, to_version: int | None = None, client: MlflowClient | None = None) -> dict:
    """Move ``champion`` back to the previous champion in ``champion.history`` (or to ``to_version``,
    which must be an earlier entry). The rolled-back version is tagged ``promotion.decision=rolled_back``.

    Raises RegistryError when there is no previous champion or no reason."""
    if not (reason and reason.strip()):
        raise RegistryError("rollback needs --reason")
    reg = params["registry"]
    name = registered_model_name(params)
    uri = tracking_uri(params)
    client = client or MlflowClient(uri)
    with registry_lock(uri, float(reg["lock_timeout_s"])) as lock:
        hist = _reconcile(client, name)
        cur = champion_version(client, name)
        if cur is None or len(hist) < 2:
            raise RegistryError(f"no previous champion to roll back to (history {hist})")
        if to_version is None:
            idx = len(hist) - 2
        else:
            earlier = [i for i, v in enumerate(hist[:-1]) if v == int(to_version)]
            if not earlier:
                raise RegistryError(f"v{to_version} is not an earlier champion (history {hist})")
            idx = earlier[-1]
        target = hist[idx]
        if _critical_hook is not None:
            _critical_hook()
        client.set_registered_model_alias(name, "champion", str(target))
        _set_history(client, name, hist[:idx + 1])
        at = _now()
        client.set_registered_model_tag(name, "champion.changed_at", at)
        client.set_registered_model_tag(name, "champion.change", f"v{target}: rollback from v{cur.version}: {reason}"[:4900])
        for k, v in {"promotion.decision": "rolled_back", "promotion.rolled_back_at": at,
                     "promotion.rollback_reason": reason.strip()[:4900], "promotion.rolled_back_by": _actor(),
                     "promotion.rolled_back_to": str(target)}.items():
            client.set_model_version_tag(name, cur.version, k, v)
        client.set_model_version_tag(name, str(target), "promotion.restored_at", at)
        old = client.get_model_version(name, cur.version).description or ""
        client.update_model_version(name, cur.version,
                                    description=f"{old}\n\n[rollback] champion moved back to v{target} at {at}: {reason}")
        now = champion_version(client, name)
        if now is None or int(now.version) != int(target):
            raise RegistryConflict(f"champion is v{getattr(now, 'version', None)} right after rolling back to v{target}")
        return {"model_name": name, "rolled_back": int(cur.version), "champion": int(target),
                "history": history(client, name), "reason": reason.strip(), "lock_wait_s": lock["wait_s"]}
