"""The DVC S3 remote, end to end against a real S3-compatible server on loopback (moto server mode).

In a temporary copy of the repo: `dvc repro fetch` (generated data at tiny sizes) and a small
fake checkpoint folder tracked with `dvc add`; an S3 remote ``s3://<bucket>/dvc`` with
``endpointurl`` pointing at the moto server and dummy credentials from AWS_* environment
variables; `dvc push`; the cache and the workspace outputs deleted; `dvc pull`; then every
file (and the fetch MANIFEST) must hash exactly as before. Also: without credentials `dvc push`
fails with an error naming them.

Note: a ``.dvc`` pointer file must not live under ``data/`` in this repo: `.gitignore` has
``/data/*`` and DVC's git backend then treats ``data/`` itself as ignored and never collects
``.dvc`` files there; pointer files go at the repo root (``path: data/...``).

Needs dvc-s3 (and moto[server]); skipped with the reason when they are not installed.
Marked slow (~30 s: each dvc command starts a fresh interpreter); CI still runs it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from repo_setup import make_repo_copy
from test_pipeline_e2e import tiny_params

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
BUCKET = "pose-dvc"
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _base_env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(DO_NOT_TRACK="1", DVC_NO_ANALYTICS="1", AWS_EC2_METADATA_DISABLED="true",
               AWS_SHARED_CREDENTIALS_FILE=str(tmp / "no-aws-credentials"), AWS_CONFIG_FILE=str(tmp / "no-aws-config"))
    return env


def _dvc(repo: Path, env: dict, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "dvc"), *args], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    if ok:
        assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def _hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture()
def s3_server():
    pytest.importorskip("dvc_s3", reason="dvc-s3 is not installed (pip install -c constraints.txt dvc-s3)")
    server_mod = pytest.importorskip("moto.server", reason="moto[server] is not installed")
    import boto3

    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=url, aws_access_key_id=CREDS["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=CREDS["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    try:
        yield url, client
    finally:
        server.stop()


def test_dvc_push_pull_roundtrip_through_s3(tmp_path, s3_server):
    endpoint, client = s3_server
    params = tiny_params()
    params["data"]["dataset"] = "generated"
    params["generated"].update(num_train=4, num_val=2, width=96, height=80, max_people=2,
                               min_person_height=12, max_person_height=60)
    repo = make_repo_copy(tmp_path / "repo", params)
    env = _base_env(tmp_path)
    env_creds = {**env, **CREDS}

    _dvc(repo, env, "repro", "fetch")
    raw = repo / "data" / "raw" / "generated"
    ckpt = repo / "data" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "last.pt").write_bytes(os.urandom(64 * 1024))  # stands in for a training checkpoint
    (ckpt / "best.pt").write_bytes(os.urandom(32 * 1024))
    # DVC never collects .dvc files under data/: .gitignore's `/data/*` makes its git backend treat
    # data/ itself as ignored. So: let `dvc add` write data/checkpoints.dvc (it refuses a git-ignored
    # pointer path), then move the pointer to the repo root, its path made relative to it.
    with open(repo / ".gitignore", "a") as f:
        f.write("!/data/checkpoints.dvc\n")
    _dvc(repo, env, "add", "data/checkpoints")
    pointer = (repo / "data" / "checkpoints.dvc").read_text()
    assert "path: checkpoints" in pointer
    (repo / "checkpoints.dvc").write_text(pointer.replace("path: checkpoints", "path: data/checkpoints"))
    (repo / "data" / "checkpoints.dvc").unlink()
    before = {"raw": _hashes(raw), "checkpoints": _hashes(ckpt)}
    manifest = (raw / "MANIFEST.sha256").read_text()
    assert len(before["raw"]) == 4 + 2 + 2 + 1 and len(before["checkpoints"]) == 2

    _dvc(repo, env, "remote", "add", "-d", "s3remote", f"s3://{BUCKET}/dvc")
    _dvc(repo, env, "remote", "modify", "s3remote", "endpointurl", endpoint)
    config = (repo / ".dvc" / "config").read_text()
    assert "s3remote" in config and "testing" not in config, "credentials must not be written to the config"

    # no credentials: a clear failure, nothing uploaded
    targets = ("fetch", "checkpoints.dvc")  # dvc.lock may list other stages' outputs, never built here
    fail = _dvc(repo, env, "push", *targets, ok=False)
    assert fail.returncode != 0
    assert "credentials" in (fail.stdout + fail.stderr).lower(), fail.stdout + fail.stderr
    assert client.list_objects_v2(Bucket=BUCKET).get("KeyCount", 0) == 0

    push = _dvc(repo, env_creds, "push", *targets)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="dvc/")["Contents"]]
    assert len(keys) >= len(before["raw"]) + len(before["checkpoints"]), (keys, push.stdout)
    assert "in sync" in _dvc(repo, env_creds, "status", "--cloud", *targets).stdout.lower()

    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(raw)
    shutil.rmtree(ckpt)
    _dvc(repo, env_creds, "pull", *targets)
    assert {"raw": _hashes(raw), "checkpoints": _hashes(ckpt)} == before
    assert (raw / "MANIFEST.sha256").read_text() == manifest
    from pose.datasets.fetch import verify_manifest

    verify_manifest(raw)
    status = _dvc(repo, env_creds, "status", *targets).stdout
    assert "up to date" in status.lower() or "up-to-date" in status.lower(), status
