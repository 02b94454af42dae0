"""The served pose model (pose.serving): images in, persons out, equal to the pipeline's.

A tiny random-weight HigherHRNet (width 8) whose batch-norm statistics are set on the test
images and whose output layers are scaled up, so that its maps have peaks and it finds
persons; real coco-mini photos when ../shared is present, else the generated set.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, register_sections, sections

from pose.params import flatten

SERVE_TIMEOUT_S = 90


def _val_images(root: Path, n: int) -> list[Path]:
    files = sorted((root / "val2017").glob("*.jpg"))
    assert len(files) >= n, root
    return files[:n]


def _tiny_params(tmp: Path) -> dict:
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["model"].update(width=8, stage_blocks=[1, 1, 1])
    p["evaluate"].update(input_size=128, flip_test=True, test_scales=[1.0], max_people=10)
    p["serve"].update(max_pixels=400_000, example_size=64, log_onnx=False)   # ONNX: the slow registration test
    p["registry"].update(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}", model_name="pose-serving-test")
    return p


def _tiny_checkpoint(params: dict, images: list[Path], out: Path) -> Path:
    """Random weights; batch-norm statistics of the given images; output layers x30 (maps of
    range ~0.5, so the decoder finds persons)."""
    import torch

    from pose.decode.preprocess import input_batch, input_geometry
    from pose.models import build_model
    from pose.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = build_model(params["model"])
    ev = params["evaluate"]
    batch = []
    for f in images:
        im = cv2.imread(str(f))
        g = input_geometry(im.shape[1], im.shape[0], resize="letterbox", input_size=int(ev["input_size"]),
                           scale=1.0, min_scale=1.0)
        batch.append(torch.from_numpy(input_batch(im, g)))
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.momentum = None   # cumulative average: the statistics of exactly this batch
    model.train()
    with torch.no_grad():
        model(torch.cat(batch))
        for layer in model.final_layers:
            layer.weight.mul_(30.0)
    model.eval()
    save_checkpoint({"model": model.state_dict(), "model_params": json.dumps(params["model"])}, out)
    return out


@pytest.fixture(scope="module")
def served(tmp_path_factory, coco_like):
    """(params, checkpoint, saved pyfunc model dir, image files)."""
    from pose.serving.model import save_pyfunc_model

    tmp = tmp_path_factory.mktemp("serving")
    params = _tiny_params(tmp)
    files = _val_images(coco_like, 3)
    ckpt = _tiny_checkpoint(params, files, tmp / "best.pt")
    p = sections(params)
    model_dir = save_pyfunc_model(ckpt, tmp / "model", evaluate=p.evaluate, predict=p.predict, serve=p.serve,
                                  generated=p.generated)
    return params, ckpt, model_dir, files


def _pipeline_persons(net, image_bgr, eval_params: dict) -> list[dict]:
    """What `pose predict` writes to results.json for the image (before rounding)."""
    from pose.decode.inference import predict_image
    from pose.predict import limit_persons

    return limit_persons(predict_image(net, image_bgr, eval_params=eval_params), int(eval_params["max_people"]))


def _assert_same_persons(served: list[dict], expected: list[dict], tol: float) -> None:
    """Same persons in the same order: keypoints (image px) and joint scores within ``tol``."""
    assert len(served) == len(expected)
    for s, e in zip(served, expected):
        kp = np.asarray(s["keypoints"], np.float64)
        assert kp.shape == (17, 3)
        np.testing.assert_allclose(kp, np.asarray(e["keypoints"], np.float64).reshape(-1, 3), atol=tol, rtol=0)
        assert s["score"] == pytest.approx(float(e["score"]), abs=1e-6)


def test_served_outputs_equal_the_pipeline(served):
    """Item 1: the served maps and persons are the pipeline's (pose predict / pose evaluate)."""
    import mlflow

    from pose.decode.inference import multi_scale_maps
    from pose.decode.persons import graph_projects, resolve_eval_params
    from pose.io import read_image
    from pose.train.checkpoint import load_trained_model

    params, ckpt, model_dir, files = served
    pm = mlflow.pyfunc.load_model(str(model_dir))
    net = load_trained_model(ckpt, "cpu")
    ev = params["evaluate"]
    found = 0
    for f in files[:2]:
        image = read_image(f)
        jpeg = f.read_bytes()
        maps = pm.predict(pd.DataFrame({"image": [jpeg]}), params={"output": "maps"})[0]
        ref = multi_scale_maps(net, image, input_size=ev["input_size"], resize=ev["resize"],
                               test_scales=ev["test_scales"], flip_test=ev["flip_test"],
                               project2image=graph_projects(resolve_eval_params(ev)),
                               convention=None)   # the maps persons come from
        assert maps["heatmaps"].shape == tuple(ref.heatmaps.shape) and maps["tags"].shape == tuple(ref.tags.shape)
        assert np.abs(maps["heatmaps"] - ref.heatmaps.numpy()).max() <= 1e-5
        assert np.abs(maps["tags"] - ref.tags.numpy()).max() <= 1e-5
        np.testing.assert_array_equal(maps["affine"], ref.affine)
        assert maps["stride"] == ref.stride

        expected = _pipeline_persons(net, image, ev)
        everyone = pm.predict(pd.DataFrame({"image": [jpeg]}), params={"min_person_score": 0.0})[0]
        _assert_same_persons(everyone, expected, 1e-4)
        found += len(everyone)
        for person in everyone:   # the box holds the joints that were found
            kp = np.asarray(person["keypoints"])
            x, y, w, h = person["bbox"]
            seen = kp[kp[:, 2] > 0, :2]
            assert w >= 0 and h >= 0
            assert np.all(seen >= [x - 1e-9, y - 1e-9]) and np.all(seen <= [x + w + 1e-9, y + h + 1e-9])
        # default: the stored predict.min_person_score filters
        cut = params["predict"]["min_person_score"]
        default = pm.predict(pd.DataFrame({"image": [jpeg]}))[0]
        _assert_same_persons(default, [p for p in expected if p["confidence"] >= cut], 1e-4)   # calibrated
        # a request's params override the stored settings, as the same keys of params.yaml do
        over = {"input_size": 96, "flip_test": False, "detection_threshold": 0.05}
        got = pm.predict(pd.DataFrame({"image": [jpeg]}), params={**over, "min_person_score": 0.0})[0]
        _assert_same_persons(got, _pipeline_persons(net, image, {**ev, **over}), 1e-4)
    assert found >= 2, "the test model finds no persons: the comparison would be empty"


