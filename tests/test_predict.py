"""`pose predict` on real COCO images: from a checkpoint file and from a model registered in
MLflow (temporary sqlite tracking store), overlays + COCO results JSON; no noise for users
(at most evaluate.max_people persons, scores in [0, 1], only confident persons drawn, the
training data named)."""

from __future__ import annotations

import json
import shutil
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
#: two real validation images with four people each (COCO ids 151938, 183709)
IMAGES = ("000000151938.jpg", "000000183709.jpg")


def _checkpoint(path: Path, seed: int = 0) -> Path:
    model_params = dict(yaml.safe_load((REPO / "params.yaml").read_text())["model"], width=8, stage_blocks=[1, 1, 1])
    from pose.models import init_weights

    torch.manual_seed(seed)
    # Kaiming init: the maps follow the image (the model's own init outputs ~1e-10 everywhere,
    # flat maps whose decoded joints sit in a corner, off a letterboxed landscape image), and the
    # 1/2-resolution heatmap head is biased up so that candidate joints pass the threshold.
    model = init_weights(build_model(model_params), "kaiming")
    with torch.no_grad():
        head = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels == NUM_JOINTS][-1]
        head.bias.fill_(0.5)
    torch.save({"model": model.state_dict(), "model_params": json.dumps(model_params)}, path)
    return path


def _params(tmp: Path, tracking_uri: str = "sqlite:///unused.db", **predict) -> Path:
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["evaluate"].update(input_size=128, flip_test=False)
    p["predict"].update(min_person_score=0.0, min_joints=0, joint_threshold=0.0)   # draw everything
    p["predict"].update(predict)
    p["registry"]["tracking_uri"] = tracking_uri
    out = tmp / "params.yaml"
    out.write_text(yaml.safe_dump(p, sort_keys=False))
    return out


def _names(root: Path) -> tuple[str, str]:
    """:data:`IMAGES` in coco-mini, else the first two validation images of the generated set."""
    if all((root / "val2017" / n).exists() for n in IMAGES):
        return IMAGES
    first = sorted(p.name for p in (root / "val2017").glob("*.jpg"))[:2]
    return first[0], first[1]


