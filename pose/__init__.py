"""pose: bottom-up multi-person pose estimation (HigherHRNet + associative embedding).

The library is pure functions and small classes; orchestration lives in `dvc.yaml`
(stage graph) and `flows/` (Prefect). Importing the package turns off the
telemetry of DVC, Prefect, MLflow and great-expectations for this process.
"""

import os

_TELEMETRY_OFF = {
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_ENABLE_TELEMETRY": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}
for _k, _v in _TELEMETRY_OFF.items():
    os.environ.setdefault(_k, _v)

__version__ = "0.1.0"
