"""benchmarks/seeds.py: the recipe over seeds and thread counts (issue 23), on a tiny config: every run
is `pose train` + `pose evaluate` in its own folder, the report has the per-run rows, mean / sd / min
and the paired bootstrap CI of every pair, and a second call skips the finished runs."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from repo_setup import pipeline_env, tiny_generated_params

ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("seeds_script", ROOT / "benchmarks" / "seeds.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


seeds = _load_script()


def test_run_params_sets_seed_overrides_and_budget_without_touching_params():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    before = json.dumps(params, sort_keys=True)
    p = seeds.run_params(params, seed=7, overrides=seeds.parse_set(["train.lr=0.002", "train.ema_decay=0.99"]),
                         max_steps_per_epoch=4)
    assert p["train"]["seed"] == 7 and p["train"]["lr"] == 0.002 and p["train"]["ema_decay"] == 0.99
    assert p["train"]["max_steps_per_epoch"] == 4 and json.dumps(params, sort_keys=True) == before
    with pytest.raises(KeyError, match="train.no_such_key"):
        seeds.run_params(params, seed=1, overrides={"train.no_such_key": 1}, max_steps_per_epoch=None)
    with pytest.raises(ValueError, match="KEY=VALUE"):
        seeds.parse_set(["train.lr"])
    s = seeds.stats([0.5, 0.6, 0.7])
    assert s["mean"] == pytest.approx(0.6) and s["sd"] == pytest.approx(0.1) and s["min"] == 0.5


@pytest.mark.slow
def test_two_seeds_and_a_thread_run_then_skip_on_rerun(tmp_path):
    params = tiny_generated_params({"train.max_steps_per_epoch": 1, "train.val_every": 1, "train.val_max_images": 2},
                                   floor=None)
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(params, sort_keys=False))
    work = tmp_path / "work"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "seeds.py"), "--params", str(pfile), "--work", str(work),
           "--seeds", "3", "4", "--threads", "1", "--extra-threads", "2"]
    proc = subprocess.run(cmd, cwd=ROOT, env=pipeline_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for name in ("seed3-t1", "seed4-t1", "seed3-t2"):
        rec = json.loads((work / name / "run.json").read_text())
        evaluated = json.loads((work / name / "eval.json").read_text())
        assert rec["metrics"]["AP"] == evaluated["AP"] and rec["steps"] == 1, rec
        assert f"| {name} | " in out
    assert json.loads((work / "seed3-t2" / "train.json").read_text())["torch_threads"] in (1, 2)
    assert "| AP | " in out and "| seed3-t1 | seed4-t1 | " in out and "| seed4-t1 | seed3-t2 | " in out
    report = json.loads((work / "seeds.json").read_text())
    assert report["complete"] and len(report["runs"]) == 3 and len(report["pairs"]) == 3
    assert report["summary"]["AP"]["n"] == 3

    again = subprocess.run(cmd, cwd=ROOT, env=pipeline_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("(skipped)") == 3 and "training" not in again.stdout
