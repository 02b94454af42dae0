"""ONNX export (`pose export`, pose.export) and the onnxruntime backend of `pose predict`
(pose.decode.onnx_backend): the exported graph equals the torch InferenceNet at two input
sizes, the onnxruntime path gives the persons of the torch path, it never imports torch,
and bad inputs get one error line. Images come from `coco_like` (coco-mini photos when
../shared is present, else the generated set); the model is a tiny random HigherHRNet whose
1/2 heatmap head is biased up so that it detects joints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from conftest import REPO
from typer.testing import CliRunner

from pose.cli import app
from pose.datasets.schema import NUM_JOINTS
from pose.models import build_model

RUNNER = CliRunner()


def _tiny_checkpoint(path: Path, convention: str) -> Path:
    model_params = dict(yaml.safe_load((REPO / "params.yaml").read_text())["model"], width=8, stage_blocks=[1, 1, 1],
                        convention=convention)
    torch.manual_seed(0)
    model = build_model(model_params)
    with torch.no_grad():
        head = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels == NUM_JOINTS][-1]
        head.bias.fill_(0.5)
    torch.save({"model": model.state_dict(), "model_params": json.dumps(model_params),
                "train_data": json.dumps({"dataset": "tiny-test", "images": 3, "annotations": "a.json",
                                          "annotations_sha256": "e" * 64})}, path)
    return path


def _params(tmp: Path, **evaluate) -> Path:
    """params.yaml with a small input, flip test and every map projected to the input (the official
    graph, stride 1: the graph-equality tests compare full-resolution maps)."""
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["evaluate"].update(input_size=128, flip_test=True, project2image=True, project_maps=True, test_scales=[1.0],
                         **evaluate)
    p["predict"].update(min_person_score=0.0, min_joints=0, joint_threshold=0.0)
    p["registry"]["tracking_uri"] = f"sqlite:///{tmp / 'unused.db'}"
    out = tmp / "params.yaml"
    out.write_text(yaml.safe_dump(p, sort_keys=False))
    return out


def _images(coco_like: Path, count: int) -> list[Path]:
    return sorted((coco_like / "val2017").glob("*.jpg"))[:count]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """A tiny checkpoint (params' convention) exported once with `pose export`."""
    tmp = tmp_path_factory.mktemp("export")
    conv = yaml.safe_load((REPO / "params.yaml").read_text())["model"]["convention"]
    ck = _tiny_checkpoint(tmp / "ck.pt", conv)
    params = _params(tmp)
    out = tmp / "model.onnx"
    res = RUNNER.invoke(app, ["export", "--model", str(ck), "--format", "onnx", "--out", str(out),
                              "--params", str(params)])
    assert res.exit_code == 0, res.output
    assert f"-> {out}" in res.output
    return {"tmp": tmp, "checkpoint": ck, "params": params, "onnx": out, "convention": conv}


def test_export_writes_a_loadable_file_with_the_decoding_metadata(exported):
    import onnx

    from pose.decode.onnx_backend import METADATA_KEYS, OnnxPoseModel, read_metadata

    proto = onnx.load(str(exported["onnx"]))
    onnx.checker.check_model(proto)
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1] == 3 and all(isinstance(d, str) for d in (dims[0], dims[2], dims[3]))   # dynamic B, H, W
    meta = read_metadata(exported["onnx"])
    assert set(METADATA_KEYS) <= set(meta)
    assert meta["convention"] == exported["convention"] and meta["flip_test"] == "true"
    assert meta["project2image"] == "true" and meta["stride"] == "1" and meta["input_size"] == "128"
    assert len(json.loads(meta["keypoint_names"])) == NUM_JOINTS and json.loads(meta["eval_params"])["nms_kernel"] == 5
    assert json.loads(meta["train_data"])["dataset"] == "tiny-test" and meta["source"] == str(exported["checkpoint"])
    model = OnnxPoseModel(exported["onnx"], device="cpu", threads=1)
    assert (model.num_joints, model.tag_dim, model.flip_test) == (NUM_JOINTS, 1, True)


@pytest.mark.parametrize("resize, input_size", [("letterbox", 128), ("short_side", 192)])
def test_onnxruntime_maps_equal_torch_on_real_images(exported, coco_like, resize, input_size):
    """The exported InferenceNet on onnxruntime = the torch module, to 1e-4, at two input sizes
    (a batch of two images of one size: dynamic batch, height and width)."""
    from pose.decode.inference import inference_net
    from pose.decode.onnx_backend import OnnxPoseModel
    from pose.decode.preprocess import input_batch, input_geometry
    from pose.predict import load_model

    net = inference_net(load_model(str(exported["checkpoint"]), tracking_uri=None, device="cpu"), flip_test=True,
                        project2image=True, convention=None)
    ort_model = OnnxPoseModel(exported["onnx"], device="cpu", threads=1)
    images = [cv2.imread(str(f)) for f in _images(coco_like, 2)]
    geos = [input_geometry(im.shape[1], im.shape[0], resize=resize, input_size=input_size) for im in images]
    shape = (geos[0].height, geos[0].width)
    batch = np.concatenate([input_batch(im, geos[0] if resize == "letterbox" else g)
                            for im, g in zip(images, geos) if resize == "letterbox" or (g.height, g.width) == shape])
    with torch.no_grad():
        hm_t, tags_t = (t.numpy() for t in net(torch.from_numpy(batch)))
    hm_o, tags_o = ort_model.run(batch)
    assert hm_o.shape == hm_t.shape == (len(batch), NUM_JOINTS) + shape
    assert tags_o.shape == tags_t.shape == (len(batch), NUM_JOINTS) + shape + (2,)     # plain + flip tags
    assert hm_t.max() > 0.1                                                           # the maps carry signal
    np.testing.assert_allclose(hm_o, hm_t, atol=1e-4, rtol=0)
    np.testing.assert_allclose(tags_o, tags_t, atol=1e-4, rtol=0)


