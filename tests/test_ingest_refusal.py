"""Bad batches are refused before anything is touched (issue 19 item 5): a truncated real JPEG and a
malformed JSON fail `pose ingest`, the fetch stage under `dvc repro` and the retrain flow at once,
with one line naming the file and record, no retry, and the dataset folder byte-identical."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from repo_setup import BIN, REPO, make_repo_copy, pipeline_env, tiny_generated_params

#: bytes kept of the truncated JPEG (the issue's batch held 5,000 of 104,152)
TRUNCATED_BYTES = 5000


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def _coco_batch(dst: Path, coco_mini: Path, *, defect: str | None) -> tuple[Path, list[dict]]:
    """A batch of two real coco-mini val images with persons and their annotations (one JSON at the
    top, images in images/). ``defect``: ``"truncated"`` keeps the first 5,000 bytes of the second
    image; ``"malformed"`` cuts the JSON off in the middle of a record."""
    doc = json.loads((coco_mini / "annotations" / "person_keypoints_val2017.json").read_text())
    with_people = {a["image_id"] for a in doc["annotations"] if a.get("num_keypoints", 0) > 0}
    images = sorted((i for i in doc["images"] if i["id"] in with_people), key=lambda i: i["id"])[:2]
    ids = {i["id"] for i in images}
    batch = {"images": images, "annotations": [a for a in doc["annotations"] if a["image_id"] in ids],
             "categories": doc["categories"]}
    (dst / "images").mkdir(parents=True)
    for img in images:
        shutil.copyfile(coco_mini / "val2017" / img["file_name"], dst / "images" / img["file_name"])
    if defect == "truncated":
        victim = dst / "images" / images[1]["file_name"]
        data = victim.read_bytes()
        assert len(data) > 5 * TRUNCATED_BYTES
        victim.write_bytes(data[:TRUNCATED_BYTES])
    text = json.dumps(batch, indent=1)
    if defect == "malformed":
        text = text[: len(text) // 2]
    (dst / "batch.json").write_text(text)
    return dst, images


def _dataset(out: Path) -> Path:
    """A fetched-like dataset folder (COCO layout + MANIFEST.sha256) of tiny generated images."""
    from pose.datasets.generated import generate_dataset
    from pose.datasets.manifest import write_manifest

    generate_dataset(out, seed=3, num_train=4, num_val=2, width=96, height=80, max_people=2,
                     min_person_height=12, max_person_height=60)
    write_manifest(out)
    return out


def _pose_ingest(batch: Path, into: Path, cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    proc = subprocess.run([str(BIN / "pose"), "ingest", "--batch", str(batch), "--into", str(into),
                           "--params", str(REPO / "params.yaml")], cwd=cwd, env=pipeline_env(),
                          capture_output=True, text=True, timeout=300)
    return proc, time.perf_counter() - t0


# ----------------------------------------------------------------------------- pose ingest

def test_pose_ingest_refuses_a_truncated_jpeg_and_changes_nothing(tmp_path, coco_mini):
    """The issue's case: a real coco-mini JPEG cut to 5,000 bytes was accepted with its annotations.
    Now: exit 1, one line naming the file and the image record, nothing written; the intact batch
    then merges (the refusal is about the bytes, not the batch)."""
    into = _dataset(tmp_path / "raw" / "ds")
    before = _snapshot(into)
    batch, images = _coco_batch(tmp_path / "bad", coco_mini, defect="truncated")
    proc, elapsed = _pose_ingest(batch, into, tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = _lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: batch "), proc.stderr
    bad = images[1]
    assert f"'{bad['file_name']}' (id {bad['id']}" in lines[0] and "does not decode" in lines[0], lines[0]
    assert "truncated" in lines[0] and "Traceback" not in proc.stderr and not proc.stdout.strip()
    assert elapsed < 60, f"no retry may delay a data error ({elapsed:.0f} s)"
    assert _snapshot(into) == before, "the dataset folder changed"
    assert sorted(p.name for p in into.parent.iterdir()) == ["ds"], "temporary folders left behind"

    good, _ = _coco_batch(tmp_path / "good", coco_mini, defect=None)
    ok, _ = _pose_ingest(good, into, tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["added_images"] == 2


def test_pose_ingest_refuses_malformed_json_at_once(tmp_path, coco_mini):
    into = _dataset(tmp_path / "raw" / "ds")
    before = _snapshot(into)
    batch, _ = _coco_batch(tmp_path / "bad", coco_mini, defect="malformed")
    proc, elapsed = _pose_ingest(batch, into, tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = _lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: batch "), proc.stderr
    assert f"{batch / 'batch.json'} is not valid JSON" in lines[0] and " at line " in lines[0], lines[0]
    assert elapsed < 60 and "Traceback" not in proc.stderr
    assert _snapshot(into) == before
    assert sorted(p.name for p in into.parent.iterdir()) == ["ds"]


def test_a_network_failure_is_exit_75_and_a_data_error_is_not(tmp_path):
    """The exit status the flow's fetch retry keys on: 75 (EX_TEMPFAIL) when the only source is
    unreachable (connection refused, after the download retries), 1 for a dataset that is wrong."""
    import socket

    from flows.retrain import StageError, retry_network_failures_only
    from pose.datasets.sources import NETWORK_EXIT_CODE

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens once the socket is closed
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["catalogue"]["remote"] = {"kind": "coco", "schema": "coco17", "mirror": "",
                                     "sources": [f"http://127.0.0.1:{closed}/coco"]}
    params["data"]["dataset"] = "remote"
    pf = tmp_path / "params.yaml"
    pf.write_text(yaml.safe_dump(params, sort_keys=False))
    proc = subprocess.run([str(BIN / "pose"), "fetch", "--params", str(pf), "--out", str(tmp_path / "raw" / "remote")],
                          cwd=tmp_path, env=pipeline_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == NETWORK_EXIT_CODE == 75, proc.stderr
    assert "Connection refused" in proc.stderr and not (tmp_path / "raw" / "remote").exists()

    def state(exc):
        from prefect.states import Failed

        return Failed(data=exc)

    net = StageError("x", stage="fetch", exit_code=1, command_exit_code=75)
    data = StageError("x", stage="fetch", exit_code=1, command_exit_code=1)
    assert retry_network_failures_only(None, None, state(net)) is True
    assert retry_network_failures_only(None, None, state(data)) is False
    assert retry_network_failures_only(None, None, state(RuntimeError("bug"))) is False


# ----------------------------------------------------------------------------- the fetch stage

def _tiny_repo(tmp_path_factory) -> Path:
    repo = make_repo_copy(tmp_path_factory.mktemp("repo"), tiny_generated_params(floor=0.0))
    out = subprocess.run([str(BIN / "dvc"), "repro", "fetch"], cwd=repo, env=pipeline_env(), capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    return repo


def _list_batch(repo: Path, batch: Path) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["catalogue"]["generated"]["ingest"] = [str(batch)]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _state(repo: Path) -> dict:
    """What a refused batch must leave alone: the fetched folder (with its manifest) and the fetch
    stage's dvc.lock entry (check_params re-runs on the edited params.yaml and updates its own)."""
    return {"raw": _snapshot(repo / "data" / "raw"),
            "lock": yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["fetch"]}


