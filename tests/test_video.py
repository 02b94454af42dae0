"""`pose predict VIDEO` (pose.video): per-frame JSON Lines equal to predicting the decoded frames
directly, an overlay video with the same frames and size, frame stride / max frames, and one
clear error line (nothing left behind) for a corrupt video. Frames come from `coco_like`
(coco-mini photos when ../shared is present, else the generated set)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, sections
from typer.testing import CliRunner

from pose.cli import app
from pose.datasets.schema import NUM_JOINTS
from pose.models import build_model

RUNNER = CliRunner()
SIZE = (320, 240)          # frame width, height (px)
FPS = 5.0


def _write_video(coco: Path, path: Path, frames: int, fourcc: str) -> list[np.ndarray]:
    """``frames`` validation images of a COCO-layout set, resized to SIZE, as a video; returns
    the frames written (BGR uint8)."""
    images = sorted((coco / "val2017").glob("*.jpg"))
    assert len(images) >= 2
    out = []
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), FPS, SIZE)
    assert writer.isOpened()
    for i in range(frames):
        frame = cv2.resize(cv2.imread(str(images[i % len(images)]), cv2.IMREAD_COLOR), SIZE)
        writer.write(frame)
        out.append(frame)
    writer.release()
    return out


def _decoded_frames(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def _checkpoint(path: Path) -> Path:
    """A tiny Kaiming-initialised (untrained) model: its maps depend on the image, so it finds
    persons that differ from frame to frame (as ``_noisy_checkpoint`` in tests/test_predict.py)."""
    from pose.models import init_weights

    model_params = dict(yaml.safe_load((REPO / "params.yaml").read_text())["model"], width=8, stage_blocks=[1, 1, 1])
    torch.manual_seed(0)
    model = init_weights(build_model(model_params), "kaiming")
    torch.save({"model": model.state_dict(), "model_params": json.dumps(model_params)}, path)
    return path


def _params(tmp: Path, **predict) -> Path:
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    p["evaluate"].update(input_size=128, flip_test=False)
    p["predict"].update(min_person_score=0.0, min_joints=0, joint_threshold=0.0)   # draw everything
    p["predict"].update(predict)
    p["registry"]["tracking_uri"] = f"sqlite:///{tmp / 'unused.db'}"
    out = tmp / "params.yaml"
    out.write_text(yaml.safe_dump(p, sort_keys=False))
    return out


def _direct_predictor(checkpoint: Path, params_file: Path):
    """What `pose predict` applies to one image, called directly."""
    from pose.decode.inference import predict_image
    from pose.predict import limit_persons, load_model

    ev = yaml.safe_load(params_file.read_text())["evaluate"]
    net = load_model(str(checkpoint), tracking_uri=None)
    return lambda image: limit_persons(predict_image(net, image, eval_params=ev), int(ev["max_people"]))


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_predict_video_cli_matches_frames_predicted_directly(coco_like, tmp_path):
    video = tmp_path / "clip.mp4"
    _write_video(coco_like, video, 6, "mp4v")
    ck = _checkpoint(tmp_path / "ck.pt")
    params = _params(tmp_path)
    out = tmp_path / "out"
    res = RUNNER.invoke(app, ["predict", str(video), "--model", str(ck), "--out-dir", str(out),
                              "--params", str(params)])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["clip.jsonl", "clip_overlay.mp4"]   # no temp files left

    records = _read_jsonl(out / "clip.jsonl")
    frames = _decoded_frames(video)           # mp4v is lossy: compare against the decoded pixels
    assert len(frames) == 6 and [r["frame"] for r in records] == list(range(6))
    assert [r["t_s"] for r in records] == pytest.approx([i / FPS for i in range(6)])
    predict = _direct_predictor(ck, params)
    found = 0
    for record, frame in zip(records, frames):
        expected = predict(frame)
        assert len(record["persons"]) == len(expected)
        for got, want in zip(record["persons"], expected):
            assert np.asarray(got["keypoints"]).shape == (NUM_JOINTS, 3)
            np.testing.assert_allclose(got["keypoints"], want["keypoints"], rtol=0, atol=1e-6)
            assert got["score"] == pytest.approx(want["score"], abs=1e-9)
        found += len(expected)
    assert found > 0, "the model found no person: the comparison above checked nothing"
    firsts = {json.dumps(r["persons"][0]["keypoints"]) for r in records if r["persons"]}
    assert len(firsts) > 1, "every frame gave the same persons: the comparison does not depend on the frames"
    assert f"6 frame(s) predicted (6 of 6 declared frames decoded), {found} person(s)" in res.output

    overlay = _decoded_frames(out / "clip_overlay.mp4")
    cap = cv2.VideoCapture(str(out / "clip_overlay.mp4"))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(FPS)
    cap.release()
    assert len(overlay) == 6 and all(f.shape == (SIZE[1], SIZE[0], 3) for f in overlay)
    # everything is drawn (thresholds 0): the overlay differs from the input where skeletons are
    assert any(np.abs(o.astype(int) - f.astype(int)).max() > 60 for o, f in zip(overlay, frames))


@pytest.mark.slow
def test_predict_video_onnxruntime_backend_matches_torch(coco_like, tmp_path):
    video = tmp_path / "clip.avi"
    _write_video(coco_like, video, 3, "MJPG")
    ck = _checkpoint(tmp_path / "ck.pt")
    params = _params(tmp_path)
    onnx = tmp_path / "model.onnx"
    res = RUNNER.invoke(app, ["export", "--model", str(ck), "--out", str(onnx), "--params", str(params)])
    assert res.exit_code == 0, res.output
    runs = {}
    for backend, model in (("torch", ck), ("onnxruntime", onnx)):
        out = tmp_path / backend
        res = RUNNER.invoke(app, ["predict", str(video), "--model", str(model), "--backend", backend,
                                  "--out-dir", str(out), "--params", str(params)])
        assert res.exit_code == 0, res.output
        assert sorted(p.name for p in out.iterdir()) == ["clip.jsonl", "clip_overlay.avi"]
        runs[backend] = _read_jsonl(out / "clip.jsonl")
        assert len(_decoded_frames(out / "clip_overlay.avi")) == 3
    assert [r["frame"] for r in runs["onnxruntime"]] == [r["frame"] for r in runs["torch"]] == [0, 1, 2]
    for ort_rec, torch_rec in zip(runs["onnxruntime"], runs["torch"]):
        assert len(ort_rec["persons"]) == len(torch_rec["persons"]) > 0
        for a, b in zip(ort_rec["persons"], torch_rec["persons"]):
            np.testing.assert_allclose(a["keypoints"], b["keypoints"], rtol=0, atol=1e-4)


def test_corrupt_video_is_one_error_line_and_leaves_nothing(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes())
    ck = _checkpoint(tmp_path / "ck.pt")
    out = tmp_path / "out"
    res = RUNNER.invoke(app, ["predict", str(bad), "--model", str(ck), "--out-dir", str(out),
                              "--params", str(_params(tmp_path))])
    assert res.exit_code != 0
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(bad) in errors[0] and "cannot read the video" in errors[0], res.output
    assert "Traceback" not in res.output
    assert not out.exists()
    # an existing output folder is kept, but nothing is written into it
    out.mkdir()
    res = RUNNER.invoke(app, ["predict", str(bad), "--model", str(ck), "--out-dir", str(out),
                              "--params", str(_params(tmp_path))])
    assert res.exit_code != 0 and list(out.iterdir()) == []


def _fake_person(frame: np.ndarray, score: float) -> dict:
    """One person whose joints lie on a diagonal of the frame, scored ``score``."""
    h, w = frame.shape[:2]
    t = np.linspace(0.1, 0.9, NUM_JOINTS)
    kp = np.stack([t * w, t * h, np.full(NUM_JOINTS, 0.9)], axis=1)
    return {"keypoints": kp, "score": np.float32(score), "bbox": np.array([1.0, 2.0, 3.0, 4.0])}


def test_predict_video_stride_max_frames_filters_and_avi(coco_like, tmp_path):
    from pose.video import predict_video, video_outputs

    video = tmp_path / "walk.avi"
    frames = _write_video(coco_like, video, 7, "MJPG")
    seen = []

    def predict_fn(frame):
        seen.append(frame)
        return [_fake_person(frame, 0.9), _fake_person(frame[::-1], 0.1)]   # a confident and a weak person

    pp = sections(yaml.safe_load((REPO / "params.yaml").read_text())).predict.model_copy(
        update={"min_person_score": 0.5, "min_joints": 5, "joint_threshold": 0.2, "video_frame_stride": 2})
    jsonl, overlay = video_outputs(video, tmp_path / "out")
    assert (jsonl.name, overlay.name) == ("walk.jsonl", "walk_overlay.avi")
    summary = predict_video(predict_fn, video, out_jsonl=jsonl, out_video=overlay, predict_params=pp,
                            max_frames=3, progress=False)
    records = _read_jsonl(jsonl)
    assert [r["frame"] for r in records] == [0, 2, 4] and len(seen) == 3     # every 2nd frame, at most 3
    assert [r["t_s"] for r in records] == pytest.approx([0.0, 0.4, 0.8])
    assert summary["frames"] == 3 and summary["persons"] == 6 and summary["drawn"] == 3
    first = records[0]["persons"]
    assert [p["score"] for p in first] == pytest.approx([0.9, 0.1])        # every person is written
    assert first[0]["bbox"] == [1.0, 2.0, 3.0, 4.0]
    np.testing.assert_allclose(first[0]["keypoints"], _fake_person(frames[0], 0.9)["keypoints"], atol=1e-9)
    drawn = _decoded_frames(overlay)
    cap = cv2.VideoCapture(str(overlay))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(FPS / 2)              # overlay at fps / stride
    cap.release()
    assert len(drawn) == 3 and drawn[0].shape == frames[0].shape
    # only the confident person is drawn: pixels change on its diagonal, not on the weak one's
    h, w = frames[0].shape[:2]
    diff = np.abs(drawn[1].astype(int) - seen[1].astype(int)).max(axis=2)
    strong = [(int(t * h), int(t * w)) for t in np.linspace(0.15, 0.85, 9)]
    weak = [(h - 1 - y, x) for y, x in strong]
    assert min(diff[y, x] for y, x in strong) > 40
    assert max(diff[y, x] for y, x in weak if abs(y - x * h / w) > 20) < 40

    with pytest.raises(ValueError, match="video_fourcc.avi"):
        predict_video(predict_fn, video, out_jsonl=tmp_path / "x.jsonl", out_video=tmp_path / "x.avi",
                      predict_params=pp.model_copy(update={"video_fourcc": pp.video_fourcc.model_copy(
                          update={"mp4": "mp4v", "avi": "MJP"})}), max_frames=None,
                      progress=False)
    assert not (tmp_path / "x.jsonl").exists() and not (tmp_path / "x.avi").exists()


def test_failure_mid_video_leaves_nothing(coco_like, tmp_path):
    from pose.video import predict_video

    video = tmp_path / "clip.mp4"
    _write_video(coco_like, video, 4, "mp4v")
    calls = []

    def predict_fn(frame):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("model failed")
        return []

    pp = sections(yaml.safe_load((REPO / "params.yaml").read_text())).predict
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="model failed"):
        predict_video(predict_fn, video, out_jsonl=out / "clip.jsonl", out_video=out / "clip_overlay.mp4",
                      predict_params=pp, max_frames=None, progress=False)
    assert list(out.iterdir()) == []                                       # no outputs, no temp files


def test_video_params_are_checked_by_the_schema():
    from pose.params import ParamsError, validate_params

    p = yaml.safe_load((REPO / "params.yaml").read_text())
    validate_params(p, source="params.yaml")
    for key, value, what in (("video_fourcc", {"mp4": "mp4", "avi": "MJPG"}, "video_fourcc.mp4"),
                             ("video_fourcc", {"mp4": "mp4v"}, "video_fourcc.avi"),
                             ("video_frame_stride", 0, "video_frame_stride")):
        bad = {**p, "predict": {**p["predict"], key: value}}
        with pytest.raises(ParamsError, match=f"predict.{what}"):
            validate_params(bad, source="params.yaml")


def _truncated_avi(coco: Path, path: Path, frames: int, keep: int) -> None:
    """A real MJPG AVI of ``frames`` frames cut after the bytes of about ``keep`` of them: its header
    still declares ``frames`` frames, but only the first ones decode (a partly downloaded file)."""
    full = path.with_name("full.avi")
    _write_video(coco, full, frames, "MJPG")
    data = full.read_bytes()
    cap = cv2.VideoCapture(str(full))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == frames
    cap.release()
    # cut inside frame `keep`: the (keep + 1)-th '00dc' chunk of the movi list (before the idx1 index)
    movi, idx1 = data.index(b"movi"), data.rindex(b"idx1")
    starts = [i for i in range(movi, idx1) if data[i:i + 4] == b"00dc"]
    assert len(starts) == frames
    path.write_bytes(data[:starts[keep] + 20])
    full.unlink()


def test_truncated_video_fails_with_frame_counts_unless_partial_is_allowed(coco_like, tmp_path):
    """Item 5: a partly decodable video (14 declared frames, 3 decodable) is not a silent success."""
    from pose.video import count_decodable_frames, open_video

    video = tmp_path / "cut.avi"
    _truncated_avi(coco_like, video, 14, 3)
    cap, info = open_video(video)
    cap.release()
    assert info.frames == 14 and count_decodable_frames(video) == 3
    ck = _checkpoint(tmp_path / "ck.pt")
    out = tmp_path / "out"
    res = RUNNER.invoke(app, ["predict", str(video), "--model", str(ck), "--out-dir", str(out),
                              "--params", str(_params(tmp_path))])
    assert res.exit_code == 1, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "only 3 of the 14 frames" in errors[0] and "--allow-partial" in errors[0], res.output
    assert "Traceback" not in res.output and not out.exists()
    res = RUNNER.invoke(app, ["predict", str(video), "--model", str(ck), "--out-dir", str(out),
                              "--params", str(_params(tmp_path)), "--allow-partial"])
    assert res.exit_code == 0, res.output
    assert "3 of 14 declared frames decoded" in res.output
    assert [r["frame"] for r in _read_jsonl(out / "cut.jsonl")] == [0, 1, 2]
    assert len(_decoded_frames(out / "cut_overlay.avi")) == 3
    # a whole video is not partial
    whole = tmp_path / "whole.avi"
    _write_video(coco_like, whole, 4, "MJPG")
    res = RUNNER.invoke(app, ["predict", str(whole), "--model", str(ck), "--out-dir", str(tmp_path / "o2"),
                              "--params", str(_params(tmp_path))])
    assert res.exit_code == 0 and "4 of 4 declared frames decoded" in res.output, res.output


def test_overlay_draws_what_the_thresholds_say_and_names_them(coco_like, tmp_path):
    """Item 5: --min-score 0 --min-joints 0 --joint-threshold 0 draws every joint of every person the
    JSON Lines hold; the legend box in the top-left corner names the thresholds."""
    from pose.draw import thresholds_legend

    video = tmp_path / "clip.mp4"
    frames = _write_video(coco_like, video, 2, "mp4v")
    ck = _checkpoint(tmp_path / "ck.pt")
    params = _params(tmp_path, joint_threshold=1.0)       # params hide every joint (scores are clamped to <= 1) ...
    base = ["predict", str(video), "--model", str(ck), "--params", str(params), "--min-score", "0",
            "--min-joints", "0"]
    assert RUNNER.invoke(app, base + ["--out-dir", str(tmp_path / "hidden")]).exit_code == 0
    # ... the flag shows them
    res = RUNNER.invoke(app, base + ["--joint-threshold", "0", "--out-dir", str(tmp_path / "shown")])
    assert res.exit_code == 0, res.output
    records = _read_jsonl(tmp_path / "shown" / "clip.jsonl")
    assert sum(len(r["persons"]) for r in records) > 0
    hidden = _decoded_frames(tmp_path / "hidden" / "clip_overlay.mp4")
    shown = _decoded_frames(tmp_path / "shown" / "clip_overlay.mp4")
    h, w = frames[0].shape[:2]
    below = slice(h // 5, h)                               # below the legend box
    drawn = np.abs(shown[0][below].astype(int) - hidden[0][below].astype(int)).max(axis=2)
    assert (drawn > 80).sum() > 200, "the flag did not show the joints the params hide"
    # the legend: a darkened box top left with text in it
    box = hidden[0][:h // 10, : w // 3].astype(int)
    assert box.mean() < frames[0][:h // 10, : w // 3].astype(int).mean() and box.max() > 200
    lines = thresholds_legend(min_person_score=0.0, min_joints=0, joint_threshold=0.99, drawn=3, total=30)
    assert "drawn 3 of 30" in lines[0] and "0.99" in lines[1] and "confidence >= 0.00" in lines[0]
