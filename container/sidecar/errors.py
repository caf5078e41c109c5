"""Errors the model server reports to whoever starts it."""


class ModelServerError(Exception):
    """The model server could not be started, stopped early, or did not become healthy."""


class PortInUseError(ModelServerError):
    """The requested port is already taken by another program."""


class ModelLoadError(ModelServerError):
    """The model folder cannot be served; the message is the reason (no prefix), fit for a job's
    ``model folder unloadable: <reason>``. Raised by the loader in the worker, and by
    :meth:`ModelServer.wait_healthy` with the reason the server gave on ``/ping``."""
