"""The training loop on real coco-mini images where present, else the generated set (`coco_like`):
exact resume after SIGKILL, crash-safe checkpoints, DDP on 2 CPU ranks (gloo, torchrun), learning,
bf16 autocast, validation during training (best.pt by validation AP), torch threads from the available cores.

Tiny configurations (HRNet width 8, one module per stage, 128/160 px inputs, batch
2) keep every run to seconds. Training subprocesses run with one intra-op thread,
so a resumed run and the uninterrupted reference run do the same float operations
in the same order and must end with bit-identical weights.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, sections, train_sections

from pose.train.checkpoint import load_checkpoint, remove_stale_temps, save_checkpoint
from pose.train.ddp import state_dict_digest
from pose.train.loop import train

BIN = Path(sys.executable).parent
BASE = yaml.safe_load((REPO / "params.yaml").read_text())
STEPS_PER_EPOCH = 3
TOTAL_STEPS = 2 * STEPS_PER_EPOCH
NO_AUGMENT = {"max_rotation": 0, "min_scale": 1.0, "max_scale": 1.0, "max_translate": 0.0, "flip_prob": 0.0,
              "color_jitter": 0.0, "crop": "letterbox"}


def tiny_params(**train) -> dict:
    """Tiny model and plan; validation every epoch on 2 real validation images at 128 px
    (the CLI runs pass them, `_train_args`; in-process runs without them set val_every=0);
    an EMA of the weights (decay 0.9), so every resume test also resumes the EMA."""
    p = copy.deepcopy(BASE)
    p["model"].update(width=8, stage_blocks=[1, 1, 1], pretrained="")
    p["train"].update(batch_size=2, workers=0, max_steps_per_epoch=STEPS_PER_EPOCH, warmup_steps=2, log_every=1,
                      checkpoint_every=1, amp=False, multi_scale=True, use_curriculum=True,
                      curriculum=[{"sizes": [128], "epochs": 1}, {"sizes": [128, 160], "epochs": 1}],
                      val_every=1, val_max_images=2, ema_decay=0.9, ema_warmup_steps=2)
    p["evaluate"].update(input_size=128, flip_test=False, test_scales=[1.0])
    p["train"].update(train)
    return p


def _env() -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1", DO_NOT_TRACK="1")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _train_args(coco: Path, run: Path, params_file: Path) -> list[str]:
    return ["train", "--train-ann", str(coco / "annotations" / "person_keypoints_train2017.json"),
            "--train-images", str(coco / "train2017"), "--out-dir", str(run / "models"),
            "--metrics", str(run / "train.json"), "--steps", str(run / "steps.csv"), "--params", str(params_file),
            "--val-ann", str(coco / "annotations" / "person_keypoints_val2017.json"),
            "--val-images", str(coco / "val2017"), "--val-epochs", str(run / "val.csv")]


def _write_params(run: Path, params: dict) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    path = run / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def _cli(coco: Path, run: Path, params: dict, *, prefix: list[str] | None = None, timeout: int = 120):
    """Run `pose train` (or ``prefix`` + its arguments) to completion; returns the CompletedProcess."""
    cmd = (prefix or [sys.executable, "-m", "pose.cli"]) + _train_args(coco, run, _write_params(run, params))
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


class Lines:
    """A subprocess whose stdout lines arrive on a queue (so waiting for one can time out)."""

    def __init__(self, cmd: list[str], **env: str):
        self.proc = subprocess.Popen(cmd, cwd=REPO, env={**_env(), **env}, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT,
                                     text=True)
        self.seen: list[str] = []
        self._q: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self._q.put(line)
        self._q.put(None)

    def wait_for(self, predicate, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._q.get(timeout=0.05)
            except queue.Empty:
                continue
            if line is None:
                break
            self.seen.append(line)
            if predicate(line):
                return line
        self.kill()
        raise AssertionError("expected output never came:\n" + "".join(self.seen[-40:]))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


def assert_same_training_state(a: dict, b: dict) -> None:
    """Model weights and buffers bit-identical, same optimiser moments and schedule position."""
    assert a["model"].keys() == b["model"].keys() and ("model_raw" in a) == ("model_raw" in b)
    for part in ("model", "model_raw"):   # the EMA (validated, saved) and the training weights
        for k in a.get(part, {}):
            assert torch.equal(a[part][k], b[part][k]), f"{part} tensor {k} differs"
    assert a.get("ema_updates") == b.get("ema_updates")
    for pid, sa in a["optimizer"]["state"].items():
        for k, v in sa.items():
            assert torch.equal(v, b["optimizer"]["state"][pid][k]), f"optimizer state {pid}.{k} differs"
    assert a["scheduler"] == b["scheduler"]
    assert torch.equal(a["rng_cpu"], b["rng_cpu"])
    for k in ("epoch", "batch_in_epoch", "global_step", "best_loss", "history", "best_val_ap", "best_epoch",
              "val_history", "train_data"):
        assert a[k] == b[k], k


@pytest.fixture(autouse=True)
def one_thread():
    """In-process training with one intra-op thread: on a shared, busy CPU, OpenMP threads
    that wait for each other make steps over 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(coco_like, tmp_path_factory) -> Path:
    """An uninterrupted run of the tiny configuration (augmentation on; checkpoint
    frequency does not change training)."""
    run = tmp_path_factory.mktemp("reference")
    _cli(coco_like, run, tiny_params(checkpoint_every=0))
    summary = json.loads((run / "train.json").read_text())
    assert summary["steps"] == TOTAL_STEPS and summary["best_by"] == "val_AP" and summary["validations"] == 2
    return run


