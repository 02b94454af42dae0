"""The `pose` command line as a person meets it: help text on every option, `--version`, params
checked first by every command, one plain line per user error (no traceback, no colour codes,
no raw warnings), `check-scales` listing its violations, `predict` checking its inputs before
loading a model and leaving no output folder behind on failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
import yaml
from conftest import REPO
from typer.testing import CliRunner

from pose.cli import app

BIN = Path(sys.executable).parent
RUNNER = CliRunner()
BASE = yaml.safe_load((REPO / "params.yaml").read_text())
ANSI = "\x1b["


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", DO_NOT_TRACK="1")
    env.pop("FORCE_COLOR", None)
    return env


def _pose(*args, cwd: Path = REPO) -> tuple[subprocess.CompletedProcess, float]:
    """Run the installed `pose` console script (stdout / stderr are pipes, not a terminal)."""
    t0 = time.perf_counter()
    proc = subprocess.run([str(BIN / "pose"), *map(str, args)], cwd=cwd, env=_env(), capture_output=True, text=True)
    return proc, time.perf_counter() - t0


def _params_file(tmp_path: Path, name: str = "params.yaml", mutate=None) -> Path:
    p = json.loads(json.dumps(BASE))
    if mutate:
        mutate(p)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(p, sort_keys=False))
    return path


def _lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def _commands() -> dict:
    return typer.main.get_command(app).commands


# ----------------------------------------------------------------------------- help, version

def test_every_option_and_argument_has_help_text():
    group = typer.main.get_command(app)
    missing = [f"pose --{p.name}" for p in group.params if p.name != "help" and not getattr(p, "help", None)]
    for name, cmd in group.commands.items():
        assert cmd.help, f"pose {name} has no description"
        for p in cmd.params:
            if p.name != "help" and not (getattr(p, "help", None) or "").strip():
                missing.append(f"pose {name} {'/'.join(getattr(p, 'opts', [p.name]))}")
    assert not missing, f"options without help text: {missing}"


def test_version():
    proc, _ = _pose("--version")
    assert proc.returncode == 0, proc.stderr
    import pose

    assert proc.stdout.strip() == f"pose {pose.__version__}"


def test_no_arguments_prints_help():
    proc, _ = _pose()
    assert proc.returncode == 0
    assert "check-params" in proc.stdout and "train" in proc.stdout and ANSI not in proc.stdout


# ----------------------------------------------------------------------------- params first

BAD = {
    "train.lr": lambda p: p["train"].update(lr=-0.1),
    "train.curriculum[1].sizes[2]": lambda p: p["train"]["curriculum"][1]["sizes"].append(136),
    "train.curriculum[0].sizes": lambda p: p["train"]["curriculum"][0].update(sizes=[]),
}


def _dummy_args(cmd) -> list[str]:
    """Values for a command's required parameters (never reached: params fail first)."""
    args: list[str] = []
    for p in cmd.params:
        if not p.required:
            continue
        if p.param_type_name == "argument":
            args.append("x")
        else:
            args += [p.opts[0], "x"]
    return args


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_command_checks_params_before_anything_else(tmp_path, name):
    cmd = _commands()[name]
    assert any(p.name == "params_file" for p in cmd.params), f"pose {name} has no --params"
    bad = _params_file(tmp_path, mutate=BAD["train.lr"])
    res = RUNNER.invoke(app, [name, *_dummy_args(cmd), "--params", str(bad)])
    assert res.exit_code == 2, (name, res.output)
    assert _lines(res.stderr) == [f"error: {bad}: train.lr = -0.1: must be > 0"], res.output
    assert not res.stdout.strip() and ANSI not in res.output


