"""Scheduled retraining: new-data detection, failure / promotion notifications, and the served
`retrain` deployment run through a real Prefect API (a `prefect server` on loopback)."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import sections
from prefect_server import log_tail, prefect_server, start_process, stop_process, wait_for
from repo_setup import REPO, make_repo_copy, pipeline_env, tiny_generated_params


def tiny_params() -> dict:
    """The tiny generated config (tests/repo_setup.py) with the AP floor at 0."""
    return tiny_generated_params(floor=0.0)



class _Hook(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802
        _Hook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture()
def webhook():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    _Hook.received = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook", _Hook.received
    server.shutdown()


# ----------------------------------------------------------------------------- fast

def test_failure_hook_posts_to_the_params_webhook(tmp_path, webhook):
    from flows.retrain import notify_failure

    url, received = webhook
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"schedule": {"notify_webhook": url}}))
    run = SimpleNamespace(name="brave-fox", id="42", parameters={"repo_dir": str(tmp_path)})
    notify_failure(None, run, SimpleNamespace(name="Failed", message="stage train failed (exit 1)"))
    assert len(received) == 1
    msg = received[0]
    assert msg["event"] == "retrain_failed" and "brave-fox" in msg["text"] and "stage train failed" in msg["text"]
    assert msg["flow_run_id"] == "42" and msg["state"] == "Failed"


def test_detect_compares_the_source_with_the_last_registered_fingerprint(tmp_path, monkeypatch):
    import flows.retrain as fr

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mirror = tmp_path / "mirror" / "ds"
    (mirror / "annotations").mkdir(parents=True)
    (mirror / "annotations" / "a.json").write_text("{}")
    params = tiny_params()
    params["data"].update(dataset="ds", mirror="mirror")          # relative: resolved against the repo
    params["catalogue"]["ds"] = {"kind": "coco", "schema": "coco17", "mirror": "ds", "sources": []}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    first = fr.detect(tmp_path)                                    # no registry database yet
    assert first["new"] and first["previous"] is None and not (tmp_path / "mlflow.db").exists()
    monkeypatch.setattr(fr, "last_trained_fingerprint", lambda p, r: first["fingerprint"])
    assert not fr.detect(tmp_path)["new"]
    (mirror / "annotations" / "b.json").write_text("{}")           # new data arrives
    assert fr.detect(tmp_path)["new"]
    assert fr.tracking_uri_for(tmp_path, "sqlite:///mlflow.db") == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"


def _generated_repo(tmp_path: Path, **schedule) -> tuple[Path, dict]:
    params = tiny_params()
    params["data"]["dataset"] = "generated"
    params["schedule"].update(schedule)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path, params


def _batch(folder: Path, n_images: int = 1) -> Path:
    (folder / "images").mkdir(parents=True)
    (folder / "batch.json").write_text(json.dumps({"images": [], "annotations": []}))
    for i in range(n_images):
        (folder / "images" / f"{i}.jpg").write_bytes(b"jpeg" + bytes([i]))
    return folder


def test_a_new_ingest_batch_is_new_data(tmp_path, monkeypatch):
    import flows.retrain as fr

    repo, params = _generated_repo(tmp_path)
    week1 = fr.detect(repo)
    assert week1["ingest"] == [] and week1["previous"] is None
    monkeypatch.setattr(fr, "last_trained_fingerprint", lambda p, r: week1["fingerprint"])
    assert not fr.detect(repo)["new"]
    _batch(repo / "incoming" / "w2")
    assert not fr.detect(repo)["new"], "an unlisted folder is not part of what fetch reads"
    params["catalogue"]["generated"]["ingest"] = ["incoming/w2"]     # relative to the repo, as `pose fetch` reads it
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    week2 = fr.detect(repo)
    assert week2["new"] and [b["batch"] for b in week2["ingest"]] == ["incoming/w2"]
    assert week2["files"] == 2 and "1 ingest batch" in week2["source"]
    monkeypatch.setattr(fr, "last_trained_fingerprint", lambda p, r: week2["fingerprint"])
    assert not fr.detect(repo)["new"]
    (repo / "incoming/w2/images/0.jpg").write_bytes(b"relabelled")   # same name, new content
    assert fr.detect(repo)["new"]


def test_stat_fingerprint_of_a_batch_follows_size_and_mtime(tmp_path):
    from pose.registry.data_version import source_fingerprint

    repo, params = _generated_repo(tmp_path, fingerprint="stat")
    img = _batch(repo / "b1") / "images" / "0.jpg"
    params["catalogue"]["generated"]["ingest"] = [f"file://{repo / 'b1'}"]
    p = sections(params)

    def fingerprint(**kw):
        return source_fingerprint(p.data, p.catalogue, p.generated, p.schedule, repo, **kw)["fingerprint"]

    first = fingerprint()
    assert fingerprint() == first
    os.utime(img, ns=(img.stat().st_atime_ns, img.stat().st_mtime_ns + 10**9))
    assert fingerprint() != first
    stat = fingerprint()
    assert fingerprint(mode="content") != stat


def test_config_errors_name_the_key(tmp_path):
    from flows.retrain import config_errors
    from pose.registry.data_version import fingerprint_uses_network

    repo, params = _generated_repo(tmp_path)
    assert config_errors(repo) == []
    params["data"]["dataset"] = "coco-mni"
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    (err,) = config_errors(repo)
    assert "data.dataset" in err and "'coco-mni'" in err and "coco-mini" in err and "\n" not in err
    params["data"]["dataset"] = "generated"
    params["train"]["lr"] = -0.1
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    (err,) = config_errors(repo)
    assert "train.lr" in err and "-0.1" in err
    params["train"]["lr"] = 0.003
    params["catalogue"]["generated"]["ingest"] = ["incoming/missing"]
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    (err,) = config_errors(repo)
    assert "catalogue.generated.ingest[0]" in err and "not found" in err
    p = sections(params)
    assert not fingerprint_uses_network(p.data, p.catalogue)
    params["catalogue"]["generated"]["ingest"] = ["s3://labels/2026-06/"]
    p = sections(params)
    assert fingerprint_uses_network(p.data, p.catalogue)
    (repo / "params.yaml").write_text("data: [unclosed")
    (err,) = config_errors(repo)
    assert "params.yaml" in err and "invalid YAML" in err


def test_only_network_bound_tasks_retry_as_params_say():
    import flows.retrain as fr

    assert fr.check_config.retries == 0 and fr.detect_new_data.retries == 0 and fr.local_stage.retries == 0
    assert fr.network_stage.retries == 0 and fr.dvc_push.retries == 0          # retries come from params only
    params = tiny_params()
    params["schedule"]["retry_delays_s"] = {"fetch": [1, 2], "push": [3], "listing": [4, 5, 6]}
    tasks = fr.network_tasks(sections(params))
    assert {k: (t.retries, list(t.retry_delay_seconds)) for k, t in tasks.items()} == {
        "fetch": (2, [1, 2]), "push": (1, [3]), "listing": (3, [4, 5, 6])}
    assert tasks["listing"].name == "detect-new-data-s3" and tasks["fetch"].fn is fr.network_stage.fn


@pytest.mark.parametrize("module", ["flows.retrain", "flows.serve"])
def test_cli_help_and_unknown_flags_start_nothing(tmp_path, module):
    for args, code, text in ((["--help"], 0, "usage: python -m " + module), (["--forse"], 2, "unrecognized arguments"),
                             ([str(tmp_path)], 2, "params.yaml not found")):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=pipeline_env(),
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == code, (args, proc.stdout, proc.stderr)
        assert text in proc.stdout + proc.stderr
        assert "Starting temporary server" not in proc.stdout + proc.stderr
        assert time.perf_counter() - t0 < 30


def test_unknown_dataset_fails_the_flow_at_once_with_one_line(tmp_path):
    repo, params = _generated_repo(tmp_path)
    params["data"]["dataset"] = "coco-mni"
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copy2(REPO / "dvc.yaml", repo / "dvc.yaml")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "flows.retrain", str(repo)], cwd=repo, env=pipeline_env(),
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    # three retries with backoff took 6.5 minutes before; no retry here ("Retry" below), and
    # the bound only catches a wait (Prefect's start-up alone is ~9 s idle, more under load)
    assert time.perf_counter() - t0 < 180, "a configuration error must not wait for retries"
    errors = [line for line in proc.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "data.dataset" in errors[0] and "coco-mni" in errors[0], out
    assert "Retry" not in out and "Traceback" not in out and "Running stage" not in out, out
    assert "NoneType: None" not in out, "a stray empty traceback line"
    assert not (repo / "data").exists() and not (repo / "mlflow.db").exists()


def test_deployment_has_the_params_schedule_and_a_concurrency_limit_of_one():
    from flows.serve import build_deployment

    dep = build_deployment(REPO)
    s = yaml.safe_load((REPO / "params.yaml").read_text())["schedule"]
    assert dep.name == s["deployment"] and dep.parameters == {"repo_dir": str(REPO.resolve())}
    sched = dep.schedules[0].schedule
    assert sched.cron == s["cron"] and sched.timezone == s["timezone"]
    assert dep.concurrency_limit == 1 and dep.entrypoint == "flows.retrain.retrain"


# ----------------------------------------------------------------------------- served deployment

_LOG_RECORD = re.compile(r"^\d\d:\d\d:\d\d\.\d+ \| ")


def _register_json_in_flow_log(log: str) -> dict:
    """Model name and version of the line `pose register` printed, as the flow logged the register stage: the entry
    starts with the human line "stage register done, ..." and holds the whole output (it used to be
    the last 2000 characters, starting in the middle of the JSON)."""
    lines = log.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.endswith("stage register done, output of dvc repro:"))
    block = []
    for ln in lines[start + 1:]:
        if _LOG_RECORD.match(ln):
            break
        block.append(ln)
    assert block and block[0].startswith("Running stage 'register'"), block[:3]
    # `pose register` prints one line (the record itself is in --out): "registered <name> vN (AP ...): ..."
    line = next(ln for ln in block if re.match(r"^registered \S+ v\d+ ", ln))
    m = re.match(r"^registered (\S+) v(\d+) ", line)
    return {"model_name": m[1], "version": int(m[2])}


def test_stage_log_keeps_whole_lines_and_says_what_it_left_out():
    from flows.retrain import stage_log_text

    out = "Running stage 'x':\n> pose x\n" + "\n".join(f"line {i:05d}" for i in range(5000)) + "\nUpdating lock file"
    text = stage_log_text("x", out, limit=2000)
    lines = text.splitlines()
    assert lines[0] == "stage x done, output of dvc repro:" and lines[1] == "Running stage 'x':"
    assert lines[-1] == "Updating lock file" and len(text) < 2200
    assert any(ln.startswith("... (") and ln.endswith("lines left out) ...") for ln in lines)
    assert all(ln.startswith(("line ", "stage", "Running", ">", "...", "Updating")) and
               (not ln.startswith("line ") or len(ln) == 10) for ln in lines), "a line was cut"
    small = stage_log_text("register", "Running stage 'register':\n{\n  \"version\": 1\n}\n")
    assert small.splitlines()[1:] == ["Running stage 'register':", "{", '  "version": 1', "}"]


@pytest.mark.slow
def test_served_deployment_retrains_on_new_data_and_skips_unchanged_data(tmp_path_factory, webhook):
    import asyncio

    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pose.registry.tracking import registered_model_name

    url, received = webhook
    params = tiny_params()
    params["schedule"]["notify_webhook"] = url
    repo = make_repo_copy(tmp_path_factory.mktemp("served"), params)
    work = tmp_path_factory.mktemp("prefect")
    with prefect_server(work / "server") as server:
        served = start_process([sys.executable, "-m", "flows.serve", str(repo)], repo, server.client_env(),
                               work / "serve.log")
        try:
            with temporary_settings({PREFECT_API_URL: server.api_url}):
                async def deployment():
                    async with get_client() as client:
                        return await client.read_deployment_by_name("retrain/retrain")

                wait_for(lambda: asyncio.run(deployment()) is not None, 120, "served deployment", [served])
                dep = asyncio.run(deployment())
                assert dep.schedules and dep.schedules[0].schedule.cron == params["schedule"]["cron"]
                assert dep.parameters == {"repo_dir": str(repo.resolve())}
                assert (dep.concurrency_limit or getattr(dep.global_concurrency_limit, "limit", None)) == 1

                # 1) first run: no registered model yet -> new data -> full retrain, v1 registered and promoted
                run1 = run_deployment("retrain/retrain", timeout=900, poll_interval=2)
                assert run1.state.is_completed() and run1.state.name == "Completed", \
                    f"{run1.state}\n{log_tail(served, 6000)}"
                client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
                name = registered_model_name(sections(params).registry, params["data"]["dataset"])
                versions = client.search_model_versions(f"name='{name}'")
                assert len(versions) == 1
                reg = client.get_registered_model(name)
                assert reg.tags["data.fingerprint"] == \
                    client.get_model_version(name, "1").tags["data.source_fingerprint"]
                assert [m["event"] for m in received] == ["promotion"]
                assert received[0]["registration"]["version"] == 1
                assert any((repo / "dvc-storage").rglob("*")), "dvc push sent nothing to the local remote"
                # the flow log of the register stage: a human line, then the stage's complete output
                record = _register_json_in_flow_log(log_tail(served, 10_000_000))
                assert record["version"] == 1 and record["model_name"] == name
                lock = (repo / "dvc.lock").read_text()
                best = (repo / "data/models/best.pt").stat().st_mtime_ns

                # 2) same data again -> NoNewData, nothing trained or registered
                run2 = run_deployment("retrain/retrain", timeout=300, poll_interval=2)
                assert run2.state.is_completed() and run2.state.name == "NoNewData", run2.state
                assert "no new data" in run2.state.message
                assert len(client.search_model_versions(f"name='{name}'")) == 1
                assert (repo / "dvc.lock").read_text() == lock
                assert (repo / "data/models/best.pt").stat().st_mtime_ns == best
                assert len(received) == 1
        finally:
            stop_process(served)


def _api(server, method: str, path: str, body: dict | None = None):
    import httpx

    r = httpx.request(method, f"{server.api_url}{path}", json=body, timeout=10)
    r.raise_for_status()
    return r.json()


@pytest.mark.slow
def test_the_server_schedules_the_served_deployment_and_the_served_process_runs_it(tmp_path_factory):
    """README "Serve the schedule", with the cron due within a minute: the server (started from the
    repo root as the README does, no telemetry variables in its environment) creates the run by
    itself and the `python -m flows.serve` process starts it. Its data are unchanged since the
    registered model, so the run ends as NoNewData without training. No ERROR in the server log."""
    from mlflow import MlflowClient

    import flows.retrain as fr
    from pose.registry.tracking import registered_model_name

    params = tiny_params()
    params["schedule"]["cron"] = "* * * * *"          # due within a minute: a params value, nothing else changes
    repo = make_repo_copy(tmp_path_factory.mktemp("scheduled"), params)
    # the last registered model was trained on this very data -> the scheduled run ends as NoNewData
    MlflowClient(f"sqlite:///{repo / 'mlflow.db'}").create_registered_model(
        registered_model_name(sections(params).registry, params["data"]["dataset"]),
        tags={"data.fingerprint": fr.detect(repo)["fingerprint"]})
    work = tmp_path_factory.mktemp("schedule")
    readme_env = {k: v for k, v in pipeline_env().items()   # what a user's shell has: no telemetry switches
                  if k not in ("DO_NOT_TRACK", "PREFECT_SERVER_ANALYTICS_ENABLED", "PREFECT_UI_ENABLED")}
    with prefect_server(work / "server", env=readme_env) as server:
        assert _api(server, "GET", "/admin/settings")["server"]["analytics_enabled"] is False  # from prefect.toml
        served = start_process([sys.executable, "-m", "flows.serve", str(repo)], repo, server.client_env(),
                               work / "serve.log")
        try:
            dep = wait_for(lambda: _api(server, "GET", "/deployments/name/retrain/retrain"), 120,
                           "the served deployment", [served])
            assert [s["schedule"]["cron"] for s in dep["schedules"]] == ["* * * * *"] and dep["paused"] is False

            def runs() -> list[dict]:
                errors = server.error_lines()
                assert not errors, "server log:\n" + "\n".join(errors[:5])
                return _api(server, "POST", "/flow_runs/filter",
                            {"flow_runs": {"deployment_id": {"any_": [dep["id"]]}},
                             "sort": "EXPECTED_START_TIME_ASC", "limit": 20})

            def first_run_done():
                done = [r for r in runs() if r["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")]
                return done[0] if done else None

            scheduled = wait_for(runs, 150, "a run created by the server's scheduler", [served, server.proc])
            assert all(r["auto_scheduled"] and (r["idempotency_key"] or "").startswith("scheduled ")
                       for r in scheduled), "every run of the deployment comes from its schedule"
            run = wait_for(first_run_done, 240, "the served process to run the scheduled flow run",
                           [served, server.proc], interval=2)
        finally:
            stop_process(served)
        assert run["state_type"] == "COMPLETED" and run["state_name"] == "NoNewData", (run["state"], log_tail(served))
        started, due = (datetime.fromisoformat(run[k]) for k in ("start_time", "expected_start_time"))
        # the served process fetches runs due within its prefetch window (10 s) and starts them then
        assert timedelta(seconds=-15) <= started - due <= timedelta(seconds=120), (started, due)
        assert run["id"] in log_tail(served, 100_000), "the served process did not execute the run"
        assert not (repo / "data" / "models").exists(), "nothing is trained when the data did not change"
        log = server.log_text()
    errors = [ln for ln in log.splitlines() if "ERROR" in ln]
    assert not errors, "\n".join(errors[:10])
    assert "telemetry" not in log.lower(), log[-3000:]


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (an exited child nobody reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_an_interrupted_stage_leaves_no_orphan_process(tmp_path):
    """A real SIGINT (Ctrl-C) to a process waiting in `run_stage`: the stage's whole process group
    (dvc and the command under it, here a stand-in whose child sleeps) is stopped before the
    exception propagates. Before, only the direct child was killed and its child ran on."""
    import signal

    fake_dvc = tmp_path / "dvc"
    fake_dvc.write_text("#!/bin/sh\nsleep 300 &\necho $! > \"$POSE_TEST_PIDFILE\"\nwait\n")
    fake_dvc.chmod(0o755)
    pidfile = tmp_path / "grandchild.pid"
    script = ("import sys\nfrom pathlib import Path\nimport flows.retrain as fr\n"
              "fr._dvc = lambda: sys.argv[1]\nfr.run_stage(Path(sys.argv[2]), 'train')\n")
    env = pipeline_env(POSE_TEST_PIDFILE=str(pidfile), PYTHONPATH=str(REPO))
    parent = subprocess.Popen([sys.executable, "-c", script, str(fake_dvc), str(tmp_path)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pid = wait_for(lambda: pidfile.is_file() and pidfile.read_text().strip() and int(pidfile.read_text()), 120,
                       "the stage's child process", [parent])
        assert _running(pid)
        parent.send_signal(signal.SIGINT)
        # run_stage gives the group STOP_GRACE_S (30 s) before SIGKILL (the stand-in's `sleep &` ignores
        # SIGINT); the rest is margin for the interpreter's exit on a loaded machine (60 s failed under -n 3)
        _, err = parent.communicate(timeout=150)
        assert parent.returncode != 0 and "KeyboardInterrupt" in err, err
        assert wait_for(lambda: not _running(pid), 10, "the orphan to go"), "the stage's child outlived the flow"
    finally:
        stop_process(parent)
        if pidfile.is_file() and _running(int(pidfile.read_text())):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
