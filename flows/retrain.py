"""Prefect flow `retrain`: new-data check, the DVC stage graph as Prefect tasks, push, register, notify.

0. ``check-config``: params.yaml is read and checked (the typed schema of
   `pose.params.validate_params`, e.g. ``data.dataset`` is a catalogue entry; and the local
   ingest batches exist). A configuration error ends the run at once as ``Failed`` (state
   name ``ConfigError``) with one line naming the key; it is never retried.
1. ``detect-new-data``: the fingerprint of what the ``fetch`` stage would read
   (:func:`pose.registry.data_version.source_fingerprint`: mirror / source folder content,
   S3 prefix listing, ..., plus every batch listed under ``catalogue.<name>.ingest``) is
   compared with the registered model's tag ``data.fingerprint`` (the fingerprint of the
   last registered data). Unchanged -> the flow ends at once in a ``Completed`` state named
   **NoNewData** (message says why); nothing is trained. ``force=True`` skips the check.
2. Each stage runs as ``dvc repro --single-item <stage>`` in the repo, in `dvc.yaml` order
   (topological). On new data ``fetch`` is forced (``--force``): its DVC deps are the code
   and params, not the external source. With ``force=True`` the stages from ``train`` on
   (:data:`FORCED_FROM`) run with ``--force``, so the model really is retrained on the
   current data. DVC does all the work, so `dvc.lock` and the cache end up exactly as
   after a `dvc repro` (``--force``).
3. ``dvc push`` (data and models to the DVC remote, ``dvc-storage/`` by default; params
   ``schedule.push``) before ``register``, so a registered version's data is always in the
   remote. Only network-bound tasks retry with backoff: fetch (only when `pose fetch` failed
   on the network, exit 75; a bad batch fails at once), push, and the new-data check when it
   lists an S3 prefix. A failed stage ends the run as ``StageFailed`` with one line; every
   ``dvc repro`` runs in its own process group, stopped when the flow is interrupted.
4. ``register`` (stage) logs, registers and gates the model (the data fingerprint reaches
   it through ``POSE_DATA_FINGERPRINT``); a compare report against the previous champion is
   attached to the new run; a promotion is notified.
5. Notifications (:mod:`pose.registry.notify`): webhook from env ``POSE_NOTIFY_WEBHOOK`` or
   params ``schedule.notify_webhook``; events ``promotion`` and ``retrain_failed`` (flow
   ``on_failure`` / ``on_crashed`` hooks).

Run it once with::

    python -m flows.retrain [REPO] [--force]      # ephemeral Prefect API, no server needed; --help

and on a schedule with ``python -m flows.serve`` (flows/serve.py).

Params: each task loads ``<repo>/params.yaml`` once and checks it (:func:`repo_params`, the typed
`pose.params.Params`) and hands the library the sections it reads: ``data``, ``catalogue``, ``generated``,
``schedule`` (fingerprints, retries, push) and ``registry`` (the registered model's tag).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from prefect import flow, get_run_logger, task
from prefect.states import Completed, Failed

import pose  # noqa: F401  (telemetry off before prefect is imported)
from pose.train.stop import STOP_WITH_ENV

if TYPE_CHECKING:
    from pose.params import Params


class _NoEmptyTraceback(logging.Filter):
    """Prefect 3.8's task engine logs a task that *returns* a Failed state (``ConfigError``,
    ``StageFailed``) with ``exc_info=True`` although no exception is being handled, and logging
    then prints a stray ``NoneType: None`` line; drop such empty exception info."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[0] is None:
            record.exc_info = None
            record.exc_text = None
        return True


def _quiet_empty_tracebacks() -> None:
    logger = logging.getLogger("prefect.task_runs")
    if not any(isinstance(f, _NoEmptyTraceback) for f in logger.filters):
        logger.addFilter(_NoEmptyTraceback())


_quiet_empty_tracebacks()

NETWORK_STAGES = {"fetch"}
#: with ``force=True`` this stage and every later one run as ``dvc repro --force``
FORCED_FROM = "train"
#: stages that run after `dvc push` (registration only once the data is in the remote)
AFTER_PUSH_STAGES = {"register"}
NO_NEW_DATA = "NoNewData"


