"""Running the model server: pre-forked gunicorn workers on one listening socket.

Why gunicorn: it is the server the SageMaker scikit-learn container itself runs, and its pre-fork
master already does what a hand-written one would need (restart crashed workers, kill hung ones,
graceful stop on SIGTERM) -- one small, pure-Python dependency instead of that code. Workers run
requests one at a time per process (they are CPU-bound, so a thread pool would not help), after a
selector loop in each worker has received them in full: slow clients cost no worker time (see
``worker.py``).

Why the socket is bound before gunicorn starts: a taken port fails at once with a clear message
(gunicorn would retry for five seconds), and ``port=0`` picks a free port with no race between
choosing it and binding it. The bound socket reaches gunicorn as ``fd://N``.

Why workers report in: ``/ping`` answers as soon as one worker has loaded the model, and the others
may still be loading (a second or more for scikit-learn); requests sent then all queue on the first
worker while the others compete for the CPU. Each worker writes one byte to a pipe once its model is
loaded (or failed to load), and :meth:`ModelServer.wait_healthy` waits for all of them.

Why threads are capped: each worker runs its own model; OpenMP models (HistGradientBoosting,
XGBoost, LightGBM) would otherwise start one thread per core in every worker, and N workers x N
threads thrash. Each worker gets ``cores // workers`` threads (unless OMP_NUM_THREADS is set).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from analyzer.errors import UserError
from container.sidecar.errors import ModelLoadError, ModelServerError, PortInUseError
from container.sidecar.limits import MIB, RequestLimits
from container.sidecar.model import remove_abandoned_dirs

log = logging.getLogger("lucent.sidecar")

DEFAULT_PORT = 8080
DEFAULT_HOST = "127.0.0.1"  # the image sets LUCENT_HOST=0.0.0.0: a container's port is only reachable if published
HOST_VARIABLE = "LUCENT_HOST"
# Largest request body a server started by start_model_server accepts. Lucent's own client sends it
# requests of up to this size (container.job.LOCAL_MAX_PAYLOAD_BYTES is this value): fewer, larger
# predict calls are most of the throughput on a local model.
STARTED_SERVER_MAX_BODY_BYTES = 16 * MIB
LOG_DIR_PREFIX = "lucent-model-server-"  # + the pid of the process that started the server + "-" + random
DEFAULT_TIMEOUT_S = 300  # per request; SageMaker allows 60 s, local batches can be larger
MAX_PORT = 65535
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def cpu_count() -> int:
    """Cores this process may run on (respects taskset/cgroup CPU affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_port() -> int:
    """``SAGEMAKER_BIND_TO_PORT`` when set (inference pipelines), else 8080, as in SageMaker; a value that
    is no port number is a ``UserError`` naming the variable."""
    from analyzer.environment import positive_number

    port = int(positive_number("SAGEMAKER_BIND_TO_PORT", DEFAULT_PORT, int))
    if port > MAX_PORT:
        raise UserError(f"SAGEMAKER_BIND_TO_PORT={port}: must be a port number from 1 to {MAX_PORT}")
    return port


def default_timeout() -> int:
    """``SAGEMAKER_MODEL_SERVER_TIMEOUT`` (whole seconds) when set, else 300; ``UserError`` when not a
    positive whole number."""
    from analyzer.environment import positive_number

    return int(positive_number("SAGEMAKER_MODEL_SERVER_TIMEOUT", DEFAULT_TIMEOUT_S, int, "seconds"))


def default_host() -> str:
    """``$LUCENT_HOST`` when set (the image sets 0.0.0.0), else 127.0.0.1: this machine only."""
    return os.environ.get(HOST_VARIABLE, "").strip() or DEFAULT_HOST


def default_workers() -> int:
    """``SAGEMAKER_MODEL_SERVER_WORKERS`` when set, else one worker per core (``UserError`` when not a
    positive whole number)."""
    from analyzer.environment import positive_number

    return int(positive_number("SAGEMAKER_MODEL_SERVER_WORKERS", cpu_count(), int))


def bind_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0 = any free port); PortInUseError if taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    # SO_REUSEADDR only skips TIME_WAIT leftovers of a previous server; a live listener still conflicts.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUseError(f"port {port} on {host} is already in use by another program; "
                                 "choose another port or stop that program") from None
        raise ModelServerError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    return sock


