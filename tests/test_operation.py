"""The weekly loop in real operation (issue 19, "Done when"): one scenario run as an operator lives it.

A tiny generated repo copy (tests/repo_setup.py) whose ``schedule.cron`` is ``* * * * *`` (due
within a minute: a params value, nothing else changes), a real ``prefect server`` on loopback
(`tests/prefect_server.py`: free port, temporary PREFECT_HOME) and ``python -m flows.serve``:

1. the server's scheduler creates a run by itself and the served process starts it; the run
   trains (a new repo: no model registered yet, so the data is new);
2. once training wrote a periodic checkpoint (``train.checkpoint_every``) the stage's process
   group (``dvc repro`` and the ``pose train`` under it) gets SIGKILL, as on a preempted node or
   from the OOM killer: nothing can write a last checkpoint; the run ends ``StageFailed`` and no
   ``pose train`` survives;
3. the next scheduled run resumes training at the saved step (its train log, the per-step CSV and
   the final checkpoint say so), evaluates and registers: the registry holds exactly v1;
4. ``prefect deployment run retrain/retrain -p force=true`` (README) retrains the same data from
   step 1, uninterrupted: it gives the same checkpoint and evaluation bytes as the resumed run, so
   nothing new is registered ("no new model version (already registered)"), still exactly v1;
   the scheduled runs in between end as NoNewData.

The Prefect server log has no ERROR line. Marked slow (about 4 minutes on 2 busy cores); the
duration and the resume step are printed (``pytest -s``).
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import sections
from prefect_server import log_tail, start_process, stop_process, wait_for
from repo_setup import BIN, make_repo_copy, tiny_generated_params
from test_flows import _api
from test_train_resume import _processes_in

pytestmark = pytest.mark.slow

#: 80 training images in batches of 2: one epoch of 40 steps, a checkpoint every 10 steps, validation on
#: the 6 validation images after the epoch
OPERATION = {"generated.num_train": 80, "train.batch_size": 2, "train.max_steps_per_epoch": 0,
             "train.checkpoint_every": 10, "train.curriculum": [{"sizes": [128], "epochs": 1}],
             "train.val_every": 1, "train.val_max_images": 6}
FINISHED = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def _training(repo: Path) -> list[tuple[int, str]]:
    """(pid, command line) of the ``pose train`` / ``dvc repro`` processes running in ``repo``."""
    return [(pid, cmd) for pid, cmd in _processes_in(repo) if "pose train" in cmd or "dvc repro" in cmd]


def _in_group(repo: Path, pgid: int) -> list[tuple[int, str]]:
    """The live processes of ``repo`` (:func:`_processes_in`) in process group ``pgid``."""
    found = []
    for pid, cmd in _processes_in(repo):
        try:
            if os.getpgid(pid) == pgid:
                found.append((pid, cmd))
        except ProcessLookupError:
            pass
    return found


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


def _run_log(server, run_id: str) -> str:
    """The flow run's log as the server keeps it (what the UI shows), oldest first."""
    logs = _api(server, "POST", "/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}},
                                                "sort": "TIMESTAMP_ASC", "limit": 200})
    return "\n".join(rec["message"] for rec in logs)


