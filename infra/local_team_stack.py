"""Start the team-mode servers for real on 127.0.0.1, without Docker, and stop them again.

Same services as `infra/docker-compose.yml`, but as plain local processes:

* PostgreSQL: a throwaway cluster (`initdb` in a temporary folder). It holds the MLflow
  backend store, the MLflow basic-auth user store and the Prefect database.
* S3: `moto_server`, an S3-compatible server. It holds the MLflow artifacts and the DVC
  remote. (Use MinIO as in docker-compose for anything that outlives a test.)
* `mlflow server --app-name basic-auth`: Postgres backend, artifacts proxied to S3.
* `prefect server start`: Postgres database through asyncpg, API basic auth.
* Optionally `prefect worker start --pool <pool> --type process`.

Every port is a free port on 127.0.0.1. Every secret is generated at start
(`secrets.token_urlsafe`) and goes to processes only through their environment or
files of mode 0600. It never appears on a command line. Every process is started in
its own session. `TeamStack.stop()` ends exactly those processes, by process-group
id, in reverse order.

Command line (foreground; Ctrl-C stops everything it started)::

    .venv/bin/python infra/local_team_stack.py up [--dir DIR] [--worker-pool local]
    .venv/bin/python infra/local_team_stack.py check     # start, health-check, print timings, stop

`up` writes `DIR/team.env` (mode 0600). It holds the client environment of team mode
(MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME/PASSWORD, PREFECT_API_URL,
PREFECT_API_AUTH_STRING, AWS_* for DVC) and is meant for `set -a; . DIR/team.env; set +a`.

`tests/test_team_mode.py` imports this module.
"""

from __future__ import annotations

import argparse
import base64
import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TELEMETRY_OFF = {"DO_NOT_TRACK": "1", "DVC_NO_ANALYTICS": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                 "GX_ANALYTICS_ENABLED": "false", "MLFLOW_ENABLE_TELEMETRY": "false",
                 "MLFLOW_DISABLE_TELEMETRY": "true"}
