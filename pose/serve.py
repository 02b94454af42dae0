"""``pose serve``: the registered pose model over HTTP, with bounded requests and supervised workers.

The server is MLflow's own scoring app (``mlflow.pyfunc.scoring_server.init``: ``POST
/invocations`` in MLflow's JSON formats, ``GET /ping``, ``/health``, ``/version``), the app
``mlflow models serve`` runs, served the way ``mlflow models serve --workers N`` serves it
(uvicorn), with three changes:

* **Supervised workers.** ``serve.workers`` worker processes under uvicorn's process supervisor
  (``uvicorn.supervisors.Multiprocess``, what ``uvicorn --workers N`` runs): the listening socket
  belongs to the supervisor, a worker that dies (``kill -9``, out of memory) or does not answer
  its ping within ``serve.worker_healthcheck_s`` is replaced, and connections wait in the
  socket's backlog meanwhile. A single ``mlflow models serve`` process (its default, one worker)
  ends with its worker. A worker that cannot load the model stops the server (exit 1) instead
  of being restarted forever. Torch threads per worker: cores / workers (at least 1); glibc
  malloc arenas per worker: ``serve.malloc_arenas`` (each request thread would get its own
  arena, and memory would grow with the mix of input sizes).
* **Deadlines.** Each ``/invocations`` request gets a :class:`pose.decode.deadline.Deadline`
  of ``serve.request_timeout_s`` from its arrival; the model's work stops at the first
  checkpoint after it (between images, test scales, network and decoding) or as soon as the
  client disconnects (:class:`RequestGuard`). MLflow's own timeout
  (``MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT``, which answers 504 but lets the work run on) is set
  to the same value. The request limits of params.yaml ``serve`` (this host's) replace those
  stored with the model (`pose.serving.requests.serve_settings`).
* **Short error bodies.** Every error answer is ``{"error_code", "message"}`` of at most
  :data:`ERROR_BODY_MAX` bytes: MLflow's scoring server puts the whole parsed input in front of
  a model's message (``Failed to predict data '<input>'. Error: <message>``, megabytes with
  the ``inputs`` format); the guard keeps the message, drops stack traces (logged on the
  server) and cuts what is still too long. A body over ``serve.max_request_bytes`` gets 413
  before it is parsed.

The model is downloaded once, by the supervisor, into a temporary folder that the workers load
(and that is removed when the server stops). A ``models:/<name>@<alias>`` reference that does
not resolve (no ``champion`` until a version passes the gate) ends in one line listing the
versions with their promotion decision (`pose.registry.model_refs.check_model_ref`);
``models:/<name>/latest`` serves the newest version whatever its alias.

Params sections read (handed in by ``pose.cli``, `pose.params`): ``serve`` and ``registry`` (the
tracking URI).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from pose.decode.deadline import Deadline, deadline_scope
from pose.registry.model_refs import ModelRefError, resolve_model_ref, version_line
from pose.serving.requests import MLFLOW_TIMEOUT_ENV, SERVE_SETTINGS_ENV

if TYPE_CHECKING:
    from pose.params import RegistrySection, ServeSection

log = logging.getLogger(__name__)

#: the local model folder the workers load (set by :func:`serve_model`)
MODEL_DIR_ENV = "POSE_SERVE_MODEL_DIR"
#: largest error body the server sends (bytes)
ERROR_BODY_MAX = 4096
#: the scoring path whose requests are guarded
INVOCATIONS = "/invocations"
#: MLflow error code names per HTTP status of an error body that has none
_STATUS_CODES = {400: "BAD_REQUEST", 404: "ENDPOINT_NOT_FOUND", 413: "BAD_REQUEST", 415: "BAD_REQUEST",
                 499: "CANCELLED", 500: "INTERNAL_ERROR", 503: "TEMPORARILY_UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
#: what MLflow's scoring server puts in front of a model's error message (``scoring_server.invocations``)
_ECHO_PREFIX, _ECHO_SEP = "Failed to predict data", "\nError: "


class ServeError(RuntimeError):
    """``pose serve`` cannot start or stopped on an error (one line)."""


# ----------------------------------------------------------------------------- error bodies

def short_error_body(status: int, body: bytes, *, timeout_s: float | None = None, limit: int = ERROR_BODY_MAX) -> bytes:
    """The error answer the client gets: JSON ``{"error_code", "message"}`` of at most ``limit``
    bytes, the message on one line.

    From MLflow's ``{"error_code", "message"[, "stack_trace"]}`` it keeps the model's own message
    (the text after MLflow's ``Failed to predict data '<parsed input>'. Error:`` prefix) and drops
    the stack trace (logged here); a body that is not such JSON (MLflow's plain-text 504 / 415)
    becomes the message, with ``error_code`` from the status. What is still over ``limit`` is
    cut, saying how much was cut."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        doc = None
    if not isinstance(doc, dict) or "message" not in doc:
        doc = {"message": body.decode("utf-8", errors="replace")}
        if status == 504 and timeout_s is not None:   # MLflow's own timeout answer
            doc["message"] = f"the request took longer than serve.request_timeout_s = {timeout_s:g} s"
    trace = doc.get("stack_trace")
    if trace:
        log.warning("error answer %d, stack trace not sent: %s", status, " | ".join(str(trace).splitlines()[-3:]))
    message = str(doc.get("message", ""))
    if message.startswith(_ECHO_PREFIX) and _ECHO_SEP in message:
        message = message[message.rindex(_ECHO_SEP) + len(_ECHO_SEP):]
    message = " ".join(message.split())
    code = str(doc.get("error_code") or _STATUS_CODES.get(status, "INTERNAL_ERROR"))[:64]

    def dump(text: str) -> bytes:
        return json.dumps({"error_code": code, "message": text}, ensure_ascii=False).encode()

    out = dump(message)
    if len(out) > limit:
        def cut(k: int) -> str:
            return f"{message[:k]} ... ({len(message) - k} more characters cut)"

        lo, hi = 0, min(len(message), limit)   # the longest prefix that fits with the note
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if len(dump(cut(mid))) <= limit else (lo, mid - 1)
        out = dump(cut(lo))
    return out


# ----------------------------------------------------------------------------- the ASGI guard

class RequestGuard:
    """ASGI middleware in front of MLflow's scoring app (module docstring): for each ``POST
    /invocations`` it reads the body (413 over ``max_request_bytes``), sets the request's
    :class:`Deadline` (``timeout_s`` from arrival; cancelled when the client disconnects) as the
    current one for the work (a context variable, which ``asyncio.to_thread`` carries into the
    thread that runs the model), and shortens error answers (:func:`short_error_body`). Other
    paths pass through untouched.

    Args:
        app: the ASGI app (``mlflow.pyfunc.scoring_server.init(model)``).
        timeout_s: params ``serve.request_timeout_s``.
        max_request_bytes: params ``serve.max_request_bytes``.
    """

    def __init__(self, app, *, timeout_s: float, max_request_bytes: int) -> None:
        self.app = app
        self.timeout_s = float(timeout_s)
        self.max_request_bytes = int(max_request_bytes)

    async def _answer(self, send, status: int, message: str) -> None:
        body = short_error_body(status, json.dumps({"message": message}).encode())
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("path") != INVOCATIONS:
            await self.app(scope, receive, send)
            return
        deadline = Deadline.after(self.timeout_s, f"serve.request_timeout_s = {self.timeout_s:g}")
        too_big = (f"request body over serve.max_request_bytes = {self.max_request_bytes}; send fewer or smaller "
                   "images per request")
        declared = dict(scope.get("headers") or []).get(b"content-length", b"").decode("latin-1").strip()
        if declared.isdigit() and int(declared) > self.max_request_bytes:
            await self._answer(send, 413, too_big)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_request_bytes:
                await self._answer(send, 413, too_big)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        del chunks
        state = {"replayed": False, "done": False, "start": None, "parts": []}
        gone = asyncio.Event()

        async def watch_client() -> None:   # the next message after the body is the disconnect
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    if not state["done"]:
                        deadline.cancel("the client disconnected")
                        log.info("client of a running request disconnected after %.1f s: its work stops",
                                 deadline.elapsed())
                    gone.set()
                    return

        async def replay():
            if not state["replayed"]:
                state["replayed"] = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def guarded_send(message) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                state["start"] = message
                return
            if message["type"] == "http.response.body" and state["start"] is not None:
                state["parts"].append(message.get("body", b""))
                if not message.get("more_body", False):
                    state["done"] = True
                    status = int(state["start"]["status"])
                    out = short_error_body(status, b"".join(state["parts"]), timeout_s=self.timeout_s)
                    headers = [(k, v) for k, v in state["start"].get("headers", [])
                               if k.lower() not in (b"content-type", b"content-length")]
                    await send({"type": "http.response.start", "status": status,
                                "headers": headers + [(b"content-type", b"application/json"),
                                                      (b"content-length", str(len(out)).encode())]})
                    await send({"type": "http.response.body", "body": out})
                return
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                state["done"] = True
            await send(message)

        watcher = asyncio.create_task(watch_client())
        try:
            with deadline_scope(deadline):
                await self.app(scope, replay, guarded_send)
        finally:
            state["done"] = True
            watcher.cancel()


# ----------------------------------------------------------------------------- workers

def worker_app():
    """The ASGI app of one worker (uvicorn factory, run in each worker process): the model of
    env :data:`MODEL_DIR_ENV` in MLflow's scoring app behind :class:`RequestGuard` with the
    ``serve`` settings of env :data:`SERVE_SETTINGS_ENV`. A model that cannot be loaded ends the
    worker with uvicorn's startup-failure status (one log line), which stops the supervisor."""
    from uvicorn.config import STARTUP_FAILURE

    show = warnings.showwarning

    def quiet(message, category, *args, **kwargs):   # MLflow's advice to type-hint PythonModel.predict (the
        if "Add type hints to the" not in str(message):  # model declares a signature instead), once per worker
            show(message, category, *args, **kwargs)

    warnings.showwarning = quiet
    if not logging.getLogger("pose").handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     [%(process)d] %(name)s: %(message)s"))
        logging.getLogger("pose").addHandler(handler)
        logging.getLogger("pose").setLevel(logging.INFO)
    try:
        serve = json.loads(os.environ[SERVE_SETTINGS_ENV])
        model_dir = os.environ[MODEL_DIR_ENV]
        import torch

        threads = os.environ.get("OMP_NUM_THREADS", "").strip()
        if threads.isdigit() and int(threads) > 0:
            torch.set_num_threads(int(threads))
        from mlflow.pyfunc import scoring_server

        model = scoring_server.load_model_with_mlflow_config(model_dir)
        app = scoring_server.init(model)
    except Exception as exc:  # noqa: BLE001 - one line, then the supervisor stops (no restart loop)
        log.error("error: worker %d cannot load the model: %s: %s", os.getpid(), type(exc).__name__,
                  " ".join(str(exc).split())[:500])
        sys.exit(STARTUP_FAILURE)
    return RequestGuard(app, timeout_s=float(serve["request_timeout_s"]),
                        max_request_bytes=int(serve["max_request_bytes"]))


def usable_cores() -> int:
    """CPU cores this process may run on (``sched_getaffinity``, else ``cpu_count``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS
        return max(1, os.cpu_count() or 1)


# ----------------------------------------------------------------------------- the command

def describe_model(model_uri: str, tracking_uri: str | None) -> str:
    """``models:/name/latest = v3 rejected: ... [aliases: challenger]`` for a registry reference,
    else the reference itself."""
    import re

    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    m = re.fullmatch(r"models:/([^/@]+)(?:@([^/@]+)|/([^/@]+))", model_uri)
    if not m:
        return model_uri
    name, alias, version = m.groups()
    client = MlflowClient(tracking_uri)
    try:
        if alias:
            mv = client.get_model_version_by_alias(name, alias)
        elif version.isdigit():
            mv = client.get_model_version(name, version)
        else:
            mv = max(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))
        return f"{model_uri} = {version_line(mv)}"
    except (MlflowException, ValueError):
        return model_uri


def fetch_model(model_uri: str, dst: Path, *, tracking_uri: str | None) -> Path:
    """The MLflow model folder of ``model_uri`` (``models:/<name>/<n>`` or ``@<alias>``, ``runs:/...``
    or a local folder holding ``MLmodel``), downloaded into ``dst`` unless local.

    Raises ServeError (one line) when it cannot be downloaded or is not an MLflow model."""
    import mlflow
    from mlflow.exceptions import MlflowException

    local = Path(model_uri)
    if not local.is_dir():
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst),
                                                             tracking_uri=tracking_uri))
        except (MlflowException, OSError) as exc:
            msg = getattr(exc, "message", None) or str(exc)
            raise ServeError(f"{model_uri}: cannot download the model from {tracking_uri}: "
                             f"{' '.join(str(msg).split())[:400]}") from None
    if not (local / "MLmodel").is_file():
        raise ServeError(f"{model_uri}: not an MLflow model (no MLmodel file in {local}); give models:/<name>/latest, "
                         "models:/<name>@<alias>, models:/<name>/<version> or runs:/<run id>/model")
    return local


def serve_model(sv: ServeSection, reg: RegistrySection, *, model_uri: str, host: str | None = None,
                port: int | None = None, workers: int | None = None, echo=print) -> None:
    """Serve ``model_uri`` until SIGINT / SIGTERM (module docstring).

    Args:
        sv: the params ``serve`` section (`pose.params.ServeSection`).
        reg: the params ``registry`` section (`pose.params.RegistrySection`; the tracking URI).
        model_uri: ``models:/<name>/latest``, ``models:/<name>@<alias>``, ``models:/<name>/<n>``,
            ``runs:/<id>/model`` or a local model folder.
        host, port, workers: override params ``serve.host`` / ``serve.port`` / ``serve.workers``.
        echo: where the one-line start message goes.

    Raises ServeError (one line): unresolvable model, port not free, a worker that cannot load
    the model.
    """
    from uvicorn import Config
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    from pose.registry.tracking import tracking_uri

    host = str(host or sv.host)
    port = int(sv.port if port is None else port)
    workers = int(workers or sv.workers)
    if workers < 1:
        raise ServeError(f"--workers {workers}: must be >= 1")
    uri = tracking_uri(reg)
    with tempfile.TemporaryDirectory(prefix="pose-serve-") as tmp:
        try:   # models:/<name>/latest -> the newest version; an alias that does not resolve: why
            resolved = resolve_model_ref(model_uri, tracking_uri=uri) if model_uri.startswith("models:/") \
                else model_uri
        except ModelRefError as exc:
            raise ServeError(str(exc)) from None
        model_dir = fetch_model(resolved, Path(tmp), tracking_uri=uri)
        what = describe_model(resolved, uri) + ("" if resolved == model_uri else f" (the newest: {model_uri})")
        try:
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError as exc:
            raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; pick another --port "
                             "(params serve.port)") from None
        sock.set_inheritable(True)
        threads = max(1, usable_cores() // workers)
        os.environ.update({MODEL_DIR_ENV: str(model_dir), SERVE_SETTINGS_ENV: json.dumps(sv.as_dict()),
                           MLFLOW_TIMEOUT_ENV: str(int(float(sv.request_timeout_s) + 0.999)),
                           "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                           "MALLOC_ARENA_MAX": str(int(sv.malloc_arenas))})
        config = Config("pose.serve:worker_app", factory=True, host=host, port=port, workers=workers,
                        timeout_worker_healthcheck=max(1, int(round(float(sv.worker_healthcheck_s)))),
                        log_level="info")
        echo(f"serving {what} on http://{host}:{port} (POST /invocations, GET /ping): {workers} worker(s) "
             f"x {threads} torch thread(s), supervised (a dead worker is replaced); request limits and deadline "
             f"{float(sv.request_timeout_s):g} s from params serve; Ctrl-C stops")
        supervisor = Multiprocess(config, sockets=[sock])
        try:
            supervisor.run()
        finally:
            sock.close()
        if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes):
            raise ServeError(f"a worker could not load {model_uri} (its error line is above); the server stopped")


__all__ = ["RequestGuard", "ServeError", "short_error_body", "serve_model", "worker_app", "fetch_model",
           "describe_model", "MODEL_DIR_ENV", "ERROR_BODY_MAX"]
