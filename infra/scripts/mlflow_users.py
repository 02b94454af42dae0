"""Create MLflow basic-auth users (idempotent: an existing user keeps its password).

Credentials come only from the environment or from files, never from arguments:

* admin (who creates users): MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD
  (or ~/.mlflow/credentials), as for any MLflow client;
* each user to create: ``--user NAME=ENVVAR`` (the password is read from $ENVVAR)
  or ``--user NAME=@/run/secrets/file`` (read from the file, trailing newline stripped).

    MLFLOW_TRACKING_URI=http://127.0.0.1:5000 MLFLOW_TRACKING_USERNAME=admin \\
    MLFLOW_TRACKING_PASSWORD=... MLFLOW_PIPELINE_PASSWORD=... \\
      python infra/scripts/mlflow_users.py --user pipeline=MLFLOW_PIPELINE_PASSWORD

Used by the `mlflow-init` service of infra/docker-compose.yml and by
infra/local_team_stack.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def _secret(ref: str) -> str:
    if ref.startswith("@"):
        return Path(ref[1:]).read_text().rstrip("\n")
    value = os.environ.get(ref)
    if not value:
        raise SystemExit(f"environment variable {ref} is not set (or empty)")
    return value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--user", action="append", default=[], metavar="NAME=ENVVAR|NAME=@FILE")
    ap.add_argument("--wait", type=float, default=120, help="seconds to wait for the server")
    args = ap.parse_args(argv)

    from mlflow.exceptions import MlflowException, RestException
    from mlflow.server import get_app_client

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise SystemExit("MLFLOW_TRACKING_URI is not set")
    client = get_app_client("basic-auth", tracking_uri=uri)
    deadline = time.monotonic() + args.wait
    for spec in args.user:
        name, _, ref = spec.partition("=")
        password = _secret(ref)
        while True:
            try:
                client.create_user(username=name, password=password)
                print(f"created MLflow user {name}")
                break
            except RestException as exc:
                if exc.error_code == "RESOURCE_ALREADY_EXISTS":
                    print(f"MLflow user {name} exists (password unchanged)")
                    break
                raise
            except MlflowException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