def test_settings_signature_and_bad_inputs(served):
    import mlflow
    from mlflow.exceptions import MlflowException

    from pose.decode.persons import EVAL_KEYS
    from pose.serving.requests import REQUEST_PARAMS, RequestError, decode_image

    params, _, model_dir, files = served
    info = mlflow.models.Model.load(str(model_dir))
    sig = info.signature
    assert sig.inputs.input_names() == ["image"] and sig.inputs.input_types()[0].name == "binary"
    defaults = {p.name: p.default for p in sig.params.params}
    assert set(defaults) == set(REQUEST_PARAMS)
    assert {k for k, (section, _, _) in REQUEST_PARAMS.items() if section == "evaluate"} == set(EVAL_KEYS)
    for key in ("input_size", "resize", "flip_test", "detection_threshold", "tag_threshold", "max_people"):
        assert defaults[key] == params["evaluate"][key], key
    assert defaults["test_scales"] == [1.0] and defaults["output"] == "persons"
    assert defaults["min_person_score"] == params["predict"]["min_person_score"]
    assert info.metadata["keypoint_names"][:3] == ["nose", "left_eye", "right_eye"]
    assert [15, 13] in info.metadata["skeleton"]
    assert info.metadata["settings"]["serve"]["max_pixels"] == 400_000
    example = json.loads((model_dir / "serving_input_example.json").read_text())
    jpeg = base64.b64decode(example["dataframe_split"]["data"][0][0])
    assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (64, 64, 3)

    pm = mlflow.pyfunc.load_model(str(model_dir))
    big = cv2.imencode(".png", np.zeros((700, 700, 3), np.uint8))[1].tobytes()
    for value, message in ((b"\x00not an image", "not a decodable image"), (b"", "empty"),
                           ("no base64!", "nor the base64 text of one"),
                           (big, "700 x 700 = 490000 pixels is more than serve.max_pixels = 400000"),
                           (np.zeros((8, 8), np.uint8), "must be uint8 (H, W, 3) RGB")):
        with pytest.raises(MlflowException, match="image 0: ") as err:
            pm.predict(pd.DataFrame({"image": [value]}))
        assert message in err.value.message and err.value.get_http_status_code() == 400
    with pytest.raises(MlflowException, match="evaluate.input_size = 100: must be a positive multiple of 32") as err:
        pm.predict(pd.DataFrame({"image": [files[0].read_bytes()]}), params={"input_size": 100})
    assert err.value.get_http_status_code() == 400
    with pytest.raises(RequestError, match="serve.max_pixels"):   # arrays are checked too
        decode_image(np.zeros((10, 11, 3), np.uint8), max_pixels=100)