@pytest.mark.slow
@pytest.mark.parametrize("defect", ["truncated", "malformed"])
def test_dvc_repro_fetch_refuses_a_bad_listed_batch_and_keeps_the_fetched_data(tmp_path_factory, coco_mini, defect):
    """`catalogue.generated.ingest` lists a bad batch, `dvc repro`: the fetch stage fails at once with
    one `error:` line naming the file (and record), and data/raw (manifest included) and dvc.lock
    are byte-identical: DVC did not delete the stage's output first (`persist: true`) and `pose
    fetch` checked every batch before writing anything."""
    repo = _tiny_repo(tmp_path_factory)
    before = _state(repo)
    batch, images = _coco_batch(tmp_path_factory.mktemp("batch") / "b", coco_mini, defect=defect)
    _list_batch(repo, batch)
    t0 = time.perf_counter()
    proc = subprocess.run([str(BIN / "dvc"), "repro"], cwd=repo, env=pipeline_env(), capture_output=True, text=True,
                          timeout=600)
    elapsed = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    errors = [ln.strip() for ln in out.splitlines() if ln.strip().startswith("error:")]
    assert len(errors) == 1, out
    if defect == "truncated":
        assert f"'{images[1]['file_name']}' (id {images[1]['id']}" in errors[0] and "does not decode" in errors[0]
    else:
        assert f"{batch / 'batch.json'} is not valid JSON" in errors[0]
    assert "Traceback" not in out and "failed to reproduce 'fetch'" in out, out
    assert elapsed < 120, f"a data error is not retried ({elapsed:.0f} s)"
    assert _state(repo) == before, "data/raw or the fetch entry of dvc.lock changed"
    assert not (repo / "data" / "validated").exists(), "no later stage ran"


