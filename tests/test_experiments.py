"""Experiments are first-class (README section 4): metrics and plot data are versioned in git,
a failed stage keeps them, and `dvc plots show` / `dvc plots diff` render offline.

The fast tests read dvc.yaml, .gitignore and .dvc/config. The slow ones run README section 4
on a tiny generated config in a temporary repo copy: two `dvc exp run -S ...` experiments
(train.lr 0.001 and 0.01, registered under a sweep model name), then `dvc exp show --json`,
`dvc exp diff`, `dvc metrics diff`, `dvc plots diff`, the way back to the baseline, and a train
stage that fails on an invalid annotation file (about 2-3 minutes on 2 cores; timings are
printed with `pytest -s`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from repo_setup import BIN, REPO, make_repo_copy, pipeline_env, set_param, tiny_generated_params

#: the two experiments of the slow tests: name -> train.lr
EXPERIMENTS = {"lr-0.001": 0.001, "lr-0.01": 0.01}
#: README section 4: sweeps register under their own model name ({dataset} = data.dataset)
SWEEP_MODEL = "higherhrnet-{dataset}-sweep"
#: the git-tracked results of the train and evaluate stages (cache: false, persist: true)
RESULTS = ["data/metrics/train.json", "data/metrics/eval.json", "data/metrics/efficiency.json",
           "data/plots/train_steps.csv", "data/plots/eval/per_keypoint_ap.csv", "data/plots/eval/ap_per_scale.csv"]


def _run(cmd: list[str], cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=pipeline_env(), capture_output=True, text=True)
    if ok:
        assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}"
    return proc


def _dvc(*args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    return _run([str(BIN / "dvc"), *args], cwd, ok=ok)


def _dvc_outputs() -> list[tuple[str, str, dict]]:
    """(stage, path, options) of every `outs` / `metrics` / `plots` entry of dvc.yaml whose path is
    not templated (the templated ones are data/raw/<dataset> folders, DVC-cached)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    found = []
    for name, stage in stages.items():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                path, opts = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
                if "${" not in path:
                    found.append((name, path, opts or {}))
    return found


def _git_ignored(paths: list[str]) -> set[str]:
    proc = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=REPO, input="\n".join(paths),
                          capture_output=True, text=True)
    assert proc.returncode in (0, 1), proc.stderr
    return set(proc.stdout.split())


def test_metrics_and_plot_data_are_committed_and_survive_a_failed_stage():
    outputs = _dvc_outputs()
    results = [(s, p, o) for s, p, o in outputs if p.startswith(("data/metrics/", "data/plots/"))]
    assert {p for _, p, _ in results} >= set(RESULTS)
    ignored = _git_ignored([p for _, p, _ in outputs])
    for stage, path, opts in results:
        if opts.get("cache", True):
            # DVC-cached (overlays.png): git must not track it as well
            assert path in ignored, f"{stage}: {path} is DVC-cached but not git-ignored"
            continue
        assert path not in ignored, f"{stage}: {path} is git-ignored, so experiment commits would lack it"
        assert opts.get("persist") is True, \
            f"{stage}: {path} lacks persist: true (DVC deletes it before the stage runs)"
    for stage, path, opts in outputs:
        if opts.get("cache", True):
            assert path in ignored, f"{stage}: cached output {path} is not git-ignored"


def _plots_template() -> Path:
    config = subprocess.run([str(BIN / "dvc"), "config", "plots.html_template"], cwd=REPO, env=pipeline_env(),
                            capture_output=True, text=True, check=True).stdout.strip()
    return REPO / ".dvc" / config


def test_plots_page_template_is_offline_and_current():
    page = _plots_template().read_text(encoding="utf-8")
    assert "{plot_divs}" in page and "{scripts}" not in page  # no CDN <script src=...> tags
    assert not re.search(r"<script[^>]*\bsrc=", page)
    assert "window.vegaEmbed=" in page
    pytest.importorskip("vl_convert", reason="vl-convert-python (dev extra) regenerates the template")
    from pose.dvc_plots import offline_template

    assert page == offline_template(), "stale .dvc/plots_offline.html: run `python -m pose.dvc_plots`"