def stage_names(repo: Path) -> list[str]:
    """Stage names of `dvc.yaml` in file order (the file keeps them topologically sorted)."""
    return list((yaml.safe_load((Path(repo) / "dvc.yaml").read_text()) or {}).get("stages", {}))


def _dvc() -> str:
    exe = Path(sys.executable).with_name("dvc")
    return str(exe) if exe.exists() else (shutil.which("dvc") or "dvc")


def _env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # `pose train` (train stage) stops with a checkpoint when this flow process ends, also when it is
    # SIGKILLed and cannot stop the `dvc repro` it started (pose.train.stop)
    env[STOP_WITH_ENV] = ",".join(filter(None, [env.get(STOP_WITH_ENV, ""), str(os.getpid())]))
    env.update(extra or {})
    return env


#: seconds a stage's process group (dvc and the `pose` command it runs) gets after SIGTERM to write
#: what it must (a training checkpoint) and exit, before SIGKILL; Prefect's own cancellation grace is 30 s
STOP_GRACE_S = 30.0
_EXITED_WITH = re.compile(r"exited with (-?\d+)")


class StageError(RuntimeError):
    """``dvc repro`` of a stage failed. ``exit_code``: DVC's; ``command_exit_code``: the stage
    command's (``pose ...``) as DVC reports it (None when DVC failed before running it);
    ``network``: the command failed on the network only (exit status
    `pose.datasets.sources.NETWORK_EXIT_CODE`), the one failure a retry may cure."""

    def __init__(self, message: str, *, stage: str, exit_code: int, command_exit_code: int | None):
        super().__init__(message)
        self.stage, self.exit_code, self.command_exit_code = stage, exit_code, command_exit_code

    def __reduce__(self):  # keyword-only arguments survive pickling (Prefect may persist task results)
        return (_stage_error, (str(self), self.stage, self.exit_code, self.command_exit_code))

    @property
    def network(self) -> bool:
        from pose.datasets.sources import NETWORK_EXIT_CODE

        return self.command_exit_code == NETWORK_EXIT_CODE


def _stage_error(message: str, stage: str, exit_code: int, command_exit_code: int | None) -> StageError:
    return StageError(message, stage=stage, exit_code=exit_code, command_exit_code=command_exit_code)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - a member we may not signal still exists
        return True
    return True


def stop_process_group(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM to the process group of ``proc`` (started with ``start_new_session=True``: dvc and
    the `pose` command under it), SIGKILL to whatever is left after ``grace_s`` seconds; returns
    when the group is gone, so no stage command outlives the flow task that started it."""
    pgid = proc.pid
    if not _group_alive(pgid):
        proc.poll()
        return
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        proc.poll()  # reap dvc itself; its children are reaped by init once they exit
        if not _group_alive(pgid):
            return
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_in_group(cmd: list[str], cwd: Path | str, env: dict) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own process group (new session), capturing stdout / stderr as text. If
    the caller is interrupted while waiting (Ctrl-C, the SIGTERM of a Prefect cancellation, a
    crash of the flow), the whole group is stopped (:func:`stop_process_group`) before the
    exception propagates: a killed flow never leaves an orphan ``dvc repro`` / ``pose train``."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate()
    except BaseException:
        stop_process_group(proc)
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def run_stage(repo: Path, name: str, force: bool = False, env: dict | None = None) -> str:
    """``dvc repro --single-item [--force] <name>`` in ``repo`` (in its own process group,
    :func:`run_in_group`); returns DVC's stdout.

    Raises StageError on failure: first line ``stage <name> failed (exit N): <the command's
    last "error:" line>``, then the tail of DVC's output."""
    cmd = [_dvc(), "repro", "--single-item"] + (["--force"] if force else []) + [name]
    proc = run_in_group(cmd, repo, _env(env))
    if proc.returncode != 0:
        text = proc.stdout + "\n" + proc.stderr
        lines = text.splitlines()
        errors = [ln.strip() for ln in lines if ln.strip().startswith("error:")] or \
                 [ln.strip() for ln in lines if ln.strip().startswith("ERROR:")] or ["see the output below"]
        codes = _EXITED_WITH.findall(text)
        raise StageError(f"stage {name} failed (exit {proc.returncode}): {errors[-1]}\n"
                         f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}", stage=name, exit_code=proc.returncode,
                         command_exit_code=int(codes[-1]) if codes else None)
    return proc.stdout


