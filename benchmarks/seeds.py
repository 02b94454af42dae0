"""How robust is the default recipe? Train it with several seeds (and thread counts), evaluate each
run as the evaluate stage does, print AP per run, mean, sd, min and paired bootstrap CIs (issue 23).

Each run is the ``train`` and ``evaluate`` stages' own commands (``pose train``, ``pose evaluate``
with ``--checkpoint best.pt``, as dvc.yaml runs them) in its own folder ``<work>/<name>/``, on
params.yaml as it is except ``train.seed`` (and ``--set`` overrides, ``--max-steps-per-epoch``),
on the generated set of params ``generated`` (``<work>/data``, written by the fetch stage's code
when missing; ``--data`` to share one). Training uses ``--threads`` torch threads
(``OMP_NUM_THREADS``; default: as the project sizes them, all available cores minus loader
workers); ``--extra-threads N`` adds one run of the first seed with N threads: a different
summation order, as on another machine. Training is deterministic for a given thread count, so
the AP of a run does not depend on the machine's load; its minutes do.

Continuing: a run whose folder holds ``run.json`` for the same params is skipped; one that was
stopped (Ctrl-C, a reboot) continues from its ``last.pt`` (``pose train`` resumes exactly); a
folder with other params is cleared and the run starts again (one line says so). So a long
benchmark can be stopped and re-run with the same command.

Output: per run AP / AP50 / AR (pycocotools, as eval.json), its 95% image-bootstrap CI, best
epoch, steps, training minutes and s/step; then mean, sd (n-1) and min of each metric; then the
paired image-bootstrap CI of the AP difference of every pair of runs
(`pose.registry.bootstrap.bootstrap_diff`, ``registry.bootstrap_samples`` resamples): a pair
whose CI excludes 0 differs by more than the validation images' noise. Everything is also written
to ``<work>/seeds.json`` (``--out`` elsewhere), after each run.

Usage::

    python benchmarks/seeds.py --work /tmp/seeds                               # seeds 1 2 3, default threads
    python benchmarks/seeds.py --work /tmp/seeds --threads 2 --extra-threads 1 # the issue's benchmark
    python benchmarks/seeds.py --work /tmp/smoke --max-steps-per-epoch 4       # a smoke run, ~2 min
    python benchmarks/seeds.py --work /tmp/ema --set train.ema_decay=0.999 --jobs 2 --threads 1

``--jobs 2`` trains two runs at once (use it with ``--threads 1`` on 2 cores). At the default
budget a run takes 11-13 min on 2 idle cores with 2 threads (1536 steps), evaluation ~20 s.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ablation import ensure_data, fmt_ci  # noqa: E402

from pose.io import atomic_write_json  # noqa: E402
from pose.params import ParamsError, load_checked_params, validate_params  # noqa: E402

METRICS = ("AP", "AP50", "AR")
#: printed while a run trains, at most this often (s)
PROGRESS_EVERY_S = 60.0
_print_lock = threading.Lock()


def say(msg: str) -> None:
    with _print_lock:
        print(msg, flush=True)


def parse_set(items: list[str]) -> dict[str, object]:
    """``["train.lr=0.002", "train.curriculum=[...]"]`` -> ``{dotted key: YAML value}``."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE (e.g. train.lr=0.002)")
        out[key.strip()] = yaml.safe_load(value)
    return out


def run_params(params: dict, *, seed: int, overrides: dict, max_steps_per_epoch: int | None) -> dict:
    """A deep copy of ``params`` with ``train.seed``, the ``--set`` overrides and the step cap.
    Raises KeyError naming a dotted key that params.yaml does not have."""
    p = copy.deepcopy(params)
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = p
        for k in parents:
            node = node[k]
        if leaf not in node:
            raise KeyError(f"--set {dotted}: params.yaml has no such key")
        node[leaf] = value
    p["train"]["seed"] = int(seed)
    if max_steps_per_epoch is not None:
        p["train"]["max_steps_per_epoch"] = int(max_steps_per_epoch)
    return p