def test_dvc_plots_show_page_needs_no_network(tmp_path):
    """`dvc plots show` in a throwaway repo with this repo's .dvc/config: Vega inlined, no CDN."""
    shutil.copytree(REPO / ".dvc", tmp_path / ".dvc", ignore=shutil.ignore_patterns("cache", "tmp", "config.local"))
    (tmp_path / "steps.csv").write_text("step,loss\n1,0.5\n2,0.25\n")
    (tmp_path / "dvc.yaml").write_text("plots:\n  - steps.csv:\n      x: step\n      y: loss\n")
    _run(["git", "init", "-q"], tmp_path)
    _dvc("plots", "show", "-o", "out", cwd=tmp_path)
    html = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]*\bsrc=", html), "the page loads scripts from elsewhere"
    assert "window.vegaEmbed=" in html and "vegaEmbed('#" in html and '"loss"' in html


def _plots_repo(tmp_path: Path) -> Path:
    """A throwaway repo with this repo's .dvc (plot templates, page), dvc.yaml and params.yaml, and the
    evaluate stage's plot files written by `pose.evaluate.plots` from metrics with ranges that have no
    ground truth (COCO's -1), plus a steps CSV whose input size changes (the curriculum)."""
    from pose.evaluate.plots import write_eval_plots

    shutil.copytree(REPO / ".dvc", tmp_path / ".dvc", ignore=shutil.ignore_patterns("cache", "tmp", "config.local"))
    for f in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / f, tmp_path / f)
    plots = tmp_path / "data" / "plots"
    (plots / "eval").mkdir(parents=True)
    # eval.json stores these with sorted keys: the plots must not keep that order
    metrics = {"AP": 0.5, "per_keypoint_AP": {k: 0.3 + 0.01 * i for i, k in enumerate(sorted(
                   ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
                    "right_knee", "left_ankle", "right_ankle"]))},
               "AP_by_area": {"0-32": 0.6, "128-192": -1.0, "192+": -1.0, "32-64": 0.5, "64-96": 0.4, "96-128": -1.0,
                              "large": -1.0, "medium": 0.55},
               "num_gt_by_area": {"0-32": 5, "32-64": 9, "64-96": 2, "medium": 11}}
    write_eval_plots(metrics, plots / "eval")
    import cv2
    import numpy as np

    cv2.imwrite(str(plots / "eval" / "overlays.png"), np.full((960, 960, 3), 128, np.uint8))  # as wide as the real one
    (plots / "train_steps.csv").write_text("step,epoch,input_size,loss,heatmap_4,heatmap_2,push,pull,lr,images_per_s\n"
                                           + "".join(f"{i},0,{160 if i < 3 else 192},0.5,0.4,0.1,0.01,0.0,0.001,"
                                                     f"{20 + i}\n" for i in range(1, 6)))
    (plots / "val_epochs.csv").write_text("epoch,AP,AP50\n0,0.1,0.3\n1,0.2,0.4\n")
    _run(["git", "init", "-q"], tmp_path)
    return tmp_path


def test_dvc_plots_draw_what_the_numbers_mean(tmp_path):
    """`dvc plots show` of dvc.yaml's plots, rendered with Vega (vl-convert): AP per person scale has no
    negative bar for -1 ("no ground truth" instead) and keeps COCO's order, AP per keypoint keeps the
    joint order, throughput and input size have their own axes, and PNGs fit the page (never cut off)."""
    vlc = pytest.importorskip("vl_convert", reason="vl-convert-python (dev extra) renders the Vega specs")
    repo = _plots_repo(tmp_path)
    shown = json.loads(_dvc("plots", "show", "--json", cwd=repo).stdout)
    assert not shown.get("errors"), shown.get("errors")
    specs = {pid: entries[0]["content"] for pid, entries in shown["data"].items()
             if entries and entries[0].get("type") == "vega"}

    def texts(svg: str) -> list[str]:
        return [t for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg)]

    scale_svg = vlc.vegalite_to_svg(specs["eval_ap_per_scale"])
    labels = texts(scale_svg)
    order = ["medium", "large", "0-32", "32-64", "64-96", "96-128", "128-192", "192+"]
    assert [t for t in labels if t in order] == order, labels                  # COCO ranges first, bins by size
    assert labels.count("no ground truth") == 4, labels                        # large, 96-128, 128-192, 192+
    assert not any(t.startswith(("-", "−")) for t in labels), labels           # no negative axis: no -1 bar
    kp_labels = [t for t in texts(vlc.vegalite_to_svg(specs["eval_ap_per_keypoint"])) if "_" in t or t == "nose"]
    assert kp_labels[:5] == ["nose", "left_eye", "right_eye", "left_ear", "right_ear"], kp_labels
    assert kp_labels[-1] == "right_ankle", kp_labels
    throughput = texts(vlc.vegalite_to_svg(specs["throughput"]))
    assert "images per second" in throughput and "input size (px)" not in throughput
    assert max(float(t) for t in throughput if re.fullmatch(r"\d+(\.\d+)?", t)) < 100    # not the 160-192 px axis
    assert "input size (px)" in texts(vlc.vegalite_to_svg(specs["input_size"]))
    # the PNG panels: DVC's markup and the page's style that scales them to the window
    _dvc("plots", "show", "-o", "out", cwd=repo)
    page = (repo / "out" / "index.html").read_text(encoding="utf-8")
    assert re.search(r'id="[^"]*_png"', page), "DVC's image divs changed: the page style no longer applies"
    assert 'div[id$="_png"] img' in page and "max-width: 100%" in page


