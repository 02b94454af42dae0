"""The registered model as a service: images in, persons out.

* ``requests``: what one request may be and cost (params, images, limits, deadline);
* ``model``: the served model (:class:`~pose.serving.model.PoseService`, its MLflow pyfunc form
  ``PoseModel``), saving it as a registered version's ``model/`` directory and loading that back;
  the contract (input, output, settings, error codes) is its module docstring;
* ``pyfunc_entry``: the "models from code" file copied into every saved model.

The HTTP server with supervised workers (``pose serve``) is `pose.serve`; which version a
``models:/`` reference names is `pose.registry.model_refs`.
"""
