"""Data quality gates, one module per concern (the package itself imports nothing, so a stage
imports only the checks it runs):

* :mod:`pose.quality.validate`: ``validate_dataset`` (stage ``validate``), built from
  :mod:`~pose.quality.tables` (the COCO file as pandas tables), :mod:`~pose.quality.suite`
  (great-expectations checks, left/right swap heuristic), :mod:`~pose.quality.ge_runner`,
  :mod:`~pose.quality.images` (image-file checks), :mod:`~pose.quality.quarantine` and
  :mod:`~pose.quality.findings`;
* :mod:`pose.quality.scales`: ``check_scales`` (stage ``check_scales``), the geometric checks
  of the training transform (the flip check: :mod:`~pose.quality.flip`).
"""