# ---------------------------------------------------------------------------------------------
# slow: README section 4 in a temporary repo copy


def tiny_params() -> dict:
    """The tiny generated config (tests/repo_setup.py) without pushes or validation during training;
    the AP floor of params.yaml is kept."""
    p = tiny_generated_params({"schedule.push": False}, floor=None)
    if "val_every" in p["train"]:
        set_param(p, "train.val_every", 0)
    return p


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> dict:
    """Two workspace experiments, as README section 4 runs them (the first one runs the whole
    graph, the second train, evaluate and register); returns the repo, the committed
    params.yaml and timings. (No baseline `dvc repro`: it would add a minute.)"""
    repo = make_repo_copy(tmp_path_factory.mktemp("sweep"), tiny_params())
    conf = repo / "conf" / "config.yaml"
    if conf.exists():  # DVC's Hydra composition rebuilds params.yaml from conf/ on every `dvc exp run`
        from pose.presets import config_text

        conf.write_text(config_text(repo / "params.yaml"))
        _run(["git", "commit", "-qam", "tiny conf"], repo)
    timings = {}
    committed_params = (repo / "params.yaml").read_bytes()
    for name, lr in EXPERIMENTS.items():
        t0 = time.perf_counter()
        _dvc("exp", "run", "-n", name, "-S", f"train.lr={lr}", "-S", f"registry.model_name='{SWEEP_MODEL}'",
             cwd=repo)
        timings[f"dvc exp run {name}"] = time.perf_counter() - t0
    print("\n[timing] " + ", ".join(f"{n} {t:.1f} s" for n, t in timings.items()))
    return {"repo": repo, "committed_params": committed_params, "timings": timings}


def _exp_revs(show: list) -> dict[str, dict]:
    """name -> {"rev": commit, "data": {"params", "metrics", ...}} of every named revision
    (baseline and experiments) in `dvc exp show --json` output."""
    found = {}

    def walk(node):
        if isinstance(node, dict):
            if node.get("name") and isinstance(node.get("data"), dict):
                found[node["name"]] = node
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(show)
    return found


def _committed_ap(repo: Path, rev: str) -> float:
    """AP of data/metrics/eval.json as committed in revision ``rev`` (git versions the metrics)."""
    return json.loads(_run(["git", "show", f"{rev}:data/metrics/eval.json"], repo).stdout)["AP"]


@pytest.mark.slow
def test_exp_show_lists_both_experiments_ap(sweep):
    show = json.loads(_dvc("exp", "show", "--json", cwd=sweep["repo"]).stdout)
    revs = _exp_revs(show)
    assert set(EXPERIMENTS) <= set(revs), f"experiments in `dvc exp show`: {sorted(revs)}"
    for name, lr in EXPERIMENTS.items():
        data = revs[name]["data"]
        ap = data["metrics"]["data/metrics/eval.json"]["data"]["AP"]
        assert ap == _committed_ap(sweep["repo"], revs[name]["rev"]), (name, ap)   # the experiment's own eval.json
        assert data["params"]["params.yaml"]["data"]["train"]["lr"] == lr
        assert "final_loss" in data["metrics"]["data/metrics/train.json"]["data"]


