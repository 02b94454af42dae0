"""Scheduled retraining: new-data detection, failure / promotion notifications, and the served
`retrain` deployment run through a real Prefect API (a `prefect server` on loopback)."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from conftest import REPO
from test_pipeline_e2e import make_repo_copy, tiny_params

BIN = Path(sys.executable).parent


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


def _env(**extra) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(DO_NOT_TRACK="1", DVC_NO_ANALYTICS="1", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               GX_ANALYTICS_ENABLED="false", MLFLOW_ENABLE_TELEMETRY="false", PREFECT_UI_ENABLED="false")
    env.pop("POSE_NOTIFY_WEBHOOK", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra)
    return env


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


def test_deployment_has_the_params_schedule_and_a_concurrency_limit_of_one():
    from flows.serve import build_deployment

    dep = build_deployment(REPO)
    s = yaml.safe_load((REPO / "params.yaml").read_text())["schedule"]
    assert dep.name == s["deployment"] and dep.parameters == {"repo_dir": str(REPO.resolve())}
    sched = dep.schedules[0].schedule
    assert sched.cron == s["cron"] and sched.timezone == s["timezone"]
    assert dep.concurrency_limit == 1 and dep.entrypoint == "flows.retrain.retrain"


# ----------------------------------------------------------------------------- served deployment

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(pred, timeout: float, what: str, procs=()):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{what}: process exited early ({p.returncode}):\n{_tail(p)}")
        try:
            if pred():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def _tail(p, n: int = 4000) -> str:
    try:
        return Path(p._log).read_text()[-n:]  # noqa: SLF001
    except Exception:  # noqa: BLE001
        return ""


def _start(cmd, cwd, env, log: Path) -> subprocess.Popen:
    fh = open(log, "w")  # noqa: SIM115 - closed with the process
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    p._log = str(log)  # noqa: SLF001
    return p


def _stop(p: subprocess.Popen | None) -> None:
    if p is None or p.poll() is not None:
        return
    p.terminate()
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(timeout=10)


@pytest.mark.slow
def test_served_deployment_retrains_on_new_data_and_skips_unchanged_data(tmp_path_factory, coco_mini, webhook):
    import httpx
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url, received = webhook
    params = tiny_params()
    params["schedule"]["notify_webhook"] = url
    repo = make_repo_copy(tmp_path_factory.mktemp("served"), params)
    work = tmp_path_factory.mktemp("prefect")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    server = served = None
    try:
        server = _start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                        work, _env(PREFECT_HOME=str(work / "server-home")), work / "server.log")
        _wait(lambda: httpx.get(f"{api}/health", timeout=2).status_code == 200, 180, "prefect server", [server])
        served = _start([sys.executable, "-m", "flows.serve", str(repo)], repo,
                        _env(PREFECT_HOME=str(work / "serve-home"), PREFECT_API_URL=api), work / "serve.log")
        with temporary_settings({PREFECT_API_URL: api}):
            async def deployment():
                async with get_client() as client:
                    return await client.read_deployment_by_name("retrain/retrain")

            import asyncio

            _wait(lambda: asyncio.run(deployment()) is not None, 120, "served deployment", [served])
            dep = asyncio.run(deployment())
            assert dep.schedules and dep.schedules[0].schedule.cron == params["schedule"]["cron"]
            assert dep.parameters == {"repo_dir": str(repo.resolve())}
            assert (dep.concurrency_limit or getattr(dep.global_concurrency_limit, "limit", None)) == 1

            # 1) first run: no registered model yet -> new data -> full retrain, v1 registered and promoted
            run1 = run_deployment("retrain/retrain", timeout=900, poll_interval=2)
            assert run1.state.is_completed() and run1.state.name == "Completed", \
                f"{run1.state}\n{Path(served._log).read_text()[-6000:]}"  # noqa: SLF001
            client = MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
            name = params["registry"]["model_name"]
            versions = client.search_model_versions(f"name='{name}'")
            assert len(versions) == 1
            reg = client.get_registered_model(name)
            assert reg.tags["data.fingerprint"] == client.get_model_version(name, "1").tags["data.source_fingerprint"]
            assert [m["event"] for m in received] == ["promotion"]
            assert received[0]["registration"]["version"] == 1
            assert any((repo / "dvc-storage").rglob("*")), "dvc push sent nothing to the local remote"
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
        _stop(served)
        _stop(server)