@pytest.fixture
def network_passes():
    """Every network pass of any pose model in this process (a global forward hook), as input shapes."""
    import torch

    from pose.models.head import PoseNet

    calls: list = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda mod, inp, out: calls.append(tuple(inp[0].shape)) if isinstance(mod, PoseNet) else None)
    try:
        yield calls
    finally:
        handle.remove()


def test_request_limits_are_checked_before_any_compute(served, network_passes):
    """Issue 20 item 1: input size, test scales and the request's network input pixels are bounded
    (params serve.max_input_size / max_test_scales / max_input_pixels): one 400 line naming the key
    and its value, and no network pass runs."""
    import mlflow
    from mlflow.exceptions import MlflowException

    params, _, model_dir, files = served
    sv = params["serve"]
    pm = mlflow.pyfunc.load_model(str(model_dir))
    calls = network_passes
    jpeg = files[0].read_bytes()
    one = pd.DataFrame({"image": [jpeg]})
    assert pm.predict(one, params={"min_person_score": 0.0}) is not None and calls, "the spy sees no network pass"
    calls.clear()
    bad = [(one, {"test_scales": [0.5, 1.0, 1.5, 2.0]},   # cheapest first: the old code computes them all
            f"4 scales is more than serve.max_test_scales = {sv['max_test_scales']}"),
           (one, {"input_size": 768, "test_scales": [1.0, 2.0]},
            f"input_size 768 x test scale 2 = 1536: more than serve.max_input_size = {sv['max_input_size']}"),
           (one, {"input_size": 4096}, f"params input_size = 4096: more than serve.max_input_size = "
                                       f"{sv['max_input_size']}"),
           (pd.DataFrame({"image": [jpeg] * 16}), {"input_size": 512},
            f"16 image(s) x 1 test scale(s) x 2 (flip_test) at input_size 512 = {16 * 512 * 512 * 2} network input "
            f"pixels: more than serve.max_input_pixels = {sv['max_input_pixels']}")]
    for frame, over, message in bad:
        with pytest.raises(MlflowException) as err:
            pm.predict(frame, params=over)
        assert message in err.value.message and "\n" not in err.value.message, err.value.message
        assert err.value.get_http_status_code() == 400
    assert calls == [], "a request over a limit ran the network"
    # the budget counts what the network sees: 2 x 512 x 512 x 2 (flip) fits, without flip 8 images do
    from pose.serving.requests import check_input_pixels, network_input_pixels
    ev = sections(params).evaluate.model_copy(update={"input_size": 512})
    assert network_input_pixels((640, 480), ev) == 512 * 512 * 2
    no_flip = ev.model_copy(update={"flip_test": False, "test_scales": [1.0, 0.5]})
    assert network_input_pixels((640, 480), no_flip) == 512 ** 2 + 256 ** 2
    assert check_input_pixels([(640, 480)] * 8, ev.model_copy(update={"flip_test": False}), sv) == 8 * 512 * 512