def _pose() -> str:
    exe = Path(sys.executable).with_name("pose")
    return str(exe) if exe.exists() else "pose"


def _env(threads: int | None) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def _last_line(path: Path, prefix: str) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.startswith(prefix)]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _run_logged(cmd: list[str], log: Path, env: dict, name: str) -> float:
    """Run ``cmd`` appending its output to ``log``; progress lines while it runs; seconds taken.
    Raises RuntimeError with the log's tail when it fails."""
    t0 = time.perf_counter()
    with log.open("a") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
        last = time.perf_counter()
        while proc.poll() is None:
            time.sleep(1.0)
            if time.perf_counter() - last >= PROGRESS_EVERY_S:
                last = time.perf_counter()
                step = _last_line(log, "step ") or _last_line(log, "epoch ")
                say(f"  {name}: {step or 'starting'} ({(last - t0) / 60:.1f} min)")
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise RuntimeError(f"{name}: `{' '.join(cmd[:2])}` failed (exit {proc.returncode}); {log}:\n" + "\n".join(tail))
    return time.perf_counter() - t0


def run_one(spec: dict, data: Path, params: dict) -> dict:
    """Train (or continue) and evaluate one run; returns its record (also ``<dir>/run.json``)."""
    d = params["data"]
    name, out, threads = spec["name"], Path(spec["dir"]), spec["threads"]
    p = spec["params"]
    done = out / "run.json"
    if done.exists():
        rec = json.loads(done.read_text())
        if rec.get("params") == p:
            say(f"{name}: done before, AP {rec['metrics']['AP']:.3f} (skipped)")
            return rec
    saved = out / "params.yaml"
    if saved.exists() and yaml.safe_load(saved.read_text()) != p:
        say(f"{name}: {out} holds a run of other params: starting it again")
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if not saved.exists():
        saved.write_text(yaml.safe_dump(p, sort_keys=False))
    timing_path = out / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.exists() else {"train_s": 0.0, "complete": True}
    env = _env(threads)
    if not (out / "train.json").exists():
        resumed = (out / "models" / "last.pt").exists()
        if resumed:
            timing["complete"] = False   # the minutes of the stopped part are not known
        say(f"{name}: {'continuing' if resumed else 'training'} (seed {p['train']['seed']}, "
            f"{threads or 'default'} thread(s); log {out / 'train.log'})")
        cmd = [_pose(), "train", "--train-ann", str(data / "annotations" / f"person_keypoints_{d['train_split']}.json"),
               "--train-images", str(data / d["train_split"]), "--out-dir", str(out / "models"),
               "--metrics", str(out / "train.json"), "--steps", str(out / "steps.csv"),
               "--val-ann", str(data / "annotations" / f"person_keypoints_{d['val_split']}.json"),
               "--val-images", str(data / d["val_split"]), "--val-epochs", str(out / "val.csv"),
               "--params", str(saved)]
        timing["train_s"] += _run_logged(cmd, out / "train.log", env, name)
        atomic_write_json(timing_path, timing)
    gt = data / "annotations" / f"person_keypoints_{d['val_split']}.json"
    cmd = [_pose(), "evaluate", "--annotations", str(gt), "--checkpoint", str(out / "models" / "best.pt"),
           "--images", str(data / d["val_split"]), "--results-out", str(out / "results.json"),
           "--out", str(out / "eval.json"), "--params", str(saved)]
    eval_s = _run_logged(cmd, out / "eval.log", env, name)
    metrics = json.loads((out / "eval.json").read_text())
    summary = json.loads((out / "train.json").read_text())
    steps = int(summary["steps"])
    train_s = float(timing["train_s"]) if timing.get("complete", True) and timing["train_s"] else None
    val_s = float(summary.get("val_seconds", 0.0))
    rec = {"name": name, "seed": int(p["train"]["seed"]), "threads": threads or summary.get("torch_threads"),
           "torch_threads": summary.get("torch_threads"), "params": p,
           "metrics": {k: metrics.get(k) for k in ("AP", "AP50", "AP75", "APM", "APL", "AR")},
           "best_epoch": summary.get("best_epoch"), "best_val_AP": summary.get("best_val_AP"),
           "last_val_AP": summary.get("last_val_AP"), "steps": steps,
           "train_min": round(train_s / 60, 2) if train_s else None,
           "s_per_step": round((train_s - val_s) / steps, 4) if train_s else None,
           "val_s": round(val_s, 1), "eval_s": round(eval_s, 1)}
    atomic_write_json(done, rec, indent=2)
    say(f"{name}: AP {rec['metrics']['AP']:.3f} AP50 {rec['metrics']['AP50']:.3f} AR {rec['metrics']['AR']:.3f}, "
        f"best epoch {rec['best_epoch']}, {steps} steps, train "
        + (f"{rec['train_min']:.1f} min ({rec['s_per_step']:.3f} s/step)" if train_s else "time n/a (continued)")
        + f", eval {eval_s:.0f} s")
    return rec


