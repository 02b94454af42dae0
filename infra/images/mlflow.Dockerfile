# MLflow tracking server with the basic-auth app, PostgreSQL (psycopg 3) and S3 (boto3).
# Versions: constraints.txt (mlflow, boto3) plus the team-mode extras listed in docs/team-mode.md.
FROM python:3.11-slim-bookworm
COPY constraints.txt /tmp/constraints.txt
RUN pip install --no-cache-dir -c /tmp/constraints.txt \
        "mlflow[auth]" "psycopg[binary]" boto3 \
    && useradd --system --uid 10001 --home-dir /home/mlflow --create-home mlflow
COPY infra/scripts/mlflow_users.py /usr/local/bin/mlflow_users.py
ENV MLFLOW_ENABLE_TELEMETRY=false MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1
USER mlflow
WORKDIR /home/mlflow
EXPOSE 5000