def test_scheduled_run_killed_in_training_resumes_registers_once(prefect_server, tmp_path):
    from mlflow import MlflowClient

    from pose.registry.tracking import registered_model_name
    from pose.train.checkpoint import load_checkpoint

    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(what: str) -> None:
        timings[what] = time.perf_counter() - t0 - sum(timings.values())

    server = prefect_server
    params = tiny_generated_params(OPERATION, floor=0.0)
    params["schedule"]["cron"] = "* * * * *"
    repo = make_repo_copy(tmp_path / "repo", params)
    last = repo / "data/models/last.pt"
    name = registered_model_name(sections(params).registry, params["data"]["dataset"])
    registry = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")

    def versions() -> list[int]:
        return sorted(int(v.version) for v in registry.search_model_versions(f"name='{name}'"))

    served = start_process([sys.executable, "-m", "flows.serve", str(repo)], repo, server.client_env(),
                           tmp_path / "serve.log")
    try:
        dep = wait_for(lambda: _api(server, "GET", "/deployments/name/retrain/retrain"), 120,
                       "the served deployment", [served])
        assert [s["schedule"]["cron"] for s in dep["schedules"]] == ["* * * * *"]

        def runs() -> list[dict]:
            errors = server.error_lines()
            assert not errors, "server log:\n" + "\n".join(errors[:5])
            return _api(server, "POST", "/flow_runs/filter",
                        {"flow_runs": {"deployment_id": {"any_": [dep["id"]]}},
                         "sort": "EXPECTED_START_TIME_ASC", "limit": 200})

        def started() -> list[dict]:
            return sorted((r for r in runs() if r["start_time"]), key=lambda r: r["start_time"])

        # 1. the schedule fires: a run the server created, started by the served process, trains
        first = wait_for(lambda: started()[:1], 240, "a scheduled run started by the served process",
                         [served, server.proc], interval=2)[0]
        assert first["auto_scheduled"] and (first["idempotency_key"] or "").startswith("scheduled "), first
        lap("server up, deployment served, first scheduled run started")
        wait_for(lambda: last.is_file(), 300, "a periodic checkpoint of the first run's training",
                 [served, server.proc], interval=0.2)

        # 2. a preempted node: SIGKILL to the stage's process group (dvc repro + pose train); no checkpoint
        #    can be written now, the next run has only the periodic one
        #    (`pose train` may show as several processes: the stage's shell and loader workers share its command line)
        trainers = [pid for pid, cmd in _training(repo) if "pose train" in cmd]
        assert trainers, _training(repo)
        groups = {os.getpgid(pid) for pid in trainers}
        assert len(groups) == 1, f"more than one training stage at once: {_training(repo)}"
        (pgid,) = groups
        assert pgid != os.getpgrp() and pgid != os.getpgid(served.pid), "the stage runs in its own process group"
        assert "dvc repro" in _cmdline(pgid) and "train" in _cmdline(pgid), _cmdline(pgid)
        os.killpg(pgid, signal.SIGKILL)
        lap("first run trains until a checkpoint, SIGKILL")
        saved = load_checkpoint(last)["global_step"]
        assert saved > 0 and saved % OPERATION["train.checkpoint_every"] == 0, saved
        wait_for(lambda: not _in_group(repo, pgid), 30, "the killed stage's processes to go")
        killed = wait_for(lambda: next((r for r in runs() if r["id"] == first["id"] and r["state_type"] in FINISHED),
                                       None), 120, "the killed run to end", [served])
        assert killed["state_type"] == "FAILED" and killed["state_name"] == "StageFailed", killed["state"]
        assert "stage train failed" in killed["state"]["message"], killed["state"]
        assert not (repo / "mlflow.db").exists() or versions() == [], "a killed run registered a model"

        # 3. the next scheduled run resumes at the saved step and registers v1
        def second_done():
            later = [r for r in started() if r["id"] != first["id"]]
            return later[0] if later and later[0]["state_type"] in FINISHED else None

        second = wait_for(second_done, 420, "the next scheduled run to finish", [served, server.proc], interval=2)
        lap("next scheduled run: resume, evaluate, register")
        assert second["auto_scheduled"], second
        assert second["state_type"] == "COMPLETED" and second["state_name"] == "Completed", \
            (second["state"], log_tail(served, 6000))
        log = wait_for(lambda: (text := _run_log(server, second["id"])) and "retrain done" in text and text,
                       60, "the second run's log on the server")
        steps = json.loads((repo / "data/metrics/train.json").read_text())["steps"]
        assert saved < steps, (saved, steps)
        assert f"resumed from data/models/last.pt: epoch 0 batch {saved} step {saved}" in log, log[-6000:]
        trained = [int(k) for k in re.findall(rf"^step (\d+)/{steps} ", log, re.M)]
        assert trained and trained[0] == saved + 1 and trained[-1] == steps, f"steps trained on resume: {trained}"
        # the per-step CSV: steps 1..saved come from the checkpoint's history (no wall-clock column),
        # the later ones were trained by the resumed run
        with (repo / "data/plots/train_steps.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        assert [int(r["step"]) for r in rows] == list(range(1, steps + 1))
        assert [int(r["step"]) for r in rows if r["images_per_s"]] == list(range(saved + 1, steps + 1))
        assert load_checkpoint(last)["global_step"] == steps
        record = json.loads((repo / "data/registry/registration.json").read_text())
        assert record["version"] == 1 and record["new_version"] is True and versions() == [1], record
        v1 = registry.get_model_version(name, "1")

        # 4. rerun: a forced retrain of the same data (from step 1, uninterrupted) registers nothing new
        cli = subprocess.run([str(BIN / "prefect"), "deployment", "run", "retrain/retrain", "-p", "force=true"],
                             cwd=repo, env=server.client_env(), capture_output=True, text=True, timeout=180)
        assert cli.returncode == 0, cli.stdout + cli.stderr
        run_id = re.search(r"UUID: ([0-9a-f-]{36})", cli.stdout)[1]
        forced = wait_for(lambda: next((r for r in runs() if r["id"] == run_id and r["state_type"] in FINISHED),
                                       None), 420, "the forced rerun to finish", [served, server.proc], interval=2)
        assert forced["state_type"] == "COMPLETED" and not forced["auto_scheduled"], \
            (forced["state"], log_tail(served, 6000))
        lap("forced rerun (after the scheduled NoNewData runs due meanwhile)")
        rerun_log = wait_for(lambda: (text := _run_log(server, run_id)) and "no new model version" in text and text,
                             60, "the forced run's log on the server")
        assert "no new model version (already registered) (forced)" in rerun_log and "retrain done" not in rerun_log
        assert re.search(rf"^step 1/{steps} ", rerun_log, re.M), "the forced rerun did not train from step 1"
        assert versions() == [1], "a rerun registered a new version"
        assert registry.get_model_version(name, "1").tags == v1.tags
        record = json.loads((repo / "data/registry/registration.json").read_text())
        assert record["version"] == 1 and record["new_version"] is False, record
        # every other run the schedule created meanwhile found no new data
        others = [r for r in started() if r["id"] not in (first["id"], second["id"], run_id)]
        assert all(r["state_name"] in ("NoNewData", "Running", "Pending") for r in others), \
            [(r["name"], r["state_name"]) for r in others]
        assert first["id"] in log_tail(served, 10_000_000) and second["id"] in log_tail(served, 10_000_000)
    finally:
        stop_process(served)
    assert not _training(repo), f"orphan training processes: {_training(repo)}"
    errors = [ln for ln in server.log_text().splitlines() if "ERROR" in ln]
    assert not errors, "\n".join(errors[:10])
    lap("stop")
    print(f"\noperation: killed at step {saved} of {steps} (SIGKILL of the stage's process group); the next scheduled "
          f"run resumed at step {saved + 1} and registered v1; forced rerun: no new version; registry versions "
          f"{versions()}; {time.perf_counter() - t0:.0f} s in all: "
          + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
