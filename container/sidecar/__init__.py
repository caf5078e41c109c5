"""Lucent's built-in model server: a model folder served over SageMaker's model-container contract.

Clarify asks a model for predictions through ``POST /invocations``; this package is that model when
the user brings a model folder (what SageMaker extracts to ``/opt/ml/model``) instead of an endpoint.

* :func:`start_model_server` starts it as a child process and returns a :class:`ModelServer`.
* ``lucent serve-model`` (:func:`container.sidecar.cli.main`) runs it in the foreground.

Layout: ``codecs`` (body <-> arrays), ``model`` (folder -> handler chain), ``app`` (WSGI routes),
``limits`` (body cap, read timeouts, connections), ``worker`` (receives each request in full before the
app runs it), ``server`` (gunicorn, socket, child-process handle), ``cli``. See docs/model-server.md.
"""

from container.sidecar.errors import ModelLoadError, ModelServerError, PortInUseError
from container.sidecar.limits import RequestLimits
from container.sidecar.model import InvocationContext
from container.sidecar.server import ModelServer, start_model_server

__all__ = [
    "InvocationContext",
    "ModelLoadError",
    "ModelServer",
    "ModelServerError",
    "PortInUseError",
    "RequestLimits",
    "start_model_server",
]