def test_the_work_stops_at_the_first_checkpoint_after_the_deadline(served, monkeypatch, network_passes):
    """Issue 20 item 1: a request's work stops when its deadline passes or it is cancelled:
    checked before each image, each test scale's network pass and the decoding; nothing runs after."""
    import threading
    import time as _time

    import mlflow
    from mlflow.exceptions import MlflowException

    from pose.decode.deadline import Deadline, DeadlineExceeded, deadline_scope
    from pose.serving.requests import request_deadline

    params, _, model_dir, files = served
    pm = mlflow.pyfunc.load_model(str(model_dir))
    service = pm.unwrap_python_model().service
    calls = network_passes
    frame = pd.DataFrame({"image": [f.read_bytes() for f in files[:3]]})
    over = {"test_scales": [1.0, 2.0], "min_person_score": 0.0}

    class Counted(Deadline):
        """Expires at its ``n``-th check; records where it was checked."""

        def check(self, where):
            self.seen.append(where)
            if len(self.seen) >= self.n:
                self.cancel("test: expired")
            super().check(where)

    full = Counted.after(60.0, "test")
    full.seen, full.n = [], 10 ** 6
    with deadline_scope(full):
        service.predict(frame, over)
    assert full.seen == ["the start"] + [x for i in range(3)
                                         for x in (f"image {i}", "test scale 1", "test scale 2", "decoding")]
    passes = len(calls)
    assert passes == 6                                   # 3 images x 2 scales (flip in the same batch)
    for n, ran in ((1, 0), (3, 0), (4, 1), (5, 2), (6, 2), (8, 3)):   # stops right at the n-th checkpoint
        calls.clear()
        d = Counted.after(60.0, "test")
        d.seen, d.n = [], n
        with deadline_scope(d), pytest.raises(MlflowException) as err:
            pm.predict(frame, params=over)
        assert len(calls) == ran, (n, d.seen)
        assert err.value.get_http_status_code() == 499 and f"at {d.seen[-1]}: test: expired" in err.value.message
    # a real deadline passes during the request: 504, the rest is not computed
    calls.clear()
    t0 = _time.monotonic()
    with deadline_scope(Deadline.after(0.0, "serve.request_timeout_s = 0")), pytest.raises(DeadlineExceeded,
                                                                                            match="longer than"):
        service.predict(frame, over)
    assert calls == []
    # cancelled from another thread (the server, when the client disconnects) while the model runs
    d = Deadline.after(60.0, "test")
    threading.Timer(0.05, d.cancel, args=("the client disconnected",)).start()
    slow = pd.DataFrame({"image": [files[0].read_bytes()] * 16})
    with deadline_scope(d), pytest.raises(DeadlineExceeded, match="the client disconnected") as err:
        service.predict(slow, {"input_size": 256})
    assert err.value.cancelled and len(calls) < 16
    assert _time.monotonic() - t0 < 30
    # inside `mlflow models serve` (no pose serve guard) the deadline is serve.request_timeout_s from the
    # start of predict, or MLflow's own timeout when shorter
    assert request_deadline(service.serve) is None                  # a plain Python caller: none
    monkeypatch.setenv("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "true")
    monkeypatch.setenv("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", "7")
    d = request_deadline({**service.serve, "request_timeout_s": 60})
    assert d.limit == "serve.request_timeout_s = 7" and 6 < d.remaining() <= 7


def test_short_error_bodies():
    """Issue 20 item 1: error answers are one short line: MLflow's echo of the parsed input is
    dropped, stack traces are not sent, nothing is over 4 KB."""
    from pose.serve import ERROR_BODY_MAX, short_error_body

    echo = json.dumps({"error_code": "INVALID_PARAMETER_VALUE",
                       "message": "Failed to predict data '{'image': ['" + "QUJD" * 800_000 + "']}'. \nError: "
                                  "17 images in one request: more than serve.max_images = 16"}).encode()
    out = short_error_body(400, echo)
    assert json.loads(out) == {"error_code": "INVALID_PARAMETER_VALUE",
                               "message": "17 images in one request: more than serve.max_images = 16"}
    traced = json.dumps({"error_code": "BAD_REQUEST", "message": "Encountered an unexpected error",
                         "stack_trace": "Traceback (most recent call last):\n  File x\nValueError: y"}).encode()
    assert "stack_trace" not in json.loads(short_error_body(400, traced))
    long = short_error_body(400, json.dumps({"message": "\u00e9" * 50_000}).encode())
    assert len(long) <= ERROR_BODY_MAX and "characters cut" in json.loads(long)["message"]
    plain = json.loads(short_error_body(504, b"Request processing time exceeded limit", timeout_s=60))
    assert plain == {"error_code": "DEADLINE_EXCEEDED",
                     "message": "the request took longer than serve.request_timeout_s = 60 s"}


@pytest.fixture(scope="module")
def registered(served, tmp_path_factory):
    """The tiny model registered in a temporary SQLite registry: (params, model URI, tracking URI)."""
    import mlflow
    from mlflow import MlflowClient

    params, _, model_dir, _ = served
    root = tmp_path_factory.mktemp("registry")
    uri = params["registry"]["tracking_uri"]
    client = MlflowClient(uri)
    exp = client.create_experiment("serving", artifact_location=(root / "artifacts").as_uri())
    run = client.create_run(exp)
    client.log_artifacts(run.info.run_id, str(model_dir), "model")
    client.set_terminated(run.info.run_id)
    name = params["registry"]["model_name"]
    client.create_registered_model(name)
    mv = client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    old = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield params, f"models:/{name}/{mv.version}", uri
    finally:
        mlflow.set_tracking_uri(old)


def test_registered_model_answers_jpeg_bytes_and_rgb_arrays(registered, served):
    """Item 2: models:/ -> mlflow.pyfunc.load_model -> persons for encoded bytes and RGB arrays."""
    import mlflow
    import torch

    from pose.serving.model import checkpoint_from_uri, load_registered_model

    params, uri, tracking = registered
    files = served[3]
    pm = mlflow.pyfunc.load_model(uri)
    jpeg = files[0].read_bytes()
    rgb = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1].copy()
    png = cv2.imencode(".png", rgb[:, :, ::-1])[1].tobytes()
    out = pm.predict(pd.DataFrame({"image": [jpeg, rgb, png]}), params={"min_person_score": 0.0})
    assert len(out) == 3 and len(out[0]) >= 1
    assert set(out[0][0]) == {"keypoints", "score", "confidence", "bbox"}
    _assert_same_persons(out[1], out[0], 0.0)            # the same pixels as array or as JPEG / PNG file
    _assert_same_persons(out[2], out[0], 0.0)
    assert pm.predict({"image": [rgb]}, params={"min_person_score": 0.0})[0] == out[1]
    # `pose predict --model models:/...` and `pose compare` load the torch module from the same version
    weights = checkpoint_from_uri(uri, tracking_uri=tracking)
    assert weights.name == "weights.pt"
    net = load_registered_model(uri, tracking_uri=tracking)
    assert isinstance(net, torch.nn.Module) and not net.training


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: bytes | dict, content_type: str = "application/json", timeout: float = 60):
    import requests

    data = json.dumps(body).encode() if isinstance(body, dict) else body
    return requests.post(url, data=data, headers={"Content-Type": content_type}, timeout=timeout)


