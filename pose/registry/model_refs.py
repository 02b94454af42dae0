"""Registry lookups behind a model reference: whether ``models:/<name>@<alias>`` resolves (and,
when it does not, which versions exist with their promotion decision), ``models:/<name>/latest``
resolved to the newest version.

Used by ``pose predict`` / ``pose export`` / ``pose serve`` before a model is loaded, so a
reference that names nothing ends in one line saying what does exist.
"""

from __future__ import annotations

import re


class ModelRefError(LookupError):
    """A ``models:/<name>@<alias>`` reference that does not resolve; the message (one line) lists
    the versions that exist with their promotion decision, and the URI of the newest one."""



#: ``models:/<name>@<alias>``
_ALIAS_URI = re.compile(r"models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)")
#: MLflow error codes of a registered model or alias that does not exist
_NOT_FOUND = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND", "ENDPOINT_NOT_FOUND")
#: versions listed by :func:`version_decisions`, newest first
LISTED_VERSIONS = 5


def version_line(mv) -> str:
    """``v3 rejected: <promotion.reason> [aliases: challenger]`` of an MLflow ``ModelVersion``,
    from the tags ``promotion.decision`` / ``promotion.reason`` the gate writes (``not gated``
    without them); at most about 300 characters."""
    tags = mv.tags or {}
    decision = tags.get("promotion.decision", "not gated")
    reason = " ".join(str(tags.get("promotion.reason", "")).split())
    line = f"v{mv.version} {decision}" + (f": {reason}" if reason else "")
    if len(line) > 240:
        line = line[:237] + "..."
    aliases = sorted(getattr(mv, "aliases", []) or [])
    return line + (f" [aliases: {', '.join(aliases)}]" if aliases else "")


def version_decisions(client, name: str) -> list[str]:
    """One short line per registered version of ``name``, newest first (at most
    :data:`LISTED_VERSIONS`, then ``+N older``): ``v3 rejected: <promotion.reason>
    [aliases: challenger]``, from the version tags ``promotion.decision`` / ``promotion.reason``
    that the gate writes (``pose register`` / ``pose promote``; ``not gated`` without them)."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return []
    versions = sorted(versions, key=lambda v: int(v.version), reverse=True)
    out = []
    for v in versions[:LISTED_VERSIONS]:
        try:   # the search results of some stores lack the aliases
            v = client.get_model_version(name, v.version)
        except MlflowException:
            pass
        out.append(version_line(v))
    if len(versions) > LISTED_VERSIONS:
        out.append(f"+{len(versions) - LISTED_VERSIONS} older")
    return out


def check_model_ref(model_uri: str, *, tracking_uri: str | None) -> None:
    """Check that a ``models:/<name>@<alias>`` reference resolves in the registry at
    ``tracking_uri`` (other references: nothing is checked).

    Raises ModelRefError, one line: the registry cannot be read, no registered model of that
    name (with the names that exist), or no version holding the alias, listing the versions with
    their promotion decision
    (:func:`version_decisions`, e.g. ``v1 rejected: no champion yet; AP 0.000 < 0.1``) and the
    URI of the newest version whatever its alias (``models:/<name>/latest``)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    m = _ALIAS_URI.fullmatch(model_uri)
    if not m:
        return
    name, alias = m["name"], m["alias"]
    client = MlflowClient(tracking_uri)
    try:
        client.get_model_version_by_alias(name, alias)
        return
    except MlflowException as exc:
        if exc.error_code not in _NOT_FOUND:   # an unreachable server, a broken store: not "no such alias"
            raise ModelRefError(f"{model_uri}: cannot read the registry at {tracking_uri}: "
                                f"{' '.join(str(exc.message).split())[:300]}") from None
    versions = version_decisions(client, name)
    if not versions:
        try:
            names = sorted(rm.name for rm in client.search_registered_models(max_results=20))
        except MlflowException:
            names = []
        known = f"registered models: {', '.join(names)}" if names else "no registered model"
        raise ModelRefError(f"{model_uri}: no version of a registered model {name!r} in {tracking_uri} ({known}); "
                            "`pose register` (the last stage of `dvc repro` / `make run`) registers one")
    why = f"no version has alias {alias!r}"
    if alias == "champion":
        why += " (a version becomes champion when it passes every rule of registry.rules)"
    raise ModelRefError(f"{model_uri}: {why}; versions: {' | '.join(versions)}; the newest, whatever its alias: "
                        f"models:/{name}/latest")


#: ``models:/<name>/latest``
_LATEST_URI = re.compile(r"models:/(?P<name>[^/@]+)/latest")


def resolve_model_ref(model_uri: str, *, tracking_uri: str | None) -> str:
    """``model_uri`` with ``models:/<name>/latest`` replaced by the newest version,
    ``models:/<name>/<n>`` (the highest version number, whatever its alias or promotion
    decision); other references are returned unchanged after :func:`check_model_ref`.

    Raises ModelRefError (one line) when an alias does not resolve or ``name`` has no version."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    check_model_ref(model_uri, tracking_uri=tracking_uri)
    m = _LATEST_URI.fullmatch(model_uri)
    if not m:
        return model_uri
    try:
        versions = MlflowClient(tracking_uri).search_model_versions(f"name='{m['name']}'")
    except MlflowException:
        versions = []
    if not versions:
        check_model_ref(f"models:/{m['name']}@latest", tracking_uri=tracking_uri)   # raises: lists the models
    return f"models:/{m['name']}/{max(int(v.version) for v in versions)}"




def resolve_model(model: str, *, tracking_uri: str | None) -> str:
    """``model`` (a ``--model`` argument) with ``models:/<name>/latest`` resolved to the newest version
    (:func:`resolve_model_ref`); anything but a ``models:/`` reference is returned as it is, without
    touching the registry.

    Raises ModelRefError (one line, listing the registered versions and why none holds the alias)
    when a ``models:/<name>@<alias>`` reference does not resolve."""
    if not model.startswith("models:/"):
        return model
    return resolve_model_ref(model, tracking_uri=tracking_uri)


__all__ = ["ModelRefError", "check_model_ref", "resolve_model_ref", "resolve_model", "version_decisions",
           "version_line", "LISTED_VERSIONS"]
