"""Stable import path of the served model's MLflow class for registered versions saved before the
serving code moved to `pose.serving` (issue 22).

Such a version's ``model/pyfunc_entry.py`` (a copy made when it was registered) runs
``from pose.registry.serving import PoseModel``; this module keeps that import working, so every
existing version still loads and serves. Keep it while such versions may be served. The model itself
is `pose.serving.model` (new versions' entry imports it directly: `pose.serving.pyfunc_entry`).
"""

from pose.serving.model import PoseModel

__all__ = ["PoseModel"]