def test_onnxruntime_persons_equal_the_torch_path(exported, coco_like):
    from pose.predict import make_predictor

    ev = yaml.safe_load(exported["params"].read_text())["evaluate"]
    torch_fn = make_predictor(str(exported["checkpoint"]), backend="torch", eval_params=ev, tracking_uri=None,
                              device="cpu")
    ort_fn = make_predictor(str(exported["onnx"]), backend="onnxruntime", eval_params=ev, tracking_uri=None,
                            device="cpu")
    stored = make_predictor(str(exported["onnx"]), backend="onnxruntime", eval_params=None, tracking_uri=None,
                            device="cpu")
    assert stored.eval_params == ort_fn.eval_params                  # the settings stored at export
    total = 0
    for f in _images(coco_like, 3):
        image = cv2.imread(str(f))
        a, b = torch_fn(image), ort_fn(image)
        assert len(a) == len(b)
        for p, q in zip(a, b):
            np.testing.assert_allclose(q["keypoints"], p["keypoints"], atol=1e-3, rtol=0)
            assert q["score"] == pytest.approx(p["score"], abs=1e-4)
        total += len(a)
    assert total > 0


def test_onnxruntime_settings_that_the_graph_fixes_are_checked(exported):
    from pose.decode.onnx_backend import OnnxPoseModel

    model = OnnxPoseModel(exported["onnx"], device="cpu", threads=1)
    ev = dict(model.eval_params)
    with pytest.raises(ValueError, match="evaluate.flip_test"):
        model.settings({**ev, "flip_test": False})
    with pytest.raises(ValueError, match="evaluate.test_scales"):
        model.settings({**ev, "test_scales": [0.5, 1.0]})
    assert model.settings({**ev, "detection_threshold": 0.3}).detection_threshold == 0.3