def test_sigkill_mid_epoch_then_resume_gives_identical_weights(coco_like, tmp_path, reference):
    params = tiny_params()
    run = tmp_path / "killed"
    params_file = _write_params(run, params)
    job = Lines([sys.executable, "-m", "pose.cli"] + _train_args(coco_like, run, params_file))
    last = run / "models" / "last.pt"
    # step 5 is the 2nd batch of epoch 1 (multi-size); last.pt holds step 4 or 5 when the line appears
    job.wait_for(lambda line: line.startswith(f"step 5/{TOTAL_STEPS} ") and last.exists())
    job.kill()
    assert job.proc.returncode == -signal.SIGKILL
    assert not (run / "train.json").exists(), "the run finished before the kill"
    ck = load_checkpoint(last)
    assert ck["epoch"] == 1 and 0 < ck["batch_in_epoch"] < STEPS_PER_EPOCH, "expected a mid-epoch checkpoint"
    killed_at = ck["global_step"]

    resumed = _cli(coco_like, run, params)
    assert f"resumed from {last}: epoch 1 batch {killed_at - STEPS_PER_EPOCH} step {killed_at}" in resumed.stdout
    assert f"step {killed_at + 1}/{TOTAL_STEPS} " in resumed.stdout and f"step {killed_at}/" not in resumed.stdout
    assert_same_training_state(load_checkpoint(last), load_checkpoint(reference / "models" / "last.pt"))
    # torch.save is deterministic and checkpoints hold no wall-clock values: same bytes
    for name in ("last.pt", "best.pt"):
        assert (run / "models" / name).read_bytes() == (reference / "models" / name).read_bytes(), name

    def losses(path: Path) -> list[list[str]]:  # every column but the wall-clock images_per_s
        rows = [line.split(",") for line in path.read_text().splitlines()]
        return [r[:-1] for r in rows]

    assert losses(run / "steps.csv") == losses(reference / "steps.csv")
    summary = json.loads((run / "train.json").read_text())
    ref = json.loads((reference / "train.json").read_text())
    assert summary["final_loss"] == ref["final_loss"] and summary["best_epoch_loss"] == ref["best_epoch_loss"]
    # the epoch-0 validation happened before the kill: restored from last.pt, not repeated
    assert "epoch 0 validation" not in resumed.stdout and "epoch 1 validation" in resumed.stdout
    assert (run / "val.csv").read_bytes() == (reference / "val.csv").read_bytes()    # no wall-clock column
    assert [line.split(",")[0] for line in (run / "val.csv").read_text().splitlines()] == ["epoch", "0", "1"]
    assert summary["best_epoch"] == ref["best_epoch"] and summary["best_val_AP"] == ref["best_val_AP"]


