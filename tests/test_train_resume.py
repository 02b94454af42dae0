"""An interrupted training run resumes under `dvc repro` and the flow (issue 19, item 2), for real:
a tiny generated config in a temporary repo copy (tests/repo_setup.py), real `dvc repro` processes
killed with real signals.

* the stage's process group gets SIGTERM mid-epoch: `pose train` writes last.pt at the step
  boundary; then only dvc's process is SIGKILLed: `pose train` notices, writes last.pt and exits
  (no orphan trains on); each rerun of `dvc repro` resumes at the saved step, and the final
  weights equal an uninterrupted run's, bit for bit;
* a run interrupted with one train param and rerun with another starts fresh, says why in one
  line, and ends like a run that never saw the other param;
* SIGKILL of the Prefect flow process (python -m flows.retrain) while it trains: neither its dvc
  nor its `pose train` keeps running.

Marked slow (about 2-3 minutes on 2 cores); CI runs them.
"""

from __future__ import annotations

import csv
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from repo_setup import BIN, make_repo_copy, pipeline_env, tiny_generated_params

from pose.train.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

#: 12 training images in batches of 2: 6 steps per epoch, 2 epochs, validation on 3 images after each
STEPS = 12
RESUME_PARAMS = {"train.batch_size": 2, "train.max_steps_per_epoch": 0, "train.checkpoint_every": 0,
                 "train.curriculum": [{"sizes": [128], "epochs": 2}], "train.val_every": 1,
                 "train.val_max_images": 3}