def test_pose_predict_backends_agree_and_onnxruntime_never_imports_torch(exported, coco_like, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for f in _images(coco_like, 2):
        (images / f.name).write_bytes(f.read_bytes())
    outs = {}
    for backend, model in (("torch", exported["checkpoint"]), ("onnxruntime", exported["onnx"])):
        res = RUNNER.invoke(app, ["predict", str(images), "--model", str(model), "--backend", backend,
                                  "--out-dir", str(tmp_path / backend), "--params", str(exported["params"])])
        assert res.exit_code == 0, res.output
        outs[backend] = json.loads((tmp_path / backend / "results.json").read_text())
    assert "trained on tiny-test (3 training images" in res.output                 # the record stored at export
    assert len(outs["torch"]) == len(outs["onnxruntime"]) > 0
    for a, b in zip(outs["torch"], outs["onnxruntime"]):
        assert (a["image_id"], a["file_name"]) == (b["image_id"], b["file_name"])
        np.testing.assert_allclose(b["keypoints"], a["keypoints"], atol=1e-3, rtol=0)
    # the same command in a fresh interpreter: torch is never imported
    script = (
        "import sys\n"
        "import pose.decode, pose.decode.group, pose.decode.onnx_backend, pose.decode.persons\n"
        "import pose.decode.preprocess, pose.draw, pose.predict\n"
        "assert 'torch' not in sys.modules\n"
        "from pose.cli import main\n"
        f"sys.argv = ['pose', 'predict', {str(images)!r}, '--model', {str(exported['onnx'])!r}, '--backend',"
        f" 'onnxruntime', '--out-dir', {str(tmp_path / 'sub')!r}, '--params', {str(exported['params'])!r}]\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n"
        "import cv2\n"
        "from pose.predict import make_predictor\n"
        f"fn = make_predictor({str(exported['onnx'])!r}, backend='onnxruntime', eval_params=None,"
        " tracking_uri=None, device='cpu')\n"
        f"fn(cv2.imread({str(sorted(images.iterdir())[0])!r}))\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not loaded, loaded\n"
        "print('no torch')\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "no torch" in proc.stdout, proc.stdout + proc.stderr
    assert json.loads((tmp_path / "sub" / "results.json").read_text()) == outs["onnxruntime"]


def test_bad_backend_format_and_model_get_one_error_line(exported, tmp_path):
    params = str(exported["params"])
    image = str(next((exported["tmp"]).glob("*.pt")))    # any existing file works as SOURCE for these checks
    not_onnx = tmp_path / "fake.onnx"
    not_onnx.write_bytes(b"not a model")
    cases = [
        (["predict", image, "--model", str(exported["onnx"]), "--backend", "tensorrt"], "--backend 'tensorrt'"),
        (["predict", image, "--model", str(exported["checkpoint"]), "--backend", "onnxruntime"], "no such .onnx file"),
        (["predict", image, "--model", str(tmp_path / "missing.onnx"), "--backend", "onnxruntime"],
         "no such .onnx file"),
        (["export", "--model", str(exported["checkpoint"]), "--format", "tflite", "--out", str(tmp_path / "m")],
         "--format 'tflite'"),
        (["export", "--model", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "m.onnx")],
         "no such checkpoint file"),
    ]
    for args, expected in cases:
        res = RUNNER.invoke(app, args + ["--params", params])
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert res.exit_code in (1, 2) and expected in res.output, res.output
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.output, res.output
    src = tmp_path / "images"
    src.mkdir()
    cv2.imwrite(str(src / "1.png"), np.zeros((64, 64, 3), np.uint8))
    res = RUNNER.invoke(app, ["predict", str(src), "--model", str(not_onnx), "--backend", "onnxruntime",
                              "--out-dir", str(tmp_path / "o"), "--params", params])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 1 and lines[-1].startswith("error: ") and "not an ONNX model" in lines[-1], res.output
    assert not (tmp_path / "o").exists()


def test_onnxruntime_backend_loads_the_onnx_file_of_a_registered_model(exported, coco_like, tmp_path):
    """`register` logs model.onnx with the version's artifacts: --backend onnxruntime takes the
    models:/ URI and runs that file."""
    from mlflow import MlflowClient

    from pose.predict import make_predictor

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("export-test", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(exp)
    client.log_artifact(run.info.run_id, str(exported["checkpoint"]), artifact_path="model")
    client.log_artifact(run.info.run_id, str(exported["onnx"]), artifact_path="model")
    client.set_terminated(run.info.run_id)
    client.create_registered_model("pose-onnx-test")
    mv = client.create_model_version("pose-onnx-test", source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    client.set_registered_model_alias("pose-onnx-test", "champion", mv.version)
    image = cv2.imread(str(_images(coco_like, 1)[0]))
    local = make_predictor(str(exported["onnx"]), backend="onnxruntime", eval_params=None, tracking_uri=None,
                           device="cpu")
    remote = make_predictor("models:/pose-onnx-test@champion", backend="onnxruntime", eval_params=None,
                            tracking_uri=uri, device="cpu")
    assert remote.model.path.name == "model.onnx"
    a, b = local(image), remote(image)
    assert len(a) == len(b) > 0 and all(np.array_equal(p["keypoints"], q["keypoints"]) for p, q in zip(a, b))


@pytest.mark.slow
def test_int8_export_is_calibrated_on_training_images_and_runs(exported, generated_coco, coco_like, tmp_path):
    """Item 7: `pose export --int8` quantizes the convolutions (onnxruntime static quantization, QDQ) with
    activation ranges from training images; the file runs on the onnxruntime backend, keeps the decoding
    metadata, and its maps follow the fp32 file's."""
    import onnx

    from pose.decode.onnx_backend import OnnxPoseModel, read_metadata
    from pose.decode.preprocess import input_batch, input_geometry

    p = yaml.safe_load(exported["params"].read_text())
    p["predict"]["int8_calibration_images"] = 4
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(p, sort_keys=False))
    out = tmp_path / "int8.onnx"
    res = RUNNER.invoke(app, ["export", "--model", str(exported["checkpoint"]), "--out", str(out), "--int8",
                              "--calibration-annotations",
                              str(generated_coco / "annotations" / "person_keypoints_train2017.json"),
                              "--calibration-images", str(generated_coco / "train2017"), "--params", str(params)])
    assert res.exit_code == 0, res.output
    assert "int8" in res.output
    meta = read_metadata(out)
    assert "4 training images" in meta["quantization"] and meta["num_joints"] == "17"
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    fp32, int8 = OnnxPoseModel(exported["onnx"], device="cpu"), OnnxPoseModel(out, device="cpu")
    image = cv2.imread(str(_images(coco_like, 1)[0]))
    geo = input_geometry(image.shape[1], image.shape[0], resize=p["evaluate"]["resize"], input_size=128)
    a, b = fp32.run(input_batch(image, geo))[0], int8.run(input_batch(image, geo))[0]
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= 0.05 * max(1.0, float(np.abs(a).max()))
    assert int8.predict(image, int8.settings(None)) is not None
    # missing calibration data: one error line
    res = RUNNER.invoke(app, ["export", "--model", str(exported["checkpoint"]), "--out", str(tmp_path / "x.onnx"),
                              "--int8", "--calibration-annotations", str(tmp_path / "none.json"),
                              "--params", str(params)])
    assert res.exit_code == 1 and res.output.startswith("error: ") and len(res.output.strip().splitlines()) == 1
