"""The served pose model (pose.registry.serving): images in, persons out, equal to the pipeline's.

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
from conftest import REPO

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
    from pose.registry.serving import save_pyfunc_model

    tmp = tmp_path_factory.mktemp("serving")
    params = _tiny_params(tmp)
    files = _val_images(coco_like, 3)
    ckpt = _tiny_checkpoint(params, files, tmp / "best.pt")
    model_dir = save_pyfunc_model(ckpt, tmp / "model", params=params)
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
                               project2image=ev["project2image"], convention=None)
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
        _assert_same_persons(default, [p for p in expected if p["score"] >= cut], 1e-4)
        # a request's params override the stored settings, as the same keys of params.yaml do
        over = {"input_size": 96, "flip_test": False, "detection_threshold": 0.05}
        got = pm.predict(pd.DataFrame({"image": [jpeg]}), params={**over, "min_person_score": 0.0})[0]
        _assert_same_persons(got, _pipeline_persons(net, image, {**ev, **over}), 1e-4)
    assert found >= 2, "the test model finds no persons: the comparison would be empty"


def test_settings_signature_and_bad_inputs(served):
    import mlflow
    from mlflow.exceptions import MlflowException

    from pose.decode.persons import EVAL_KEYS
    from pose.registry.serving import REQUEST_PARAMS, RequestError, decode_image

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

    from pose.registry.serving import checkpoint_from_uri, load_registered_model

    params, uri, tracking = registered
    files = served[3]
    pm = mlflow.pyfunc.load_model(uri)
    jpeg = files[0].read_bytes()
    rgb = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1].copy()
    png = cv2.imencode(".png", rgb[:, :, ::-1])[1].tobytes()
    out = pm.predict(pd.DataFrame({"image": [jpeg, rgb, png]}), params={"min_person_score": 0.0})
    assert len(out) == 3 and len(out[0]) >= 1
    assert set(out[0][0]) == {"keypoints", "score", "bbox"}
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


def _post(url: str, body: bytes | dict, content_type: str = "application/json"):
    import requests

    data = json.dumps(body).encode() if isinstance(body, dict) else body
    return requests.post(url, data=data, headers={"Content-Type": content_type}, timeout=60)


@pytest.mark.slow
def test_mlflow_models_serve_answers_like_pose_predict(registered, served, tmp_path):
    """Item 3: `mlflow models serve` of a registered version answers a POSTed photo with the
    persons `pose predict` finds; bad requests get a 400 with a message and no stack trace,
    and the server keeps serving."""
    import requests

    params, uri, tracking = registered
    f = served[3][0]
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "PATH": bindir + os.pathsep + os.environ["PATH"],
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NO_COLOR": "1"}
    port = _free_port()
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local",
                             "-p", str(port), "-h", "127.0.0.1"], cwd=tmp_path, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        # `pose predict` on the same image, same registered version, same settings
        pfile = tmp_path / "params.yaml"
        pfile.write_text(yaml.safe_dump(params, sort_keys=False))
        pred = subprocess.run([str(Path(bindir) / "pose"), "predict", str(f), "--model", uri, "--params", str(pfile),
                               "--out-dir", str(tmp_path / "pred")], cwd=tmp_path, env=env, capture_output=True,
                              text=True)
        assert pred.returncode == 0, pred.stderr
        results = json.loads((tmp_path / "pred" / "results.json").read_text())

        deadline = time.monotonic() + SERVE_TIMEOUT_S
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "server did not start: " + (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.5)

        b64 = base64.b64encode(f.read_bytes()).decode()
        good = {"dataframe_split": {"columns": ["image"], "data": [[b64]]}, "params": {"min_person_score": 0.0}}
        resp = _post(f"{url}/invocations", good)
        assert resp.status_code == 200, resp.text[-2000:]
        persons = resp.json()["predictions"][0]
        assert len(persons) >= 1
        _assert_same_persons(persons, results, 5e-4 + 1e-9)   # results.json rounds keypoints to 1e-3
        first = persons
        # the same image through the other JSON format, with the stored min_person_score
        resp = _post(f"{url}/invocations", {"inputs": {"image": [b64]}})
        assert resp.status_code == 200, resp.text[-2000:]
        cut = params["predict"]["min_person_score"]
        assert resp.json()["predictions"][0] == [p for p in first if p["score"] >= cut]

        big = base64.b64encode(cv2.imencode(".png", np.zeros((700, 700, 3), np.uint8))[1].tobytes()).decode()
        bad = [(b"", "application/json", "valid JSON"),
               (b"\x00garbage", "application/json", "valid JSON"),
               ({"inputs": {"image": [base64.b64encode(b"not an image").decode()]}}, "application/json",
                "not a decodable image"),
               ({"inputs": {"image": [big]}}, "application/json", "more than serve.max_pixels"),
               ({"inputs": {"image": [b64]}, "params": {"input_size": 100}}, "application/json",
                "evaluate.input_size = 100")]
        for body, ctype, message in bad:
            resp = _post(f"{url}/invocations", body, ctype)
            assert 400 <= resp.status_code < 500, (resp.status_code, resp.text[-500:])
            text = resp.text
            assert message in text and "Traceback" not in text and "stack_trace" not in text, text[-1000:]
            assert resp.json()["message"]
        resp = _post(f"{url}/invocations", good)                       # still serving
        assert resp.status_code == 200 and resp.json()["predictions"][0] == first
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


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
        rec = register_run(params, checkpoint=ckpt, eval_metrics=metrics, eval_annotations=ann,
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
        assert onnx.eval_params == info.metadata["settings"]["evaluate"]
        onnx_persons = limit_persons(onnx(image), int(params["evaluate"]["max_people"]))
        _assert_same_persons(served_persons, onnx_persons, 1e-3)
    finally:
        mlflow.set_tracking_uri(old)