def _images(root: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in _names(root):
        shutil.copy(root / "val2017" / name, dst / name)
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
        assert set(r) == {"image_id", "category_id", "keypoints", "score", "confidence", "file_name"}
        assert 0.0 <= r["confidence"] <= 1.0
        assert r["category_id"] == 1 and isinstance(r["score"], float)
        assert len(r["keypoints"]) == 3 * NUM_JOINTS and all(isinstance(v, float) for v in r["keypoints"])
        assert r["image_id"] == int(Path(r["file_name"]).stem)      # COCO ids from COCO file names
    assert {r["file_name"] for r in results} <= {s.name for s in sources}
    return results


def test_predict_from_checkpoint(coco_like, tmp_path):
    ck = _checkpoint(tmp_path / "ck.pt")
    src = coco_like / "val2017" / _names(coco_like)[1]
    res = RUNNER.invoke(app, ["predict", str(src), "--model", str(ck), "--out-dir", str(tmp_path / "out"),
                              "--params", str(_params(tmp_path))])
    assert res.exit_code == 0, res.output
    results = _check_outputs(tmp_path / "out", [src])
    assert {r["image_id"] for r in results} == {int(src.stem)}          # 183709 in coco-mini
    kp = np.asarray(results[0]["keypoints"]).reshape(NUM_JOINTS, 3)
    h, w = cv2.imread(str(src)).shape[:2]
    side = max(h, w)                       # the letterboxed input covers a side x side square of image px ...
    lo = np.array([(w - side) / 2, (h - side) / 2])   # ... centred on the image
    found = kp[:, 2] > 0
    assert found.any() and (kp[found, :2] >= lo - 1).all() and (kp[found, :2] <= lo + side).all()
    # errors are reported, not raised
    bad = RUNNER.invoke(app, ["predict", str(tmp_path / "missing"), "--model", str(ck), "--params",
                              str(_params(tmp_path))])
    assert bad.exit_code == 1 and "no such image" in bad.output


def test_predict_from_registered_model(coco_like, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("predict-test", artifact_location=(tmp_path / "artifacts").as_uri())
    ck = _checkpoint(tmp_path / "best.pt")
    run = client.create_run(exp)
    client.log_artifact(run.info.run_id, str(ck), artifact_path="model")
    client.set_terminated(run.info.run_id)
    client.create_registered_model("pose-test")
    mv = client.create_model_version("pose-test", source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id,
                                     tags={"dataset": "generated", "dataset.version": "abc123"})
    client.set_registered_model_alias("pose-test", "champion", mv.version)

    images = _images(coco_like, tmp_path / "images")
    params = _params(tmp_path, uri)
    previous = mlflow.get_tracking_uri()
    try:
        res = RUNNER.invoke(app, ["predict", str(images), "--model", "models:/pose-test@champion",
                                  "--out-dir", str(tmp_path / "out"), "--params", str(params)])
        assert res.exit_code == 0, res.output
        # the training data, from the version's registry tags
        assert ("model models:/pose-test@champion: trained on generated (registry tags of pose-test v1, "
                "dataset version abc123)") in res.output
        results = _check_outputs(tmp_path / "out", sorted(images.iterdir()))
        # the same model by version number
        res = RUNNER.invoke(app, ["predict", str(images), "--model", "models:/pose-test/1",
                                  "--out-dir", str(tmp_path / "out2"), "--params", str(params)])
        assert res.exit_code == 0, res.output
        assert json.loads((tmp_path / "out2" / "results.json").read_text()) == results
        res = RUNNER.invoke(app, ["predict", str(images), "--model", "models:/pose-test@nobody",
                                  "--out-dir", str(tmp_path / "out3"), "--params", str(params)])
        assert res.exit_code == 1 and "models:/pose-test@nobody: no version has alias 'nobody'" in res.output
    finally:
        mlflow.set_tracking_uri(previous)


def test_image_ids_and_listing(tmp_path):
    from pose.predict import image_ids, list_images

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


def _noisy_checkpoint(path: Path, train_data: dict | None = None) -> Path:
    """A tiny Kaiming-initialised (untrained) model: its heatmaps overshoot 1 and its tags are
    unrelated across joints, so raw decoding yields far more persons than max_people (about
    400 with 30) and scores above 1 (what a poorly trained champion did on real photos, issue
    13). The heatmap heads are scaled by 0.7 so that person scores straddle 1 (about 1.2 on
    the first image, 0.85 on the second)."""
    from pose.models import init_weights

    model_params = dict(yaml.safe_load((REPO / "params.yaml").read_text())["model"], width=8, stage_blocks=[1, 1, 1])
    torch.manual_seed(0)
    model = init_weights(build_model(model_params), "kaiming")
    with torch.no_grad():
        for conv in model.final_layers:
            conv.weight[:NUM_JOINTS] *= 0.7
    state = {"model": model.state_dict(), "model_params": json.dumps(model_params)}
    if train_data is not None:
        state["train_data"] = json.dumps(train_data)
    torch.save(state, path)
    return path


def test_predict_caps_persons_clamps_scores_and_draws_only_confident_ones(coco_like, tmp_path):
    from pose.decode.inference import predict_image
    from pose.io import read_image
    from pose.predict import load_model

    ck = _noisy_checkpoint(tmp_path / "ck.pt", {"dataset": "coco-mini", "images": 80, "annotations":
                                                  "data/validated/train.json", "annotations_sha256": "f" * 64})
    images = _images(coco_like, tmp_path / "images")
    max_people = 30                                                  # the params.yaml default
    p = yaml.safe_load(_params(tmp_path).read_text())
    p["evaluate"].update(max_people=max_people, flip_test=True)
    # the raw decoder output shows the problem this test guards against
    raw = predict_image(load_model(str(ck), tracking_uri=None), read_image(images / _names(coco_like)[0]),
                        eval_params=p["evaluate"])
    # the reference convention's grouping keeps every group, as the official parser (pose.codec.Convention
    # keep_all_groups, issue 21): pose predict keeps the max_people best; joint scores still exceed 1
    assert len(raw) > max_people
    assert max(float(r["keypoints"][:, 2].max()) for r in raw) > 1.0

    def run(name: str, **predict) -> tuple[object, list[dict]]:
        q = {**p, "predict": {**p["predict"], **predict}}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(q, sort_keys=False))
        res = RUNNER.invoke(app, ["predict", str(images), "--model", str(ck), "--out-dir", str(tmp_path / name),
                                  "--params", str(path)])
        assert res.exit_code == 0, res.output
        return res, json.loads((tmp_path / name / "results.json").read_text())

    res, results = run("all")
    assert (f"model {ck}: trained on coco-mini (80 training images, data/validated/train.json sha256 ffffffffffff)"
            in res.output)
    for name in _names(coco_like):
        mine = [r for r in results if r["file_name"] == name]
        assert 1 <= len(mine) <= max_people
        confidences = [r["confidence"] for r in mine]                   # sorted by calibrated confidence
        assert confidences == sorted(confidences, reverse=True)
    assert all(0.0 <= r["score"] <= 1.0 for r in results)
    assert all(0.0 <= v <= 1.0 for r in results for v in r["keypoints"][2::3])
    assert f"{len(results)} person(s) ({len(results)} drawn)" in res.output
    # a person threshold draws exactly the persons whose calibrated confidence is at or above it
    scores = sorted({r["confidence"] for r in results})
    assert len(scores) >= 2
    threshold = scores[len(scores) // 2]
    res, filtered = run("score", min_person_score=threshold)
    assert filtered == results                                       # results.json keeps every person
    expected = sum(r["confidence"] >= threshold for r in results)
    assert 0 < expected < len(results) and f"({expected} drawn)" in res.output
    # min_joints above what anyone has: nothing drawn at all
    most = max(sum(v > 0.5 for v in r["keypoints"][2::3]) for r in results)
    res, filtered = run("joints", min_joints=most + 1, joint_threshold=0.5)
    assert filtered == results and "(0 drawn)" in res.output
    for src in _names(coco_like):
        png = cv2.imread(str(tmp_path / "joints" / f"{Path(src).stem}_pose.png"))
        below = slice(png.shape[0] // 8, None)                       # under the thresholds legend
        assert (png[below] == cv2.imread(str(images / src))[below]).all(), "a person was drawn"
    # bad predict params: one clear line naming the key (params schema or predict_files)
    res = RUNNER.invoke(app, ["predict", str(images), "--model", str(ck), "--out-dir", str(tmp_path / "bad"),
                              "--params", str(_params(tmp_path, min_joints=18))])
    assert res.exit_code != 0 and "predict.min_joints" in res.output and "Traceback" not in res.output


def test_confident_persons_and_limits():
    from pose.predict import check_predict_params, clamp_scores, confident_persons, limit_persons

    def person(score, joint_scores):
        kp = np.zeros((NUM_JOINTS, 3))
        kp[:len(joint_scores), 2] = joint_scores
        return {"keypoints": kp, "score": score}

    people = [person(0.3, [0.9] * 4), person(1.4, [1.7, -0.2] + [0.6] * 6), person(0.5, [0.25] * 10),
              person(0.3, [0.9] * 5)]
    clamped = clamp_scores(people)
    assert [c["score"] for c in clamped] == [0.3, 1.0, 0.5, 0.3]
    assert clamped[1]["keypoints"][:2, 2].tolist() == [1.0, 0.0] and people[1]["keypoints"][0, 2] == 1.7   # copies
    assert [p["score"] for p in limit_persons(people, 2)] == [1.0, 0.5]
    assert [id(p) for p in confident_persons(people, min_person_score=0.3, min_joints=5, joint_threshold=0.5)] == \
        [id(people[1]), id(people[3])]                               # score >= min, joints strictly above
    flat = [{"keypoints": people[3]["keypoints"].reshape(-1).tolist(), "score": 0.3}]   # COCO results entries
    assert confident_persons(flat, min_person_score=0.3, min_joints=5, joint_threshold=0.5) == flat
    good = {"min_person_score": 0.2, "min_joints": 5, "joint_threshold": 0.2}
    assert check_predict_params(good, 17) == good
    for bad, key in (({"min_person_score": 1.5}, "min_person_score"), ({"min_joints": 18}, "min_joints"),
                     ({"min_joints": "many"}, "min_joints"), ({"joint_threshold": -0.1}, "joint_threshold")):
        with pytest.raises(ValueError, match=f"predict.{key}"):
            check_predict_params({"min_person_score": 0.2, "min_joints": 5, "joint_threshold": 0.2, **bad}, 17)
    with pytest.raises(ValueError, match="evaluate.max_people"):
        limit_persons(people, 0)


def test_training_data_of_old_checkpoints_is_reported_unknown(tmp_path):
    from pose.predict import training_data

    ck = _noisy_checkpoint(tmp_path / "old.pt")
    described = training_data(str(ck), tracking_uri=None)
    assert described.startswith("unknown (") and "records no training data" in described
    assert training_data(str(tmp_path / "missing.pt"), tracking_uri=None).startswith("unknown (")


def test_user_facing_joints_and_boxes_lie_inside_the_image(coco_like, tmp_path):
    """Item 4: joints the decoder puts in the letterbox padding are dropped (the not-found [0, 0, 0]) from
    what `pose predict` writes and draws, and each box holds only joints inside the image; the decoder's
    own output (what `pose evaluate`'s results.json keeps) is unclipped and says which joints lie outside."""
    from pose.decode.inference import predict_image
    from pose.io import read_image
    from pose.predict import limit_persons, load_model

    ck = _noisy_checkpoint(tmp_path / "ck.pt")
    images = _images(coco_like, tmp_path / "images")
    params = _params(tmp_path)
    ev = yaml.safe_load(params.read_text())["evaluate"]
    net = load_model(str(ck), tracking_uri=None)
    outside = 0
    for src in sorted(images.iterdir()):
        image = read_image(src)
        h, w = image.shape[:2]
        raw = predict_image(net, image, eval_params=ev)
        for p in raw:
            kp = p["keypoints"]
            off = (kp[:, 2] > 0) & ((kp[:, 0] < 0) | (kp[:, 0] > w) | (kp[:, 1] < 0) | (kp[:, 1] > h))
            assert np.array_equal(~p["inside"], off)
            outside += int(off.sum())
        for p in limit_persons(raw, 30):
            kp = p["keypoints"]
            found = kp[:, 2] > 0
            assert ((kp[found, 0] >= 0) & (kp[found, 0] <= w) & (kp[found, 1] >= 0) & (kp[found, 1] <= h)).all()
            x, y, bw, bh = p["bbox"]
            assert 0 <= x and 0 <= y and x + bw <= w and y + bh <= h
    assert outside > 0, "no joint in the padding: the test image does not exercise the rule"
    res = RUNNER.invoke(app, ["predict", str(images), "--model", str(ck), "--out-dir", str(tmp_path / "out"),
                              "--params", str(params)])
    assert res.exit_code == 0, res.output
    for r in json.loads((tmp_path / "out" / "results.json").read_text()):
        h, w = cv2.imread(str(images / r["file_name"])).shape[:2]
        kp = np.asarray(r["keypoints"]).reshape(-1, 3)
        found = kp[:, 2] > 0
        assert ((kp[found, :2] >= 0) & (kp[found, :2] <= [w, h])).all()


def _duplicate_maps() -> tuple[np.ndarray, np.ndarray]:
    """1/2-resolution maps on which grouping makes two identical persons: joint 0 peaks at A with tag 0,
    joint 1 at B with tag 1.2 (>= tag_threshold 1: a group of its own); joint 1's other tags are 1.2,
    joint 0's 3. The refine step fills the first group's joint 1 with B (0.9 - round(1.2) beats every
    other pixel's 0 - 1) and the second group's joint 0 with A (1 - round(1.2) against 0 - round(1.8)):
    both groups become {A, B}."""
    hm = np.zeros((NUM_JOINTS, 48, 48), np.float32)
    tags = np.full((NUM_JOINTS, 48, 48, 1), 1.2, np.float32)
    tags[0] = 3.0
    hm[0, 20, 10] = 1.0
    tags[0, 20, 10, 0] = 0.0
    hm[1, 30, 25] = 0.9
    return hm, tags


def test_identical_duplicate_persons_are_removed_for_users():
    """Item 4: two fragments of one person refined onto the same peaks are one person for users."""
    from pose.decode.persons import decode_persons, resolve_eval_params
    from pose.predict import limit_persons

    p = yaml.safe_load((REPO / "params.yaml").read_text())
    cfg = resolve_eval_params(dict(p["evaluate"], project2image=False))
    hm, tags = _duplicate_maps()
    persons = decode_persons(hm, tags, np.array([[1.0, 0, 0], [0, 1.0, 0]]), 2, cfg=cfg, convention="reference",
                             image_size=(96, 96))
    assert len(persons) == 2 and np.array_equal(persons[0]["keypoints"], persons[1]["keypoints"])  # the cause
    users = limit_persons(persons, 30)
    assert len(users) == 1 and users[0]["score"] == max(q["score"] for q in persons)


def test_domain_notice_once_for_generated_models_on_photos(coco_like, generated_coco, tmp_path):
    """Item 4: a model trained on generated figures says so once, in one line, when it meets photos
    (pose predict; make_predictor, which serving uses; pose export), and not on generated images."""
    from pose.predict import make_predictor

    if coco_like == generated_coco:
        pytest.skip("needs real photos (../shared/datasets/coco-mini)")
    record = {"dataset": "generated", "domain": "generated", "images": 1024, "annotations": "t.json",
              "annotations_sha256": "a" * 64}
    ck = _noisy_checkpoint(tmp_path / "gen.pt", record)
    photos = _images(coco_like, tmp_path / "photos")
    params = _params(tmp_path)
    res = RUNNER.invoke(app, ["predict", str(photos), "--model", str(ck), "--out-dir", str(tmp_path / "out"),
                              "--params", str(params)])
    assert res.exit_code == 0, res.output
    notes = [ln for ln in res.output.splitlines() if "trained on generated figures" in ln]
    assert len(notes) == 1 and notes[0].startswith("warning: ") and "not photos" in notes[0], res.output
    # generated images: no notice
    gen = tmp_path / "gen_images"
    gen.mkdir()
    for f in sorted((generated_coco / "val2017").glob("*.jpg"))[:3]:
        (gen / f.name).write_bytes(f.read_bytes())
    res = RUNNER.invoke(app, ["predict", str(gen), "--model", str(ck), "--out-dir", str(tmp_path / "out2"),
                              "--params", str(params)])
    assert res.exit_code == 0 and "trained on generated figures" not in res.output, res.output
    # the shared predictor (serving's): its notice callback, once
    seen = []
    ev = yaml.safe_load(params.read_text())["evaluate"]
    predictor = make_predictor(str(ck), backend="torch", eval_params=ev, tracking_uri=None, device="cpu",
                               notice=seen.append)
    assert predictor.domain == "generated"
    for f in sorted(photos.iterdir()):
        predictor(cv2.imread(str(f)))
    assert len(seen) == 1 and "generated figures" in seen[0]
    # pose export says it too, and the ONNX file records the domain
    out = tmp_path / "m.onnx"
    res = RUNNER.invoke(app, ["export", "--model", str(ck), "--out", str(out), "--params", str(params)])
    assert res.exit_code == 0 and sum("trained on generated figures" in ln for ln in res.output.splitlines()) == 1
    from pose.decode.onnx_backend import read_metadata

    meta = read_metadata(out)
    assert meta["domain"] == "generated" and json.loads(meta["train_data"])["domain"] == "generated"
    seen.clear()
    onnx_predictor = make_predictor(str(out), backend="auto", eval_params=None, tracking_uri=None, device="cpu",
                                    notice=seen.append)
    assert onnx_predictor.backend == "onnxruntime"
    onnx_predictor(cv2.imread(str(sorted(photos.iterdir())[0])))
    assert len(seen) == 1


def test_threads_follow_the_free_cores(monkeypatch):
    """Item 7: inference threads = the free cores (cores - load average), at least 1; OMP_NUM_THREADS wins."""
    import os

    from pose.decode.onnx_backend import available_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    for load, expected in ((0.1, 4), (1.2, 3), (3.6, 1), (9.0, 1)):
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        assert available_threads() == expected
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert available_threads() == 2


def test_confidence_decides_what_is_drawn_not_the_score():
    from pose.predict import confident_persons

    kp = np.zeros((NUM_JOINTS, 3))
    kp[:, 2] = 0.9
    tangle = {"keypoints": kp, "score": 0.5, "confidence": 0.05}
    person = {"keypoints": kp, "score": 0.3, "confidence": 0.8}
    assert confident_persons([tangle, person], min_person_score=0.4, min_joints=5, joint_threshold=0.2) == [person]
