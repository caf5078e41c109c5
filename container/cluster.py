"""Multi-host processing jobs, as Clarify runs them: one Spark standalone cluster over the job's hosts.

SageMaker Processing starts the same container on every instance of a job and writes
``/opt/ml/config/resourceconfig.json`` on each: ``{"current_host": "algo-2", "hosts": ["algo-1", "algo-2"]}``
(spec clarify-contract.md sections 1.4-1.5). Clarify then runs on Spark; so does Lucent:

* the leader, the first host listed, starts a standalone master and a worker, waits for the other hosts'
  workers to register, and runs the job's driver on that cluster (``--engine spark`` with the master
  ``spark://<leader>:7077``); it writes the outputs and the exit message, as on one host;
* every other host starts a worker that joins the leader's master, and stays up until that master goes
  away (the leader's job is over): then it exits 0. A leader that never comes up fails the host within
  ``LUCENT_CLUSTER_TIMEOUT`` seconds, naming the leader.

One host (or no ``resourceconfig.json``): the job runs as it always has. Every job logs Clarify's lines
``This host is algo-1.``, ``This host is the leader.`` and ``Number of hosts in the cluster is N.``.

The Spark daemons are pyspark's own (``bin/spark-class``), found through the installed package's path
without importing pyspark (only ``analyzer.engines.spark`` imports it). They run in their own process
group, stopped when the job ends and sent SIGTERM by Linux if this process dies first.

Host names are resolved by DNS, as in a processing job. ``LUCENT_HOST_ADDRESSES`` maps names to addresses
(``algo-1=127.0.0.1,algo-2=127.0.0.2``: two hosts as two processes on one machine's loopback), and hosts may
be listed as addresses. ``LUCENT_CLUSTER_PORT`` moves the master from 7077. See docs/spark.md.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from analyzer.engines import ENGINE_ENV, SPARK_MASTER_ENV, close_engines
from analyzer.environment import environment_set, positive_number
from analyzer.errors import DependencyError, UserError
from analyzer.parent import set_parent_death_signal
from container.job import (
    STOP_SIGNALS,
    SUCCESS_MESSAGE,
    JobPaths,
    clear_message,
    finish,
    raise_job_stopped,
    run_job,
    storage_failure,
)
from container.outcome import EXIT_OK, JobStopped, outcome_of, storage_error

log = logging.getLogger("lucent.cluster")

SAGEMAKER_RESOURCE_CONFIG = Path("/opt/ml/config/resourceconfig.json")  # what SageMaker Processing writes
RESOURCE_CONFIG_ENV = "LUCENT_RESOURCE_CONFIG"  # another path (tests; a cluster made by hand)
HOST_ADDRESSES_ENV = "LUCENT_HOST_ADDRESSES"  # name=address,... used before DNS
CLUSTER_PORT_ENV = "LUCENT_CLUSTER_PORT"
CLUSTER_TIMEOUT_ENV = "LUCENT_CLUSTER_TIMEOUT"
DEFAULT_PORT = 7077  # Spark's standalone master port
DEFAULT_TIMEOUT_S = 300.0  # instances of one job start within a few minutes of each other
DAEMON_START_TIMEOUT_S = 120.0  # a JVM on a busy small instance
POLL_S = 1.0  # how often a worker host checks that the leader's master is still there
SINGLE_HOST = "algo-1"  # SageMaker's name for the only instance of a job
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
MASTER_READY = "I have been elected leader"
WORKER_JOINED = "Registering worker "  # the master's line for each worker that registers
WORKER_READY = "Successfully registered with master"
EXECUTOR_LAUNCHED = "Asked to launch executor"
# The master's REST submission server takes applications without authentication: off. Executors' work
# directories are removed with their application.
MASTER_OPTS = "-Dspark.master.rest.enabled=false"
WORKER_OPTS = "-Dspark.worker.cleanup.enabled=true"


@dataclass(frozen=True)
class Cluster:
    """The job's hosts as ``resourceconfig.json`` lists them; the leader is the first."""

    current_host: str
    hosts: tuple[str, ...]

    @property
    def leader(self) -> str:
        return self.hosts[0]

    @property
    def is_leader(self) -> bool:
        return self.current_host == self.leader

    def log_lines(self) -> list[str]:
        """Clarify's three lines about the cluster (spec section 1.6)."""
        return [f"This host is {self.current_host}.",
                "This host is the leader." if self.is_leader else f"This host is not the leader ({self.leader} is).",
                f"Number of hosts in the cluster is {len(self.hosts)}."]


