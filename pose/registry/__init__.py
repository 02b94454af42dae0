"""MLflow tracking and model registry: runs, model versions, champion/challenger aliases."""