@pytest.mark.slow
def test_the_flow_fails_a_malformed_batch_at_once_without_retries(tmp_path_factory, coco_mini):
    """The issue's 175 s: the flow retried the fetch task 3 times (5 + 30 + 120 s) on a malformed JSON.
    Now the fetch task retries only network failures (exit 75): one attempt, one error line."""
    repo = _tiny_repo(tmp_path_factory)
    before = _state(repo)
    batch, _ = _coco_batch(tmp_path_factory.mktemp("batch") / "b", coco_mini, defect="malformed")
    _list_batch(repo, batch)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "flows.retrain", str(repo)], cwd=repo,
                          env=pipeline_env(PREFECT_HOME=str(tmp_path_factory.mktemp("prefect-home"))),
                          capture_output=True, text=True, timeout=900)
    elapsed = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    summary = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: retrain ended")]
    assert len(summary) == 1 and summary[0].startswith("error: retrain ended StageFailed: stage fetch failed"), out
    assert f"{batch / 'batch.json'} is not valid JSON" in summary[0], summary
    assert "Retry" not in out and "AwaitingRetry" not in out, out
    assert out.count("> pose fetch") == 1, "the fetch stage ran more than once"
    assert "Traceback" not in out and "NoneType: None" not in out, out
    assert elapsed < 150, f"the flow waited {elapsed:.0f} s: retries of a data error"
    assert _state(repo) == before


def test_an_s3_batch_checked_up_front_survives_a_failed_source(tmp_path, monkeypatch):
    """fetch stages an S3 batch before building the dataset; a first source that fails (and clears
    the fetch's scratch folder) must not take the staged batch with it."""
    moto = pytest.importorskip("moto")
    import boto3

    from pose.datasets.fetch import fetch_dataset, verify_manifest
    from pose.datasets.sources import upload_s3

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    source = _dataset(tmp_path / "source")
    extra = tmp_path / "extra"
    from pose.datasets.generated import generate_dataset

    generate_dataset(extra, seed=11, num_train=2, num_val=1, width=96, height=80, max_people=2,
                     min_person_height=12, max_person_height=60)
    catalogue = {"remote": {"kind": "coco", "schema": "coco17", "ingest": ["s3://labels/w2"],
                            "sources": [f"file://{tmp_path / 'missing'}", f"file://{source}"]}}
    with moto.mock_aws():
        boto3.client("s3").create_bucket(Bucket="labels")
        upload_s3(extra / "annotations" / "person_keypoints_train2017.json", "s3://labels/w2/batch.json")
        for p in sorted((extra / "train2017").iterdir()):
            upload_s3(p, f"s3://labels/w2/images/{p.name}")
        out = tmp_path / "raw" / "remote"
        s = fetch_dataset("remote", catalogue=catalogue, mirror_root=None, out_dir=out, generated_params={},
                          train_split="train2017", val_split="val2017", retries=0, progress=False)
    assert s["ingested"][0]["added_images"] == 2 and s["splits"]["train2017"]["images"] == 6
    verify_manifest(out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["remote"], "scratch folders left behind"