def resource_config_path() -> Path:
    """``LUCENT_RESOURCE_CONFIG`` when set, else where SageMaker Processing writes the file."""
    named = os.environ.get(RESOURCE_CONFIG_ENV, "").strip()
    return Path(named) if named else SAGEMAKER_RESOURCE_CONFIG


def read_cluster(path: Path | None = None) -> Cluster:
    """The job's hosts from ``resourceconfig.json``; one host (``algo-1``) when the default file does not
    exist (not on SageMaker). A file named by ``LUCENT_RESOURCE_CONFIG`` must exist. Any problem is a
    ``UserError`` naming the file and the key."""
    explicit = path is not None or bool(os.environ.get(RESOURCE_CONFIG_ENV, "").strip())
    path = path or resource_config_path()
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if explicit:
            raise UserError(f"{RESOURCE_CONFIG_ENV}: {path} does not exist") from None
        return Cluster(SINGLE_HOST, (SINGLE_HOST,))
    except (OSError, ValueError) as error:
        raise UserError(f"{path}: cannot read the cluster's hosts: {error}") from None
    if not isinstance(document, dict):
        raise UserError(f"{path}: must be a JSON object with current_host and hosts")
    current, hosts = document.get("current_host"), document.get("hosts")
    if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) and h.strip() for h in hosts):
        raise UserError(f"{path}: hosts must be a non-empty list of host names, got {hosts!r}")
    if len(set(hosts)) != len(hosts):
        raise UserError(f"{path}: hosts lists a host twice: {hosts!r}")
    if not isinstance(current, str) or current not in hosts:
        raise UserError(f"{path}: current_host must be one of hosts {hosts!r}, got {current!r}")
    return Cluster(current, tuple(hosts))


def log_cluster(cluster: Cluster | None = None) -> Cluster:
    """Log Clarify's host lines for ``cluster`` (default: read from ``resourceconfig.json``)."""
    cluster = cluster or read_cluster()
    for line in cluster.log_lines():
        log.info(line)
    return cluster


def host_addresses() -> dict[str, str]:
    """``LUCENT_HOST_ADDRESSES`` (``name=address,...``) as a mapping."""
    text = os.environ.get(HOST_ADDRESSES_ENV, "").strip()
    mapping = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        name, equals, address = (piece.strip() for piece in entry.partition("="))
        if not (equals and name and address):
            raise UserError(f"{HOST_ADDRESSES_ENV}: {entry!r} is not name=address (for example "
                            "algo-1=10.0.0.5,algo-2=10.0.0.6)")
        mapping[name] = address
    return mapping


def resolve(host: str, deadline: float) -> str:
    """The address of ``host``: ``LUCENT_HOST_ADDRESSES``, else DNS, retried until ``deadline`` (a
    processing job's host names may appear in DNS a little after its containers start)."""
    mapped = host_addresses().get(host)
    if mapped:
        return mapped
    while True:
        try:
            return socket.gethostbyname(host)
        except OSError as error:
            if time.monotonic() >= deadline:
                raise DependencyError(f"The host name {host} does not resolve ({error}); list the cluster's "
                                      f"addresses in {HOST_ADDRESSES_ENV}") from None
            time.sleep(POLL_S)


