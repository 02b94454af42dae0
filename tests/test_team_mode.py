"""Team mode on real servers, all on 127.0.0.1 and stopped again by process id.

Starts a throwaway PostgreSQL cluster, an S3 server (moto), `mlflow server --app-name
basic-auth` (Postgres backend, artifacts proxied to S3) and `prefect server start`
(Postgres through asyncpg, API basic auth) plus a process work-pool worker
(`infra/local_team_stack.py`). It then deploys the `retrain` flow to the pool and runs
it on the tiny generated config (tests/repo_setup.py). Only the worker's environment switches the run to the
servers (params.yaml keeps `registry.tracking_uri: sqlite:///mlflow.db`). Checks: the
model version is in the Postgres registry, the artifacts are in the S3 bucket, `dvc
push`/`dvc pull` work against the S3 remote, the flow run is visible through the Prefect
API, and no secret appears in anything MLflow or Prefect recorded.

Slow: 8-12 minutes on 2 shared cores, most of it the flow run and MLflow's database
migrations. Start-up, run and stop times are printed at the end of the module.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import sections
from repo_setup import REPO, make_repo_copy, tiny_generated_params

from pose.registry.tracking import registered_model_name

sys.path.insert(0, str(REPO / "infra"))
import local_team_stack as lts  # noqa: E402

pytestmark = pytest.mark.slow
POOL = "local"
DEPLOYMENT = "team-tiny"
TEAM_REMOTE = f"s3://{lts.DVC_BUCKET}/store"
TIMINGS: dict[str, float] = {}


def tiny_params() -> dict:
    """The tiny generated config with the AP floor at 0 (a 2-step model scores AP ~0)."""
    return tiny_generated_params(floor=0.0)


def _report(config, lines: list[str]) -> None:
    """Print past pytest's output capture (module teardown output is otherwise swallowed)."""
    capman = config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled():
        for line in lines:
            print(line, flush=True)


@pytest.fixture(scope="module")
def stack(request, tmp_path_factory):
    if os.geteuid() != 0:
        try:
            lts.postgres_bindir()
        except FileNotFoundError as exc:  # as root the stack installs it (apt-get install postgresql)
            pytest.skip(str(exc))
    st = lts.TeamStack(root=tmp_path_factory.mktemp("team-stack"), worker_pool=POOL)
    try:
        st.start()
        yield st
    finally:
        st.stop()
        TIMINGS.update(st.timings)
        _report(request.config, ["", "team mode timings (s): " + json.dumps(TIMINGS, sort_keys=True)])