def repo_params(repo: Path | str) -> Params:
    """``<repo>/params.yaml`` loaded and checked once (`pose.params.load_sections`): the typed sections
    the flow hands to the library. Raises FileNotFoundError / `pose.params.ParamsError`."""
    from pose.params import load_sections

    return load_sections(Path(repo) / "params.yaml")


def tracking_uri_for(repo: Path | str, uri: str) -> str:
    """``uri`` with a relative SQLite / file-store path made absolute against ``repo``
    (the stages run with the repo as working directory)."""
    repo = Path(repo).resolve()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{repo / uri[len('sqlite:///'):]}"
    if "://" not in uri and not Path(uri).is_absolute():
        return str(repo / uri)
    return uri


def last_trained_fingerprint(params: Params, repo: Path | str) -> str | None:
    """The registered model's ``data.fingerprint`` tag, None when nothing is registered yet
    (model name: :func:`pose.registry.tracking.registered_model_name`)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from pose.registry.tracking import registered_model_name, tracking_uri

    uri = tracking_uri_for(repo, tracking_uri(params.registry))
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        return None  # no registry database yet (and do not create one here)
    try:
        return MlflowClient(uri).get_registered_model(
            registered_model_name(params.registry, params.data.dataset)).tags.get("data.fingerprint")
    except MlflowException:
        return None


def detect(repo: Path | str) -> dict:
    """``{"new", "fingerprint", "previous", "source", "dataset", "files"}`` for the repo's configured source."""
    from pose.registry.data_version import source_fingerprint

    params = repo_params(repo)
    fp = source_fingerprint(params.data, params.catalogue, params.generated, params.schedule, Path(repo))
    prev = last_trained_fingerprint(params, repo)
    return {**fp, "previous": prev, "new": prev != fp["fingerprint"]}


def config_errors(repo: Path | str) -> list[str]:
    """Configuration errors of ``<repo>/params.yaml`` the flow can see before any compute.

    One line each, naming the file and key: unreadable params.yaml, the typed params check
    (:func:`pose.params.validate_params`: unknown keys, out-of-range values, ``data.dataset``
    not a ``catalogue`` key, ...), and a local ``catalogue.<name>.ingest`` batch folder that
    does not exist. Empty list: no error."""
    from pose.params import ParamsError, restore_hint
    from pose.registry.data_version import fingerprint_uses_network, ingest_fingerprints

    path = Path(repo) / "params.yaml"
    try:
        params = repo_params(repo)        # read and checked against the schema
        if not fingerprint_uses_network(params.data, params.catalogue):
            # local batches: exist? (cheap, no network)
            ingest_fingerprints(params.data, params.catalogue, params.schedule, repo, mode="stat")
    except ParamsError as exc:
        return [str(exc).strip().splitlines()[0] + restore_hint(path)]
    except (OSError, ValueError) as exc:
        return [str(exc).strip().splitlines()[0]]
    return []


@task(name="check-config")
def check_config(repo: str):
    """The flow's first task: ``params.yaml`` errors (:func:`config_errors`) fail the run at once, no retries."""
    errors = config_errors(repo)
    if errors:
        return Failed(name="ConfigError", message=errors[0])
    return True


@task(name="detect-new-data")
def detect_new_data(repo: str) -> dict:
    """Fingerprint the data source and ingest batches and compare with the last trained fingerprint.

    Not retried; the flow uses ``network_tasks(params)["listing"]`` (retried) when the check lists an S3 prefix."""
    d = detect(repo)
    get_run_logger().info("data source %s (%s files): fingerprint %s, last trained %s -> %s", d["source"],
                          d["files"], d["fingerprint"][:16], (d["previous"] or "none")[:16],
                          "NEW DATA" if d["new"] else "unchanged")
    return d


#: at most this many characters of a stage's output go to the flow log (head and tail, whole lines)
LOG_OUTPUT_CHARS = 20_000


