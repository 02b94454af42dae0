"""`pose predict` on real COCO images: from a checkpoint file and from a model registered in
MLflow (temporary sqlite tracking store), overlays + COCO results JSON."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import REPO
from pose.cli import app
from pose.datasets.schema import NUM_JOINTS
from pose.models import build_model

RUNNER = CliRunner()
#: two real validation images with four people each (COCO ids 151938, 183709)
IMAGES = ("000000151938.jpg", "000000183709.jpg")


def _checkpoint(path: Path, seed: int = 0) -> Path:
    model_params = dict(yaml.safe_load((REPO / "params.yaml").read_text())["model"], width=8, stage_blocks=[1, 1, 1])
    torch.manual_seed(seed)
    model = build_model(model_params)
    # Bias the 1/2-resolution heatmap head up so a random model detects candidate joints
    # (a plain random init outputs ~1e-10 everywhere, and nothing would be drawn).
    with torch.no_grad():
        head = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels == NUM_JOINTS][-1]
        head.bias.fill_(0.5)
    torch.save({"model": model.state_dict(), "model_params": json.dumps(model_params)}, path)
    return path


def _params(tmp: Path, tracking_uri: str = "sqlite:///unused.db") -> Path:
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["evaluate"].update(input_size=128, flip_test=False, overlay_min_score=0.0)
    p["registry"]["tracking_uri"] = tracking_uri
    out = tmp / "params.yaml"
    out.write_text(yaml.safe_dump(p, sort_keys=False))
    return out


def _images(coco_mini: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in IMAGES:
        shutil.copy(coco_mini / "val2017" / name, dst / name)
    return dst


def _check_outputs(out_dir: Path, sources: list[Path]) -> list[dict]:
    for src in sources:
        png = cv2.imread(str(out_dir / f"{src.stem}_pose.png"), cv2.IMREAD_COLOR)
        img = cv2.imread(str(src), cv2.IMREAD_COLOR)
        assert png is not None and png.shape == img.shape
        assert (png != img).any(), "nothing drawn"
    results = json.loads((out_dir / "results.json").read_text())
    assert isinstance(results, list) and results
    for r in results:
        assert set(r) == {"image_id", "category_id", "keypoints", "score", "file_name"}
        assert r["category_id"] == 1 and isinstance(r["score"], float)
        assert len(r["keypoints"]) == 3 * NUM_JOINTS and all(isinstance(v, float) for v in r["keypoints"])
        assert r["image_id"] == int(Path(r["file_name"]).stem)      # COCO ids from COCO file names
    assert {r["file_name"] for r in results} <= {s.name for s in sources}
    return results


def test_predict_from_checkpoint(coco_mini, tmp_path):
    ck = _checkpoint(tmp_path / "ck.pt")
    src = coco_mini / "val2017" / IMAGES[1]
    res = RUNNER.invoke(app, ["predict", str(src), "--model", str(ck), "--out-dir", str(tmp_path / "out"),
                              "--params", str(_params(tmp_path))])
    assert res.exit_code == 0, res.output
    results = _check_outputs(tmp_path / "out", [src])
    assert {r["image_id"] for r in results} == {183709}
    kp = np.asarray(results[0]["keypoints"]).reshape(NUM_JOINTS, 3)
    side = max(cv2.imread(str(src)).shape[:2])     # the letterboxed input covers [0, side)^2 of the image
    found = kp[:, 2] > 0
    assert found.any() and (kp[found, :2] >= -1).all() and (kp[found, :2] <= side).all()
    # errors are reported, not raised
    bad = RUNNER.invoke(app, ["predict", str(tmp_path / "missing"), "--model", str(ck), "--params",
                              str(_params(tmp_path))])
    assert bad.exit_code == 1 and "no such image" in bad.output


def test_predict_from_registered_model(coco_mini, tmp_path, monkeypatch, caplog):
    import mlflow
    from mlflow import MlflowClient

    import pose.decode.predict as predict_mod

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("predict-test", artifact_location=(tmp_path / "artifacts").as_uri())
    ck = _checkpoint(tmp_path / "best.pt")
    run = client.create_run(exp)
    client.log_artifact(run.info.run_id, str(ck), artifact_path="model")
    client.set_terminated(run.info.run_id)
    client.create_registered_model("pose-test")
    mv = client.create_model_version("pose-test", source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    client.set_registered_model_alias("pose-test", "champion", mv.version)

    images = _images(coco_mini, tmp_path / "images")
    params = _params(tmp_path, uri)
    previous = mlflow.get_tracking_uri()
    try:
        res = RUNNER.invoke(app, ["predict", str(images), "--model", "models:/pose-test@champion",
                                  "--out-dir", str(tmp_path / "out"), "--params", str(params)])
        assert res.exit_code == 0, res.output
        assert "falling back" not in caplog.text                   # loaded by the registry's own loader
        results = _check_outputs(tmp_path / "out", sorted(images.iterdir()))
        # the same model without the registry's loader: the artifact download fallback
        monkeypatch.setattr(predict_mod, "_registry_loader", lambda: None)
        res = RUNNER.invoke(app, ["predict", str(images), "--model", "models:/pose-test/1",
                                  "--out-dir", str(tmp_path / "out2"), "--params", str(params)])
        assert res.exit_code == 0, res.output
        assert json.loads((tmp_path / "out2" / "results.json").read_text()) == results
        res = RUNNER.invoke(app, ["predict", str(images), "--model", "models:/pose-test@nobody",
                                  "--out-dir", str(tmp_path / "out3"), "--params", str(params)])
        assert res.exit_code == 1 and "cannot load models:/pose-test@nobody" in res.output
    finally:
        mlflow.set_tracking_uri(previous)


def test_image_ids_and_listing(tmp_path):
    from pose.decode.predict import image_ids, list_images

    for name in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    files = list_images(tmp_path)
    assert [f.name for f in files] == ["a.jpg", "b.png"]
    assert image_ids(files) == [1, 2]
    assert image_ids([Path("000000000785.jpg"), Path("12.png")]) == [785, 12]
    assert image_ids([Path("7.jpg"), Path("007.png")]) == [1, 2]           # duplicate numbers
    with pytest.raises(FileNotFoundError):
        list_images(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError):
        list_images(tmp_path / "empty")
