#!/bin/sh
# PostgreSQL first-start hook (docker-entrypoint-initdb.d): one role per service.
# The MLflow role owns the tracking/registry database and the basic-auth user store;
# the Prefect role owns Prefect's database. Passwords come from the container's
# environment (infra/.env) and are passed as psql variables, never pasted into SQL text.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
     -v mlflow_pw="$MLFLOW_DB_PASSWORD" -v prefect_pw="$PREFECT_DB_PASSWORD" <<'EOSQL'
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_pw';
CREATE ROLE prefect LOGIN PASSWORD :'prefect_pw';
CREATE DATABASE mlflow OWNER mlflow;
CREATE DATABASE mlflow_auth OWNER mlflow;
CREATE DATABASE prefect OWNER prefect;
EOSQL