@pytest.fixture()
def as_pipeline(stack, monkeypatch):
    """This process as the pipeline's MLflow user (credentials from the environment only)."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "pipeline")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", stack.secrets["mlflow_pipeline"])
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=stack.mlflow_url, registry_uri=stack.mlflow_url)


@pytest.fixture(scope="module")
def flow_run(stack, tmp_path_factory):
    """The retrain flow deployed to the process pool and run by the worker; returns (repo, result)."""
    # params.yaml keeps the local default (sqlite:///mlflow.db): the worker's environment
    # (MLFLOW_TRACKING_URI & co., as in docs/team-mode.md) is what switches to the server
    repo = make_repo_copy(tmp_path_factory.mktemp("team-repo"), tiny_params())
    if importlib.util.find_spec("dvc_s3"):
        # the worker's dvc can talk to S3: the flow's own `dvc push` goes to the team remote
        for args in (["remote", "add", "-d", "team", TEAM_REMOTE],
                     ["remote", "modify", "team", "endpointurl", stack.s3_url]):
            subprocess.run([str(lts.BIN / "dvc"), *args], cwd=repo, check=True, capture_output=True)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(REPO / "infra" / "deploy_retrain.py"), "--pool", POOL,
                           "--repo", str(repo), "--name", DEPLOYMENT, "--run", "--timeout", "1800"],
                          env=stack.client_env(), capture_output=True, text=True, cwd=repo, timeout=2000)
    TIMINGS["flow.deploy+run"] = round(time.monotonic() - t0, 2)
    worker_log = next(s for s in stack.services if s.name == "worker").tail(6000)
    assert proc.returncode == 0, \
        f"flow run failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}\nworker:\n{worker_log}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not (repo / "mlflow.db").exists() and not (repo / "mlruns").exists(), "the flow used the local store"
    return repo, result


def _prefect_client(stack):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    ctx = temporary_settings(updates={PREFECT_API_URL: stack.prefect_url,
                                      PREFECT_API_AUTH_STRING: f"admin:{stack.secrets['prefect_api']}"})
    return ctx, get_client


# --------------------------------------------------------------------------- servers and auth
def test_servers_require_credentials(stack, tmp_path):
    search = f"{stack.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert lts.http_status(search) == 401
    assert lts.http_status(search, auth=("pipeline", "wrong-password")) == 401
    assert lts.http_status(search, auth=("pipeline", stack.secrets["mlflow_pipeline"])) == 200
    assert lts.http_status(f"{stack.prefect_url}/health") == 200          # probes stay open
    assert lts.http_status(f"{stack.prefect_url}/work_pools/{POOL}") == 401
    auth = ("admin", stack.secrets["prefect_api"])
    assert lts.http_status(f"{stack.prefect_url}/work_pools/{POOL}", auth=auth) == 200
    # the secret-file alternative to the environment: ~/.mlflow/credentials (mode 0600)
    home = tmp_path / "home"
    (home / ".mlflow").mkdir(parents=True)
    cred = home / ".mlflow" / "credentials"
    fd = os.open(cred, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"[mlflow]\nmlflow_tracking_username = pipeline\n"
                 f"mlflow_tracking_password = {stack.secrets['mlflow_pipeline']}\n")
    env = lts.base_env(HOME=str(home), MLFLOW_TRACKING_URI=stack.mlflow_url)
    code = "from mlflow import MlflowClient; print(len(MlflowClient().search_experiments()))"
    ok = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr[-3000:]
    cred.unlink()
    denied = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert denied.returncode != 0 and "401" in denied.stderr + denied.stdout


def test_mlflow_and_prefect_use_postgres(stack):
    tables = {r[0] for r in stack.sql("SELECT tablename FROM pg_tables WHERE schemaname='public'", db="mlflow")}
    assert {"experiments", "runs", "registered_models", "model_versions"} <= tables
    assert {"users"} <= {r[0] for r in stack.sql("SELECT tablename FROM pg_tables WHERE schemaname='public'",
                                                    db="mlflow_auth")}
    prefect_tables = {r[0] for r in stack.sql("SELECT tablename FROM pg_tables WHERE schemaname='public'",
                                              db="prefect")}
    assert {"flow_run", "deployment", "work_pool"} <= prefect_tables
    assert [r[0] for r in stack.sql("SELECT type FROM work_pool WHERE name='local'", db="prefect")] == ["process"]


# --------------------------------------------------------------------------- the flow on the servers
def test_flow_run_visible_through_prefect_api(stack, flow_run):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter, TaskRunFilterFlowRunId

    _, result = flow_run
    assert result["state"] == "COMPLETED", result
    ctx, get_client = _prefect_client(stack)
    with ctx, get_client(sync_client=True) as client:
        wanted = FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(result["flow_run_id"])]))
        runs = client.read_flow_runs(flow_run_filter=wanted)
        assert len(runs) == 1
        run = runs[0]
        assert run.state.is_completed()
        assert str(run.deployment_id) == result["deployment_id"]
        assert run.work_pool_name == POOL
        flow = client.read_flow(run.flow_id)
        assert flow.name == "retrain"
        tasks = client.read_task_runs(task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[run.id])))
    assert all(t.state.is_completed() for t in tasks), [(t.name, t.state.name) for t in tasks]
    # one task per DVC stage (task names carry a suffix: dvc-stage-1a2, dvc-stage-network-3b4)
    stages = yaml.safe_load((flow_run[0] / "dvc.yaml").read_text())["stages"]
    assert sum(t.name.rsplit("-", 1)[0] in ("dvc-stage", "dvc-stage-network") for t in tasks) == len(stages), \
        sorted(t.name for t in tasks)
    # the same run, straight from Prefect's Postgres database
    rows = stack.sql(f"SELECT state_type FROM flow_run WHERE id='{result['flow_run_id']}'", db="prefect")
    assert rows == [["COMPLETED"]]


def test_model_version_in_postgres_registry(stack, flow_run, as_pipeline):
    repo, _ = flow_run
    record = json.loads((repo / "data/registry/registration.json").read_text())
    p = sections(tiny_params())
    name = registered_model_name(p.registry, p.data.dataset)
    mv = as_pipeline.get_model_version(name, str(record["version"]))
    assert {"challenger", "champion"} <= set(mv.aliases)
    assert mv.run_id == record["run_id"]
    run = as_pipeline.get_run(mv.run_id)
    assert run.data.params["data.dataset"] == "generated"
    assert run.data.params["registry.tracking_uri"] == tiny_params()["registry"]["tracking_uri"]  # env won
    assert "AP" in run.data.metrics
    steps = (repo / "data/plots/train_steps.csv").read_text().splitlines()[1:]  # what training logged
    assert len(as_pipeline.get_metric_history(mv.run_id, "train/loss")) == len(steps) == 2  # 1 epoch x 2 steps
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")   # proxied by the server
    rows = stack.sql(f"SELECT name, version, run_id FROM model_versions WHERE run_id='{mv.run_id}'", db="mlflow")
    assert rows == [[name, str(record["version"]), mv.run_id]]
    # the pipeline user owns what it created; it was given nothing else
    perms = stack.sql("SELECT u.username FROM users u", db="mlflow_auth")
    assert ["pipeline"] in perms


def test_artifacts_land_in_s3(stack, flow_run, as_pipeline, tmp_path):
    import mlflow

    repo, _ = flow_run
    record = json.loads((repo / "data/registry/registration.json").read_text())
    run_id = record["run_id"]

    # every file the tracking server holds for the run, fetched the way a user gets them back (the run's
    # artifact repository: one proxy listing per folder). MlflowClient.list_artifacts walked the same
    # ~80 folders through the tracking API at ~1 s a listing (88 s); this download takes a few seconds.
    got_run = Path(mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(tmp_path / "run"),
                                                       tracking_uri=stack.mlflow_url))
    logged = {str(f.relative_to(got_run)) for f in got_run.rglob("*") if f.is_file()}
    keys = [k for k in stack.s3_keys(lts.MLFLOW_BUCKET, "artifacts/") if f"/{run_id}/artifacts/" in k]
    assert keys, "no object of the run in the bucket"
    run_prefix = keys[0].split(f"/{run_id}/artifacts/")[0] + f"/{run_id}/artifacts/"
    assert logged == {k[len(run_prefix):] for k in keys}, (sorted(logged)[:10], sorted(keys)[:10])
    s3 = stack.s3_client()

    def sha(key: str) -> str:
        return hashlib.sha256(s3.get_object(Bucket=lts.MLFLOW_BUCKET, Key=key)["Body"].read()).hexdigest()

    # the checkpoint in the bucket is the trained one
    ckpt = [k for k in keys if k.endswith("/best.pt")]
    assert len(ckpt) == 1, ckpt
    assert sha(ckpt[0]) == hashlib.sha256((repo / "data/models/best.pt").read_bytes()).hexdigest()
    # back through the registry alias (as `pose predict --model models:/...@champion` does):
    # the version's files are the run's `model/` artifacts in the bucket
    p = sections(tiny_params())
    name = registered_model_name(p.registry, p.data.dataset)
    mlflow.set_tracking_uri(stack.mlflow_url)
    try:
        path = Path(mlflow.artifacts.download_artifacts(f"models:/{name}@champion",
                                                        dst_path=str(tmp_path / "champion")))
    finally:
        mlflow.set_tracking_uri(None)
    got = {str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest() for f in path.rglob("*") if f.is_file()}
    got.pop("registered_model_meta", None)  # written by the MLflow client on download
    want = {k[len(run_prefix + "model/"):]: sha(k) for k in keys if k.startswith(run_prefix + "model/")}
    assert got and got == want, (sorted(got), sorted(want))


def test_dvc_push_and_pull_with_s3_remote(stack, flow_run):
    repo, _ = flow_run
    t0 = time.monotonic()
    dvc = lts.dvc_s3_command()
    TIMINGS["dvc_s3.ready"] = round(time.monotonic() - t0, 2)
    env = stack.client_env()

    def dvc_run(*args: str) -> str:
        proc = subprocess.run([*dvc, *args], cwd=repo, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, f"dvc {args}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout

    flow_pushed = "team" in dvc_run("remote", "list")
    if not flow_pushed:  # no dvc-s3 in the venv: the flow pushed to the local default remote
        dvc_run("remote", "add", "-d", "team", TEAM_REMOTE)
        dvc_run("remote", "modify", "team", "endpointurl", stack.s3_url)
    config = (repo / ".dvc" / "config").read_text()
    assert stack.s3_url in config and stack.secrets["s3_secret_key"] not in config
    t0 = time.monotonic()
    out = dvc_run("push", "-r", "team")
    TIMINGS["dvc.push"] = round(time.monotonic() - t0, 2)
    if flow_pushed:
        assert "Everything is up to date" in out, out   # the flow's dvc-push task sent it all
    # every cached output dvc.lock records is in the bucket (a .dir entry: the listing; its files follow)
    uncached = {path for st in yaml.safe_load((repo / "dvc.yaml").read_text())["stages"].values()
                for kind in ("outs", "metrics", "plots") for o in st.get(kind, []) if isinstance(o, dict)
                for path, opts in o.items() if (opts or {}).get("cache") is False}
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    md5s = {o["md5"] for st in lock.values() for o in st.get("outs", []) if "md5" in o and o["path"] not in uncached}
    remote = {k[len("store/"):] for k in stack.s3_keys(lts.DVC_BUCKET, "store/")}
    missing = [m for m in md5s if f"files/md5/{m[:2]}/{m[2:]}" not in remote]
    assert md5s and not missing, missing
    cache = repo / ".dvc" / "cache"
    assert "in sync" in dvc_run("status", "-c", "-r", "team")
    # round trip: an empty cache is filled from the bucket. This time the endpoint comes from
    # the environment (AWS_ENDPOINT_URL_S3), the per-machine alternative to endpointurl in .dvc/config
    dvc_run("remote", "modify", "team", "--unset", "endpointurl")
    env["AWS_ENDPOINT_URL_S3"] = stack.s3_url
    cache.rename(repo / ".dvc" / "cache.before-pull")
    best = repo / "data/models/best.pt"
    digest = hashlib.sha256(best.read_bytes()).hexdigest()
    best.unlink()
    t0 = time.monotonic()
    dvc_run("pull", "-r", "team")
    TIMINGS["dvc.pull"] = round(time.monotonic() - t0, 2)
    assert hashlib.sha256(best.read_bytes()).hexdigest() == digest
    assert "up to date" in dvc_run("status")


def _all_mlflow_text(client, dst: Path) -> tuple[list[str], list[Path]]:
    """Every string MLflow holds for the stack's experiments and models, and every artifact downloaded."""
    import mlflow
    from mlflow.entities import ViewType

    texts: list[str] = []
    files: list[Path] = []
    for exp in client.search_experiments(view_type=ViewType.ALL):
        texts += [exp.name, exp.artifact_location, *(f"{k}={v}" for k, v in exp.tags.items())]
        for run in client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=1000):
            texts += [f"{k}={v}" for k, v in run.data.params.items()]
            texts += [f"{k}={v}" for k, v in run.data.tags.items()]
            texts += list(run.data.metrics)
            texts.append(run.info.artifact_uri)
            out = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=None,
                                                            dst_path=str(dst / run.info.run_id),
                                                            tracking_uri=client.tracking_uri))
            files += [p for p in out.rglob("*") if p.is_file()]
    for rm in client.search_registered_models():
        texts += [rm.name, rm.description or "", *(f"{k}={v}" for k, v in rm.tags.items())]
        for mv in client.search_model_versions(f"name='{rm.name}'"):
            texts += [mv.source or "", mv.description or "", *(f"{k}={v}" for k, v in mv.tags.items())]
    return texts, files


