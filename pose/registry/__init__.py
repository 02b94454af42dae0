"""MLflow tracking and model registry, one module per concern:

* runs and model versions: ``mlflow_registry`` (``pose register``), ``model_card``, ``tracking`` (where the
  registry is, the registered model's name), ``data_version`` (data hashes and fingerprints);
* the promotion gate: ``promotion`` (``pose promote`` / ``pose rollback``) built from ``rules``
  (``registry.rules``), ``evidence`` (what a version was scored on; shared with compare),
  ``champion`` (alias and history), ``lock`` (the registry lock), ``bootstrap`` (paired CIs) and
  ``errors``;
* review reports: ``compare`` (``pose compare``) built from ``sides``, ``verdict``, ``deltas``,
  ``figures`` and ``report`` (one structure rendered as Markdown and HTML);
* model references (``model_refs``: ``models:/`` resolution with each version's promotion decision),
  notifications (``notify``) and ``serving``, the stable import path of the served model's MLflow class
  for versions registered before it moved to `pose.serving`.
"""

import os

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no progress bars in stage logs