@pytest.mark.slow
def test_metrics_diff_and_exp_diff_print_ap(sweep):
    a, b = EXPERIMENTS
    out = _dvc("metrics", "diff", "--all", a, b, cwd=sweep["repo"]).stdout
    assert re.search(r"^data/metrics/eval\.json\s+AP\s+[-\d.]+\s+[-\d.]+", out, re.M), out
    diff = json.loads(_dvc("metrics", "diff", "--all", "--json", a, b, cwd=sweep["repo"]).stdout)
    ap = diff["data/metrics/eval.json"]["AP"]
    revs = _exp_revs(json.loads(_dvc("exp", "show", "--json", cwd=sweep["repo"]).stdout))
    assert (ap["old"], ap["new"]) == (_committed_ap(sweep["repo"], revs[a]["rev"]),
                                      _committed_ap(sweep["repo"], revs[b]["rev"]))
    exp_diff = json.loads(_dvc("exp", "diff", "--json", a, b, cwd=sweep["repo"]).stdout)
    lr = exp_diff["params"]["params.yaml"]["train.lr"]
    assert (lr["old"], lr["new"]) == (EXPERIMENTS[a], EXPERIMENTS[b])


@pytest.mark.slow
def test_plots_diff_overlays_the_experiments_offline(sweep):
    repo = sweep["repo"]
    t0 = time.perf_counter()
    _dvc("plots", "diff", *EXPERIMENTS, "-o", "dvc_plots/sweep", cwd=repo)
    print(f"\n[timing] dvc plots diff: {time.perf_counter() - t0:.1f} s")
    html = (repo / "dvc_plots/sweep/index.html").read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]*\bsrc=", html), "the page loads scripts from elsewhere"
    assert "window.vegaEmbed=" in html
    specs = {spec["title"]["text"]: spec for spec in map(json.loads, re.findall(r"var spec = (\{.*?\});\n", html, re.S))
             if "title" in spec}  # (a plot whose CSV has no rows comes out as {})
    losses = specs["train_losses"]["data"]["values"]  # per-step rows of data/plots/train_steps.csv
    assert {row["rev"] for row in losses} == set(EXPERIMENTS), "both experiments' curves in the one plot"
    assert {"step", "loss"} <= set(losses[0])


@pytest.mark.slow
def test_sweep_registers_under_its_own_model_name(sweep):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{sweep['repo'] / 'mlflow.db'}")
    name = SWEEP_MODEL.format(dataset="generated")
    versions = client.search_model_versions(f"name='{name}'")
    assert len(versions) == len(EXPERIMENTS)


@pytest.mark.slow
def test_exp_run_writes_params_yaml_and_the_way_back(sweep):
    """What README section 4 says: `-S` writes the value into the workspace params.yaml, the
    experiment's commit records it with the metrics, `dvc exp apply` brings an experiment back
    into the workspace, and `git checkout params.yaml` restores the committed file."""
    repo = sweep["repo"]
    (first, _), (last, lr_last) = list(EXPERIMENTS.items())[0], list(EXPERIMENTS.items())[-1]
    assert yaml.safe_load((repo / "params.yaml").read_text())["train"]["lr"] == lr_last
    revs = _exp_revs(json.loads(_dvc("exp", "show", "--json", cwd=repo).stdout))
    for name, lr in EXPERIMENTS.items():
        shown = _run(["git", "show", f"{revs[name]['rev']}:params.yaml"], repo).stdout
        assert yaml.safe_load(shown)["train"]["lr"] == lr
    _dvc("exp", "apply", first, cwd=repo)
    for path in ("params.yaml", "data/metrics/eval.json", "data/plots/train_steps.csv"):
        committed = _run(["git", "show", f"{revs[first]['rev']}:{path}"], repo).stdout
        assert (repo / path).read_text() == committed, f"{path} is not {first}'s after `dvc exp apply {first}`"
    _run(["git", "checkout", "params.yaml"], repo)
    assert (repo / "params.yaml").read_bytes() == sweep["committed_params"]
    _dvc("exp", "apply", last, cwd=repo)  # the workspace as the sweep left it, for the test below


