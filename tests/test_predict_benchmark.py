"""benchmarks/predict.py, the README's *Prediction speed* command, run end to end on a small generated
set: every variant (torch / onnxruntime, every map projected or not, int8 with its calibration on
the training images) times, scores AP, and prints each variant's AP against the official protocol
with a paired bootstrap interval. The change to typed params sections broke the script's int8 and
AP paths (a dict where a section was expected, and the reverse) without any test noticing; this one
runs them."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pose.models import build_model, init_weights

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_prediction_benchmark_times_and_scores_every_variant(tmp_path, generated_coco):
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["evaluate"]["input_size"] = 128
    p["predict"]["int8_calibration_images"] = 2
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(p, sort_keys=False))
    model_params = dict(p["model"], width=8, stage_blocks=[1, 1, 1], pretrained="", pretrained_backbone="")
    torch.manual_seed(0)
    model = init_weights(build_model(model_params), "kaiming")
    checkpoint = tmp_path / "best.pt"
    torch.save({"model": model.state_dict(), "model_params": json.dumps(model_params)}, checkpoint)

    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "predict.py"), "--params", str(params), "--size", "64",
         "--images", "1", "--warmup", "0", "--widths", "8", "--checkpoint", str(checkpoint), "--video-frames", "1",
         "--threads", "1", "--variants", "torch-maps", "onnx", "int8", "--ap", "--coco", str(generated_coco),
         "--generated", str(generated_coco)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    rows = {m.group(1): m.group(2).split() for m in re.finditer(r"^W8\s+(torch-maps|onnx|int8)\s+(.*)$", out, re.M)}
    assert set(rows) == {"torch-maps", "onnx", "int8"}, out
    for name, cells in rows.items():
        # 5 stages x (p50, p90), persons, video fps, decode share, AP generated, AP coco
        assert len(cells) == 15, (name, cells)
        # an untrained net finds peaks everywhere, so its decode share has no useful upper bound
        share = float(cells[12].rstrip("%"))
        assert share >= 0.0 and math.isfinite(share), (name, cells)
        assert all(0.0 <= float(c) <= 1.0 for c in cells[13:]), (name, cells)
    for name in ("onnx", "int8"):
        line = next(ln for ln in out.splitlines() if ln.startswith(f"W8 {name}: AP minus torch-maps"))
        assert re.search(r"generated val [+-]\d\.\d{4}( \[[+-]\d\.\d{4}, [+-]\d\.\d{4}\])?;", line), line
    assert "image 1/1" in proc.stderr   # progress with the time left (issue 20, item 7)
