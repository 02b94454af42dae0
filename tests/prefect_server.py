"""A real `prefect server` on loopback for tests, and the process helpers around it.

    with prefect_server(tmp_path / "prefect") as server:     # or the `prefect_server` fixture (conftest.py)
        server.api_url            # http://127.0.0.1:<free port>/api
        server.log                # the server's stdout + stderr
        server.client_env(...)    # environment of a client process (its own PREFECT_HOME) talking to it
        server.error_lines()      # the log's ERROR lines (a healthy server has none)

The server binds 127.0.0.1 on a port chosen at run time, keeps its database in a temporary
``PREFECT_HOME`` and starts from the repository root by default, exactly as the README's
``prefect server start --host 127.0.0.1`` (so ``prefect.toml`` applies: analytics off). It is
stopped (SIGTERM, then SIGKILL) when the block ends.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from repo_setup import BIN, REPO, pipeline_env


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_process(cmd: list[str], cwd: Path, env: dict, log: Path) -> subprocess.Popen:
    """``cmd`` in the background, stdout and stderr into ``log`` (``proc._log`` names it)."""
    fh = open(log, "w")  # noqa: SIM115 - the child keeps it; closed with the process
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    proc._log = str(log)  # noqa: SLF001
    return proc


def log_tail(proc: subprocess.Popen, n: int = 4000) -> str:
    try:
        return Path(proc._log).read_text(errors="replace")[-n:]  # noqa: SLF001
    except (AttributeError, OSError):
        return ""


def stop_process(proc: subprocess.Popen | None, timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` s; nothing when it already exited."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def wait_for(pred: Callable[[], object], timeout: float, what: str, procs=(), interval: float = 1.0):
    """Poll ``pred`` until it returns a truthy value (returned); AssertionError on timeout or when
    one of ``procs`` exits first (with its log tail). An AssertionError of ``pred`` fails at once;
    other exceptions count as "not yet" (e.g. the server is not listening yet)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{what}: process exited early ({p.returncode}):\n{log_tail(p)}")
        try:
            value = pred()
            if value:
                return value
        except AssertionError:
            raise
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


#: a log line of level ERROR or CRITICAL in Prefect's / uvicorn's format ("12:00:00.000 | ERROR   | ...")
_ERROR_LINE = re.compile(r"\|\s*(ERROR|CRITICAL)\s*\||^(ERROR|CRITICAL)[: ]")


@dataclass
class PrefectServer:
    url: str
    home: Path
    log: Path
    proc: subprocess.Popen

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def error_lines(self) -> list[str]:
        """The server log's ERROR / CRITICAL lines."""
        return [ln for ln in self.log_text().splitlines() if _ERROR_LINE.search(ln)]

    def client_env(self, home: Path | None = None, **extra: str) -> dict:
        """:func:`repo_setup.pipeline_env` pointed at this server (``PREFECT_API_URL``), with its own
        ``PREFECT_HOME`` (default: ``<server home>-client``) so client and server state never mix."""
        home = home or self.home.with_name(self.home.name + "-client")
        return pipeline_env(PREFECT_API_URL=self.api_url, PREFECT_HOME=str(home), **extra)


@contextmanager
def prefect_server(workdir: Path, *, cwd: Path = REPO, env: dict | None = None,
                   timeout: float = 240) -> Iterator[PrefectServer]:
    """``prefect server start --host 127.0.0.1 --port <free>`` run from ``cwd`` (default the repo
    root, as the README runs it) with ``PREFECT_HOME=<workdir>/server-home`` and its log in
    ``<workdir>/server.log``; yields once ``/api/health`` answers, stops it afterwards.

    ``env``: the server's environment (default :func:`repo_setup.pipeline_env`: telemetry off);
    ``PREFECT_HOME`` and ``PREFECT_API_URL`` are set / removed here."""
    import httpx

    workdir.mkdir(parents=True, exist_ok=True)
    home = workdir / "server-home"
    env = dict(pipeline_env() if env is None else env)
    env["PREFECT_HOME"] = str(home)
    env.pop("PREFECT_API_URL", None)  # a server never talks to another API
    port = free_port()
    proc = start_process([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                         cwd, env, workdir / "server.log")
    server = PrefectServer(url=f"http://127.0.0.1:{port}", home=home, log=workdir / "server.log", proc=proc)
    try:
        wait_for(lambda: httpx.get(f"{server.api_url}/health", timeout=2).status_code == 200, timeout,
                 "prefect server /api/health", [proc])
        yield server
    finally:
        stop_process(proc)