@pytest.mark.parametrize("key", sorted(BAD))
def test_bad_params_fail_in_one_line_within_10_s(tmp_path, key):
    """The issue's cases through the real console script: one stderr line naming the key, exit 2."""
    bad = _params_file(tmp_path, mutate=BAD[key])
    proc, elapsed = _pose("train", "--train-ann", tmp_path / "a.json", "--train-images", tmp_path,
                          "--out-dir", tmp_path / "models", "--params", bad)
    assert proc.returncode == 2, proc.stderr
    lines = _lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: {key} = "), proc.stderr
    assert "Traceback" not in proc.stderr and ANSI not in proc.stderr and not proc.stdout
    assert not (tmp_path / "models").exists()
    assert elapsed < 10, elapsed


def test_check_params_marker_is_the_same_for_every_valid_file(tmp_path):
    a = _params_file(tmp_path, "a.yaml")
    b = _params_file(tmp_path, "b.yaml", mutate=lambda p: p["train"].update(lr=0.01))
    for src, out in ((a, tmp_path / "a.json"), (b, tmp_path / "b.json")):
        res = RUNNER.invoke(app, ["check-params", "--params", str(src), "--out", str(out)])
        assert res.exit_code == 0, res.output
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert json.loads((tmp_path / "a.json").read_text()) == {"ok": True}
    bad = _params_file(tmp_path, "bad.yaml", mutate=BAD["train.lr"])
    res = RUNNER.invoke(app, ["check-params", "--params", str(bad), "--out", str(tmp_path / "c.json")])
    assert res.exit_code == 2 and not (tmp_path / "c.json").exists()
    res = RUNNER.invoke(app, ["check-params", "--params", str(tmp_path / "none.yaml")])
    assert res.exit_code == 2 and "params file not found" in res.stderr


# ----------------------------------------------------------------------------- one plain line

def test_usage_errors_are_one_line():
    proc, _ = _pose("train", "--bogus")
    assert proc.returncode == 2
    assert _lines(proc.stderr) == ["error: pose train: No such option: --bogus (see 'pose train --help')"]
    proc, _ = _pose("predict")
    assert proc.returncode == 2
    lines = _lines(proc.stderr)
    assert len(lines) == 1 and "Missing argument" in lines[0] and "pose predict --help" in lines[0]


def test_errors_have_no_colour_codes_when_not_a_terminal(tmp_path):
    res = RUNNER.invoke(app, ["evaluate", "--annotations", "a", "--out", str(tmp_path / "m.json"),
                              "--params", str(REPO / "params.yaml")])
    assert res.exit_code == 1
    assert _lines(res.stderr) == ["error: give --results, or --checkpoint with --images"]
    assert ANSI not in res.output


def test_warnings_are_one_plain_line_and_mlflow_type_hint_warning_is_dropped():
    code = ("import warnings\n"
            "import pose.cli\n"
            "pose.cli._quiet_warnings()\n"
            "warnings.warn('\\x1b[33mAdd type hints to the `predict` method to enable ...\\x1b[0m', UserWarning)\n"
            "warnings.warn('first line\\n  second line', FutureWarning)\n"
            "import pose.serving.model  # defines the MLflow PythonModel: emits the type-hint warning\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert _lines(proc.stderr) == ["warning: first line; second line (FutureWarning)"], proc.stderr


# ----------------------------------------------------------------------------- check-scales

def test_check_scales_prints_its_violations(tmp_path):
    kps = [0.0] * 51
    kps[0:3] = [50.0, 20.0, 2]     # nose inside the image
    kps[15:18] = [500.0, 40.0, 2]  # left shoulder far outside the 100 px wide image, labelled visible
    ann = {"images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 80}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "num_keypoints": 2,
                            "bbox": [10, 10, 60, 60], "area": 3600.0, "keypoints": kps}],
           "categories": [{"id": 1, "name": "person"}]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(ann))
    params = _params_file(tmp_path, mutate=lambda p: p["train"].update(curriculum=[{"sizes": [128], "epochs": 1}])
                          or p["evaluate"].update(input_size=128))
    res = RUNNER.invoke(app, ["check-scales", "--annotations", str(path), "--report", str(tmp_path / "r.json"),
                              "--params", str(params)])
    assert res.exit_code == 1, res.output
    lines = _lines(res.stderr)
    assert any(ln.startswith("  violation: size 128:") and "outside the 128x128 canvas" in ln for ln in lines), lines
    assert lines[-1].startswith("error: ") and "violation(s)" in lines[-1] and "r.json" in lines[-1]
    assert json.loads((tmp_path / "r.json").read_text())["ok"] is False