def stage_log_text(name: str, output: str, limit: int = LOG_OUTPUT_CHARS) -> str:
    """The flow-log entry of a finished stage: a human line first (``stage <name> done, output of
    dvc repro:``), then the stage's whole output as DVC printed it ("Running stage 'register':",
    the command, what it printed), so a JSON document printed by the stage (``pose register``) is
    complete. Output over ``limit`` characters keeps its first and last lines (half each) around a
    line saying how many lines were left out; a line is never cut."""
    lines = output.strip("\n").splitlines()
    if len(output) > limit:
        head, tail, size = [], [], 0
        for ln in lines:
            if size + len(ln) + 1 > limit // 2:
                break
            head.append(ln)
            size += len(ln) + 1
        size = 0
        for ln in reversed(lines[len(head):]):
            if size + len(ln) + 1 > limit // 2:
                break
            tail.insert(0, ln)
            size += len(ln) + 1
        lines = head + [f"... ({len(lines) - len(head) - len(tail)} lines left out) ..."] + tail
    return f"stage {name} done, output of dvc repro:\n" + "\n".join(lines)


def _stage_task(repo: str, name: str, force: bool, env: dict | None):
    """Run a stage; a failed stage ends the task as a ``Failed`` state named ``StageFailed`` whose
    message is the one line of :class:`StageError` (its data: the exception, which the retry
    condition reads), with DVC's output logged once, at ERROR, and no Python traceback."""
    log = get_run_logger()
    try:
        out = run_stage(Path(repo), name, force=force, env=env)
    except StageError as exc:
        log.error("%s", exc)
        return Failed(name="StageFailed", message=str(exc).splitlines()[0], data=exc)
    log.info("%s", stage_log_text(name, out))
    return name


@task(name="dvc-stage-network")
def network_stage(repo: str, name: str, force: bool = False):
    """A stage that talks to the network (dataset sources): retried with backoff when it failed on
    the network (:func:`network_tasks`, :func:`retry_network_failures_only`)."""
    return _stage_task(repo, name, force, None)


@task(name="dvc-stage")
def local_stage(repo: str, name: str, force: bool = False, env: dict | None = None):
    """A local stage (no retries: a failure here is a bug or bad data, not a flaky network)."""
    return _stage_task(repo, name, force, env)


@task(name="dvc-push")
def dvc_push(repo: str):
    """``dvc push``: every cached output (raw data, validated data, models, eval results) to the default
    remote. A failure ends the task ``Failed`` (``PushFailed``, one line; DVC's output logged)."""
    proc = run_in_group([_dvc(), "push"], repo, _env())
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stdout + "\n" + proc.stderr).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")] or lines[-1:] or ["no output"]
        get_run_logger().error("dvc push failed (exit %s):\n%s\n%s", proc.returncode, proc.stdout[-4000:],
                               proc.stderr[-4000:])
        return Failed(name="PushFailed", message=f"dvc push failed (exit {proc.returncode}): {errors[-1]}")
    get_run_logger().info("dvc push: %s", proc.stdout.strip()[-1000:])
    return proc.stdout


