"""MLflow tracking and model registry: runs, model versions, champion/challenger aliases,
the promotion gate (promotion), bootstrap CIs (bootstrap), data versions (data_version),
review reports (compare), the servable pyfunc model (serving) and notifications (notify)."""

import os

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bars in stage logs