HOST = "127.0.0.1"
#: buckets created at start: MLflow artifacts, DVC remote
MLFLOW_BUCKET = "pose-mlflow"
DVC_BUCKET = "pose-dvc"
#: variables that could point a child at another server or profile. They are dropped
#: from the inherited environment so a developer's shell cannot redirect the stack.
_SCRUB = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
          "MLFLOW_S3_ENDPOINT_URL", "PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_API_AUTH_STRING", "PREFECT_PROFILE",
          "AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
          "PGPASSWORD", "PGHOST", "PGPORT", "PGUSER", "PGDATABASE")


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def base_env(**extra: str) -> dict[str, str]:
    """os.environ without team-mode variables, with telemetry off and the venv first on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    env.update(TELEMETRY_OFF)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def http_status(url: str, *, auth: tuple[str, str] | None = None, timeout: float = 3.0) -> int | None:
    """HTTP status of GET url, or None when nothing answers."""
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def postgres_bindir() -> Path:
    """Folder with initdb/postgres/psql: $POSE_PG_BINDIR, else the newest /usr/lib/postgresql/*/bin."""
    if os.environ.get("POSE_PG_BINDIR"):
        return Path(os.environ["POSE_PG_BINDIR"])
    cands = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if cands:
        return Path(cands[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise FileNotFoundError("PostgreSQL server binaries not found: apt-get install -y postgresql "
                            "(or set POSE_PG_BINDIR)")


def ensure_postgres_installed() -> Path:
    """postgres_bindir(), installing Debian's `postgresql` package first when it is missing and we are root."""
    try:
        return postgres_bindir()
    except FileNotFoundError:
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            raise
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"], check=True,
                       env=env, capture_output=True)
        return postgres_bindir()


def _as_user(user: str | None) -> dict:
    """subprocess keyword arguments that run the child as `user` (none: as ourselves)."""
    if user is None:
        return {}
    pw = pwd.getpwnam(user)
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


@dataclass
class Service:
    name: str
    proc: subprocess.Popen
    log: Path
    stop_signal: int = signal.SIGTERM

    def tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


@dataclass
class TeamStack:
    """The team-mode servers as local processes. Use as a context manager or call start()/stop()."""

    root: Path
    worker_pool: str | None = None
    fast_postgres: bool = True          # fsync off: throwaway cluster for tests only
    services: list[Service] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    pg_dir: Path | None = None

    # ------------------------------------------------------------------ plumbing
    def _spawn(self, name: str, cmd: list[str], env: dict[str, str], *, user: str | None = None,
               stop_signal: int = signal.SIGTERM, cwd: Path | None = None) -> Service:
        log = self.root / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        fh = open(log, "ab")
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=cwd or self.root, **_as_user(user))
        fh.close()
        svc = Service(name, proc, log, stop_signal=stop_signal)
        self.services.append(svc)
        return svc

    def _wait(self, svc: Service, ready: Callable[[], bool], timeout: float, t0: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if svc.proc.poll() is not None:
                raise RuntimeError(f"{svc.name} exited with {svc.proc.returncode} during start:\n{svc.tail()}")
            if ready():
                self.timings[f"start.{svc.name}"] = round(time.monotonic() - t0, 2)
                return
            time.sleep(0.25)
        raise TimeoutError(f"{svc.name} not ready after {timeout:.0f}s:\n{svc.tail()}")

    def _secret(self, key: str) -> str:
        if key not in self.secrets:
            self.secrets[key] = secrets.token_urlsafe(24)
        return self.secrets[key]

    def _write_private(self, path: Path, text: str, owner: str | None = None) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        if owner is not None:
            pw = pwd.getpwnam(owner)
            os.chown(path, pw.pw_uid, pw.pw_gid)
        return path

    # ------------------------------------------------------------------ PostgreSQL
    def start_postgres(self, timeout: float = 60) -> None:
        t0 = time.monotonic()
        bindir = ensure_postgres_installed()
        # postgres refuses to run as root: run it as the `postgres` user (Debian package) then,
        # in a folder of its own (pytest's tmp folders are 0700 root)
        user = None
        if os.geteuid() == 0:
            user = os.environ.get("POSE_PG_USER", "postgres")
            try:
                pwd.getpwnam(user)
            except KeyError:  # binaries without Debian's package (which creates `postgres`)
                subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user],
                               check=True, capture_output=True)
        self.pg_dir = Path(tempfile.mkdtemp(prefix="pose-pg-"))
        if user:
            pw = pwd.getpwnam(user)
            os.chown(self.pg_dir, pw.pw_uid, pw.pw_gid)
        data = self.pg_dir / "data"
        pwfile = self._write_private(self.pg_dir / "superuser.pw", self._secret("pg_superuser") + "\n", owner=user)
        initdb = [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=scram-sha-256",
                  f"--pwfile={pwfile}", "-E", "UTF8", "--no-locale", "--no-instructions"]
        t_init = time.monotonic()
        proc = subprocess.run(initdb, capture_output=True, text=True, cwd=self.pg_dir, env=base_env(), **_as_user(user))
        if proc.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{proc.stdout}\n{proc.stderr}")
        pwfile.unlink()
        self.timings["postgres.initdb"] = round(time.monotonic() - t_init, 2)
        port = self.ports["postgres"] = free_port()
        cmd = [str(bindir / "postgres"), "-D", str(data), "-h", HOST, "-p", str(port),
               "-c", "unix_socket_directories=", "-c", "listen_addresses=" + HOST, "-c", "max_connections=100"]
        if self.fast_postgres:
            cmd += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        # SIGINT = "fast shutdown" (SIGTERM would wait for every client to disconnect)
        svc = self._spawn("postgres", cmd, base_env(), user=user, stop_signal=signal.SIGINT, cwd=self.pg_dir)
        self._wait(svc, lambda: self._psql("SELECT 1", check=False).returncode == 0, timeout, t0)
        # roles and databases: the same script the compose postgres service runs at its first start
        env = base_env(PGHOST=HOST, PGPORT=str(port), PGPASSWORD=self.secrets["pg_superuser"], POSTGRES_USER="postgres",
                       MLFLOW_DB_PASSWORD=self._secret("pg_mlflow"), PREFECT_DB_PASSWORD=self._secret("pg_prefect"))
        env["PATH"] = f"{bindir}{os.pathsep}{env['PATH']}"
        proc = subprocess.run(["sh", str(REPO / "infra" / "scripts" / "init-databases.sh")], env=env,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"init-databases.sh failed:\n{proc.stdout}\n{proc.stderr}")
        self.timings["start.postgres+roles"] = round(time.monotonic() - t0, 2)

    def _psql(self, sql: str, *, db: str = "postgres", check: bool = True) -> subprocess.CompletedProcess:
        """Run SQL (from stdin, never on the command line) as the superuser over TCP."""
        cmd = [str(postgres_bindir() / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
               "-h", HOST, "-p", str(self.ports["postgres"]), "-U", "postgres", "-d", db, "-f", "-"]
        env = base_env(PGPASSWORD=self.secrets["pg_superuser"], PGCONNECT_TIMEOUT="3")
        proc = subprocess.run(cmd, input=sql, capture_output=True, text=True, env=env)
        if check and proc.returncode != 0:
            raise RuntimeError(f"psql failed: {proc.stderr}")
        return proc

    def sql(self, sql: str, db: str = "mlflow") -> list[list[str]]:
        """Rows of a query on one of the stack's databases (as the superuser); values as text."""
        out = self._psql(sql, db=db).stdout
        return [line.split("|") for line in out.splitlines() if line]

    # ------------------------------------------------------------------ S3 (moto)
    @property
    def s3_url(self) -> str:
        return f"http://{HOST}:{self.ports['s3']}"

    def s3_client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.s3_url, region_name="us-east-1",
                            aws_access_key_id=self.secrets["s3_access_key"],
                            aws_secret_access_key=self.secrets["s3_secret_key"])

    def start_s3(self, timeout: float = 60) -> None:
        t0 = time.monotonic()
        port = self.ports["s3"] = free_port()
        self.secrets["s3_access_key"] = "pose" + secrets.token_hex(8)
        self._secret("s3_secret_key")
        exe = BIN / "moto_server"
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"]
        svc = self._spawn("s3", cmd + ["-H", HOST, "-p", str(port)], base_env())
        self._wait(svc, lambda: http_status(self.s3_url + "/") == 200, timeout, t0)
        s3 = self.s3_client()
        for bucket in (MLFLOW_BUCKET, DVC_BUCKET):
            s3.create_bucket(Bucket=bucket)

    def s3_keys(self, bucket: str, prefix: str = "") -> list[str]:
        keys, s3 = [], self.s3_client()
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys += [o["Key"] for o in page.get("Contents", [])]
        return keys

    # ------------------------------------------------------------------ MLflow
    @property
    def mlflow_url(self) -> str:
        return f"http://{HOST}:{self.ports['mlflow']}"

    def start_mlflow(self, timeout: float = 240) -> None:
        t0 = time.monotonic()
        port = self.ports["mlflow"] = free_port()
        pg = self.ports["postgres"]
        admin_pw = self._secret("mlflow_admin")
        # the auth app's config file: no password inside (libpq reads PGPASSWORD from the environment)
        ini = self._write_private(self.root / "mlflow" / "basic_auth.ini", "\n".join([
            "[mlflow]",
            "default_permission = READ",
            f"database_uri = postgresql+psycopg://mlflow@{HOST}:{pg}/mlflow_auth",
            "admin_username = admin",
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
            ""]))
        env = base_env(
            PGPASSWORD=self.secrets["pg_mlflow"],               # libpq: backend + auth store
            MLFLOW_AUTH_CONFIG_PATH=str(ini),
            MLFLOW_AUTH_ADMIN_USERNAME="admin", MLFLOW_AUTH_ADMIN_PASSWORD=admin_pw,
            MLFLOW_S3_ENDPOINT_URL=self.s3_url,                   # artifacts: server-side only
            AWS_ACCESS_KEY_ID=self.secrets["s3_access_key"], AWS_SECRET_ACCESS_KEY=self.secrets["s3_secret_key"],
            AWS_DEFAULT_REGION="us-east-1",
            MLFLOW_FLASK_SERVER_SECRET_KEY=self._secret("mlflow_flask"))
        cmd = [str(BIN / "mlflow"), "server",
               "--backend-store-uri", f"postgresql+psycopg://mlflow@{HOST}:{pg}/mlflow",
               "--artifacts-destination", f"s3://{MLFLOW_BUCKET}/artifacts",
               "--host", HOST, "--port", str(port), "--workers", "1", "--app-name", "basic-auth"]
        svc = self._spawn("mlflow", cmd, env)
        admin = ("admin", admin_pw)
        probe = f"{self.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1"
        self._wait(svc, lambda: http_status(probe, auth=admin) == 200, timeout, t0)
        # the pipeline's service account: a plain user (owns what it creates, reads the rest)
        self._secret("mlflow_pipeline")
        env = base_env(MLFLOW_TRACKING_URI=self.mlflow_url, MLFLOW_TRACKING_USERNAME="admin",
                       MLFLOW_TRACKING_PASSWORD=admin_pw, POSE_PIPELINE_PASSWORD=self.secrets["mlflow_pipeline"])
        proc = subprocess.run([sys.executable, str(REPO / "infra" / "scripts" / "mlflow_users.py"),
                               "--user", "pipeline=POSE_PIPELINE_PASSWORD"], env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"creating the MLflow user failed:\n{proc.stdout}\n{proc.stderr[-3000:]}")
        self.timings["start.mlflow+users"] = round(time.monotonic() - t0, 2)

    # ------------------------------------------------------------------ Prefect
    @property
    def prefect_url(self) -> str:
        return f"http://{HOST}:{self.ports['prefect']}/api"

    def start_prefect(self, timeout: float = 240) -> None:
        t0 = time.monotonic()
        port = self.ports["prefect"] = free_port()
        auth = f"admin:{self._secret('prefect_api')}"
        env = base_env(
            PREFECT_HOME=str(self.root / "prefect-server-home"),
            PREFECT_SERVER_DATABASE_DRIVER="postgresql+asyncpg",
            PREFECT_SERVER_DATABASE_HOST=HOST, PREFECT_SERVER_DATABASE_PORT=str(self.ports["postgres"]),
            PREFECT_SERVER_DATABASE_USER="prefect", PREFECT_SERVER_DATABASE_NAME="prefect",
            PREFECT_SERVER_DATABASE_PASSWORD=self.secrets["pg_prefect"],
            PREFECT_SERVER_API_AUTH_STRING=auth,
            PREFECT_SERVER_UI_ENABLED="false",
            PREFECT_SERVER_LOGGING_LEVEL="WARNING")
        cmd = [str(BIN / "prefect"), "server", "start", "--host", HOST, "--port", str(port), "--no-ui"]
        svc = self._spawn("prefect", cmd, env)
        user, pw = auth.split(":", 1)
        self._wait(svc, lambda: http_status(f"{self.prefect_url}/health", auth=(user, pw)) == 200, timeout, t0)

    def client_env(self, **extra: str) -> dict[str, str]:
        """The team-mode client environment (what a developer or a worker exports)."""
        return base_env(
            MLFLOW_TRACKING_URI=self.mlflow_url,
            MLFLOW_TRACKING_USERNAME="pipeline", MLFLOW_TRACKING_PASSWORD=self.secrets["mlflow_pipeline"],
            PREFECT_API_URL=self.prefect_url, PREFECT_API_AUTH_STRING=f"admin:{self.secrets['prefect_api']}",
            PREFECT_HOME=str(self.root / "prefect-client-home"),
            # DVC's S3 remote (dvc-s3 reads the standard AWS variables; endpointurl is in .dvc/config)
            AWS_ACCESS_KEY_ID=self.secrets["s3_access_key"], AWS_SECRET_ACCESS_KEY=self.secrets["s3_secret_key"],
            AWS_DEFAULT_REGION="us-east-1",
            **extra)

    def prefect(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run the `prefect` CLI against this server."""
        proc = subprocess.run([str(BIN / "prefect"), "--no-prompt", *args], env=self.client_env(), capture_output=True,
                              text=True, timeout=timeout, cwd=self.root)
        if check and proc.returncode != 0:
            raise RuntimeError(f"prefect {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def start_worker(self, pool: str, timeout: float = 120) -> None:
        """Create the process work pool and start one worker polling it."""
        t0 = time.monotonic()
        self.prefect("work-pool", "create", pool, "--type", "process", "--overwrite")
        env = self.client_env(PREFECT_WORKER_QUERY_SECONDS="2", PREFECT_WORKER_HEARTBEAT_SECONDS="10")
        cmd = [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process",
               "--name", f"{pool}-worker-1",
               "--install-policy", "never", "--no-create-pool-if-not-found"]
        svc = self._spawn("worker", cmd, env)
        name = f"{pool}-worker-1"

        def online() -> bool:
            try:
                workers = self.prefect_api("POST", f"/work_pools/{pool}/workers/filter", {})
            except (urllib.error.URLError, OSError, ValueError):
                return False
            return any(w.get("name") == name for w in workers)

        self._wait(svc, online, timeout, t0)

    def prefect_api(self, method: str, path: str, body: dict | None = None):
        """JSON request to the Prefect REST API (with the API's basic auth)."""
        user, pw = "admin", self.secrets["prefect_api"]
        req = urllib.request.Request(self.prefect_url + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode())
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"null")

    # ------------------------------------------------------------------ whole stack
    def start(self) -> "TeamStack":
        self.root.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        try:
            self.start_postgres()
            self.start_s3()
            self.start_mlflow()
            self.start_prefect()
            if self.worker_pool:
                self.start_worker(self.worker_pool)
        except BaseException:
            self.stop()
            raise
        self.timings["start.total"] = round(time.monotonic() - t0, 2)
        return self

    def stop(self, timeout: float = 20) -> None:
        """End the processes this stack started (their process groups, by id), newest first."""
        t0 = time.monotonic()
        for svc in reversed(self.services):
            t_svc = time.monotonic()
            if svc.proc.poll() is None:
                try:
                    os.killpg(svc.proc.pid, svc.stop_signal)
                except ProcessLookupError:
                    pass
                try:
                    svc.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    try:
                        os.killpg(svc.proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    svc.proc.wait(timeout=10)
            # the session's other members (uvicorn workers, flow-run subprocesses) may outlive the leader
            try:
                os.killpg(svc.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.timings[f"stop.{svc.name}"] = round(time.monotonic() - t_svc, 2)
        self.services.clear()
        if self.pg_dir is not None:
            shutil.rmtree(self.pg_dir, ignore_errors=True)
            self.pg_dir = None
        self.timings["stop.total"] = round(time.monotonic() - t0, 2)

    def __enter__(self) -> "TeamStack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def env_file(self, path: Path) -> Path:
        """Write the client environment of team mode (mode 0600)."""
        keys = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PREFECT_API_URL",
                "PREFECT_API_AUTH_STRING", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
        env = self.client_env()
        lines = [f"{k}={env[k]}" for k in keys]
        lines.append(f"# DVC: dvc remote add -d team s3://{DVC_BUCKET}/store (the endpoint comes from the next line)")
        lines.append(f"AWS_ENDPOINT_URL_S3={self.s3_url}")
        return self._write_private(path, "\n".join(lines) + "\n")


DVC_S3_VERSION = "3.3.0"
#: pins that cannot hold next to dvc-s3: aiobotocore (all releases up to 3.10.0) needs botocore < 1.43.118
_DVC_S3_UNPINNED = ("boto3", "botocore", "s3transfer")


def dvc_s3_command(log: Callable[[str], None] = lambda m: None) -> list[str]:
    """A command that runs DVC with the S3 remote plugin (dvc-s3).

    The project's own venv when `dvc_s3` is importable there. Otherwise a side venv
    ($POSE_DVC_S3_VENV, default ~/.cache/pose/dvc-s3-venv) with the same dvc version and
    every other pin of constraints.txt except boto3/botocore/s3transfer, created on
    first use (about 1.5 min).
    """
    import importlib.util

    if importlib.util.find_spec("dvc_s3") is not None:
        return [sys.executable, "-m", "dvc"]
    venv = Path(os.environ.get("POSE_DVC_S3_VENV", Path.home() / ".cache" / "pose" / "dvc-s3-venv"))
    dvc = venv / "bin" / "dvc"
    ok = dvc.exists() and subprocess.run([str(venv / "bin" / "python"), "-c", "import dvc_s3"],
                                         capture_output=True).returncode == 0
    if not ok:
        pins = (REPO / "constraints.txt").read_text().splitlines()
        keep = [ln for ln in pins if ln.split("==")[0].strip().lower() not in _DVC_S3_UNPINNED]
        dvc_pin = next(ln.strip() for ln in pins if ln.lower().startswith("dvc=="))
        log(f"creating {venv} ({dvc_pin}, dvc-s3=={DVC_S3_VERSION})")
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True)
        (venv / "constraints.txt").write_text("\n".join(keep) + "\n")
        cmd = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-c", str(venv / "constraints.txt"),
               dvc_pin, f"dvc-s3=={DVC_S3_VERSION}"]
        if Path("/opt/wheels").is_dir():
            cmd[5:5] = ["--find-links", "/opt/wheels"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"installing dvc-s3 failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return [str(dvc)]


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["up", "check"])
    ap.add_argument("--dir", type=Path, default=None, help="state folder (default: a new temporary folder)")
    ap.add_argument("--worker-pool", default=None, help="also create this process work pool and start a worker")
    args = ap.parse_args(argv)
    root = args.dir or Path(tempfile.mkdtemp(prefix="pose-team-"))
    stack = TeamStack(root=root.resolve(), worker_pool=args.worker_pool)
    stack.start()
    try:
        env_file = stack.env_file(root / "team.env")
        print(json.dumps({"mlflow": stack.mlflow_url, "prefect": stack.prefect_url, "s3": stack.s3_url,
                          "postgres": f"{HOST}:{stack.ports['postgres']}", "env_file": str(env_file),
                          "logs": str(root / "logs"), "timings_s": stack.timings}, indent=2), flush=True)
        if args.command == "up":
            print("running; Ctrl-C (or kill this pid: %d) stops everything" % os.getpid(), flush=True)
            signal.signal(signal.SIGTERM, _interrupt)
            while all(s.proc.poll() is None for s in stack.services):
                time.sleep(1)
            dead = [s.name for s in stack.services if s.proc.poll() is not None]
            print(f"service(s) exited: {dead}", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()
        print(json.dumps({"stopped": True, "timings_s": stack.timings}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