def retry_network_failures_only(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn`` of the fetch task: retry only when the stage failed on the
    network (:attr:`StageError.network`); a bad batch, a checksum mismatch or a bug fails at once."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            exc = state.result(raise_on_failure=False)
        except Exception:  # noqa: BLE001 - no result to look at: do not retry blindly
            return False
    return isinstance(exc, StageError) and exc.network


def network_tasks(params: Params) -> dict:
    """The network-bound tasks with the retries of params ``schedule.retry_delays_s`` (one retry per
    delay, backoff in seconds): ``fetch`` (:func:`network_stage`; retried only when `pose fetch`
    failed on the network, :func:`retry_network_failures_only`: a bad batch fails at once),
    ``push`` (:func:`dvc_push`) and ``listing`` (the new-data check of an ``s3://`` source).
    Local tasks never retry."""
    delays = params.schedule.retry_delays_s

    def retrying(t, key: str, **options):
        d = [float(s) for s in getattr(delays, key)]
        return t.with_options(retries=len(d), retry_delay_seconds=d, **options)

    return {"fetch": retrying(network_stage, "fetch", retry_condition_fn=retry_network_failures_only),
            "push": retrying(dvc_push, "push"),
            "listing": retrying(detect_new_data, "listing", name="detect-new-data-s3")}


@task(name="record-data-version")
def record_data_version(repo: str, fingerprint: str) -> bool:
    """Tag the registered model with the processed data fingerprint (also when DVC found nothing to retrain)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from pose.registry.tracking import registered_model_name, tracking_uri

    params = repo_params(repo)
    try:
        MlflowClient(tracking_uri_for(repo, tracking_uri(params.registry))).set_registered_model_tag(
            registered_model_name(params.registry, params.data.dataset), "data.fingerprint", fingerprint)
        return True
    except MlflowException as exc:
        get_run_logger().warning("could not record the data fingerprint: %s", exc)
        return False


@task(name="compare-with-champion")
def compare_with_previous(repo: str, before: int, version: int) -> str | None:
    """``pose compare v<before> v<version>``: review report logged to the new version's run (best effort)."""
    pose_exe = Path(sys.executable).with_name("pose")
    cmd = [str(pose_exe) if pose_exe.exists() else "pose", "compare", f"v{before}", f"v{version}"]
    proc = run_in_group(cmd, repo, _env())
    if proc.returncode != 0:
        get_run_logger().warning("compare report failed (not fatal):\n%s", proc.stderr[-2000:])
        return None
    return proc.stdout


@task(name="summary")
def summarize(repo: str, forced: bool = False, before: str | None = None) -> dict:
    """Metrics, registered version and aliases of the run, from the stage outputs (``forced``: --force run).

    ``before``: the MLflow run id of ``data/registry/registration.json`` before this flow run's stages;
    ``summary["registered"]`` is True only when this run wrote a new version (a record left from an
    earlier run, when the register stage was up to date, is not "retrain done")."""
    root = Path(repo)
    summary: dict = {"forced": forced}
    for key, rel in (("eval", "data/metrics/eval.json"), ("train", "data/metrics/train.json"),
                     ("registration", "data/registry/registration.json")):
        p = root / rel
        summary[key] = json.loads(p.read_text()) if p.exists() else None
    ev, reg = summary["eval"] or {}, summary["registration"] or {}
    summary["registered"] = bool(reg) and reg.get("run_id") != before and reg.get("new_version") is not False
    get_run_logger().info(
        "%s%s: AP %.4f AP50 %.4f AR %.4f | model %s version %s aliases %s | %s",
        "retrain done" if summary["registered"] else "no new model version (already registered)",
        " (forced)" if forced else "",
        ev.get("AP", float("nan")), ev.get("AP50", float("nan")), ev.get("AR", float("nan")),
        reg.get("model_name"), reg.get("version"), reg.get("aliases"), reg.get("reason"))
    return summary


def _registration_run(repo: str) -> str | None:
    p = Path(repo) / "data/registry/registration.json"
    try:
        return json.loads(p.read_text()).get("run_id")
    except (OSError, ValueError):
        return None


def _notify(repo: str | Path, event: str, text: str, payload: dict) -> bool:
    from pose.params import load_params
    from pose.registry.notify import notify, webhook_url

    try:   # as written, unchecked: a params.yaml with a bad value still names its webhook
        configured = (load_params(Path(repo) / "params.yaml").get("schedule") or {}).get("notify_webhook")
    except (OSError, ValueError, AttributeError):
        configured = None
    return notify(event, text, payload, url=webhook_url(configured))


def notify_failure(flow_obj, flow_run, state) -> None:
    """Flow ``on_failure`` / ``on_crashed`` hook: post ``retrain_failed`` to the webhook."""
    repo = (getattr(flow_run, "parameters", None) or {}).get("repo_dir", ".")
    _notify(repo, "retrain_failed", f"retrain flow run {flow_run.name!r} ended {state.name}: {state.message}",
            {"flow_run_id": str(flow_run.id), "state": state.name, "repo": str(repo)})


@flow(name="retrain", on_failure=[notify_failure], on_crashed=[notify_failure])
def retrain(repo_dir: str = ".", force: bool = False):
    """New data? -> every stage of `dvc.yaml` through DVC, `dvc push`, register + gate, notify.

    ``force=True`` retrains even when the data did not change: the new-data check does not
    stop the run and the stages from :data:`FORCED_FROM` on run with ``dvc repro --force``.

    Returns the summary (metrics, registration, ``forced``), a ``Completed`` state named
    ``NoNewData``, or a ``Failed`` state named ``ConfigError`` (one line naming the key)."""
    from pose.registry.data_version import fingerprint_uses_network

    _quiet_empty_tracebacks()  # again, should Prefect's logging setup have replaced the logger
    repo = str(Path(repo_dir).resolve())
    config = check_config(repo, return_state=True)
    if config.is_failed():
        return Failed(name="ConfigError", message=config.message)
    params = repo_params(repo)
    net = network_tasks(params)
    d = (net["listing"] if fingerprint_uses_network(params.data, params.catalogue) else detect_new_data)(repo)
    log = get_run_logger()
    if not d["new"] and not force:
        msg = (f"no new data: {d['dataset']} source {d['source']} unchanged since the last registered model "
               f"(fingerprint {d['fingerprint'][:16]}); nothing trained")
        log.info(msg)
        return Completed(name=NO_NEW_DATA, message=msg)
    names = stage_names(Path(repo))
    forced = set(names[names.index(FORCED_FROM):]) if force else set()
    if force:
        log.info("forced retrain (--force): %s; running %s with dvc repro --force",
                 "new data" if d["new"] else "data unchanged", ", ".join(n for n in names if n in forced))
    before = _registration_run(repo)
    env = {"POSE_DATA_FINGERPRINT": d["fingerprint"]}
    for name in [n for n in names if n not in AFTER_PUSH_STAGES]:
        if name in NETWORK_STAGES:
            state = net["fetch"](repo, name, force=d["new"] or name in forced, return_state=True)
        else:
            state = local_stage(repo, name, force=name in forced, return_state=True)
        if state.is_failed():
            return Failed(name=state.name, message=state.message)
    if params.schedule.push:
        state = net["push"](repo, return_state=True)
        if state.is_failed():
            return Failed(name=state.name, message=state.message)
    for name in [n for n in names if n in AFTER_PUSH_STAGES]:
        state = local_stage(repo, name, force=name in forced, env=env, return_state=True)
        if state.is_failed():
            return Failed(name=state.name, message=state.message)
    record_data_version(repo, d["fingerprint"])
    summary = summarize(repo, forced=force, before=before)
    reg = summary.get("registration") or {}
    if not summary["registered"]:
        log.info("no new model version: the checkpoint and evaluation equal registered v%s's (the data added "
                 "nothing to train on, or training gave the same model)", reg.get("version"))
        return summary
    if reg.get("champion_before") and reg.get("version") and reg["champion_before"] != reg["version"]:
        compare_with_previous(repo, reg["champion_before"], reg["version"])
    if reg.get("promoted"):
        _notify(repo, "promotion", f"{reg.get('model_name')} v{reg.get('version')} is the new champion "
                f"(AP {reg.get('AP', float('nan')):.4f}): {reg.get('reason')}",
                {"registration": reg, "data_fingerprint": d["fingerprint"]})
    return summary


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.retrain [REPO] [--force]``: one run of the flow; exit 0 when it completes
    (trained, or ``NoNewData``), 1 with ``error: <one line>`` when it fails."""
    parser = argparse.ArgumentParser(
        prog="python -m flows.retrain",
        description="One run of the retrain flow: new-data check, every dvc.yaml stage through DVC, dvc push, "
                    "register + promotion gate. Ends as NoNewData (exit 0) when nothing changed.")
    parser.add_argument("repo", nargs="?", default=".", help="repository root holding params.yaml and dvc.yaml "
                        "(default: the current folder)")
    parser.add_argument("--force", action="store_true", help="retrain even when the data did not change: "
                        f"`dvc repro --force` of {FORCED_FROM} and every later stage")
    args = parser.parse_args(argv)
    for required in ("params.yaml", "dvc.yaml"):
        if not (Path(args.repo) / required).is_file():
            parser.error(f"{Path(args.repo) / required} not found: REPO must be the repository root")
    state = retrain(args.repo, force=args.force, return_state=True)
    if not state.is_completed():
        first_line = (state.message or "").strip().splitlines()[:1] or ["(no message)"]
        print(f"error: retrain ended {state.name}: {first_line[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