class Repro:
    """`dvc repro ARGS` in its own process group (session), stdout+stderr lines on a queue."""

    def __init__(self, repo: Path, *args: str, env: dict | None = None):
        self.proc = subprocess.Popen([str(BIN / "dvc"), "repro", *args], cwd=repo, env=env or pipeline_env(),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.lines: list[str] = []
        self._q: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self._q.put(line)
        self._q.put(None)

    def wait_for(self, pattern: str, timeout: float = 300) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._q.get(timeout=0.1)
            except queue.Empty:
                continue
            if line is None:
                break
            self.lines.append(line)
            m = re.search(pattern, line)
            if m:
                return m
        self.stop()
        raise AssertionError(f"never saw {pattern!r}:\n" + "".join(self.lines[-40:]))

    def finish(self, timeout: float = 300) -> str:
        """Wait until every process writing to the pipe closed it (dvc and its children); all output."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._q.get(timeout=0.1)
            except queue.Empty:
                continue
            if line is None:
                self.proc.wait(timeout=30)
                return "".join(self.lines)
            self.lines.append(line)
        self.stop()
        raise AssertionError("output did not end:\n" + "".join(self.lines[-40:]))

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)


def _processes_in(repo: Path) -> list[tuple[int, str]]:
    """Live (not zombie) processes whose working directory is ``repo``: (pid, command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if Path(os.readlink(entry / "cwd")) != repo.resolve():
                continue
            if (entry / "stat").read_text().rpartition(")")[2].split()[0] in ("Z", "X"):
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        found.append((int(entry.name), cmd))
    return found


def _wait_until_none_left(repo: Path, timeout: float) -> float:
    """Seconds until no process runs in ``repo`` any more; fails listing them after ``timeout``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if not _processes_in(repo):
            return time.monotonic() - t0
        time.sleep(0.2)
    left = _processes_in(repo)
    for pid, _ in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    raise AssertionError(f"still running {timeout:.0f} s after the kill: {left}")


def _steps(repo: Path) -> list[int]:
    with (repo / "data/plots/train_steps.csv").open() as fh:
        return [int(r["step"]) for r in csv.DictReader(fh)]


def _assert_same_weights(a: Path, b: Path) -> None:
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert ca["model"].keys() == cb["model"].keys()
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), f"{a.name}: tensor {k} differs"
    assert a.read_bytes() == b.read_bytes(), f"{a.name}: same weights, other bytes"


def _set_lr(repo: Path, lr: float) -> None:
    p = yaml.safe_load((repo / "params.yaml").read_text())
    p["train"]["lr"] = lr
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


@pytest.fixture
def repo(tmp_path) -> Path:
    return make_repo_copy(tmp_path / "repo", tiny_generated_params(RESUME_PARAMS, floor=0.0))


def _reference(repo: Path, tmp_path: Path) -> Path:
    """An uninterrupted `dvc repro train`; its models and CSVs copied to tmp_path/reference."""
    out = Repro(repo, "train").finish()
    assert f"step {STEPS}/{STEPS} " in out and "starting fresh: no data/models/last.pt" in out, out[-3000:]
    ref = tmp_path / "reference"
    ref.mkdir()
    for name in ("data/models/last.pt", "data/models/best.pt", "data/plots/val_epochs.csv"):
        (ref / Path(name).name).write_bytes((repo / name).read_bytes())
    return ref


def test_killed_dvc_repro_resumes_at_the_saved_step_with_identical_weights(repo, tmp_path):
    ref = _reference(repo, tmp_path)
    metrics = repo / "data/metrics/train.json"
    metrics_before = metrics.read_bytes()

    # 1. the stage's process group gets SIGTERM mid-epoch 0 (kill, a preempted node, Ctrl-C)
    run = Repro(repo, "--single-item", "--force", "train")
    run.wait_for(r"finished run of the same inputs")   # --force: a finished last.pt is not resumed
    run.wait_for(rf"^step 3/{STEPS} ")
    os.killpg(run.proc.pid, signal.SIGTERM)
    out = run.finish()
    saved = int(re.search(rf"SIGTERM: stopping after step (\d+)/{STEPS}, checkpoint data/models/last.pt", out)[1])
    assert 3 <= saved < STEPS // 2, out[-2000:]
    assert re.search(r"interrupted: training interrupted \(SIGTERM\)", out), out[-2000:]
    _wait_until_none_left(repo, 30)
    ck = load_checkpoint(repo / "data/models/last.pt")
    assert (ck["global_step"], ck["epoch"], ck["batch_in_epoch"]) == (saved, 0, saved)
    assert metrics.read_bytes() == metrics_before, "an interrupted run must not write the metrics"

    # 2. rerun: resumes at that step; then only dvc's own process is SIGKILLed: no orphan trains on
    run = Repro(repo, "train")
    run.wait_for(rf"resumed from data/models/last.pt: epoch 0 batch {saved} step {saved}$")
    first = run.wait_for(rf"^step (\d+)/{STEPS} ")
    assert int(first[1]) == saved + 1
    run.wait_for(rf"^step {saved + 3}/{STEPS} ")
    os.kill(run.proc.pid, signal.SIGKILL)
    t_kill = time.monotonic()
    out = run.finish(timeout=60)
    stopped = time.monotonic() - t_kill
    m = re.search(rf"parent process \d+ \(dvc\) ended: stopping after step (\d+)/{STEPS}", out)
    assert m, out[-2000:]
    saved2 = int(m[1])
    assert saved + 3 <= saved2 < STEPS and stopped < 30, (saved2, stopped)
    _wait_until_none_left(repo, 30)
    assert metrics.read_bytes() == metrics_before
    assert load_checkpoint(repo / "data/models/last.pt")["global_step"] == saved2

    # 3. rerun to the end: same weights, validations and best.pt as the uninterrupted run
    ck = load_checkpoint(repo / "data/models/last.pt")
    out = Repro(repo, "train").finish()
    assert f"resumed from data/models/last.pt: epoch {ck['epoch']} batch {ck['batch_in_epoch']} step {saved2}" in out
    assert f"step {saved2}/{STEPS} " not in out and f"step {saved2 + 1}/{STEPS} " in out
    assert _steps(repo) == list(range(1, STEPS + 1))
    for name in ("last.pt", "best.pt"):
        _assert_same_weights(repo / "data/models" / name, ref / name)
    assert (repo / "data/plots/val_epochs.csv").read_bytes() == (ref / "val_epochs.csv").read_bytes()
    assert metrics.read_bytes() != metrics_before
    status = subprocess.run([str(BIN / "dvc"), "status", "train"], cwd=repo, env=pipeline_env(),
                            capture_output=True, text=True)
    assert "changed" not in status.stdout, status.stdout


def test_other_train_params_start_fresh_and_say_why(repo, tmp_path):
    ref = _reference(repo, tmp_path)
    # interrupted with another learning rate ...
    _set_lr(repo, 0.002)
    run = Repro(repo, "train")
    run.wait_for(r"starting fresh, not resuming data/models/last.pt: it was written by other train inputs: "
                 r"params train.lr 0.003 -> 0.002$")
    run.wait_for(rf"^step 4/{STEPS} ")
    os.killpg(run.proc.pid, signal.SIGTERM)
    run.finish()
    assert load_checkpoint(repo / "data/models/last.pt")["global_step"] >= 4
    # ... and rerun with the original one: from step 1, ending like the uninterrupted run
    _set_lr(repo, 0.003)
    out = Repro(repo, "train").finish()
    reasons = [ln for ln in out.splitlines() if ln.startswith("starting fresh")]
    assert reasons == ["starting fresh, not resuming data/models/last.pt: it was written by other train inputs: "
                       "params train.lr 0.002 -> 0.003"], out[-3000:]
    assert "resumed from" not in out and f"step 1/{STEPS} " in out
    for name in ("last.pt", "best.pt"):
        _assert_same_weights(repo / "data/models" / name, ref / name)


def test_sigkill_of_the_flow_leaves_no_training_process(tmp_path):
    """`python -m flows.retrain` SIGKILLed while its train stage runs (it cannot forward anything):
    its `dvc repro` and `pose train` end within seconds, last.pt holds the step reached."""
    # one epoch of 240 steps (480 images): no epoch-end checkpoint before the kill, so a last.pt can only
    # come from the stop at a step boundary
    params = {**RESUME_PARAMS, "generated.num_train": 480, "train.curriculum": [{"sizes": [128], "epochs": 1}]}
    repo = make_repo_copy(tmp_path / "repo", tiny_generated_params(params, floor=0.0))
    metrics = repo / "data/metrics/train.json"
    metrics_before = metrics.read_bytes() if metrics.exists() else None

    def ours() -> list[tuple[int, str]]:
        return [(pid, cmd) for pid, cmd in _processes_in(repo) if "pose train" in cmd or "dvc repro" in cmd]

    env = pipeline_env(PREFECT_HOME=str(tmp_path / "prefect_home"))
    flow = subprocess.Popen([sys.executable, "-m", "flows.retrain", str(repo)], cwd=repo, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not any("pose train" in cmd for _, cmd in ours()):
            assert flow.poll() is None, "the flow ended before training started"
            assert time.monotonic() < deadline, "training never started"
            time.sleep(0.2)
        time.sleep(5)  # a few steps
        os.kill(flow.pid, signal.SIGKILL)
        flow.wait(timeout=30)
        t0 = time.monotonic()
        while ours() and time.monotonic() - t0 < 30:
            time.sleep(0.2)
        left = ours()
        took = time.monotonic() - t0
    finally:
        try:
            os.killpg(flow.pid, signal.SIGKILL)   # whatever else the flow started (its Prefect API server)
        except ProcessLookupError:
            pass
    assert not left, f"still running 30 s after the flow was SIGKILLed: {left}"
    ck = load_checkpoint(repo / "data/models/last.pt")
    assert 0 < ck["global_step"] < 240 and ck["epoch"] == 0 and ck["batch_in_epoch"] == ck["global_step"]
    assert (metrics.read_bytes() if metrics.exists() else None) == metrics_before
    print(f"\nflow SIGKILLed at training step ~{ck['global_step']}: its dvc and pose train gone after {took:.1f} s")
