"""Registered versions: what makes two registrations the same (the registration key), finding
the version of a key, and a readable listing of a model's versions with their gate decisions.

**Registration key.** A version is keyed by the checkpoint and the evaluation it was registered
with, each a sha256 (:func:`pose.io.sha256_file`) stored as a version tag:

=========================  ======================================================
``checkpoint.sha256``      the checkpoint file (``best.pt``)
``eval.metrics_sha256``    the evaluate stage's metrics JSON (``eval.json``)
``eval.results_sha256``    its COCO results JSON (``results.json``; ``none`` without one)
``eval_data_hash``         the ground truth it was scored on
=========================  ======================================================

``pose register`` with the same four hashes finds that version (:func:`find_registered`) and
registers nothing new. Tag ``registration.status`` is ``pending`` from the version's creation
until every record of the registration is written and its aliases have moved, then
``complete``; a rerun completes a pending version instead of creating another one.

**Listing.** :func:`list_versions` / :func:`describe_versions` say which versions exist, which
aliases they hold and what the gate decided (and why), e.g. for "no champion" messages.
"""

from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pose.io import sha256_file

#: version tags that key a registration (module docstring)
KEY_TAGS = ("checkpoint.sha256", "eval.metrics_sha256", "eval.results_sha256", "eval_data_hash")
#: version tag: ``pending`` while a registration is being written, ``complete`` once it is done
STATUS_TAG = "registration.status"
PENDING, COMPLETE = "pending", "complete"


def registration_key(checkpoint: Path, eval_metrics: Path, eval_annotations: Path,
                     results: Path | None) -> dict[str, str]:
    """``{tag: sha256}`` of :data:`KEY_TAGS` for these files. Raises FileNotFoundError / OSError
    when one cannot be read."""
    return {"checkpoint.sha256": sha256_file(checkpoint), "eval.metrics_sha256": sha256_file(eval_metrics),
            "eval.results_sha256": sha256_file(results) if results is not None else "none",
            "eval_data_hash": sha256_file(eval_annotations)}


def _quote(value: str) -> str:
    return str(value).replace("'", "\\'")


def find_registered(client: MlflowClient, name: str, key: dict[str, str]):
    """The earliest version of ``name`` whose tags hold every hash of ``key``, or None (also when
    the registered model does not exist). Reads only."""
    query = f"name='{_quote(name)}' and tags.`checkpoint.sha256` = '{_quote(key['checkpoint.sha256'])}'"
    try:
        found = client.search_model_versions(query)
    except MlflowException:
        return None
    matches = [mv for mv in found if all(mv.tags.get(k) == v for k, v in key.items())]
    if not matches:
        return None
    first = min(matches, key=lambda mv: int(mv.version))
    return client.get_model_version(name, first.version)


def is_complete(mv) -> bool:
    """The registration of version ``mv`` finished (tag ``registration.status`` = ``complete``)."""
    return mv.tags.get(STATUS_TAG) == COMPLETE


def aliases_of(client: MlflowClient, name: str) -> dict[str, int]:
    """``{alias: version}`` of registered model ``name`` (empty when it does not exist)."""
    try:
        return {a: int(v) for a, v in (client.get_registered_model(name).aliases or {}).items()}
    except MlflowException:
        return {}


def list_versions(client: MlflowClient, name: str) -> list[dict]:
    """Every version of registered model ``name``, oldest first: ``{"version": int, "aliases": [str],
    "decision": str | None (tag promotion.decision), "reason": str | None (promotion.reason),
    "AP": float | None, "status": str | None (registration.status), "run_id": str}``.
    Empty when the model does not exist."""
    try:
        found = client.search_model_versions(f"name='{_quote(name)}'")
    except MlflowException:
        return []
    by_version = {}
    for mv in found:
        by_version.setdefault(int(mv.version), mv)
    alias_map: dict[int, list[str]] = {}
    for alias, v in aliases_of(client, name).items():
        alias_map.setdefault(v, []).append(alias)
    out = []
    for v in sorted(by_version):
        mv = by_version[v]
        ap = mv.tags.get("AP")
        try:
            ap = float(ap) if ap is not None else None
        except ValueError:
            ap = None
        out.append({"version": v, "aliases": sorted(alias_map.get(v, [])),
                    "decision": mv.tags.get("promotion.decision"), "reason": mv.tags.get("promotion.reason"),
                    "AP": ap, "status": mv.tags.get(STATUS_TAG), "run_id": mv.run_id})
    return out


def describe_versions(client: MlflowClient, name: str, limit: int = 5) -> str:
    """One line saying which versions of ``name`` exist (the last ``limit``), their aliases and gate
    decisions, and why there is no champion when none holds the alias, e.g.
    ``higherhrnet-generated: v1 (rejected: AP 0.02 < 0.1), v2 (challenger; rejected: ...); no champion:
    no version passed the gate (registry.rules); force one with `pose promote --version N --force --reason ...```.
    """
    versions = list_versions(client, name)
    if not versions:
        return f"{name}: no registered version yet (run `pose register`, the pipeline's register stage)"
    parts = []
    for v in versions[-limit:]:
        bits = []
        if v["aliases"]:
            bits.append(", ".join(v["aliases"]))
        if v["decision"]:
            reason = (v["reason"] or "").split(";")
            why = next((r.strip() for r in reason if "FAIL" in r or "fail" in r), reason[0].strip() if reason else "")
            bits.append(f"{v['decision']}: {why[:80]}" if why else v["decision"])
        if v["status"] == PENDING:
            bits.append("registration pending")
        parts.append(f"v{v['version']}" + (f" ({'; '.join(bits)})" if bits else ""))
    more = f"{len(versions) - limit} older, " if len(versions) > limit else ""
    line = f"{name}: {more}{', '.join(parts)}"
    if not any("champion" in v["aliases"] for v in versions):
        line += ("; no champion: no version passed the gate (registry.rules); force one with "
                 "`pose promote --version N --force --reason \"...\"`")
    return line


def registration_line(record: dict, out: Path | str) -> str:
    """The one line ``pose register`` prints for a registration record
    (:func:`pose.registry.mlflow_registry.register_run`): a new version and the gate's decision, or
    the existing version that already has this checkpoint and evaluation (nothing registered)."""
    name, v = record["model_name"], record["version"]
    aliases = ", ".join(record.get("aliases") or []) or "none"
    if record.get("new_version") is False:
        key = record.get("key") or {}
        return (f"already registered: {name} v{v} has this checkpoint and evaluation (checkpoint sha256 "
                f"{str(key.get('checkpoint.sha256', '?'))[:12]}, eval.json sha256 "
                f"{str(key.get('eval.metrics_sha256', '?'))[:12]}); nothing new registered; aliases of v{v}: "
                f"{aliases}; record {out}")
    return (f"registered {name} v{v} (AP {float(record['AP']):.4f}): {record['decision']}; aliases of v{v}: "
            f"{aliases}; record {out}")


__all__ = ["KEY_TAGS", "STATUS_TAG", "PENDING", "COMPLETE", "registration_key", "find_registered", "is_complete",
           "aliases_of", "list_versions", "describe_versions", "registration_line"]
