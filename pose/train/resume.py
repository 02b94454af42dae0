"""When a training run may resume: the inputs of its DVC stage (issue 19, item 2).

``pose train --dvc-stage train`` (the ``train`` stage of dvc.yaml) resumes from ``last.pt``
when, and only when, that checkpoint was written by a run of the same stage inputs, and
starts from scratch otherwise, saying why in one line. The inputs are what DVC itself
compares to decide whether the stage must run again (`stage_inputs`): the hash of every dep
(data files and folders, code files and folders) as DVC computes it (md5; folders: the md5 of
DVC's ``.dir`` listing; DVC's state cache makes this cheap because `dvc repro` hashed the
deps just before it started the command) and the values of the params the stage lists. The
training checkpoints record them (``stage_inputs``), so a run killed at step 900 of 1000
continues at step 900 under ``dvc repro`` or the Prefect flow, while a run whose params,
data or code changed in between trains from step 0.

A finished run's ``last.pt`` (epoch = the last epoch, nothing left to train) is never
resumed: DVC re-runs an up-to-date stage only when forced (``dvc repro --force``, the flow's
``--force``) or when its outputs were removed, and both mean "train again".

DVC deletes a stage's outputs before running its command; the train stage's ``data/models``
is ``persist: true`` in dvc.yaml so ``last.pt`` survives until `pose train` has decided.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


class StageInputsError(ValueError):
    """The DVC stage named by ``--dvc-stage`` cannot be read; the message is one line."""


def _flatten(obj, prefix: str = "") -> dict[str, object]:
    if isinstance(obj, dict):
        out: dict[str, object] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def stage_inputs(stage: str, root: Path | str = ".") -> dict:
    """The inputs of dvc.yaml stage ``stage`` in the DVC repo at ``root``, as DVC sees them now.

    Returns ``{"stage": name, "deps": {path: "md5:<hash>", ...}, "params": {dotted key: value},
    "digest": sha256 hex of the canonical JSON of the rest}``. Paths are dvc.yaml's (templating
    resolved); params are flattened to dotted keys (``train.lr``). Uses DVC's API
    (``Repo.stage.collect``, ``Dependency.get_hash``); DVC holds no repo lock while a stage's
    command runs, so this works inside ``dvc repro``. Raises :class:`StageInputsError` when
    ``root`` is no DVC repo, the stage does not exist or a dep is missing.
    """
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    root = Path(root)
    try:
        with Repo(str(root)) as repo:
            stages = repo.stage.collect(stage)
            if len(stages) != 1:
                raise StageInputsError(f"--dvc-stage {stage}: {len(stages)} stages of that name in {root}")
            deps: dict[str, str] = {}
            params: dict[str, object] = {}
            for dep in stages[0].deps:
                info = dep.get_hash()
                if dep.__class__.__name__ == "ParamsDependency":
                    params.update(_flatten(info.value if info else {}))
                elif info is None or not info.value:
                    raise StageInputsError(f"--dvc-stage {stage}: dep {dep.def_path} is missing")
                else:
                    deps[str(dep.def_path)] = f"{info.name}:{info.value}"
    except StageInputsError:
        raise
    except (DvcException, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StageInputsError(f"--dvc-stage {stage}: cannot read the stage's inputs in {root}: {first}") from exc
    body = {"stage": stage, "deps": dict(sorted(deps.items())), "params": dict(sorted(params.items()))}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
    return {**body, "digest": digest}


def _changes(old: dict, new: dict, kind: str, limit: int = 3) -> list[str]:
    keys = sorted(set(old) | set(new))
    changed = [k for k in keys if old.get(k) != new.get(k)]
    out = []
    for k in changed[:limit]:
        if kind == "params":
            out.append(f"params {k} {old.get(k, '(absent)')!r} -> {new.get(k, '(absent)')!r}")
        else:
            out.append(f"{k} {'added' if k not in old else 'removed' if k not in new else 'changed'}")
    if len(changed) > limit:
        out.append(f"{len(changed) - limit} more {kind}")
    return out


def resume_decision(recorded: dict | None, current: dict, *, finished: bool) -> tuple[bool, str]:
    """Whether a checkpoint whose recorded stage inputs are ``recorded`` (None: it has none)
    may be resumed by a run with inputs ``current`` (`stage_inputs`), and why not.

    Returns ``(True, "")`` or ``(False, reason)``, the reason one line naming what changed
    (the first three params keys / deps, then a count)."""
    if recorded is None:
        return False, "it records no stage inputs (written outside `pose train --dvc-stage`)"
    if recorded.get("stage") != current.get("stage"):
        return False, f"it was written by stage {recorded.get('stage')!r}, not {current.get('stage')!r}"
    if recorded.get("digest") != current.get("digest"):
        what = _changes(recorded.get("params", {}), current.get("params", {}), "params") + \
            _changes(recorded.get("deps", {}), current.get("deps", {}), "deps")
        return False, "it was written by other train inputs: " + ("; ".join(what) or "the inputs' hash differs")
    if finished:
        return False, "it is a finished run of the same inputs (DVC re-runs a finished stage only when forced " \
                      "or when its outputs are gone: training again)"
    return True, ""
