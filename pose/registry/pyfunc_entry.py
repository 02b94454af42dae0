"""MLflow "models from code" entry of the registered pose model (no pickled Python object).

``mlflow.pyfunc.save_model(python_model=<this file>)`` copies this file into the model
directory; loading the model executes it, which registers :class:`pose.registry.serving.PoseModel` via
``mlflow.models.set_model``. The ``pose`` package must be importable where the model is
loaded or served.
"""

import mlflow.models

from pose.registry.serving import PoseModel

mlflow.models.set_model(PoseModel())