def _env(tmp: Path) -> dict:
    bindir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {**env, "PATH": bindir + os.pathsep + os.environ["PATH"], "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "NO_COLOR": "1", "HOME": str(tmp)}


#: the request limits of the served test model (params serve): a short deadline, so that a request of
#: 12 images at input 384 (about 1 s each on a busy core) passes it, and a quick health check
TEST_SERVE = {"workers": 2, "request_timeout_s": 3, "worker_healthcheck_s": 5, "concurrent_requests": 1}


@pytest.fixture(scope="module")
def gated(served, generated_coco, tmp_path_factory):
    """A registry whose only version was rejected by the promotion gate (`pose register`'s
    register_run with AP 0.000 < registry.rules min 0.1): (params, params file, folder)."""
    import mlflow

    from pose.registry.mlflow_registry import register_run

    params, ckpt, _, _ = served
    tmp = tmp_path_factory.mktemp("gated")
    params = json.loads(json.dumps(params))
    params["registry"].update(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}", model_name="pose-gate-test")
    params["data"]["raw_dir"] = str(tmp / "raw")
    params["serve"].update(TEST_SERVE)
    metrics = tmp / "eval.json"
    metrics.write_text(json.dumps({"AP": 0.0}))
    keys = ("POSE_DATA_FINGERPRINT", "MLFLOW_TRACKING_URI")   # mlflow.set_tracking_uri also sets the env variable
    old_env, old_uri, old_cwd = {k: os.environ.get(k) for k in keys}, mlflow.get_tracking_uri(), os.getcwd()
    os.chdir(tmp)                                   # mlruns/ of the temporary registry land here
    os.environ["POSE_DATA_FINGERPRINT"] = "test"
    os.environ.pop("MLFLOW_TRACKING_URI", None)     # else it would win over params registry.tracking_uri
    try:
        p = sections(params)
        rec = register_run(*register_sections(p), logged_params=flatten(p.as_dict()), checkpoint=ckpt,
                           eval_metrics=metrics,
                           eval_annotations=generated_coco / "annotations" / "person_keypoints_val2017.json",
                           out=tmp / "registration.json", gate=True)
    finally:
        mlflow.set_tracking_uri(old_uri)
        os.chdir(old_cwd)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert rec["decision"] == "rejected" and not rec["promoted"], rec
    pfile = tmp / "params.yaml"
    pfile.write_text(yaml.safe_dump(params, sort_keys=False))
    return params, pfile, tmp


def _server_tree(pid: int) -> list:
    import psutil

    proc = psutil.Process(pid)
    return [proc, *proc.children(recursive=True)]


def _workers(pid: int) -> list[int]:
    """Worker processes of `pose serve` (uvicorn's spawned children, not multiprocessing's resource tracker)."""
    import psutil

    out = []
    for child in psutil.Process(pid).children():
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                out.append(child.pid)
        except psutil.NoSuchProcess:
            pass
    return sorted(out)


def _cpu_s(pid: int) -> float:
    import psutil

    total = 0.0
    for p in _server_tree(pid):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


@pytest.fixture(scope="module")
def pose_server(gated):
    """`pose serve --model models:/pose-gate-test/latest` (the documented serving command) on a free
    loopback port: (url, process, params, log file)."""
    import requests

    params, pfile, tmp = gated
    port = _free_port()
    logf = tmp / "serve.log"
    log = open(logf, "w")
    cmd = [str(Path(sys.executable).parent / "pose"), "serve", "--model", "models:/pose-gate-test/latest",
           "--params", str(pfile), "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=tmp, env=_env(tmp), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVE_TIMEOUT_S
        while len(_workers(proc.pid)) < 2 or logf.read_text().count("Application startup complete") < 2:
            assert proc.poll() is None, logf.read_text()[-3000:]
            assert time.monotonic() < deadline, "server did not start: " + logf.read_text()[-3000:]
            time.sleep(0.5)
        assert requests.get(f"{url}/ping", timeout=5).status_code == 200
        yield url, proc, params, logf
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
        log.close()


@pytest.mark.slow
def test_pose_says_why_there_is_no_champion(gated, served):
    """Issue 20 item 6: with a registry whose only version the gate rejected, `pose serve`, `pose
    predict` and `pose export` of `models:/<name>@champion` end in one line listing the versions with
    their decision, and the reference that works: models:/<name>/latest (served by `pose_server`)."""
    params, pfile, tmp = gated
    img = served[3][0]
    uri = "models:/pose-gate-test@champion"
    pose_bin = str(Path(sys.executable).parent / "pose")
    for args in (["serve", "--model", uri, "--port", str(_free_port())],
                 ["predict", str(img), "--model", uri, "--out-dir", str(tmp / "pred")],
                 ["export", "--model", uri, "--out", str(tmp / "m.onnx")]):
        run = subprocess.run([pose_bin, *args, "--params", str(pfile)], cwd=tmp, env=_env(tmp), capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 1, (args[0], run.stdout, run.stderr)
        err = run.stderr.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, (args[0], err)
        assert "no version has alias 'champion'" in err and "v1 rejected: no champion yet; fail: AP >= 0.1" in err
        assert "[aliases: challenger]" in err and "models:/pose-gate-test/latest" in err, err
        assert not (tmp / "pred").exists() and not (tmp / "m.onnx").exists()


@pytest.mark.slow
def test_pose_serve_answers_like_pose_predict_with_short_errors(pose_server, served):
    """`pose serve` of the newest version answers a POSTed photo with the persons `pose predict` finds;
    bad requests and requests over a limit (issue 20 item 1) get a 400 before any compute, with one
    short line (no echo of the request, no stack trace, at most 4 KB), and the server keeps serving."""
    url, proc, params, logf = pose_server
    tmp = logf.parent
    f = served[3][0]
    pfile = tmp / "params.yaml"
    pred = subprocess.run([str(Path(sys.executable).parent / "pose"), "predict", str(f), "--model",
                           "models:/pose-gate-test/latest", "--params", str(pfile), "--out-dir", str(tmp / "pred1")],
                          cwd=tmp, env=_env(tmp), capture_output=True, text=True)
    assert pred.returncode == 0, pred.stderr
    results = json.loads((tmp / "pred1" / "results.json").read_text())

    b64 = base64.b64encode(f.read_bytes()).decode()
    good = {"dataframe_split": {"columns": ["image"], "data": [[b64]]}, "params": {"min_person_score": 0.0}}
    resp = _post(f"{url}/invocations", good)
    assert resp.status_code == 200, resp.text[-2000:]
    first = resp.json()["predictions"][0]
    assert len(first) >= 1
    _assert_same_persons(first, results, 5e-4 + 1e-9)   # results.json rounds keypoints to 1e-3
    resp = _post(f"{url}/invocations", {"inputs": {"image": [b64]}})   # the other JSON format, stored min score
    assert resp.status_code == 200, resp.text[-2000:]
    cut = params["predict"]["min_person_score"]
    assert resp.json()["predictions"][0] == [p for p in first if p["confidence"] >= cut]   # the calibrated confidence

    sv = params["serve"]
    big = base64.b64encode(cv2.imencode(".png", np.zeros((700, 700, 3), np.uint8))[1].tobytes()).decode()
    bad = [(b"", "valid JSON"), (b"\x00garbage", "valid JSON"),
           ({"inputs": {"image": [base64.b64encode(b"not an image").decode()]}}, "not a decodable image"),
           ({"inputs": {"image": [big]}}, "more than serve.max_pixels"),
           ({"inputs": {"image": [b64]}, "params": {"input_size": 100}}, "evaluate.input_size = 100"),
           ({"inputs": {"image": [b64] * 17}}, f"17 images in one request: more than serve.max_images = "
                                               f"{sv['max_images']}"),
           ({"inputs": {"image": [b64]}, "params": {"input_size": 4096}},
            f"params input_size = 4096: more than serve.max_input_size = {sv['max_input_size']}"),
           ({"inputs": {"image": [b64]}, "params": {"test_scales": [0.5, 1, 1.5, 2]}},
            f"more than serve.max_test_scales = {sv['max_test_scales']}"),
           ({"inputs": {"image": [b64] * 16}, "params": {"input_size": 512}},
            f"more than serve.max_input_pixels = {sv['max_input_pixels']}")]
    for body, message in bad:
        t0 = time.monotonic()
        resp = _post(f"{url}/invocations", body)
        took = time.monotonic() - t0
        assert resp.status_code == 400, (resp.status_code, resp.text[-500:])
        assert len(resp.content) <= 4096, (len(resp.content), resp.text[:300])
        doc = resp.json()
        assert set(doc) == {"error_code", "message"} and message in doc["message"], doc
        assert "\n" not in doc["message"] and "Failed to predict data" not in doc["message"], doc
        assert took < 10, (message, took)           # refused before any network pass (4096: minutes)
    resp = _post(f"{url}/invocations", good)                       # still serving
    assert resp.status_code == 200 and resp.json()["predictions"][0] == first


@pytest.mark.slow
def test_pose_serve_stops_the_work_at_the_deadline_and_when_the_client_goes(pose_server, served):
    """Issue 20 item 1: a request longer than serve.request_timeout_s gets a short 504 and its work
    stops (the server's CPU falls idle soon after), and so does the work of a client that disconnects."""
    import requests

    url, proc, params, logf = pose_server
    timeout = float(params["serve"]["request_timeout_s"])
    b64 = base64.b64encode(served[3][0].read_bytes()).decode()
    long = {"inputs": {"image": [b64] * 12}, "params": {"input_size": 384}}   # ~12 steps of ~1 s: longer than 3 s

    def idle_after(seconds_settle: float, window: float = 2.0) -> float:
        time.sleep(seconds_settle)
        c0 = _cpu_s(proc.pid)
        time.sleep(window)
        return _cpu_s(proc.pid) - c0

    t0 = time.monotonic()
    resp = _post(f"{url}/invocations", long)
    took = time.monotonic() - t0
    assert resp.status_code == 504, (resp.status_code, resp.text[:500])
    doc = resp.json()
    assert doc["error_code"] == "DEADLINE_EXCEEDED" and f"serve.request_timeout_s = {timeout:g}" in doc["message"], doc
    assert timeout <= took < timeout + 6, took
    assert idle_after(3.0) < 0.4, "the worker goes on computing after the deadline"

    with pytest.raises(requests.exceptions.ReadTimeout):   # the client gives up after 1 s and disconnects
        _post(f"{url}/invocations", long, timeout=1.0)
    assert idle_after(2.5) < 0.4, "the worker goes on computing for a client that has gone"
    assert "client of a running request disconnected" in logf.read_text()
    resp = _post(f"{url}/invocations", {"inputs": {"image": [b64]}})   # and serves the next request
    assert resp.status_code == 200, resp.text[:500]


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_the_next_requests_succeed(pose_server, served):
    """Issue 20 item 2: SIGKILL of a worker while 4 clients send requests: the server goes on, the
    requests sent after the kill succeed, the supervisor starts a replacement that serves."""
    import threading

    import psutil

    url, proc, params, logf = pose_server
    b64 = base64.b64encode(served[3][0].read_bytes()).decode()
    body = {"inputs": {"image": [b64]}, "params": {"input_size": 64}}   # light: well inside the 3 s deadline on a busy
    original = _workers(proc.pid)                                       # machine while one worker serves 4 clients
    assert len(original) == 2
    results: list[tuple[float, float, object]] = []
    stop = threading.Event()

    def client():
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                r = _post(f"{url}/invocations", body, timeout=30)
                outcome: object = r.status_code
            except Exception as exc:  # noqa: BLE001 - connection reset by the killed worker
                outcome = type(exc).__name__
            results.append((t0, time.monotonic(), outcome))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(3.0)
        assert any(o == 200 for _, _, o in results), results
        victim = original[0]
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        deadline = killed_at + float(params["serve"]["worker_healthcheck_s"]) + SERVE_TIMEOUT_S
        while True:                                  # the supervisor starts a replacement
            now = _workers(proc.pid)
            if len(now) == 2 and victim not in now:
                replaced_at = time.monotonic()
                break
            assert proc.poll() is None, "the server ended with its worker: " + logf.read_text()[-2000:]
            assert time.monotonic() < deadline, logf.read_text()[-2000:]
            time.sleep(0.5)
        time.sleep(2.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    after = [(t0, o) for t0, _, o in results if t0 > killed_at + 0.5]
    assert after and all(o == 200 for _, o in after), [o for _, o in after if o != 200]
    lost = [o for t0, t1, o in results if o != 200]
    assert len(lost) <= 4, lost                      # at most the requests the killed worker held
    print(f"kill -9 of worker {victim}: {len(results)} requests, {sum(1 for t0, _, _ in results if t0 > killed_at)} "
          f"sent after the kill, all 200: {len(after)} from 0.5 s after it; failed: {lost}; replacement up "
          f"{replaced_at - killed_at:.1f} s after the kill")
    assert proc.poll() is None
    # the replacement serves: kill the other original worker too, the requests still succeed
    replacement = next(w for w in _workers(proc.pid) if w not in original)
    started = time.monotonic()
    while logf.read_text().count("Application startup complete") < 3:
        assert time.monotonic() - started < SERVE_TIMEOUT_S, logf.read_text()[-2000:]
        time.sleep(0.5)
    os.kill(original[1], signal.SIGKILL)
    time.sleep(0.5)
    for _ in range(3):
        resp = _post(f"{url}/invocations", body)
        assert resp.status_code == 200, resp.text[:500]
    assert psutil.pid_exists(replacement) and proc.poll() is None


@pytest.mark.slow
def test_register_logs_the_pose_model_and_its_onnx_export(served, generated_coco, tmp_path, monkeypatch):
    """`pose register` (register_run): the version's model/ holds the pyfunc model with the
    evaluation's settings and, with serve.log_onnx, model.onnx for the onnxruntime backend."""
    import mlflow
    from mlflow import MlflowClient

    from pose.predict import limit_persons, make_predictor
    from pose.registry.mlflow_registry import register_run

    params, ckpt, _, files = served
    monkeypatch.chdir(tmp_path)                      # mlruns/ of the temporary registry land here
    monkeypatch.setenv("POSE_DATA_FINGERPRINT", "test")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = json.loads(json.dumps(params))
    params["serve"]["log_onnx"] = True
    params["registry"].update(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", model_name="pose-onnx-test")
    params["data"]["raw_dir"] = str(tmp_path / "raw")
    metrics = tmp_path / "eval.json"
    metrics.write_text(json.dumps({"AP": 0.5}))
    ann = generated_coco / "annotations" / "person_keypoints_val2017.json"
    old = mlflow.get_tracking_uri()
    try:
        p = sections(params)
        rec = register_run(*register_sections(p), logged_params=flatten(p.as_dict()), checkpoint=ckpt,
                           eval_metrics=metrics, eval_annotations=ann,
                           out=tmp_path / "registration.json", gate=False)
        uri = f"models:/pose-onnx-test/{rec['version']}"
        client = MlflowClient(params["registry"]["tracking_uri"])
        arts = {f.path for f in client.list_artifacts(rec["run_id"], "model")}
        assert {"model/MLmodel", "model/model.onnx", "model/artifacts"} <= arts
        info = mlflow.models.get_model_info(uri)
        assert info.metadata["settings"]["evaluate"]["input_size"] == params["evaluate"]["input_size"]
        image = cv2.imread(str(files[0]))
        served_persons = mlflow.pyfunc.load_model(uri).predict({"image": [image[:, :, ::-1].copy()]},
                                                                params={"min_person_score": 0.0})[0]
        onnx = make_predictor(uri, backend="onnxruntime", eval_params=None,
                              tracking_uri=params["registry"]["tracking_uri"], device="cpu")
        assert onnx.eval_params.as_dict() == info.metadata["settings"]["evaluate"]
        onnx_persons = limit_persons(onnx(image), int(params["evaluate"]["max_people"]))
        _assert_same_persons(served_persons, onnx_persons, 1e-3)
    finally:
        mlflow.set_tracking_uri(old)
