"""Deploy the `retrain` flow to a Prefect work pool and, with --run, run it there and wait.

The deployment points at a checkout of this repository (`--repo`): a process worker
runs the flow in that folder, so the worker's machine needs the checkout and the
venv. For Kubernetes workers, bake both into an image (see infra/k8s/). Credentials
are never deployment parameters or job variables, because Prefect stores both in
its database. The worker takes them from its own environment
(MLFLOW_TRACKING_USERNAME/PASSWORD, AWS_*); on Kubernetes they come from a Secret
(infra/k8s/prefect-work-pool-job-template.json).

    export PREFECT_API_URL=http://127.0.0.1:4200/api   # plus PREFECT_API_AUTH_STRING when the server has auth
    .venv/bin/prefect work-pool create local --type process
    .venv/bin/python infra/deploy_retrain.py --pool local --repo "$PWD"           # deploy only
    .venv/bin/prefect worker start --pool local                                   # elsewhere / another shell
    .venv/bin/python infra/deploy_retrain.py --pool local --repo "$PWD" --run     # deploy, run, wait

Prints one JSON line: deployment id, flow run id, final state.
Exit code 0 only when the run completed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prefect import flow
from prefect.deployments import run_deployment

import pose  # noqa: F401  (telemetry off before prefect is imported)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pool", required=True, help="Prefect work pool (process type for a local worker)")
    ap.add_argument("--repo", type=Path, required=True, help="checkout the worker runs the flow in")
    ap.add_argument("--name", default="team", help="deployment name (flow name is `retrain`)")
    ap.add_argument("--run", action="store_true", help="create a flow run and wait for it")
    ap.add_argument("--timeout", type=float, default=6 * 3600, help="seconds to wait for the run (with --run)")
    args = ap.parse_args(argv)
    repo = args.repo.resolve()

    remote_flow = flow.from_source(source=str(repo), entrypoint="flows/retrain.py:retrain")
    deployment_id = remote_flow.deploy(name=args.name, work_pool_name=args.pool,
                                       parameters={"repo_dir": str(repo)}, build=False, push=False,
                                       print_next_steps=False)
    out: dict = {"deployment_id": str(deployment_id), "deployment": f"retrain/{args.name}", "pool": args.pool}
    if args.run:
        run = run_deployment(f"retrain/{args.name}", timeout=args.timeout, poll_interval=3, as_subflow=False)
        out.update(flow_run_id=str(run.id), flow_run_name=run.name, state=run.state.type.value if run.state else None,
                   state_name=run.state.name if run.state else None)
        print(json.dumps(out), flush=True)
        return 0 if run.state and run.state.is_completed() else 1
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