def test_sigterm_mid_epoch_writes_last_pt_and_resume_is_identical(coco_like, tmp_path, reference):
    """No periodic checkpoints (train.checkpoint_every 0): the mid-epoch last.pt comes from the
    SIGTERM handler, at the step boundary after the signal, and resuming from it is exact."""
    params = tiny_params(checkpoint_every=0)
    run = tmp_path / "terminated"
    job = Lines([sys.executable, "-m", "pose.cli"] + _train_args(coco_like, run, _write_params(run, params)))
    job.wait_for(lambda line: line.startswith(f"step 4/{TOTAL_STEPS} "))
    job.proc.send_signal(signal.SIGTERM)
    job.wait_for(lambda line: line.startswith("interrupted: training interrupted (SIGTERM)"))
    assert job.proc.wait(timeout=60) == 128 + signal.SIGTERM
    stopped = next(line for line in job.seen if line.startswith("SIGTERM: stopping after step"))
    ck = load_checkpoint(run / "models" / "last.pt")
    assert f"step {ck['global_step']}/{TOTAL_STEPS}," in stopped
    assert ck["epoch"] == 1 and 0 < ck["batch_in_epoch"] < STEPS_PER_EPOCH, "expected a mid-epoch checkpoint"
    assert not (run / "train.json").exists()

    resumed = _cli(coco_like, run, params)
    assert f"resumed from {run / 'models' / 'last.pt'}: epoch 1 batch {ck['batch_in_epoch']} " \
           f"step {ck['global_step']}" in resumed.stdout
    for name in ("last.pt", "best.pt"):
        assert (run / "models" / name).read_bytes() == (reference / "models" / name).read_bytes(), name
    assert (run / "val.csv").read_bytes() == (reference / "val.csv").read_bytes()


# `pose train` whose 2nd validation (end of epoch 1) gets SIGINT (Ctrl-C) at its first image
SIGINT_IN_VALIDATION = """
import os, signal, sys
import pose.decode.inference as inference
calls = []
_predict = inference.predict_image
def predict_image(*a, **k):
    calls.append(1)
    if len(calls) == 3:    # 2 validation images per epoch: the first image of epoch 1's validation
        print("SIGINT_NOW", flush=True)
        os.kill(os.getpid(), signal.SIGINT)
    return _predict(*a, **k)
inference.predict_image = predict_image
from pose.cli import main
sys.argv = ["pose"] + sys.argv[1:]
main()
"""


