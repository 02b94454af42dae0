"""The tiny-repository setup of the end-to-end tests of the flows, the weekly loop, experiments and
team mode: a copy of the working tree as a fresh git repo, a tiny GENERATED config (no ../shared
needed) and the environment of an activated .venv with telemetry off."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
#: the .venv's bin folder: DVC stages call `pose` from PATH
BIN = Path(sys.executable).parent

#: the tiny generated config: 12 + 6 images of 160x128 px, a width-8 model, 2 training steps at 128 px,
#: a cheap evaluation, 20 bootstrap resamples, no webhook (dotted params key -> value)
TINY_GENERATED = {
    "data.dataset": "generated",
    "generated.num_train": 12, "generated.num_val": 6, "generated.width": 160, "generated.height": 128,
    "generated.max_people": 2, "generated.min_person_height": 40, "generated.max_person_height": 120,
    "validate.workers": 1,
    "model.width": 8, "model.stage_blocks": [1, 1, 1],
    "train.batch_size": 4, "train.workers": 0, "train.max_steps_per_epoch": 2, "train.warmup_steps": 1,
    "train.log_every": 1, "train.curriculum": [{"sizes": [128], "epochs": 1}],
    "evaluate.input_size": 128, "evaluate.flip_test": False, "evaluate.overlay_count": 1,
    "evaluate.latency_samples": 1, "evaluate.latency_warmup": 0,
    "registry.bootstrap_samples": 20, "schedule.notify_webhook": "",
    "serve.log_onnx": False,  # the ONNX export (~20 s per registration) has its own tests (tests/test_serving.py)
}


def set_param(params: dict, dotted: str, value) -> None:
    """Set an existing params key (a renamed key fails here, not as a slow test)."""
    *parents, leaf = dotted.split(".")
    node = params
    for k in parents:
        node = node[k]
    assert leaf in node, f"params.yaml has no key {dotted}"
    node[leaf] = value


def tiny_generated_params(extra: dict | None = None, *, floor: float | None) -> dict:
    """params.yaml with :data:`TINY_GENERATED` and ``extra`` (dotted key -> value) set.

    ``floor``: the value of every ``min`` rule of ``registry.rules`` (a 2-step model scores AP ~0;
    the floor itself is tested in tests/test_registry.py); None keeps params.yaml's."""
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in {**TINY_GENERATED, **(extra or {})}.items():
        set_param(p, key, value)
    if floor is not None:
        for rule in p["registry"]["rules"]:
            if "min" in rule:
                rule["min"] = floor
    return p


def make_repo_copy(dst: Path, params: dict) -> Path:
    """Copy the working tree (tracked + untracked, not ignored files) into a fresh git repo at ``dst``
    with ``params`` as its params.yaml (committed)."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.email=ci@example.invalid", "-c", "user.name=ci", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=dst, check=True, capture_output=True)
    return dst


def pipeline_env(**extra: str) -> dict:
    """The environment of an activated .venv (`source .venv/bin/activate`: stages call `pose`), with
    telemetry off, one BLAS thread, a git identity, and no webhook, tracking server or data fingerprint
    inherited from the developer's shell; ``extra`` is set last."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(DO_NOT_TRACK="1", DVC_NO_ANALYTICS="1", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_UI_ENABLED="false", GX_ANALYTICS_ENABLED="false", MLFLOW_ENABLE_TELEMETRY="false",
               OMP_NUM_THREADS="1", GIT_AUTHOR_NAME="ci", GIT_AUTHOR_EMAIL="ci@example.invalid",
               GIT_COMMITTER_NAME="ci", GIT_COMMITTER_EMAIL="ci@example.invalid")
    for key in ("POSE_NOTIFY_WEBHOOK", "MLFLOW_TRACKING_URI", "POSE_DATA_FINGERPRINT"):
        env.pop(key, None)
    env.update(extra)
    return env
