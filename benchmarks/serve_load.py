"""Load on the documented serving command: throughput, latency, errors and the server's memory.

Registers a model in a temporary MLflow registry, starts ``pose serve --model
models:/bench-serve/latest`` (the README's command, params.yaml ``serve``: workers, limits,
deadline) on a free loopback port, and runs bounded concurrent loads with plain HTTP clients
(one thread and one keep-alive session per client):

1. a baseline: one client sends ``--baseline`` requests of one 640x480 JPEG photo (a coco-mini
   image resized) at the model's stored settings, one at a time; then for each ``--clients``
   value every client sends ``--requests`` such requests (throughput also as a ratio to the
   baseline's, since the machine's load moves the absolute numbers);
2. ``--mixed`` requests of mixed sizes from 8 clients: 1-2 photos of 320x240, 640x480 or
   1280x960 per request at input size 160, 192 or 256 (each a separate cached predictor), and
   every 20th request over a limit (``input_size`` 4096: an expected 400), with the server's
   memory sampled every 100 requests.

Prints per load: requests, errors, wall time, throughput (requests/s), latency p50 / p99 (ms),
and the RSS of all the server's processes (supervisor + workers; MB) before and after; for the
mixed load the memory trace and its growth. The model: ``--checkpoint`` (default
``data/models/best.pt`` when it exists), else the architecture of params.yaml ``model`` with
random weights (the same network cost; its decoding finds few persons, so grouping costs less
than a trained model's).

Usage (repo root, venv active; takes ~10 minutes on 2 cores)::

    PYTHONPATH=. nice -n 10 python benchmarks/serve_load.py [--clients 4 16] [--requests 100] [--mixed 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import psutil
import requests
import yaml

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO.parent / "shared" / "datasets" / "coco-mini" / "val2017" / "000000000139.jpg"
NAME = "bench-serve"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def photo_jpeg(width: int, height: int) -> str:
    """base64 of a ``width`` x ``height`` JPEG made from the coco-mini photo (quality 90)."""
    import base64

    image = cv2.imread(str(PHOTO))
    if image is None:
        raise SystemExit(f"no photo at {PHOTO} (../shared/datasets/coco-mini)")
    ok, buf = cv2.imencode(".jpg", cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA),
                           [cv2.IMWRITE_JPEG_QUALITY, 90])
    return base64.b64encode(buf.tobytes()).decode()


def register(params: dict, checkpoint: Path | None, tmp: Path) -> str:
    """Save the model as the pose pyfunc model and register it in a temporary SQLite registry;
    returns what the model is, in words."""
    import torch
    from mlflow import MlflowClient

    from pose.models import build_model
    from pose.serving.model import save_pyfunc_model
    from pose.train.checkpoint import save_checkpoint

    if checkpoint is None:
        torch.manual_seed(0)
        model = build_model(params["model"])
        checkpoint = tmp / "random.pt"
        save_checkpoint({"model": model.state_dict(), "model_params": json.dumps(params["model"])}, checkpoint)
        what = f"W{params['model']['width']} random weights (params.yaml model)"
    else:
        what = str(checkpoint)
    params = json.loads(json.dumps(params))
    params["serve"]["log_onnx"] = False
    from pose.params import validate_params

    sections = validate_params(params, source="serve_load params")
    model_dir = save_pyfunc_model(checkpoint, tmp / "model", evaluate=sections.evaluate, predict=sections.predict,
                                  serve=sections.serve, generated=sections.generated)
    client = MlflowClient(params["registry"]["tracking_uri"])
    exp = client.create_experiment("bench", artifact_location=(tmp / "artifacts").as_uri())
    run = client.create_run(exp)
    client.log_artifacts(run.info.run_id, str(model_dir), "model")
    client.set_terminated(run.info.run_id)
    client.create_registered_model(NAME)
    client.create_model_version(NAME, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    return what


def server_memory(pid: int) -> tuple[float, float]:
    """(RSS, USS) in MB summed over the server process and all its children."""
    rss = uss = 0
    procs = [psutil.Process(pid)]
    procs += procs[0].children(recursive=True)
    for p in procs:
        try:
            info = p.memory_full_info()
            rss += info.rss
            uss += info.uss
        except psutil.NoSuchProcess:
            pass
    return rss / 2 ** 20, uss / 2 ** 20


def run_load(url: str, bodies: list[dict], clients: int, expected: list[int]) -> dict:
    """Send ``bodies`` (in order, shared by ``clients`` threads with a keep-alive session each);
    returns latencies (s) of answers with the expected status, errors and wall time."""
    lock = threading.Lock()
    queue = list(enumerate(bodies))[::-1]
    lat, errors, statuses = [], [], {}

    def client():
        session = requests.Session()
        while True:
            with lock:
                if not queue:
                    return
                i, body = queue.pop()
            t0 = time.perf_counter()
            try:
                r = session.post(f"{url}/invocations", data=json.dumps(body),
                                 headers={"Content-Type": "application/json"}, timeout=120)
                status = r.status_code
            except requests.RequestException as exc:
                status = type(exc).__name__
            dt = time.perf_counter() - t0
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
                if status == expected[i]:
                    lat.append(dt)
                else:
                    errors.append(status)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]   # Ctrl-C stops the script
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"wall": time.perf_counter() - t0, "lat": lat, "errors": errors, "statuses": statuses}


def row(name: str, res: dict, n: int, mem0, mem1) -> str:
    lat = np.asarray(res["lat"]) * 1000 if res["lat"] else np.asarray([np.nan])
    return (f"| {name} | {n} | {len(res['errors'])} | {res['wall']:.1f} | {n / res['wall']:.2f} | "
            f"{np.percentile(lat, 50):.0f} | {np.percentile(lat, 99):.0f} | {mem0[0]:.0f} / {mem0[1]:.0f} | "
            f"{mem1[0]:.0f} / {mem1[1]:.0f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=Path, default=REPO / "params.yaml")
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="trained checkpoint (default: data/models/best.pt when present, else random weights)")
    ap.add_argument("--clients", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--requests", type=int, default=100, help="requests per client of each --clients load")
    ap.add_argument("--mixed", type=int, default=1000, help="requests of the mixed-size load (8 clients)")
    ap.add_argument("--baseline", type=int, default=20, help="requests of the one-client baseline run first")
    args = ap.parse_args(argv)

    params = yaml.safe_load(args.params.read_text())
    ckpt = args.checkpoint or (REPO / "data" / "models" / "best.pt")
    ckpt = ckpt if ckpt.is_file() else None
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="pose-serve-load-") as tmp:
        tmp = Path(tmp)
        params["registry"]["tracking_uri"] = f"sqlite:///{tmp / 'mlflow.db'}"
        what = register(params, ckpt, tmp)
        pfile = tmp / "params.yaml"
        pfile.write_text(yaml.safe_dump(params, sort_keys=False))
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        log = open(tmp / "serve.log", "w")
        cmd = [str(Path(sys.executable).parent / "pose"), "serve", "--model", f"models:/{NAME}/latest",
               "--params", str(pfile), "--port", str(port)]
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            started = time.monotonic()
            workers = int(params["serve"]["workers"])
            while (tmp / "serve.log").read_text().count("Application startup complete") < workers:
                if proc.poll() is not None or time.monotonic() - started > 300:
                    print((tmp / "serve.log").read_text()[-3000:])
                    return 1
                time.sleep(0.5)
            sv = params["serve"]
            print(f"# pose serve load: model {what}, input_size {params['evaluate']['input_size']}, flip_test "
                  f"{params['evaluate']['flip_test']}; {sv['workers']} workers x {max(1, cores // sv['workers'])} "
                  f"torch thread(s), {cores} cores, load average before {os.getloadavg()[0]:.2f}")
            one = photo_jpeg(640, 480)
            single = {"inputs": {"image": [one]}}
            run_load(url, [single] * 4, 2, [200] * 4)                   # warm-up: both workers load their predictor
            print("| load | requests | errors | wall s | requests/s | p50 ms | p99 ms | RSS / USS MB before | "
                  "RSS / USS MB after |")
            print("|---|---|---|---|---|---|---|---|---|")
            mem0 = server_memory(proc.pid)                               # baseline: one client, nothing queued
            res = run_load(url, [single] * args.baseline, 1, [200] * args.baseline)
            print(row(f"baseline: 1 client x {args.baseline}, 640x480", res, args.baseline, mem0,
                      server_memory(proc.pid)), flush=True)
            base_rate = args.baseline / res["wall"]
            for clients in args.clients:
                n = clients * args.requests
                mem0 = server_memory(proc.pid)
                res = run_load(url, [single] * n, clients, [200] * n)
                print(row(f"{clients} clients x {args.requests}, 640x480 ({n / res['wall'] / base_rate:.2f}x the "
                          "baseline's requests/s)", res, n, mem0, server_memory(proc.pid)), flush=True)
                if res["errors"]:
                    print(f"  errors: {sorted(set(map(str, res['errors'])))}")
            if args.mixed:
                rng = random.Random(0)
                photos = {s: photo_jpeg(*s) for s in ((320, 240), (640, 480), (1280, 960))}
                bodies, expected = [], []
                for i in range(args.mixed):
                    imgs = [photos[rng.choice(list(photos))] for _ in range(rng.randint(1, 2))]
                    size = 4096 if i % 20 == 19 else rng.choice((160, 192, 256))
                    bodies.append({"inputs": {"image": imgs}, "params": {"input_size": size}})
                    expected.append(400 if size == 4096 else 200)
                trace = [server_memory(proc.pid)]
                total = {"wall": 0.0, "lat": [], "errors": [], "statuses": {}}
                for k in range(0, args.mixed, 100):
                    res = run_load(url, bodies[k:k + 100], 8, expected[k:k + 100])
                    total["wall"] += res["wall"]
                    total["lat"] += res["lat"]
                    total["errors"] += res["errors"]
                    trace.append(server_memory(proc.pid))
                print(row(f"mixed sizes, 8 clients ({sum(e == 400 for e in expected)} over a limit: 400 expected)",
                          total, args.mixed, trace[0], trace[-1]))
                if total["errors"]:
                    print(f"  errors: {sorted(set(map(str, total['errors'])))}")
                print("RSS MB after each 100 mixed requests: " + ", ".join(f"{r:.0f}" for r, _ in trace))
                print(f"RSS growth from request 100 to {args.mixed}: {trace[-1][0] - trace[1][0]:+.0f} MB "
                      f"({(trace[-1][0] / trace[1][0] - 1) * 100:+.1f}%); USS {trace[-1][1] - trace[1][1]:+.0f} MB")
            print(f"load average after {os.getloadavg()[0]:.2f}")
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