def test_sigint_during_validation_stops_it_and_resume_repeats_it(coco_like, tmp_path, reference):
    params = tiny_params(checkpoint_every=0)
    run = tmp_path / "ctrl_c"
    driver = tmp_path / "sigint_driver.py"
    driver.write_text(SIGINT_IN_VALIDATION)
    proc = subprocess.run([sys.executable, str(driver)] + _train_args(coco_like, run, _write_params(run, params)),
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "SIGINT_NOW" in proc.stdout and "epoch 1 validation" not in proc.stdout
    assert f"SIGINT: stopping after step {TOTAL_STEPS}/{TOTAL_STEPS}" in proc.stdout
    assert proc.stderr.strip().splitlines()[-1].startswith("interrupted: training interrupted (SIGINT)")
    assert "Traceback" not in proc.stderr
    ck = load_checkpoint(run / "models" / "last.pt")
    assert (ck["epoch"], ck["batch_in_epoch"], ck["global_step"]) == (1, STEPS_PER_EPOCH, TOTAL_STEPS)
    assert [line.split(",")[0] for line in (run / "val.csv").read_text().splitlines()] == ["epoch", "0"]

    resumed = _cli(coco_like, run, params)
    assert f"epoch 1 batch {STEPS_PER_EPOCH} step {TOTAL_STEPS}" in resumed.stdout
    assert "epoch 1 validation" in resumed.stdout
    assert not [line for line in resumed.stdout.splitlines() if line.startswith("step ")], "no step left to train"
    for name in ("last.pt", "best.pt"):
        assert (run / "models" / name).read_bytes() == (reference / "models" / name).read_bytes(), name
    assert (run / "val.csv").read_bytes() == (reference / "val.csv").read_bytes()


# A driver that runs `pose train` but freezes inside the checkpoint save of global step
# HANG_STEP after writing the first half of the real serialised bytes (a kill mid-write).
HANG_DRIVER = """
import io, os, sys, time
import torch
HANG_STEP = int(os.environ["HANG_STEP"])
_save = torch.save
def save(obj, f, *a, **k):
    if isinstance(obj, dict) and obj.get("global_step") == HANG_STEP and hasattr(f, "fileno"):
        buf = io.BytesIO()
        _save(obj, buf, *a, **k)
        data = buf.getvalue()
        f.write(data[: len(data) // 2]); f.flush(); os.fsync(f.fileno())
        print("HANG_IN_SAVE", os.path.basename(f.name if isinstance(f.name, str) else ""), flush=True)
        time.sleep(600)
    return _save(obj, f, *a, **k)
torch.save = save
from pose.cli import main
sys.argv = ["pose"] + sys.argv[1:]
main()
"""


def test_sigkill_during_checkpoint_save_keeps_previous_last_pt(coco_like, tmp_path, reference):
    params = tiny_params()
    run = tmp_path / "killed_in_save"
    params_file = _write_params(run, params)
    driver = tmp_path / "hang_driver.py"
    driver.write_text(HANG_DRIVER)
    job = Lines([sys.executable, str(driver)] + _train_args(coco_like, run, params_file), HANG_STEP="5")
    job.wait_for(lambda line: line.startswith("HANG_IN_SAVE"))
    models = run / "models"
    temps = sorted(models.glob(".last.pt.*.tmp"))
    assert len(temps) == 1 and temps[0].stat().st_size > 0, "the save must be half written when killed"
    job.kill()

    # last.pt is the previous complete checkpoint; the half-written temp file is not a checkpoint
    ck = load_checkpoint(models / "last.pt")
    assert ck["global_step"] == 4 and ck["epoch"] == 1 and ck["batch_in_epoch"] == 1
    umask = os.umask(0o022)
    os.umask(umask)
    assert (models / "last.pt").stat().st_mode & 0o777 == 0o666 & ~umask, "not mkstemp's 0600"
    with pytest.raises(RuntimeError, match="cannot load checkpoint"):
        load_checkpoint(temps[0])
    # resuming reads last.pt only, deletes the stale temp file and ends exactly like the reference
    out = _cli(coco_like, run, params)
    assert "resumed from" in out.stdout and "epoch 1 batch 1 step 4" in out.stdout
    assert not list(models.glob("*.tmp")) and not list(models.glob(".*.tmp"))
    assert_same_training_state(load_checkpoint(models / "last.pt"), load_checkpoint(reference / "models" / "last.pt"))


SAVE_LOOP = """
import sys, torch
from pose.train.checkpoint import save_checkpoint
path, n = sys.argv[1], int(sys.argv[2])
for i in range(1, 10_000):
    save_checkpoint({"step": i, "weights": torch.full((n,), float(i))}, path)
    print("saved", i, flush=True)
"""


def test_sigkill_at_random_moments_of_repeated_large_saves(tmp_path):
    """No patching: a process saving a 32 MB state in a loop is killed at random times."""
    last = tmp_path / "last.pt"
    rng = random.Random(0)
    for _ in range(3):
        job = Lines([sys.executable, "-c", SAVE_LOOP, str(last), str(8 * 1024 * 1024)])
        job.wait_for(lambda line: line.startswith("saved 2"), timeout=60)
        time.sleep(rng.uniform(0.0, 0.4))
        job.kill()
        ck = load_checkpoint(last)
        assert set(ck) == {"step", "weights"} and ck["step"] >= 2
        assert ck["weights"].numel() == 8 * 1024 * 1024 and bool((ck["weights"] == ck["step"]).all())
    # the kills leave at most temp files with their own names, which the next run deletes
    leftovers = {p.name for p in tmp_path.iterdir()} - {"last.pt"}
    assert all(name.startswith(".last.pt.") and name.endswith(".tmp") for name in leftovers), leftovers
    assert {p.name for p in remove_stale_temps(tmp_path)} == leftovers
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


# Runs `pose train` under torchrun and reports, per rank, every file it renamed into place
# (all outputs of the loop are written via os.replace) and the final weights' digest.
DDP_DRIVER = """
import os, sys
import pose.train.loop as loop
from pose.train.ddp import state_digest
rank = os.environ["RANK"]
models = []
_build = loop.build_training_model
def build(mp, **kw):
    m, report = _build(mp, **kw)
    models.append(m)
    return m, report
loop.build_training_model = build
_replace = os.replace
def replace(src, dst, *a, **k):
    print(f"WRITE rank={rank} {os.path.basename(os.fspath(dst))}", flush=True)
    return _replace(src, dst, *a, **k)
os.replace = replace
from pose.cli import main
sys.argv = ["pose"] + sys.argv[1:]
try:
    main()
except SystemExit as exc:
    assert not exc.code, exc.code
print(f"DIGEST rank={rank} {state_digest(models[0])}", flush=True)
"""


@pytest.mark.slow
def test_ddp_two_cpu_ranks_stay_identical_and_only_rank0_writes(coco_like, tmp_path):
    run = tmp_path / "ddp"
    driver = tmp_path / "ddp_driver.py"
    driver.write_text(DDP_DRIVER)
    params = tiny_params(max_steps_per_epoch=2, batch_size=2)
    logs = tmp_path / "torchrun_logs"
    # each rank's stdout goes to its own file (console lines of two ranks can interleave)
    torchrun = [str(BIN / "torchrun"), "--standalone", "--nnodes=1", "--nproc-per-node=2",
                f"--log-dir={logs}", "--redirects=3", str(driver)]
    _cli(coco_like, run, params, prefix=torchrun, timeout=240)
    outs = {int(p.parent.name): p.read_text() for p in logs.rglob("stdout.log")}
    assert sorted(outs) == [0, 1], sorted(logs.rglob("*"))
    digests = {r: [line.split()[2] for line in out.splitlines() if line.startswith("DIGEST ")]
               for r, out in outs.items()}
    assert len(digests[0]) == 1 and digests[0] == digests[1], "replicas differ after training"
    ck = load_checkpoint(run / "models" / "last.pt")
    # tiny_params trains with an EMA: the checkpoint's "model" is the average, "model_raw" the trained weights
    assert state_dict_digest(ck["model_raw"]) == digests[0][0], "rank 0's checkpoint is not the trained model"
    writes = [line.split()[1:] for out in outs.values() for line in out.splitlines() if line.startswith("WRITE ")]
    assert writes and {w[0] for w in writes} == {"rank=0"}, writes
    assert {w[1] for w in writes} == {"last.pt", "best.pt", "train.json", "steps.csv", "val.csv"}
    assert sorted(p.name for p in (run / "models").iterdir()) == ["best.pt", "last.pt"]
    summary = json.loads((run / "train.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4
    # rank-0-only logging
    assert "step 1/4 " in outs[0] and "2 replicas in sync" in outs[0]
    assert "step " not in outs[1] and "replicas" not in outs[1]
    # validation runs on rank 0 only; both ranks agree on it (broadcast) and on best.pt
    assert outs[0].count(" validation: AP ") == 2 and "validation" not in outs[1]
    assert summary["validations"] == 2 and len((run / "val.csv").read_text().splitlines()) == 3
    assert ck["plan"] and json.loads(ck["plan"])["world_size"] == 2


def _single_image_annotations(coco: Path, dst: Path, image_id: int, copies: int) -> Path:
    """A COCO file whose images are ``copies`` entries of one image (unique ids, same file): ``image_id``
    when the set has it, else the image with the most labelled people."""
    data = json.loads((coco / "annotations" / "person_keypoints_train2017.json").read_text())
    ids = {i["id"] for i in data["images"]}
    if image_id not in ids:
        counts = {}
        for a in data["annotations"]:
            if a.get("num_keypoints", 0) > 0 and not a.get("iscrowd", 0):
                counts[a["image_id"]] = counts.get(a["image_id"], 0) + 1
        image_id = max(sorted(counts), key=counts.get)
    image = next(i for i in data["images"] if i["id"] == image_id)
    anns = [a for a in data["annotations"] if a["image_id"] == image_id]
    images, annotations = [], []
    for c in range(copies):
        images.append({**image, "id": 1 + c})
        annotations += [{**a, "id": 1000 * (c + 1) + j, "image_id": 1 + c} for j, a in enumerate(anns)]
    dst.write_text(json.dumps({**data, "images": images, "annotations": annotations}))
    return dst


def test_loss_decreases_over_30_steps_on_a_fixed_real_batch(coco_like, tmp_path):
    # coco-mini image 211325: five labelled people (generated set: the most crowded image); no augmentation,
    # so every step sees the same batch
    ann = _single_image_annotations(coco_like, tmp_path / "one_image.json", 211325, copies=60)
    params = tiny_params(max_steps_per_epoch=0, checkpoint_every=0, warmup_steps=3, val_every=0,
                         curriculum=[{"sizes": [128], "epochs": 1}])
    params["augment"] = dict(NO_AUGMENT)
    summary = train(**train_sections(params), train_ann=ann, train_images=coco_like / "train2017",
                    out_dir=tmp_path / "models", metrics_path=tmp_path / "train.json",
                    steps_path=tmp_path / "steps.csv", resume=False)
    assert summary["steps"] == 30
    rows = [line.split(",") for line in (tmp_path / "steps.csv").read_text().splitlines()[1:]]
    losses = [float(r[3]) for r in rows]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert all(math.isfinite(v) for v in losses)
    assert last < 0.5 * first, f"mean loss of the first 5 steps {first:.5f}, of the last 5 {last:.5f}"


def test_bf16_autocast_on_cpu_trains_two_steps(coco_like, tmp_path):
    coco_ann = coco_like / "annotations" / "person_keypoints_train2017.json"
    kwargs = {"train_ann": coco_ann, "train_images": coco_like / "train2017", "resume": False}
    results = {}
    for amp in (False, True):
        params = tiny_params(amp=amp, max_steps_per_epoch=2, checkpoint_every=0, val_every=0,
                             curriculum=[{"sizes": [128], "epochs": 1}])
        d = tmp_path / f"amp_{amp}"
        summary = train(**train_sections(params), out_dir=d / "models", metrics_path=d / "train.json",
                        steps_path=d / "steps.csv", **kwargs)
        assert summary["steps"] == 2 and math.isfinite(summary["final_loss"])
        results[amp] = summary["final_loss"]
        ck = load_checkpoint(d / "models" / "last.pt")
        assert all(v.dtype != torch.bfloat16 for v in ck["model"].values()), "weights stay float32 under autocast"
        train_data = json.loads(ck["train_data"])  # the training annotations, hashed by pose.io.sha256_file
        assert train_data["annotations_sha256"] == hashlib.sha256(coco_ann.read_bytes()).hexdigest()
    # same data and initial weights: bf16 matmuls give a close but not identical loss
    assert results[True] != results[False]
    assert results[True] == pytest.approx(results[False], rel=0.1)

    # resuming with a different architecture is refused with a clear message
    params = tiny_params(amp=True, max_steps_per_epoch=2, val_every=0, curriculum=[{"sizes": [128], "epochs": 1}])
    params["model"]["width"] = 16
    d = tmp_path / "amp_True"
    with pytest.raises(ValueError, match="trained with model params"):
        train(**train_sections(params), out_dir=d / "models", metrics_path=d / "x.json", steps_path=d / "x.csv",
              **{**kwargs, "resume": True})


def test_ema_is_validated_and_saved_without_changing_the_training_trajectory(coco_like, tmp_path):
    """The EMA run's training weights (model_raw) equal a run without EMA, bit for bit; its saved
    model is the average (closer to the weights' history than to the last step), and best.pt's
    validation scored that average."""
    from pose.train.ema import ModelEMA

    kw = {"train_ann": coco_like / "annotations" / "person_keypoints_train2017.json",
          "train_images": coco_like / "train2017", "resume": False}
    runs = {}
    for name, decay in (("off", 0.0), ("ema", 0.9)):
        d = tmp_path / name
        train(**train_sections(tiny_params(ema_decay=decay, val_every=0, checkpoint_every=0)), out_dir=d,
              metrics_path=d / "t.json", steps_path=d / "s.csv", **kw)
        runs[name] = load_checkpoint(d / "last.pt")
    off, ema = runs["off"], runs["ema"]
    assert "model_raw" not in off and ema["ema_updates"] == TOTAL_STEPS
    for k, v in off["model"].items():
        assert torch.equal(ema["model_raw"][k], v), f"the EMA changed the training weights ({k})"
    moved = [k for k, v in ema["model"].items() if v.is_floating_point() and not torch.equal(v, ema["model_raw"][k])]
    assert moved, "the saved model must be the average, not the last weights"
    # the update rule: one step of ModelEMA from a known state
    net = torch.nn.Linear(2, 1)
    avg = ModelEMA(net, 0.9, 0)
    with torch.no_grad():
        net.weight.add_(1.0)
    before = avg.module.weight.clone()
    avg.update(net)
    assert torch.allclose(avg.module.weight, 0.9 * before + 0.1 * net.weight) and avg.updates == 1
    assert ModelEMA(net, 0.9, 100).current_decay() == pytest.approx(0.9 * (1 - math.exp(-1 / 100)))
    with pytest.raises(ValueError, match="train.ema_decay"):
        ModelEMA(net, 1.0, 0)


def test_channels_last_trains_deterministically_and_saves_a_loadable_model(coco_like, tmp_path):
    """train.channels_last: NHWC convolutions give other rounding than NCHW, but the same run twice
    gives the same weights, and the saved model loads and predicts like any other."""
    from pose.train.checkpoint import load_trained_model

    kw = {"train_ann": coco_like / "annotations" / "person_keypoints_train2017.json",
          "train_images": coco_like / "train2017", "resume": False}
    cks = {}
    for name, cl in (("nchw", False), ("nhwc", True), ("nhwc_again", True)):
        d = tmp_path / name
        train(**train_sections(tiny_params(channels_last=cl, max_steps_per_epoch=2, val_every=0, checkpoint_every=0,
                                           curriculum=[{"sizes": [128], "epochs": 1}])),
              out_dir=d, metrics_path=d / "t.json", steps_path=d / "s.csv", **kw)
        cks[name] = load_checkpoint(d / "last.pt")
    for k, v in cks["nhwc"]["model"].items():
        assert torch.equal(v, cks["nhwc_again"]["model"][k]), k
    assert any(not torch.equal(v, cks["nchw"]["model"][k]) for k, v in cks["nhwc"]["model"].items())
    model = load_trained_model(tmp_path / "nhwc" / "last.pt")
    out = model(torch.zeros(1, 3, 128, 128))
    assert [tuple(o.shape[-2:]) for o in out] == [(32, 32), (64, 64)]


def test_save_checkpoint_is_weights_only_loadable(tmp_path):
    path = tmp_path / "sub" / "c.pt"
    save_checkpoint({"w": torch.arange(3.0), "step": 3, "history": "[]"}, path)
    assert load_checkpoint(path)["step"] == 3
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(RuntimeError, match="c.pt: cannot load checkpoint"):
        load_checkpoint(path)


def _run_scripted_validation(coco: Path, tmp: Path, monkeypatch, aps: list[float], **train_kw) -> tuple[dict, Path]:
    """Train 1 step per epoch with `Validator.run` returning ``aps`` in turn (real decoding is
    covered by the CLI runs above); returns (summary, run folder)."""
    from pose.train import validation

    scripted = iter(aps)
    monkeypatch.setattr(validation.Validator, "run", lambda self, model, device=None, should_stop=None: {
        "AP": next(scripted), "AP50": 0.9, "AP75": 0.1, "AR": 0.2, "images": len(self), "seconds": 0.01})
    params = tiny_params(max_steps_per_epoch=1, checkpoint_every=0, val_max_images=1,
                         curriculum=[{"sizes": [128], "epochs": 4}], **train_kw)
    summary = train(**train_sections(params), train_ann=coco / "annotations" / "person_keypoints_train2017.json",
                    train_images=coco / "train2017", out_dir=tmp / "models", metrics_path=tmp / "train.json",
                    steps_path=tmp / "steps.csv", resume=False,
                    val_ann=coco / "annotations" / "person_keypoints_val2017.json", val_images=coco / "val2017",
                    val_path=tmp / "val.csv")
    return summary, tmp


def test_best_pt_is_the_best_validation_ap_not_the_lowest_loss(coco_like, tmp_path, monkeypatch):
    import csv

    from pose.registry.mlflow_registry import read_val_epochs

    summary, run = _run_scripted_validation(coco_like, tmp_path / "every", monkeypatch, [0.2, 0.5, 0.5, 0.1])
    assert summary["best_by"] == "val_AP" and summary["best_epoch"] == 1 and summary["best_val_AP"] == 0.5
    assert summary["last_val_AP"] == 0.1 and summary["validations"] == 4
    assert load_checkpoint(run / "models" / "best.pt")["epoch"] == 2      # saved after epoch index 1 (tie: earlier)
    assert load_checkpoint(run / "models" / "last.pt")["epoch"] == 4
    rows = list(csv.DictReader((run / "val.csv").open()))
    assert [(int(r["epoch"]), int(r["step"]), float(r["AP"])) for r in rows] == [(0, 1, 0.2), (1, 2, 0.5), (2, 3, 0.5),
                                                                                 (3, 4, 0.1)]
    # the register stage logs them to MLflow with step = epoch
    logged = [(m.key, m.step, m.value) for m in read_val_epochs(run / "val.csv")]
    assert ("val/AP", 1, 0.5) in logged and ("val/AP50", 3, 0.9) in logged
    assert {k for k, _, _ in logged} == {"val/AP", "val/AP50", "val/AP75", "val/AR"}

    # every 3rd epoch and after the last one
    summary, run = _run_scripted_validation(coco_like, tmp_path / "every3", monkeypatch, [0.3, 0.4], val_every=3)
    assert [int(r["epoch"]) for r in csv.DictReader((run / "val.csv").open())] == [2, 3]
    assert summary["best_epoch"] == 3 and load_checkpoint(run / "models" / "best.pt")["epoch"] == 4


def test_validation_off_keeps_best_pt_by_training_loss(coco_like, tmp_path, monkeypatch):
    import csv

    summary, run = _run_scripted_validation(coco_like, tmp_path, monkeypatch, [], val_every=0)
    assert summary["best_by"] == "train_loss" and "best_val_AP" not in summary
    assert (run / "val.csv").read_text().strip() == "epoch,step,AP,AP50,AP75,AR,images"
    losses = [float(r["loss"]) for r in csv.DictReader((run / "steps.csv").open())]   # one step per epoch
    assert summary["best_epoch"] == losses.index(min(losses))
    assert load_checkpoint(run / "models" / "best.pt")["epoch"] == summary["best_epoch"] + 1
    # without a validation split, val_every > 0 falls back to the training loss, and says so
    summary = train(**train_sections(tiny_params(max_steps_per_epoch=1, checkpoint_every=0,
                                                 curriculum=[{"sizes": [128], "epochs": 1}])),
                    train_ann=coco_like / "annotations" / "person_keypoints_train2017.json",
                    train_images=coco_like / "train2017", out_dir=tmp_path / "m2", metrics_path=tmp_path / "t2.json",
                    steps_path=tmp_path / "s2.csv", resume=False)
    assert summary["best_by"] == "train_loss"
    with pytest.raises(ValueError, match="train.val_every"):
        train(**train_sections(tiny_params(), val_every=-1),
              train_ann=coco_like / "annotations" / "person_keypoints_train2017.json",
              train_images=coco_like / "train2017", out_dir=tmp_path / "m3", metrics_path=tmp_path / "t3.json",
              steps_path=tmp_path / "s3.csv", resume=False)


def test_validation_scores_like_the_evaluate_stage(coco_like, tmp_path):
    """The validator's AP is the evaluate stage's (predict_dataset + pycocotools) on the same images."""
    from pose.datasets.schema import COCO_SIGMAS
    from pose.decode.inference import predict_dataset
    from pose.evaluate.coco import evaluate_results
    from pose.models import build_model, init_weights
    from pose.train.validation import Validator, validation_subset

    ann = coco_like / "annotations" / "person_keypoints_val2017.json"
    full = json.loads(ann.read_text())
    sub = validation_subset(ann, 3)
    assert [im["id"] for im in sub["images"]] == sorted(im["id"] for im in full["images"])[:3]
    assert sub["annotations"] and {a["image_id"] for a in sub["annotations"]} <= {im["id"] for im in sub["images"]}
    assert len(validation_subset(ann, 0)["images"]) == len(full["images"])
    with pytest.raises(ValueError, match="train.val_max_images"):
        validation_subset(ann, -1)
    with pytest.raises(FileNotFoundError):
        validation_subset(tmp_path / "missing.json", 3)

    params = tiny_params()
    torch.manual_seed(0)
    model = init_weights(build_model(params["model"]), "kaiming").eval()
    ev = sections(params).evaluate
    got = Validator(ann, coco_like / "val2017", max_images=3, eval_params=ev).run(model)
    (tmp_path / "sub.json").write_text(json.dumps(sub))
    results = predict_dataset(model, tmp_path / "sub.json", coco_like / "val2017", ev)
    assert results, "the random model must detect something for this comparison to mean anything"
    want = evaluate_results(tmp_path / "sub.json", results, sigmas=COCO_SIGMAS,
                            oks_threshold=float(ev.oks_threshold))
    assert got["images"] == 3 and all(got[k] == want[k] for k in ("AP", "AP50", "AP75", "AR"))
    assert not model.training


def test_torch_threads_leave_room_for_the_loader_workers(monkeypatch):
    from pose.train import loop
    from pose.train.data import loader_worker_init

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr(loop.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
        assert loop.available_cores() == 8
        assert loop.configure_threads(2) == 6 and torch.get_num_threads() == 6
        assert loop.configure_threads(2, ranks_per_node=2) == 2          # 4 cores per rank, 2 of them for workers
        assert loop.configure_threads(12) == 1                           # never below one thread
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert loop.configure_threads(0) == 3                            # an explicit OMP_NUM_THREADS caps it
        monkeypatch.setattr(loop.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
        assert loop.configure_threads(2) == 1 and torch.get_num_threads() == 1   # 2 cores, 2 workers (issue 13)
    finally:
        torch.set_num_threads(before)
    import cv2

    cv_before = cv2.getNumThreads()
    try:
        loader_worker_init(0)
        assert cv2.getNumThreads() == 1
    finally:
        cv2.setNumThreads(cv_before)