# ----------------------------------------------------------------------------- predict

def _predict_in_subprocess(args: list[str]) -> tuple[int, str, bool]:
    """(exit status, stderr, torch imported?) of `pose predict ...`."""
    code = ("import sys\n"
            "from pose.cli import main\n"
            f"sys.argv = ['pose', 'predict', *{args!r}]\n"
            "try:\n"
            "    main()\n"
            "except SystemExit as exc:\n"
            "    print(exc.code, 'torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True)
    status, torch_loaded = proc.stdout.split()[-2:]
    return int(status), proc.stderr, torch_loaded == "True"


@pytest.mark.parametrize("case", ["no-source", "bad-uri", "no-checkpoint", "bad-size", "bad-score"])
def test_predict_checks_inputs_before_loading_anything(tmp_path, case):
    img = tmp_path / "img.png"
    img.write_bytes(b"not read")
    ck = tmp_path / "best.pt"
    ck.write_bytes(b"not read")
    out = tmp_path / "out"
    args, expect = {
        "no-source": ([str(tmp_path / "missing"), "--model", str(ck)], "no such image or folder"),
        "bad-uri": ([str(img), "--model", "models:/higherhrnet"], "--model 'models:/higherhrnet': not a model ref"),
        "no-checkpoint": ([str(img), "--model", str(tmp_path / "nope.pt")], "no such checkpoint file"),
        "bad-size": ([str(img), "--model", str(ck), "--input-size", "136"], "--input-size = 136: must be a positive"),
        "bad-score": ([str(img), "--model", str(ck), "--min-score", "1.5"], "--min-score 1.5: must be in [0, 1]"),
    }[case]
    status, stderr, torch_loaded = _predict_in_subprocess([*args, "--out-dir", str(out)])
    assert status == (2 if case.startswith("bad-") and case != "bad-uri" else 1), stderr
    lines = _lines(stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], stderr
    assert not torch_loaded, "inputs must be checked before torch / the model is loaded"
    assert not out.exists()


def test_predict_failure_leaves_no_output_folder(tmp_path):
    import numpy as np
    from PIL import Image

    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "img.png")
    ck = tmp_path / "best.pt"
    ck.write_bytes(b"this is not a checkpoint")
    out = tmp_path / "predictions"
    proc, _ = _pose("predict", tmp_path / "img.png", "--model", ck, "--out-dir", out)
    assert proc.returncode == 1, proc.stderr
    lines = _lines(proc.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"error: {ck}"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists(), "a failed predict must not leave an (empty) output folder"


# ----------------------------------------------------------------------------- crash handler

#: a sitecustomize (on PYTHONPATH of the `pose` process only) that replaces POSE_TEST_FAULT
#: ("module:function") with a function raising an exception no command handles
_FAULT_SITECUSTOMIZE = '''
import importlib, os
spec = os.environ.get("POSE_TEST_FAULT")
if spec:
    class InjectedFault(Exception):
        pass

    def _fault(*args, **kwargs):
        raise InjectedFault("disk on fire")

    module, _, name = spec.partition(":")
    setattr(importlib.import_module(module), name, _fault)
'''

#: one injected failure per command: the library function the command calls, and its arguments
#: (files that only need to exist are created by the test)
CRASHES = {
    "fetch": ("pose.datasets.fetch:fetch_dataset", ["--out", "out"]),
    "ingest": ("pose.datasets.ingest:ingest_batch", ["--batch", "batch", "--into", "raw"]),
    "validate": ("pose.quality.validate:validate_dataset",
                 ["--annotations", "a.json", "--images", "img", "--report", "r.json"]),
    "train": ("pose.train.loop:train", ["--train-ann", "a.json", "--train-images", "img", "--out-dir", "models"]),
    "evaluate": ("pose.evaluate.coco:evaluate_keypoints",
                 ["--annotations", "a.json", "--results", "results.json", "--out", "eval.json"]),
    "register": ("pose.registry.mlflow_registry:register_run",
                 ["--checkpoint", "model.pt", "--metrics", "eval.json", "--eval-annotations", "a.json",
                  "--eval-images", "img", "--out", "reg.json"]),
    "promote": ("pose.registry.promotion:promote", []),
    "compare": ("pose.registry.compare:compare", ["v1", "v2", "--no-log"]),
    "predict": ("pose.predict:make_predictor", ["photo.jpg", "--model", "model.pt", "--out-dir", "pred"]),
    "export": ("pose.predict:load_model", ["--model", "model.pt", "--out", "model.onnx"]),
}
#: where the library function is called, when not in the command itself (the innermost `pose` frame the line names)
CRASH_SITES = {"evaluate": "pose/evaluate/scoring.py", "predict": "pose/predict.py", "export": "pose/export.py"}


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(CRASHES))
def test_an_unexpected_failure_is_one_error_line_and_a_traceback_log(tmp_path, command):
    """The real `pose` console script with a fault injected into the library function the command
    calls (data, train, evaluate, registry, predict / export families): one `error:` line naming
    the command, the exception and where it was raised, plus the log file holding the traceback;
    exit 1; no traceback on the terminal (it was two: the error and an AttributeError of the handler)."""
    target, args = CRASHES[command]
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_FAULT_SITECUSTOMIZE)
    work = tmp_path / "work"
    (work / "img").mkdir(parents=True)
    for name in ("a.json", "results.json", "eval.json"):
        (work / name).write_text("[]" if name == "results.json" else "{}")
    (work / "model.pt").write_bytes(b"not read: the fault comes first")
    (work / "photo.jpg").write_bytes(b"not read either")
    env = _env()
    env.update(PYTHONPATH=str(site), POSE_TEST_FAULT=target)
    env.pop("POSE_LOG_DIR", None)
    proc = subprocess.run([str(BIN / "pose"), command, *args, "--params", str(REPO / "params.yaml")], cwd=work,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    lines = _lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    logs = list((work / "data" / "logs").glob(f"pose-{command}-*.log"))
    assert len(logs) == 1, proc.stderr
    site = CRASH_SITES.get(command, "pose/cli.py")
    assert lines[0].startswith(f"error: pose {command} failed unexpectedly: InjectedFault: disk on fire ({site}:")
    assert lines[0].endswith(f"; full traceback: {Path('data/logs') / logs[0].name}"), lines[0]
    assert "Traceback" not in proc.stderr and ANSI not in proc.stderr
    text = logs[0].read_text()
    assert text.startswith(f"pose {command} ") and "Traceback (most recent call last)" in text
    assert "InjectedFault: disk on fire" in text and f"{target.split(':')[1]}" in text


def test_the_crash_log_falls_back_to_the_temp_folder(tmp_path, monkeypatch):
    """A working directory where data/logs cannot be written (here: `data` is a file) still gets a log."""
    from pose import cli, crash

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("POSE_LOG_DIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    (tmp_path / "data").write_text("a file, not a folder")
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    try:
        raise KeyError("x")
    except KeyError as exc:
        line = crash.crash_report(exc, ["train", "--params", "p.yaml"], one_line=cli._one_line)
    assert line.startswith("pose train failed unexpectedly: KeyError: 'x' (")
    log = Path(line.rsplit("full traceback: ", 1)[1])
    assert log.parent == tmp_path / "tmp" / "pose-logs" and "KeyError: 'x'" in log.read_text()