def reachable(address: str, port: int, timeout: float = 5.0) -> bool:
    """Whether ``address:port`` accepts a TCP connection now."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def spark_home() -> Path:
    """The installed pyspark package (Spark's home: ``bin/spark-class``, ``jars/``), without importing it."""
    spec = importlib.util.find_spec("pyspark")
    if spec is None or not spec.submodule_search_locations:
        from analyzer.engines.spark import INSTALL_HINT

        raise UserError(f"A job with several hosts runs on Spark, and pyspark is not installed: {INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations)))


class Daemon:
    """One Spark daemon (``spark-class <class> ...``) in its own process group; its lines are logged at
    DEBUG, counted, and the last ones kept for error messages."""

    def __init__(self, name: str, main_class: str, args: list[str], env: dict[str, str]):
        self.name = name
        self._lines: deque[str] = deque(maxlen=40)
        self._seen: list[str] = []
        self._changed = threading.Condition()
        self._ended = False
        self.process = subprocess.Popen(
            [str(Path(env["SPARK_HOME"]) / "bin" / "spark-class"), main_class, *args], env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
            start_new_session=True, preexec_fn=lambda: set_parent_death_signal(signal.SIGTERM))
        threading.Thread(target=self._read, name=f"spark-{name}-log", daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            line = line.rstrip()
            log.debug("spark %s: %s", self.name, line)
            with self._changed:
                self._lines.append(line)
                self._seen.append(line)
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def count(self, text: str) -> int:
        with self._changed:
            return sum(text in line for line in self._seen)

    def wait_for(self, text: str, times: int = 1, timeout: float = DAEMON_START_TIMEOUT_S) -> int:
        """Wait until ``times`` lines contain ``text``, the daemon ends or ``timeout`` passes; the count."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                seen = sum(text in line for line in self._seen)
                remaining = deadline - time.monotonic()
                if seen >= times or self._ended or remaining <= 0:
                    return seen
                self._changed.wait(remaining)

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def last_lines(self) -> str:
        with self._changed:
            return " | ".join(self._lines)[-1500:] or "no output"

    def stop(self) -> None:
        """SIGTERM to its process group (the executors a worker started too), SIGKILL after 30 s."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@contextlib.contextmanager
def spark_daemons(address: str) -> Iterator[tuple[dict[str, str], list[Daemon]]]:
    """The environment for this host's Spark daemons (bound to ``address``, work and logs in a temporary
    folder any user can have) and the list they are added to; all stopped, newest first, at the end."""
    from analyzer.engines.spark import check_java

    home = spark_home()
    check_java()
    work = Path(tempfile.mkdtemp(prefix="lucent-spark-"))
    env = {**os.environ, "SPARK_HOME": str(home), "SPARK_LOCAL_IP": address, "SPARK_WORKER_DIR": str(work / "work"),
           "SPARK_LOG_DIR": str(work / "logs"), "PYSPARK_PYTHON": os.environ.get("PYSPARK_PYTHON", sys.executable),
           "SPARK_MASTER_OPTS": f"{MASTER_OPTS} {os.environ.get('SPARK_MASTER_OPTS', '')}".strip(),
           "SPARK_WORKER_OPTS": f"{WORKER_OPTS} {os.environ.get('SPARK_WORKER_OPTS', '')}".strip()}
    daemons: list[Daemon] = []
    try:
        yield env, daemons
    finally:
        for daemon in reversed(daemons):
            daemon.stop()
        shutil.rmtree(work, ignore_errors=True)


def start_worker(env: dict[str, str], address: str, master_url: str) -> Daemon:
    return Daemon("worker", WORKER_CLASS, [master_url, "--host", address, "--webui-port", "0",
                                           "--work-dir", env["SPARK_WORKER_DIR"]], env)


def cluster_settings() -> tuple[int, float]:
    """The master's port and how long a host waits for the others (``LUCENT_CLUSTER_*``)."""
    port = int(positive_number(CLUSTER_PORT_ENV, DEFAULT_PORT, int, "a TCP port"))
    if port > 65535:
        raise UserError(f"{CLUSTER_PORT_ENV}={port}: must be a TCP port (1-65535)")
    return port, positive_number(CLUSTER_TIMEOUT_ENV, DEFAULT_TIMEOUT_S, float, "seconds")


def run_host(paths: JobPaths, *, allow_paths_outside_root: bool = False) -> int:
    """Run this host's part of the job (module docstring); never raises. Returns the exit code."""
    try:
        cluster = read_cluster()
    except UserError:
        cluster = None  # the job reports the problem, with its other first lines (run_job logs the hosts)
    if cluster is None or len(cluster.hosts) == 1:
        return run_job(paths, allow_paths_outside_root=allow_paths_outside_root)
    previous = {signum: signal.signal(signum, raise_job_stopped) for signum in STOP_SIGNALS}
    try:
        clear_message(paths.message_file)
        if cluster.is_leader:
            return _run_leader(cluster, paths, allow_paths_outside_root)
        return _run_member(cluster, paths)
    except (Exception, JobStopped) as error:  # noqa: BLE001 - every host leaves an exit message, as run_job does
        if (full := storage_error(error)) is not None:  # a full disk is the user's, as in run_job
            return storage_failure(paths, full, "")
        ended = outcome_of(error, where=f" on {cluster.current_host}")
        if isinstance(error, JobStopped):
            log.error("Signal %d received, cleaning up", error.signum)
        elif ended.internal:
            log.exception("Internal error on %s", cluster.current_host)
        else:
            log.error("Job failed: %s", ended.reason)
        return finish(paths.message_file, ended.code, ended.message)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _run_leader(cluster: Cluster, paths: JobPaths, allow_paths_outside_root: bool) -> int:
    """Master and worker here, the other hosts' workers registered, then the job on that cluster."""
    port, timeout = cluster_settings()
    address = resolve(cluster.current_host, time.monotonic() + timeout)
    url = f"spark://{address}:{port}"
    with spark_daemons(address) as (env, daemons):
        master = Daemon("master", MASTER_CLASS, ["--host", address, "--port", str(port), "--webui-port", "0"], env)
        daemons.append(master)
        if not master.wait_for(MASTER_READY):
            raise DependencyError(f"The Spark master on the leader {cluster.current_host} ({address}:{port}) did not "
                                  f"start within {DAEMON_START_TIMEOUT_S:.0f} s: {master.last_lines()}")
        daemons.append(start_worker(env, address, url))
        hosts = len(cluster.hosts)
        log.info("Spark master at %s: waiting up to %.0f s for the workers of %d hosts", url, timeout, hosts)
        joined = master.wait_for(WORKER_JOINED, hosts, timeout)
        if joined == 0:
            raise DependencyError(f"No Spark worker registered with the master at {url} within {timeout:.0f} s: "
                                  f"{daemons[-1].last_lines()}")
        if joined < hosts:
            log.warning("Only %d of %d hosts' Spark workers registered within %.0f s (%s): the job runs on those",
                        joined, hosts, timeout, CLUSTER_TIMEOUT_ENV)
        else:
            log.info("The Spark workers of all %d hosts registered with %s", hosts, url)
        if os.environ.get(ENGINE_ENV, "spark").strip().lower() != "spark":
            log.warning("%s=%s: the job runs on this host alone; the other hosts wait until it ends",
                        ENGINE_ENV, os.environ[ENGINE_ENV])
        # The driver (this process's Spark session) binds to this host's address, where executors reach it.
        with environment_set({ENGINE_ENV: os.environ.get(ENGINE_ENV) or "spark",
                              SPARK_MASTER_ENV: os.environ.get(SPARK_MASTER_ENV) or url, "SPARK_LOCAL_IP": address}):
            try:
                return run_job(paths, allow_paths_outside_root=allow_paths_outside_root)
            finally:
                close_engines()  # the application ends before its cluster does: no lost-executor errors


def _run_member(cluster: Cluster, paths: JobPaths) -> int:
    """A worker joining the leader's master; exit 0 once that master has gone away."""
    log_cluster(cluster)
    port, timeout = cluster_settings()
    deadline = time.monotonic() + timeout
    leader = resolve(cluster.leader, deadline)
    url = f"spark://{leader}:{port}"
    log.info("Waiting up to %.0f s for the leader %s's Spark master at %s", timeout, cluster.leader, url)
    while not reachable(leader, port, timeout=max(0.1, min(5.0, deadline - time.monotonic()))):
        if time.monotonic() >= deadline:
            raise DependencyError(f"The leader {cluster.leader} ({leader}:{port}) did not start its Spark master "
                                  f"within {timeout:.0f} s ({CLUSTER_TIMEOUT_ENV}); {cluster.current_host} had no "
                                  "cluster to join")
        time.sleep(POLL_S)
    address = resolve(cluster.current_host, deadline)
    with spark_daemons(address) as (env, daemons):
        worker = start_worker(env, address, url)
        daemons.append(worker)
        registered, join_deadline = False, time.monotonic() + DAEMON_START_TIMEOUT_S
        while worker.running and reachable(leader, port):
            if registered:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.process.wait(timeout=POLL_S)
            elif worker.wait_for(WORKER_READY, timeout=POLL_S):
                registered = True
                log.info("This host's Spark worker joined the leader's master at %s", url)
            elif time.monotonic() > join_deadline:
                raise DependencyError(f"The Spark worker on {cluster.current_host} did not register with the "
                                      f"leader {cluster.leader}'s master at {url} within "
                                      f"{DAEMON_START_TIMEOUT_S:.0f} s: {worker.last_lines()}")
        if not worker.running:
            raise DependencyError(f"The Spark worker on {cluster.current_host} stopped (exit code "
                                  f"{worker.process.returncode}): {worker.last_lines()}")
        log.info("The leader's Spark master is gone: the job is over (%d executors ran on this host)",
                 worker.count(EXECUTOR_LAUNCHED))
    return finish(paths.message_file, EXIT_OK, SUCCESS_MESSAGE)


__all__ = ["Cluster", "log_cluster", "read_cluster", "run_host"]
