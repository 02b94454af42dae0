"""Champion / challenger promotion gate, manual override and rollback, made race safe with a lock.

Gate (:func:`gate_decision`): the challenger replaces the champion when, on the SAME
evaluation data (same ``eval_data_hash``; otherwise the champion is re-evaluated on the
challenger's data first, and the re-evaluation is cached on the champion's run under
``reeval/<hash16>/``):

* ``AP(challenger) >= AP(champion) + registry.promotion_margin``, and
* no per-scale AP (``APM``, ``APL``) of the challenger is more than
  ``registry.scale_tolerance`` below the champion's (a scale without ground truth, COCO's
  -1, is not checked).

A paired image bootstrap (:mod:`pose.registry.bootstrap`, ``registry.bootstrap_samples``
resamples, seed ``registry.bootstrap_seed``) gives the 95% CI of every AP difference from
the results JSONs logged with each run (``eval/results.json``); the CI is reported, the
rule above decides. Decision, reasons and numbers go into the version's tags
(``promotion.*``) and description.

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
import os
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

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


# ----------------------------------------------------------------------------- gate

def decide_promotion(challenger_ap: float, champion_ap: float | None, margin: float) -> tuple[bool, str]:
    """AP-only rule (kept for callers of the first version): promote when there is no champion
    or ``challenger_ap >= champion_ap + margin``. Returns (promote, reason)."""
    if champion_ap is None:
        return True, "no champion yet"
    if challenger_ap >= champion_ap + margin:
        return True, f"AP {challenger_ap:.4f} >= champion AP {champion_ap:.4f} + margin {margin}"
    return False, f"AP {challenger_ap:.4f} < champion AP {champion_ap:.4f} + margin {margin}"


def _fmt_ci(ci: dict | None, key: str) -> str:
    e = (ci or {}).get("metrics", {}).get(key)
    if not e or e.get("ci_low") is None:
        return ""
    return f", {int(round(100 * ci['level']))}% CI [{e['ci_low']:+.4f}, {e['ci_high']:+.4f}]"


def gate_decision(challenger: dict, champion: dict | None, *, margin: float, scale_tolerance: float,
                  ci: dict | None = None) -> tuple[bool, list[str]]:
    """The promotion rule (module docstring) on two metrics dicts (``AP``, ``APM``, ``APL``).

    ``ci``: :func:`pose.registry.bootstrap.bootstrap_diff` output (champion = a, challenger = b),
    only quoted in the reasons. Returns (promote, reasons)."""
    if champion is None:
        return True, ["no champion yet"]
    ap, cap = float(challenger["AP"]), float(champion["AP"])
    ok = ap >= cap + margin
    reasons = [f"AP {ap:.4f} {'>=' if ok else '<'} champion AP {cap:.4f} + margin {margin} "
               f"(delta {ap - cap:+.4f}{_fmt_ci(ci, 'AP')})"]
    for key in SCALE_KEYS:
        a, c = challenger.get(key), champion.get(key)
        if a is None or c is None or float(a) < 0 or float(c) < 0:
            reasons.append(f"{key} not checked (no ground truth at that scale)")
            continue
        d = float(a) - float(c)
        if d < -scale_tolerance:
            ok = False
            reasons.append(f"{key} regresses {d:+.4f} beyond tolerance {scale_tolerance}{_fmt_ci(ci, key)}")
        else:
            reasons.append(f"{key} delta {d:+.4f} within tolerance {scale_tolerance}{_fmt_ci(ci, key)}")
    return ok, reasons


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
    cached = _download(champ.run_id, f"reeval/{h16}", Path(workdir) / f"v{champ.version}-reeval")
    if cached is not None and (cached / "metrics.json").is_file():
        res = cached / "results.json"
        return Evidence(ev.version, ev.run_id, h, json.loads((cached / "metrics.json").read_text()),
                        res if res.is_file() else None, challenger.annotations), f"cached re-evaluation on {h16}"
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
    """Gate ``version`` (default: alias ``challenger``) against the champion and apply the decision.

    Args:
        params: whole params.yaml dict (``registry`` section).
        force: promote regardless of the gate (``reason`` required); recorded as ``forced``.
        reevaluate: ``(checkpoint[, annotations]) -> metrics | (metrics, results)`` scoring the
            champion on the challenger's evaluation data when it was scored on other data.

    Returns the decision record (also written into the version's tags and description).
    Raises RegistryError (unknown version, force without reason), TimeoutError (lock).
    """
    reg = params["registry"]
    name = reg["model_name"]
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
        if champ is not None and str(champ.version) == str(mv.version):
            promote_it, decision, reasons = False, "already_champion", [f"v{mv.version} already is the champion"]
        elif force:
            promote_it, decision = True, "forced"
            reasons = [f"forced by {_actor()}: {reason.strip()}"]
            extra["promotion.forced_by"] = _actor()
        elif champ is None:
            promote_it, reasons = gate_decision(chal.metrics, None, margin=0, scale_tolerance=0)
            decision = "promoted"
        else:
            cev, how = champion_on_data(client, name, champ, chal, Path(tmp), reevaluate)
            if cev is None:
                promote_it, decision, reasons = False, "kept_champion", [f"no like-for-like comparison: {how}"]
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
                promote_it, reasons = gate_decision(chal.metrics, cev.metrics, margin=float(reg["promotion_margin"]),
                                                    scale_tolerance=float(reg["scale_tolerance"]), ci=ci)
                if ci is None:
                    reasons.append("no bootstrap CI (results JSON of a version not logged)")
                reasons.insert(0, f"vs champion v{champ.version} ({how})")
                decision = "promoted" if promote_it else "kept_champion"
                record["champion_AP_before"] = float(cev.metrics["AP"])
                extra["promotion.AP_delta"] = f"{float(chal.metrics['AP']) - float(cev.metrics['AP']):+.6f}"
                for key in SCALE_KEYS:
                    if key in chal.metrics and key in cev.metrics:
                        extra[f"promotion.{key}_delta"] = f"{float(chal.metrics[key]) - float(cev.metrics[key]):+.6f}"
                extra["promotion.compared_on"] = chal.data_hash or "unknown"
        summary = (f"{'PROMOTED to champion' if promote_it else 'not promoted'} ({decision}) at {_now()}: "
                   + "; ".join(reasons))
        _write_decision(client, name, mv, decision=decision, reasons=reasons, champ_before=champ,
                        extra_tags=extra, promote=promote_it, summary=summary)
        after = champion_version(client, name)
        record.update(promoted=bool(promote_it), decision=decision, reason="; ".join(reasons), reasons=reasons,
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
    name = reg["model_name"]
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
