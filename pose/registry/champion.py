"""Champion state in the registry: the alias ``champion``, the registered-model tag
``champion.history`` (JSON list of the versions that held ``champion``, oldest first, the last
one being the current champion), ``champion.changed_at`` / ``champion.change``, and the
``promotion.*`` tags and description of a gated version. Callers hold the registry lock
(:mod:`pose.registry.lock`) around every read-decide-write sequence.
"""

from __future__ import annotations

import datetime as _dt
import getpass
import json
import logging
import socket

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pose.registry.errors import RegistryConflict, RegistryError
from pose.registry.rules import MAX_TAG
from pose.registry.versions import aliases_of, list_versions

log = logging.getLogger(__name__)

HISTORY_TAG = "champion.history"


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


def set_history(client: MlflowClient, name: str, hist: list[int]) -> None:
    """Write ``champion.history`` (the last 200 entries)."""
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(hist[-200:]))


def reconcile(client: MlflowClient, name: str) -> list[int]:
    """Make ``champion.history`` end with the current champion (repairs an interrupted write)."""
    hist = history(client, name)
    champ = champion_version(client, name)
    if champ is not None and (not hist or hist[-1] != int(champ.version)):
        log.warning("champion history %s does not end with champion v%s: appending it", hist, champ.version)
        hist.append(int(champ.version))
        set_history(client, name, hist)
    return hist


def resolve_version(client: MlflowClient, name: str, ref: str | int | None):
    """A model version from ``None`` (alias challenger), ``N`` / ``"vN"``, an alias, or ``models:/name/N|@alias``.

    Raises RegistryError naming what is missing: an unknown version number or an unknown alias,
    with the aliases and versions that exist (:func:`pose.registry.versions.describe_versions`)."""
    ref = "challenger" if ref is None else str(ref)
    if ref.startswith("models:/"):
        body = ref[len("models:/"):]
        if "@" in body:
            name, ref = body.split("@", 1)
        else:
            name, ref = body.rsplit("/", 1)
    is_number = ref.lstrip("v").isdigit()
    try:
        if is_number:
            return client.get_model_version(name, ref.lstrip("v"))
        return client.get_model_version_by_alias(name, ref)
    except MlflowException:
        pass
    versions = [v["version"] for v in list_versions(client, name)]
    aliases = aliases_of(client, name)
    if not versions:
        raise RegistryError(f"model {name!r} has no registered version yet (run `pose register`)") from None
    have = (f"aliases: {', '.join(f'{a} (v{v})' for a, v in sorted(aliases.items())) or 'none'}; "
            f"versions: {', '.join(f'v{v}' for v in versions)}")
    if is_number:
        raise RegistryError(f"model {name!r} has no version {ref.lstrip('v')} ({have})") from None
    raise RegistryError(f"model {name!r} has no alias {ref!r}: unknown alias ({have})") from None


def now() -> str:
    """UTC time now, ISO 8601 to the second."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def actor() -> str:
    """``user@host`` of this process (recorded with forced promotions and rollbacks)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def write_decision(client: MlflowClient, name: str, mv, *, decision: str, reasons: list[str], champ_before,
                   extra_tags: dict, promote: bool, summary: str, move_alias: bool = True) -> str:
    """Record a gate decision on version ``mv``: tags ``promotion.*`` (``extra_tags`` added) and the
    ``[promotion] summary`` paragraph of its description, then, when ``promote`` and ``move_alias``,
    move alias ``champion`` (:func:`move_champion`). The alias moves only after the decision is
    recorded. Returns the ``promotion.at`` time; raises RegistryConflict (see :func:`move_champion`)."""
    tags = {"promotion.decision": decision, "promotion.reason": "; ".join(reasons)[:MAX_TAG],
            "promotion.champion_before": str(champ_before.version) if champ_before is not None else "none",
            "promotion.at": now(), **extra_tags}
    for k, v in tags.items():
        client.set_model_version_tag(name, mv.version, k, str(v))
    old = client.get_model_version(name, mv.version).description or ""
    head = old.split("\n\n[promotion]")[0]
    client.update_model_version(name, mv.version, description=f"{head}\n\n[promotion] {summary}".strip())
    if promote and move_alias:
        move_champion(client, name, mv.version, decision=decision, reason=tags["promotion.reason"],
                      champ_before=champ_before, at=tags["promotion.at"])
    return tags["promotion.at"]


def move_champion(client: MlflowClient, name: str, version, *, decision: str, reason: str, champ_before,
                  at: str | None = None) -> None:
    """Move alias ``champion`` to ``version`` and record it: ``champion.history`` (appended once, so a
    rerun after an interruption does not repeat it), ``champion.changed_at`` / ``champion.change``,
    and ``promotion.replaced_by`` on the previous champion ``champ_before``.

    Raises RegistryConflict when the alias read back is not ``version`` (a writer that bypassed the lock)."""
    at = at or now()
    hist = history(client, name)
    current = champion_version(client, name)
    if current is None or str(current.version) != str(version):
        client.set_registered_model_alias(name, "champion", str(version))
    if not hist or hist[-1] != int(version):
        hist.append(int(version))
        set_history(client, name, hist)
    client.set_registered_model_tag(name, "champion.changed_at", at)
    change = f"v{version}: {decision}: {reason}"
    client.set_registered_model_tag(name, "champion.change", change[:MAX_TAG])
    if champ_before is not None and str(champ_before.version) != str(version):
        client.set_model_version_tag(name, champ_before.version, "promotion.replaced_by", str(version))
    current = champion_version(client, name)
    if current is None or str(current.version) != str(version):
        raise RegistryConflict(f"champion is v{getattr(current, 'version', None)} right after setting it to "
                               f"v{version}: a concurrent writer bypassed the lock; re-run the promotion")


__all__ = ["HISTORY_TAG", "champion_version", "history", "set_history", "reconcile", "resolve_version",
           "now", "actor", "write_decision", "move_champion"]
