"""Champion / challenger promotion gate, manual override and rollback, made race safe with a lock.

:func:`promote` gates a version against the champion with the rules of ``registry.rules``
(:mod:`pose.registry.rules`) on the same evaluation data (:mod:`pose.registry.evidence`:
the champion is re-evaluated on the challenger's data when needed, and the re-evaluation is
cached under ``reeval/<hash16>/`` of its run), and moves alias ``champion`` when every rule
passes. A paired image bootstrap (:mod:`pose.registry.bootstrap`, ``registry.bootstrap_samples``
resamples, seed ``registry.bootstrap_seed``) gives the 95% CI of every metric difference from
the results JSONs logged with each run (``eval/results.json``); the CI is reported with each
rule, the rules decide. ``pose promote --version N --force --reason "..."`` overrides the gate;
:func:`rollback` (``pose rollback``) moves ``champion`` to the previous entry of
``champion.history`` (:mod:`pose.registry.champion`) and drops the last one.

Race safety: every read-decide-write sequence runs holding an exclusive lock
(:func:`pose.registry.lock.registry_lock`). Inside the lock the current champion is re-read,
so of two concurrent promotions the second is gated against the winner of the first: the
champion can never end up worse than either candidate, and alias, history and tags are written
by one process at a time. After writing, the alias is read back (compare-and-set check); a
mismatch raises :class:`RegistryConflict`.

With a tracking *server* (``http(s)://``, env ``MLFLOW_TRACKING_URI``: team mode) the file lock
only serializes promotions started on the same host. With several hosts, run promotions from one
place (the Prefect deployment with ``concurrency_limit=1``) or use an advisory lock in the
server's database (e.g. PostgreSQL ``pg_advisory_lock``) around the same sequence; the read-back
check after the write turns a lost race into a :class:`RegistryConflict` that the caller retries
instead of silently leaving a worse champion.

Params sections read (handed in by ``pose.cli``, `pose.params`): ``registry``, ``data`` (the model
name) and ``catalogue`` (the OKS sigmas of the evaluation data).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pose.registry.champion import (
    actor,
    champion_version,
    history,
    now,
    reconcile,
    resolve_version,
    set_history,
    write_decision,
)
from pose.registry.errors import RegistryConflict, RegistryError, RuleError
from pose.registry.evidence import champion_on_data, load_evidence, oks_sigmas
from pose.registry.lock import registry_lock
from pose.registry.preflight import check_registry_writable, quiet_store_logs, store_error
from pose.registry.rules import (
    MAX_TAG,
    RuleResult,
    evaluate_rules,
    gate_passed,
    metric_value,
    parse_rules,
    rules_tag,
)
from pose.registry.tracking import registered_model_name, tracking_uri

if TYPE_CHECKING:
    from pose.params import CatalogueEntry, DataSection, RegistrySection

#: metrics whose champion -> challenger delta is tagged on the version (``promotion.<key>_delta``)
SCALE_KEYS = ("APM", "APL")
#: test hook: called inside the lock right after the champion is read (widens a race window)
_critical_hook: Callable[[], None] | None = None


def promote(reg: RegistrySection, data: DataSection, catalogue: Mapping[str, CatalogueEntry], *,
            version: str | int | None = None, force: bool = False, reason: str | None = None,
            reevaluate: Callable | None = None, client: MlflowClient | None = None) -> dict:
    """Gate ``version`` (default: alias ``challenger``) against the champion with ``registry.rules``
    and apply the decision, holding the registry lock (:func:`gate_locked` does the work).

    Args:
        reg: the params ``registry`` section (`pose.params.RegistrySection`): rules, lock, bootstrap.
        data: the params ``data`` section (`pose.params.DataSection`; ``dataset`` names the model).
        catalogue: the params ``catalogue`` section (the OKS sigmas of ``data.dataset``).
        force: promote regardless of the gate (``reason`` required); recorded as ``forced``.
        reevaluate: ``(checkpoint[, annotations]) -> metrics | (metrics, results)`` scoring the
            champion on the challenger's evaluation data when it was scored on other data.

    Returns the decision record of :func:`gate_locked` plus ``lock_wait_s``.
    Raises RegistryError (unknown version, force without reason, a registry that is not
    writable: :func:`pose.registry.preflight.check_registry_writable`, a write that failed),
    RuleError (bad ``registry.rules`` / ``registry.model_name``), TimeoutError (lock).
    """
    parse_rules(reg)
    name = registered_model_name(reg, data.dataset)
    if force and not (reason and reason.strip()):
        raise RegistryError("--force needs --reason: say why the gate is overridden")
    uri = tracking_uri(reg)
    mlflow.set_tracking_uri(uri)
    client = client or MlflowClient(uri)
    check_registry_writable(uri)
    with quiet_store_logs(), registry_lock(uri, float(reg.lock_timeout_s)) as lock:
        try:
            record = gate_locked(reg, oks_sigmas(catalogue, data.dataset), client, name, version, force=force,
                                 reason=reason, reevaluate=reevaluate)
        except MlflowException as exc:
            raise store_error(exc, f"promotion of {name} {version or 'challenger'}",
                              "the champion alias moves only after the decision is recorded: rerun `pose promote`"
                              ) from exc
    record["lock_wait_s"] = lock["wait_s"]
    return record


def gate_locked(reg: RegistrySection, sigmas: np.ndarray, client: MlflowClient, name: str,
                version: str | int | None, *, force: bool = False, reason: str | None = None,
                reevaluate: Callable | None = None, move_alias: bool = True) -> dict:
    """The promotion gate of ``version`` with the registry lock already held by the caller.

    ``reg``: the params ``registry`` section (`pose.params.RegistrySection`: rules, bootstrap);
    ``sigmas``: the OKS sigmas of the evaluation data (:func:`pose.registry.evidence.oks_sigmas`).

    Records the decision (tags ``promotion.*``, description) and then, when it promotes and
    ``move_alias``, moves alias ``champion`` (:func:`pose.registry.champion.move_champion`).
    With ``move_alias=False`` (``pose register``: aliases move after every record is written) the
    caller moves it; ``champion_after``, ``history`` and ``aliases`` of the record are then the
    values they will have.

    Returns the decision record: ``decision`` (``promoted``, ``kept_champion``, ``rejected``: no
    champion and a ``min`` rule failed, ``forced``, ``already_champion``), ``promoted``, ``rules``
    (:meth:`RuleResult.to_dict` of each rule, in order; empty when forced or already champion),
    ``reasons`` (generated text), ``ci`` (bootstrap output or None), ``compared_on`` (how the
    champion's numbers on the challenger's data were obtained; absent without a champion), AP and
    champion numbers, ``champion_after``, ``history``, ``aliases``, ``promoted_at``.
    Raises RegistryError (unknown version), MlflowException (a failed write).
    """
    rules = parse_rules(reg)
    with tempfile.TemporaryDirectory(prefix="pose-promote-") as tmp:
        reconcile(client, name)
        mv = resolve_version(client, name, version)
        champ = champion_version(client, name)
        if _critical_hook is not None:
            _critical_hook()
        chal = load_evidence(client, mv, Path(tmp))
        record = {"model_name": name, "version": int(mv.version), "run_id": mv.run_id,
                  "AP": float(chal.metrics.get("AP", float("nan"))), "eval_data_hash": chal.data_hash,
                  "champion_before": int(champ.version) if champ is not None else None,
                  "champion_AP_before": None, "ci": None, "forced": bool(force)}
        extra: dict = {}
        results: list[RuleResult] = []
        if champ is not None and str(champ.version) == str(mv.version):
            promote_it, decision, reasons = False, "already_champion", [f"v{mv.version} already is the champion"]
        elif force:
            promote_it, decision = True, "forced"
            reasons = [f"forced by {actor()}: {reason.strip()}"]
            extra["promotion.forced_by"] = actor()
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
                                        n_resamples=int(reg.bootstrap_samples), seed=int(reg.bootstrap_seed),
                                        sigmas=sigmas)
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
                record["champion_AP_before"] = metric_value(cev.metrics, "AP")
                if metric_value(cev.metrics, "AP") is not None and metric_value(chal.metrics, "AP") is not None:
                    extra["promotion.AP_delta"] = f"{float(chal.metrics['AP']) - float(cev.metrics['AP']):+.6f}"
                for key in SCALE_KEYS:
                    if metric_value(chal.metrics, key) is not None and metric_value(cev.metrics, key) is not None:
                        extra[f"promotion.{key}_delta"] = f"{float(chal.metrics[key]) - float(cev.metrics[key]):+.6f}"
                extra["promotion.compared_on"] = chal.data_hash or "unknown"
        if results:
            extra["promotion.rules"] = rules_tag(results)
        summary = (f"{'PROMOTED to champion' if promote_it else 'not promoted'} ({decision}) at {now()}: "
                   + "; ".join(reasons))
        at = write_decision(client, name, mv, decision=decision, reasons=reasons, champ_before=champ,
                            extra_tags=extra, promote=promote_it, summary=summary, move_alias=move_alias)
        if move_alias:
            after = champion_version(client, name)
            champion_after = int(after.version) if after is not None else None
            hist = history(client, name)
            aliases = sorted(client.get_model_version(name, mv.version).aliases)
        else:   # as they will be once the caller has moved the aliases
            champion_after = int(mv.version) if promote_it else record["champion_before"]
            hist = history(client, name) + ([int(mv.version)] if promote_it else [])
            aliases = sorted(set(mv.aliases) | ({"champion"} if promote_it else set()))
        record.update(promoted=bool(promote_it), decision=decision, reason="; ".join(reasons), reasons=reasons,
                      rules=[r.to_dict() for r in results], gate_passed=gate_passed(results) if results else None,
                      champion_after=champion_after, history=hist, aliases=aliases, promoted_at=at)
    return record


def rollback(reg: RegistrySection, data: DataSection, *, reason: str, to_version: int | None = None,
             client: MlflowClient | None = None) -> dict:
    """Move ``champion`` back to the previous champion in ``champion.history`` (or to ``to_version``,
    which must be an earlier entry). The rolled-back version is tagged ``promotion.decision=rolled_back``.
    ``reg``: the params ``registry`` section (`pose.params.RegistrySection`); ``data``: the params ``data``
    section (`pose.params.DataSection`; ``dataset`` names the model).

    Raises RegistryError when there is no previous champion or no reason, the registry is not
    writable or a write fails."""
    if not (reason and reason.strip()):
        raise RegistryError("rollback needs --reason")
    name = registered_model_name(reg, data.dataset)
    uri = tracking_uri(reg)
    client = client or MlflowClient(uri)
    check_registry_writable(uri)
    with quiet_store_logs(), registry_lock(uri, float(reg.lock_timeout_s)) as lock:
        try:
            return _rollback_locked(client, name, reason=reason, to_version=to_version, lock_wait_s=lock["wait_s"])
        except MlflowException as exc:
            raise store_error(exc, f"rollback of {name}", "rerun `pose rollback`") from exc


def _rollback_locked(client: MlflowClient, name: str, *, reason: str, to_version: int | None,
                     lock_wait_s: float) -> dict:
    """:func:`rollback` with the registry lock held."""
    hist = reconcile(client, name)
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
    set_history(client, name, hist[:idx + 1])
    at = now()
    client.set_registered_model_tag(name, "champion.changed_at", at)
    change = f"v{target}: rollback from v{cur.version}: {reason}"
    client.set_registered_model_tag(name, "champion.change", change[:MAX_TAG])
    for k, v in {"promotion.decision": "rolled_back", "promotion.rolled_back_at": at,
                 "promotion.rollback_reason": reason.strip()[:MAX_TAG], "promotion.rolled_back_by": actor(),
                 "promotion.rolled_back_to": str(target)}.items():
        client.set_model_version_tag(name, cur.version, k, v)
    client.set_model_version_tag(name, str(target), "promotion.restored_at", at)
    old = client.get_model_version(name, cur.version).description or ""
    client.update_model_version(
        name, cur.version, description=f"{old}\n\n[rollback] champion moved back to v{target} at {at}: {reason}")
    current = champion_version(client, name)
    if current is None or int(current.version) != int(target):
        raise RegistryConflict(f"champion is v{getattr(current, 'version', None)} right after rolling back "
                               f"to v{target}")
    return {"model_name": name, "rolled_back": int(cur.version), "champion": int(target),
            "history": history(client, name), "reason": reason.strip(), "lock_wait_s": lock_wait_s}


__all__ = ["promote", "gate_locked", "rollback", "RegistryError", "RegistryConflict", "RuleError"]
