"""The MLflow boundary: one experiment per study, a parent run per search, a child run per trial, the
background writer that retries while the store is down, closing runs dead workers left, and the UI.

May import: ``core`` … ``storage``. The only layer that imports MLflow. It uploads the study's artifacts
but does not make them: the search sets ``Tracker.artifacts`` (``adamtune.report.artifacts``).
"""