@pytest.mark.slow
def test_failed_train_stage_keeps_the_previous_metrics(sweep):
    repo = sweep["repo"]
    before = {p: (repo / p).read_bytes() for p in RESULTS}
    (repo / "data/validated/train.json").write_text('{"images": "not a list"}')
    t0 = time.perf_counter()
    proc = _dvc("repro", "--single-item", "train", cwd=repo, ok=False)
    print(f"\n[timing] failing train stage: {time.perf_counter() - t0:.1f} s")
    assert proc.returncode != 0, proc.stdout
    assert "failed to reproduce 'train'" in proc.stdout + proc.stderr
    for path, data in before.items():
        assert (repo / path).read_bytes() == data, f"{path} changed by the failed stage"


def _readme_command(prefix: str) -> str:
    """The README section 4 command starting with ``prefix`` (continuation lines joined)."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("### 4. Curriculum and multi-scale sweep"):text.index("## Training: validation")]
    lines = section.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(prefix):
            cmd = line
            while cmd.rstrip().endswith("\\"):
                i += 1
                cmd = cmd.rstrip()[:-1] + " " + lines[i].strip()
            return cmd.split("  #")[0].strip()
    raise AssertionError(f"README section 4 has no command starting with {prefix!r}")


@pytest.mark.slow
def test_readme_exp_show_prints_the_ap_of_every_experiment_without_a_terminal(sweep):
    """The README's `dvc exp show` command, run as a subprocess (no terminal, as in CI logs or a pipe):
    every experiment's row shows its AP (no `…` cells)."""
    repo = sweep["repo"]
    cmd = _readme_command("dvc exp show")
    assert "--md" in cmd and "--keep" in cmd, cmd
    proc = subprocess.run(["bash", "-c", cmd], cwd=repo, env=pipeline_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "…" not in proc.stdout, proc.stdout
    table = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in proc.stdout.splitlines()
             if ln.startswith("|")]
    header, rows = table[0], table[2:]
    assert {"Experiment", "AP", "AP50", "APM", "APL", "train.lr"} <= set(header), header
    revs = _exp_revs(json.loads(_dvc("exp", "show", "--json", cwd=repo).stdout))
    for name, lr in EXPERIMENTS.items():
        row = dict(zip(header, next(r for r in rows if f"[{name}]" in r[0])))
        ap = _committed_ap(repo, revs[name]["rev"])
        assert float(row["AP"]) == pytest.approx(ap, rel=1e-3, abs=1e-4), (name, row, ap)
        assert float(row["train.lr"]) == lr


@pytest.mark.slow
def test_exp_run_stopped_by_check_params_says_how_to_restore_params_yaml(sweep):
    """`dvc exp run -S train.lr=-0.1` stops at check_params and leaves the bad value in params.yaml:
    the error line says how to get back, and doing what it says makes params.yaml valid again."""
    repo = sweep["repo"]
    committed = _run(["git", "show", "HEAD:params.yaml"], repo).stdout
    for restore in ("git checkout params.yaml", "dvc exp apply HEAD"):
        proc = _dvc("exp", "run", "-S", "train.lr=-0.1", cwd=repo, ok=False)
        assert proc.returncode != 0
        errors = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("error: params.yaml")]
        assert len(errors) == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert errors[0].startswith("error: params.yaml: train.lr = -0.1: must be > 0"), errors[0]
        assert "restore it with `git checkout params.yaml` or `dvc exp apply HEAD`" in errors[0], errors[0]
        assert yaml.safe_load((repo / "params.yaml").read_text())["train"]["lr"] == -0.1    # what DVC left
        done = _run(["bash", "-c", f"{BIN}/{restore}" if restore.startswith("dvc") else restore], repo, ok=False)
        # this repo has no baseline `dvc repro` (the fixture skips it), so `dvc exp apply HEAD` restores the
        # git-tracked files, then reports HEAD's DVC outputs as missing from the cache; with a reproduced and
        # committed baseline (README) it exits 0
        assert done.returncode == 0 or (restore.startswith("dvc") and "missing-files" in done.stderr), done.stderr
        assert yaml.safe_load((repo / "params.yaml").read_text()) == yaml.safe_load(committed), restore
        _run([str(BIN / "pose"), "check-params"], repo)                                      # valid again
