# The pipeline image: this repository's venv (pose, dvc + dvc-s3, prefect, mlflow client).
# Used by the Prefect worker in infra/docker-compose.yml and by the Kubernetes examples
# in infra/k8s/. The worker runs the flow in /repo, which compose bind-mounts over the
# copy baked in here. Build from the repository root:
#   docker build -f infra/images/pipeline.Dockerfile -t pose-pipeline .
# GPU nodes: the torch wheel pinned in constraints.txt comes from PyPI, with CUDA
# libraries. For a CPU-only image add
# --extra-index-url https://download.pytorch.org/whl/cpu to the pip install line.
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /repo
COPY constraints.txt pyproject.toml README.md ./
COPY pose ./pose
COPY flows ./flows
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir -c constraints.txt -e . dvc-s3
COPY . .
ENV PATH=/opt/venv/bin:$PATH \
    DO_NOT_TRACK=1 DVC_NO_ANALYTICS=1 PREFECT_SERVER_ANALYTICS_ENABLED=false \
    GX_ANALYTICS_ENABLED=false MLFLOW_ENABLE_TELEMETRY=false
RUN git config --global --add safe.directory /repo
