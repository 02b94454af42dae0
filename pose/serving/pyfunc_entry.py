"""MLflow "models from code" entry of the registered pose model (no pickled Python object).

``mlflow.pyfunc.save_model(python_model=<this file>)`` (:func:`pose.serving.model.save_pyfunc_model`)
copies this file into the model directory; loading the model executes it, which registers
:class:`pose.serving.model.PoseModel` via ``mlflow.models.set_model``. The ``pose`` package must be
importable where the model is loaded or served. (Versions registered before the serving code moved to
`pose.serving` carry a copy that imports ``pose.registry.serving.PoseModel``: that module stays.)
"""

import mlflow.models

from pose.serving.model import PoseModel

mlflow.models.set_model(PoseModel())
