"""Prefect flow `retrain`: the DVC stage graph as Prefect tasks.

Each task runs ``dvc repro --single-item <stage>`` in the repo, in the order the
stages appear in `dvc.yaml` (which lists them topologically). DVC therefore does
all the work, and `dvc.lock` and the cache end up exactly as after a plain
`dvc repro`; Prefect adds retries (the network-bound `fetch`), logging, state and
scheduling. Run it once with::

    python -m flows.retrain            # ephemeral Prefect API, no server needed
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

import pose  # noqa: F401  (telemetry off before prefect is imported)
from prefect import flow, get_run_logger, task

NETWORK_STAGES = {"fetch"}


def stage_names(repo: Path) -> list[str]:
    """Stage names of `dvc.yaml` in file order (the file keeps them topologically sorted)."""
    return list((yaml.safe_load((repo / "dvc.yaml").read_text()) or {}).get("stages", {}))


def _dvc() -> str:
    exe = Path(sys.executable).with_name("dvc")
    return str(exe) if exe.exists() else (shutil.which("dvc") or "dvc")


def run_stage(repo: Path, name: str) -> str:
    """``dvc repro --single-item <name>`` in ``repo``; raises RuntimeError with DVC's output on failure."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run([_dvc(), "repro", "--single-item", name], cwd=repo, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"stage {name} failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout


@task(name="dvc-stage-network", retries=3, retry_delay_seconds=[5, 30, 120])
def network_stage(repo: str, name: str) -> str:
    """A stage that talks to the network (dataset sources): retried with backoff."""
    out = run_stage(Path(repo), name)
    get_run_logger().info("stage %s:\n%s", name, out.strip()[-2000:])
    return name


@task(name="dvc-stage")
def local_stage(repo: str, name: str) -> str:
    out = run_stage(Path(repo), name)
    get_run_logger().info("stage %s:\n%s", name, out.strip()[-2000:])
    return name


@task(name="summary")
def summarize(repo: str) -> dict:
    """Metrics, registered version and aliases of the run, from the stage outputs."""
    root = Path(repo)
    summary: dict = {}
    for key, rel in (("eval", "data/metrics/eval.json"), ("train", "data/metrics/train.json"),
                     ("registration", "data/registry/registration.json")):
        p = root / rel
        summary[key] = json.loads(p.read_text()) if p.exists() else None
    ev, reg = summary["eval"] or {}, summary["registration"] or {}
    get_run_logger().info(
        "retrain done: AP %.4f AP50 %.4f AR %.4f | model %s version %s aliases %s | %s",
        ev.get("AP", float("nan")), ev.get("AP50", float("nan")), ev.get("AR", float("nan")),
        reg.get("model_name"), reg.get("version"), reg.get("aliases"), reg.get("reason"))
    return summary


@flow(name="retrain")
def retrain(repo_dir: str = ".") -> dict:
    """Run every stage of `dvc.yaml` through DVC, then log a summary (metrics, version, aliases)."""
    repo = str(Path(repo_dir).resolve())
    for name in stage_names(Path(repo)):
        (network_stage if name in NETWORK_STAGES else local_stage)(repo, name)
    return summarize(repo)


if __name__ == "__main__":
    retrain(sys.argv[1] if len(sys.argv) > 1 else ".")