def stats(values: list[float]) -> dict:
    n = len(values)
    mean = sum(values) / n if n else float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "sd": sd, "min": min(values) if values else float("nan"),
            "max": max(values) if values else float("nan"), "n": n}


def report(records: list[dict], gt: Path, boot: dict) -> tuple[str, dict]:
    """Markdown tables (runs with CIs, summary, pairwise paired CIs) and the numbers."""
    from pose.registry.bootstrap import bootstrap_ci, bootstrap_diff

    results = {r["name"]: json.loads((Path(r["dir"]) / "results.json").read_text()) for r in records}
    lines = ["| run | seed | threads | AP [95% CI] | AP50 | AR | best epoch | steps | train min | s/step |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        ci = bootstrap_ci(gt, results[r["name"]], n_resamples=boot["n_resamples"], seed=boot["seed"],
                          metrics=("AP",))["AP"]
        r["AP_ci"] = ci
        m = r["metrics"]
        lines.append(f"| {r['name']} | {r['seed']} | {r['threads']} | {fmt_ci(m['AP'], ci)} | {m['AP50']:.3f} | "
                     f"{m['AR']:.3f} | {r['best_epoch']} | {r['steps']} | "
                     f"{r['train_min'] if r['train_min'] is not None else 'n/a'} | "
                     f"{r['s_per_step'] if r['s_per_step'] is not None else 'n/a'} |")
    summary = {k: stats([float(r["metrics"][k]) for r in records]) for k in METRICS}
    lines += ["", "| metric | mean | sd | min | max | runs |", "|---|---|---|---|---|---|"]
    for k, s in summary.items():
        lines.append(f"| {k} | {s['mean']:.3f} | {s['sd']:.3f} | {s['min']:.3f} | {s['max']:.3f} | {s['n']} |")
    pairs = []
    if len(records) > 1:
        lines += ["", "| A | B | AP(B) - AP(A) [paired 95% CI] |", "|---|---|---|"]
        for i, a in enumerate(records):
            for b in records[i + 1:]:
                d = bootstrap_diff(gt, results[a["name"]], results[b["name"]], n_resamples=boot["n_resamples"],
                                   seed=boot["seed"], metrics=("AP",))["metrics"]["AP"]
                pairs.append({"a": a["name"], "b": b["name"], "delta": d["delta"], "ci_low": d["ci_low"],
                              "ci_high": d["ci_high"]})
                lines.append(f"| {a['name']} | {b['name']} | "
                             f"{fmt_ci(d['delta'], (d['ci_low'], d['ci_high']), signed=True)} |")
    return "\n".join(lines), {"summary": summary, "pairs": pairs}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="params file (default: params.yaml)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="train.seed of the runs (default 1 2 3)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads of every run (OMP_NUM_THREADS; default: as the project sizes them)")
    ap.add_argument("--extra-threads", type=int, default=None,
                    help="also run the first seed with this many threads (another summation order)")
    ap.add_argument("--work", type=Path, required=True,
                    help="folder of the runs (<work>/<name>/) and seeds.json; re-running continues there")
    ap.add_argument("--data", type=Path, default=None, help="generated set in `pose fetch` layout "
                    "(default: <work>/data, written from params `generated` when missing)")
    ap.add_argument("--max-steps-per-epoch", type=int, default=None,
                    help="cap every epoch at N steps (train.max_steps_per_epoch), for a smoke run")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a params key for every run (YAML value), e.g. --set train.lr=0.002; repeatable")
    ap.add_argument("--jobs", type=int, default=1, help="runs trained at the same time (default 1)")
    ap.add_argument("--out", type=Path, default=None, help="JSON report (default: <work>/seeds.json)")
    args = ap.parse_args(argv)
    if args.max_steps_per_epoch is not None and args.max_steps_per_epoch < 0:
        ap.error("--max-steps-per-epoch must be >= 0")
    if args.jobs < 1 or (args.threads is not None and args.threads < 1) or \
            (args.extra_threads is not None and args.extra_threads < 1):
        ap.error("--jobs, --threads and --extra-threads must be >= 1")
    if len(set(args.seeds)) != len(args.seeds):
        ap.error(f"--seeds: repeated seed in {args.seeds}")
    try:
        params = load_checked_params(args.params)
        overrides = parse_set(args.overrides)
        runs = [(s, args.threads) for s in args.seeds]
        if args.extra_threads is not None:
            runs.append((args.seeds[0], args.extra_threads))
        specs = []
        for seed, threads in runs:
            p = run_params(params, seed=seed, overrides=overrides, max_steps_per_epoch=args.max_steps_per_epoch)
            validate_params(p, source=f"{args.params} (seed {seed}, --set)")
            name = f"seed{seed}-t{threads or 'auto'}"
            specs.append({"name": name, "dir": str(args.work / name), "threads": threads, "params": p})
    except (ParamsError, FileNotFoundError, KeyError, ValueError) as exc:
        print(f"error: {str(exc).strip(chr(34)).strip(chr(39))}", file=sys.stderr)
        return 2
    data = args.data or args.work / "data"
    d = params["data"]
    args.work.mkdir(parents=True, exist_ok=True)
    n_val = ensure_data(params, data, int(params["generated"]["num_val"]))
    gt = data / "annotations" / f"person_keypoints_{d['val_split']}.json"
    boot = {"n_resamples": int(params["registry"]["bootstrap_samples"]),
            "seed": int(params["registry"]["bootstrap_seed"]), "level": 0.95}
    out = args.out or args.work / "seeds.json"
    say(f"{len(specs)} run(s) in {args.work}: " + ", ".join(s["name"] for s in specs)
        + (f"; overrides {overrides}" if overrides else "") + f"; {n_val} validation images of {data}")

    records: dict[str, dict] = {}
    failures: list[str] = []
    t_all = time.perf_counter()

    def job(spec: dict) -> None:
        try:
            rec = run_one(spec, data, params)
        except RuntimeError as exc:
            failures.append(str(exc))
            say(f"error: {exc}")
            return
        rec["dir"] = spec["dir"]
        records[spec["name"]] = rec
        done = [records[s["name"]] for s in specs if s["name"] in records]
        atomic_write_json(out, {"complete": False, "runs": done, "overrides": overrides}, indent=2)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(job, specs))
    done = [records[s["name"]] for s in specs if s["name"] in records]
    if not done:
        return 1
    table, numbers = report(done, gt, boot)
    header = (f"{len(done)} run(s), {done[0]['steps']} steps each, evaluate.input_size "
              f"{params['evaluate']['input_size']}, flip test {params['evaluate']['flip_test']}, {n_val} validation "
              f"images; CIs: image bootstrap, {boot['n_resamples']} resamples (pairs: paired); "
              f"wall time {(time.perf_counter() - t_all) / 60:.1f} min")
    say(f"\n{header}\n\n{table}")
    atomic_write_json(out, {"complete": not failures, "header": header, "overrides": overrides,
                            "runs": [{k: v for k, v in r.items() if k != "params"} for r in done],
                            "params_of_first_run": done[0]["params"], **numbers, "markdown": table}, indent=2)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
