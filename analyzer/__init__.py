"""Lucent analyzer: the computation behind a Clarify-compatible processing job.

Data flows one way: ``config`` -> ``data`` -> (predictions) -> ``bias`` / explanations -> ``output``.
"""

__version__ = "0.1.0"