def serve(model_dir: Path, *, host: str | None = None, port: int | None = None, workers: int | None = None,
          timeout: int | None = None, limits: RequestLimits | None = None, listen_fd: int | None = None,
          parent_pid: int | None = None, ready_fd: int | None = None, log_level: int = logging.INFO) -> int:
    """Run the server in this process until SIGTERM/SIGINT; returns the exit code.

    ``listen_fd`` is an already-listening socket (how :func:`start_model_server` hands over the
    port it bound); ``parent_pid`` makes the server stop when that process goes away; each worker
    writes one byte to ``ready_fd`` once it has loaded the model (or failed to); ``log_level`` is also
    gunicorn's own (its workers booting and exiting are INFO).
    """
    from container.sidecar.model import prepare_model_dir

    limits = limits or RequestLimits()
    if listen_fd is None:
        # gunicorn takes the descriptor over (and closes it when it stops), hence detach().
        listen_fd = bind_listener(host or default_host(), default_port() if port is None else port).detach()
    with socket.socket(fileno=os.dup(listen_fd)) as probe:  # a duplicate, to read the address
        address = probe.getsockname()
    workers = max(1, workers or default_workers())
    threads = max(1, cpu_count() // workers)
    for variable in _THREAD_VARIABLES:  # read by the workers' OpenMP/BLAS runtimes when they load
        os.environ.setdefault(variable, str(threads))
    if timeout is None:
        timeout = default_timeout()

    # A tarball is extracted once here, not once per worker; failures are served through /ping.
    serve_dir, load_error, extracted = None, None, None
    try:
        serve_dir, extracted = prepare_model_dir(model_dir)
    except ModelLoadError as exc:
        load_error = str(exc)

    log.info("Lucent model server for %s on http://%s:%d: %d worker(s) x %s thread(s); bodies up to %d bytes, "
             "headers within %g s, bodies within %g s, %d connections per worker", model_dir, address[0],
             address[1], workers, os.environ["OMP_NUM_THREADS"], limits.max_body_bytes, limits.header_timeout,
             limits.body_timeout, limits.max_connections)
    if parent_pid is not None:
        _exit_with_parent(parent_pid)
    options = {
        "bind": [f"fd://{listen_fd}"],
        "workers": workers,
        "timeout": timeout,
        "graceful_timeout": 5,
        "proc_name": "lucent-model-server",
        "errorlog": "-",
        "loglevel": logging.getLevelName(log_level).lower(),  # gunicorn's own lines (workers booting, ...)
    }
    if os.path.isdir("/dev/shm"):  # worker heartbeat files: tmpfs never blocks on a slow disk
        options["worker_tmp_dir"] = "/dev/shm"
    from analyzer.redact import install_redaction

    # Before gunicorn adds its own error-log handlers: the record factory covers them, and the workers
    # (forked from this process) inherit it.
    install_redaction()
    try:
        _run_gunicorn(options, serve_dir, load_error, ready_fd, limits)
    except SystemExit as exc:  # the arbiter exits through sys.exit
        return exc.code if isinstance(exc.code, int) else 0
    finally:
        if extracted is not None:
            extracted.cleanup()
    return 0


def _exit_with_parent(parent_pid: int) -> None:
    """Stop the server (gracefully, through SIGTERM) once the process that started it is gone, so a
    crashed job leaves no server behind. Runs in the master only: forked workers get no threads.
    The watcher is shared with the SHAP workers (``analyzer.parent``)."""
    from analyzer.parent import exit_with_parent

    def stop() -> None:
        log.warning("parent process %d is gone: stopping the model server", parent_pid)
        os.kill(os.getpid(), signal.SIGTERM)

    exit_with_parent(parent_pid, stop)


def _run_gunicorn(options: dict, model_dir: Path | None, load_error: str | None, ready_fd: int | None,
                  limits: RequestLimits) -> None:
    """Run the gunicorn arbiter until it is stopped; each worker builds a SidecarApp after the fork."""
    try:
        from gunicorn.app.base import BaseApplication
    except ImportError:
        raise ModelServerError("the model server needs the 'gunicorn' package (pip install gunicorn)") from None
    from container.sidecar.worker import worker_class

    options = {**options, "worker_class": worker_class(limits)}

    class GunicornServer(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)
            if "control_socket_disable" in self.cfg.settings:
                # gunicorn >= 24 opens a control socket at one fixed path per user by default,
                # which concurrent servers would fight over; nothing here uses it.
                self.cfg.set("control_socket_disable", True)

        def load(self):  # runs in each worker
            # Loading after the fork keeps OpenMP thread pools out of the master: libgomp pools do
            # not survive fork(), so a model_fn that warms up with a prediction would hang workers.
            from container.sidecar.app import SidecarApp
            from container.sidecar.model import thread_budget

            app = SidecarApp(model_dir, load_error, max_body_bytes=limits.max_body_bytes)
            _cap_threads(thread_budget())
            if ready_fd is not None:
                _report_ready(ready_fd)
            return app

    logging.getLogger("gunicorn.error").addFilter(_TimeoutWording(options["timeout"]))
    GunicornServer().run()


class _TimeoutWording(logging.Filter):
    """gunicorn's arbiter logs a worker it killed with SIGKILL as "Perhaps out of memory?"; when that
    worker is one it had found running a request past ``--timeout`` (and SIGABRT did not stop it: the
    model was stuck in native code), the line says so instead."""

    def __init__(self, timeout: int):
        super().__init__()
        self.timeout = timeout
        self._timed_out: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("WORKER TIMEOUT (pid:"):
            self._timed_out.add(message.partition("(pid:")[2].partition(")")[0])
            record.msg, record.args = f"{message}: a request ran longer than --timeout {self.timeout} s", None
        elif "Perhaps out of memory?" in message and message.partition("(pid:")[2].partition(")")[0] in self._timed_out:
            record.msg = message.replace("Perhaps out of memory?", f"It ran a request longer than --timeout "
                                         f"{self.timeout} s and did not stop on SIGABRT (stuck in native code?)")
            record.args = None
        return True


def _report_ready(ready_fd: int) -> None:
    """Tell the process that started the server that this worker is loaded (it counts the bytes)."""
    try:
        os.set_blocking(ready_fd, False)  # a full pipe (many worker restarts, nobody reading) must not block
        os.write(ready_fd, b"1")
    except OSError:  # BlockingIOError, or BrokenPipeError once the starter stopped listening
        pass


def _cap_threads(threads: int) -> None:
    """Apply the per-worker thread budget to runtimes that were loaded before the variables were
    read (numpy imported by the process that called ``serve``) and to pyarrow, which ignores them."""
    import pyarrow
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    pyarrow.set_cpu_count(threads)
    threadpool_limits(threads)


# --------------------------------------------------------------------------------------------
# Library use: the server as a child process
# --------------------------------------------------------------------------------------------


class ModelServer:
    """Handle on a model server child process (its own process group, stopped as a whole)."""

    def __init__(self, process: subprocess.Popen, host: str, port: int, log_path: Path,
                 owned_log: tempfile.TemporaryDirectory | None, workers: int, ready_fd: int,
                 limits: RequestLimits | None = None):
        self._process = process
        self.limits = limits or RequestLimits()  # what the server accepts from one client
        self.host = host
        self.port = port
        self.log_path = log_path
        self._owned_log = owned_log
        self.workers = workers
        self._ready_fd: int | None = ready_fd  # read end of the pipe the workers report to
        self._workers_ready = 0

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def pid(self) -> int:
        return self._process.pid

    def is_alive(self) -> bool:
        return self._exit_status() is None

    def exit_status(self) -> int | None:
        """The server's exit code once it has exited (minus the signal number if killed), else None."""
        return self._exit_status()

    def _exit_status(self) -> int | None:
        """Exit code once the server process has exited (minus the signal number if killed), else
        None. It does not reap the process: until :meth:`stop` reaps it, its pid -- which is also the
        process group id -- cannot be reused, so signalling the group can only reach this server."""
        if self._process.returncode is not None:
            return self._process.returncode
        try:
            info = os.waitid(os.P_PID, self._process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped elsewhere
            return self._process.poll()
        if info is None:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Block until every worker has loaded the model and ``/ping`` answers 200.

        Raises :class:`ModelLoadError` at once when the server reports that the model cannot be
        loaded, :class:`ModelServerError` if the server exits or is not healthy within ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while True:
            code = self._exit_status()
            if code is not None:
                raise ModelServerError(f"model server exited with code {code} before it was healthy; "
                                       f"log ({self.log_path}):\n{self.log_tail()}")
            remaining = deadline - time.monotonic()
            if self._all_workers_loaded(wait=min(0.05, max(remaining, 0.0))):
                try:
                    with urllib.request.urlopen(f"{self.url}/ping", timeout=max(0.1, min(2.0, remaining))):
                        return
                except urllib.error.HTTPError as exc:
                    reason = exc.read().decode("utf-8", errors="replace").strip()
                    raise ModelLoadError(reason or f"/ping answered HTTP {exc.code}") from None
                except (urllib.error.URLError, OSError):
                    time.sleep(0.05)  # loaded but not answering yet: try again
            if time.monotonic() >= deadline:
                raise ModelServerError(f"model server at {self.url} not healthy after {timeout:g} s "
                                       f"({self._workers_ready} of {self.workers} worker(s) loaded); "
                                       f"log ({self.log_path}):\n{self.log_tail()}")

    def _all_workers_loaded(self, wait: float) -> bool:
        """Count the workers' ready bytes, waiting up to ``wait`` s for more; True once all have come."""
        if self._ready_fd is None:
            return True
        if select.select([self._ready_fd], [], [], wait)[0]:
            data = os.read(self._ready_fd, 4096)
            self._workers_ready += len(data)
            if not data:  # every write end closed: the server is gone (the exit check reports it)
                time.sleep(wait)
        if self._workers_ready < self.workers:
            return False
        self._close_ready_pipe()  # later bytes (restarted workers) are not needed
        return True

    def _close_ready_pipe(self) -> None:
        if self._ready_fd is not None:
            os.close(self._ready_fd)
            self._ready_fd = None

    def info(self) -> dict:
        """The server's ``GET /lucent/info`` document (see :meth:`SidecarApp.info`)."""
        with urllib.request.urlopen(f"{self.url}/lucent/info", timeout=10) as response:
            return json.loads(response.read())

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the whole process group, SIGKILL what is left after ``timeout``; idempotent."""
        pid = self._process.pid
        if self._process.returncode is None:  # not reaped yet, so the group id is still this server's
            if self._exit_status() is None:
                _signal_group(pid, signal.SIGTERM)  # gunicorn's graceful stop: workers finish, then exit
                deadline = time.monotonic() + timeout
                while self._exit_status() is None and time.monotonic() < deadline:
                    time.sleep(0.02)
            # Stragglers: workers of a master that died on its own, or that ignored SIGTERM.
            _signal_group(pid, signal.SIGKILL)
            self._process.wait()
            _wait_group_gone(pid, timeout=2.0)  # killed orphans vanish once init has reaped them
        self._close_ready_pipe()
        if self._owned_log is not None:
            self._owned_log.cleanup()
            self._owned_log = None

    def __enter__(self) -> ModelServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_alive() else "stopped"
        return f"ModelServer({self.url}, pid={self.pid}, {state})"


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _wait_group_gone(pgid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)  # signal 0: only asks whether the group still has members
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.01)


ENDPOINT_SECRET_PREFIX = "LUCENT_ENDPOINT_"  # LUCENT_ENDPOINT_ACCESS_KEY_ID / _SECRET_ACCESS_KEY (container/endpoint/auth.py)


def start_model_server(model_dir: Path | str, port: int | None = None, workers: int | None = None, *,
                       host: str = "127.0.0.1", log_file: Path | None = None,
                       limits: RequestLimits | None = None) -> ModelServer:
    """Start a model server for ``model_dir`` (folder or model.tar.gz) as a child process.

    ``port`` None or 0 picks a free port. Returns at once; call :meth:`ModelServer.wait_healthy`
    before sending requests. The server's output goes to ``log_file`` (default: a temporary file
    removed by :meth:`ModelServer.stop`), and it stops by itself if this process dies. ``limits``
    defaults to :class:`RequestLimits` with bodies up to ``STARTED_SERVER_MAX_BODY_BYTES`` (what
    Lucent's client sends), whatever ``$LUCENT_MAX_BODY_MB`` says.
    Raises :class:`PortInUseError` when the port is taken and :class:`ModelLoadError` when
    ``model_dir`` does not exist.
    """
    model_dir = Path(model_dir).expanduser().resolve()
    if not model_dir.exists():
        raise ModelLoadError(f"model folder {model_dir} does not exist")
    limits = limits or RequestLimits(max_body_bytes=STARTED_SERVER_MAX_BODY_BYTES)
    sock = bind_listener(host, port or 0)
    bound_port = sock.getsockname()[1]
    owned_log = None
    if log_file is None:
        remove_abandoned_dirs(LOG_DIR_PREFIX)  # left by a process killed with SIGKILL
        owned_log = tempfile.TemporaryDirectory(prefix=f"{LOG_DIR_PREFIX}{os.getpid()}-")
        log_file = Path(owned_log.name) / "server.log"
    workers = max(1, workers or default_workers())
    ready_read, ready_write = os.pipe()
    command = [sys.executable, "-m", "container.sidecar", "--model-dir", str(model_dir), "--host", host,
               "--listen-fd", str(sock.fileno()), "--parent-pid", str(os.getpid()), "--ready-fd", str(ready_write),
               "--workers", str(workers), "--max-body-mb", repr(limits.max_body_bytes / MIB),
               "--header-timeout", repr(limits.header_timeout), "--body-timeout", repr(limits.body_timeout),
               "--max-connections", str(limits.max_connections), "--send-timeout", repr(limits.send_timeout)]
    # The model's code (inference.py, and anything it starts) runs in the child: it gets this process's
    # environment but not the credentials that `lucent endpoint` checks its callers' signatures with.
    env = {name: value for name, value in os.environ.items() if not name.startswith(ENDPOINT_SECRET_PREFIX)}
    # The child imports this package however the parent found it (installed, or a source checkout).
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    try:
        with open(log_file, "ab") as log_stream:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_stream,
                                       stderr=subprocess.STDOUT, pass_fds=(sock.fileno(), ready_write),
                                       start_new_session=True, env=env)
    except BaseException:
        os.close(ready_read)
        if owned_log is not None:
            owned_log.cleanup()
        raise
    finally:
        sock.close()  # the child holds its own copies of the listening socket and the pipe's write end
        os.close(ready_write)
    return ModelServer(process, host, bound_port, Path(log_file), owned_log, workers, ready_read, limits)
