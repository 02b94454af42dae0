"""Serve the `retrain` flow as a scheduled Prefect deployment.

    python -m flows.serve [REPO]          # REPO: the repository root (default: .); --help

Creates (or updates) the deployment ``retrain/<schedule.deployment>`` on the Prefect API
(``PREFECT_API_URL``; a server started with ``prefect server start``) with

* a cron schedule from params ``schedule.cron`` / ``schedule.timezone`` (weekly by default),
* parameters ``{"repo_dir": <absolute REPO>}``,
* ``concurrency_limit=1`` (collision strategy ENQUEUE): the server never starts a second
  retrain while one runs; the serving process also runs at most one flow run (``limit=1``),

and then keeps running, executing scheduled and manually triggered runs
(``prefect deployment run retrain/retrain``, or ``run_deployment`` from Python). Each run
first checks the data source for new data (flows/retrain.py) and ends as ``NoNewData``
without training when nothing changed. Stop with Ctrl-C (the schedule is paused on exit).

Params sections read: ``schedule`` (:func:`flows.retrain.repo_params`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import EntrypointType
from prefect.schedules import Cron

import pose  # noqa: F401  (telemetry off before prefect is imported)
from flows.retrain import repo_params, retrain


def build_deployment(repo_dir: str | Path = "."):
    """The `retrain` RunnerDeployment of ``repo_dir`` (schedule and name from its params.yaml ``schedule``)."""
    repo = Path(repo_dir).resolve()
    s = repo_params(repo).schedule
    return retrain.to_deployment(
        name=s.deployment,
        schedules=[Cron(s.cron, timezone=s.timezone)],
        concurrency_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
        parameters={"repo_dir": str(repo)},
        description=f"Weekly retrain of {repo}: new-data check, DVC stages, dvc push, register + promotion gate.",
        tags=["pose", "retrain"],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m flows.serve [REPO]``: serve the deployment until Ctrl-C (``--help``: usage, nothing served)."""
    parser = argparse.ArgumentParser(
        prog="python -m flows.serve",
        description="Serve the retrain flow as the scheduled Prefect deployment retrain/<schedule.deployment> "
                    "(cron schedule.cron in schedule.timezone) on the API of PREFECT_API_URL, until Ctrl-C.")
    parser.add_argument("repo", nargs="?", default=".", help="repository root holding params.yaml and dvc.yaml "
                        "(default: the current folder)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not (Path(args.repo) / "params.yaml").is_file():
        parser.error(f"{Path(args.repo) / 'params.yaml'} not found: REPO must be the repository root")
    serve(build_deployment(args.repo), limit=1)


if __name__ == "__main__":
    main()