def test_no_secret_in_anything_logged(stack, flow_run, as_pipeline, tmp_path):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId

    repo, result = flow_run
    known = {k: v for k, v in stack.secrets.items() if len(v) >= 8}
    known["prefect_auth_string"] = f"admin:{stack.secrets['prefect_api']}"
    assert {"mlflow_pipeline", "mlflow_admin", "pg_mlflow", "pg_prefect", "s3_secret_key", "prefect_api"} <= set(known)

    texts, files = _all_mlflow_text(as_pipeline, tmp_path / "artifacts")
    assert any(t.startswith("data.dataset=") for t in texts) and len(files) >= 5, (len(texts), len(files))
    ctx, get_client = _prefect_client(stack)
    with ctx, get_client(sync_client=True) as client:
        wanted = FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(result["flow_run_id"])]))
        run = client.read_flow_runs(flow_run_filter=wanted)[0]
        dep = client.read_deployment(run.deployment_id)
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
    assert logs, "no flow-run logs to scan"
    texts += [json.dumps(run.parameters), json.dumps(dep.parameters), json.dumps(dep.job_variables or {}),
              json.dumps(dep.pull_steps or []), *(log.message for log in logs)]
    for rel in (".dvc/config", "params.yaml", "dvc.lock", "data/registry/registration.json"):
        files.append(repo / rel)

    leaks = []
    for name, secret in known.items():
        leaks += [f"{name} in text {t[:80]!r}" for t in texts if secret in t]
        needle = secret.encode()
        leaks += [f"{name} in file {p}" for p in files if needle in p.read_bytes()]
    assert not leaks, leaks
