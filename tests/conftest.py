"""Shared fixtures: processing roots laid out on disk exactly as a job sees them; the oracle check."""

from __future__ import annotations

import importlib
import json
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO
from pathlib import Path

import pytest

from container.demo import DEMO_CONFIG, write_demo_job

ORACLE_MODULE = "smclarify.bias.report"  # smclarify 0.5, the open-source metric library Clarify vendors
WITHOUT_ORACLE = "LUCENT_TESTS_WITHOUT_ORACLE"
CONTAINER_ENGINE_GROUP = "container-engine"  # tests using tests/test_container.py's ``engine`` fixture
# The tests capture endpoint traffic to temporary folders on whatever disk this machine has: its fill level must
# not decide whether records are kept (the disk guard's own tests set the limit, or the usage, they test).
# Set here, at import, so that the endpoints and jobs the tests start as processes inherit it.
os.environ["LUCENT_CAPTURE_DISK_LIMIT"] = "1"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "oracle: compares Lucent with smclarify, the test oracle (a missing "
                                       f"oracle fails the run unless {WITHOUT_ORACLE}=1)")
    # pytest-xdist registers it too; here so that a run without the plugin does not warn about it.
    config.addinivalue_line("markers", "xdist_group(name): tests of one group run on the same xdist worker")


def oracle_missing() -> str | None:
    """Why the oracle cannot be imported, or None when it can."""
    try:
        importlib.import_module(ORACLE_MODULE)
    except ImportError as error:
        return f"{type(error).__name__}: {error}"
    return None


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: without xdist (-p no:xdist) it is never called
def pytest_xdist_node_collection_finished(node, ids: list[str]) -> None:
    """With ``--dist loadgroup`` every test must carry its group in its node id: that is how pytest-xdist sends
    a group to one worker. A pytest that drops it (9.2: pytest-xdist#1386) would spread the container-engine
    tests over both workers, where they see each other's containers: stop before any test runs."""
    if node.config.getvalue("dist") != "loadgroup":
        return
    ungrouped = [nodeid for nodeid in ids if "@" not in nodeid.rpartition("::")[2]]
    if ungrouped:
        raise pytest.UsageError(f"pytest-xdist --dist loadgroup does not group tests with pytest {pytest.__version__} "
                                f"(pytest-xdist#1386; {ungrouped[0]} has no group): install the pytest that "
                                "pyproject.toml names (pytest<9.2)")


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which reads the groups marked here
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``oracle`` need smclarify. Without it the run fails before any test runs: skipping
    them would leave hundreds of bias comparisons unchecked and the suite green. A developer who knows
    can set LUCENT_TESTS_WITHOUT_ORACLE=1 to skip them instead.

    Also the worker each test runs on when ``make test`` runs several (pytest-xdist, ``--dist loadgroup``):
    a module's tests run together (its module fixtures start once: Spark sessions, servers), and every test
    that uses the container engine runs on one worker, since those share the engine's images, containers and
    the ports their containers listen on."""
    for item in items:
        group = CONTAINER_ENGINE_GROUP if "engine" in getattr(item, "fixturenames", ()) else item.module.__name__
        item.add_marker(pytest.mark.xdist_group(group))
    needing = [item for item in items if item.get_closest_marker("oracle")]
    reason = oracle_missing() if needing else None
    if reason is None:
        return
    if os.environ.get(WITHOUT_ORACLE) == "1":
        skip = pytest.mark.skip(reason=f"the test oracle is missing ({reason}) and {WITHOUT_ORACLE}=1")
        for item in needing:
            item.add_marker(skip)
        return
    raise pytest.UsageError(
        f"{len(needing)} collected tests compare with the test oracle smclarify, which cannot be imported "
        f"({reason}). Install it with `make install` (pip install --no-deps smclarify==0.5), or set "
        f"{WITHOUT_ORACLE}=1 to skip those tests knowingly.")


class JobRoot:
    """A processing root in a temporary folder, with helpers to run ``lucent`` on it."""

    def __init__(self, root: Path):
        self.root = root
        self.config_dir = root / "input" / "config"
        self.data_dir = root / "input" / "data"
        self.output_dir = root / "output"
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def write_config(self, config: dict | str, name: str = "analysis_config.json") -> Path:
        path = self.config_dir / name
        path.write_text(config if isinstance(config, str) else json.dumps(config), encoding="utf-8")
        return path

    def write_data(self, text: str, name: str = "data.csv") -> Path:
        path = self.data_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    def run(self, *extra: str, command: str = "run") -> int:
        from container.cli import main

        return main([command, "--processing-root", str(self.root), *extra])

    @property
    def message(self) -> str:
        return (self.root / "message").read_text(encoding="utf-8").strip()

    def analysis(self) -> dict:
        return json.loads((self.output_dir / "analysis.json").read_text(encoding="utf-8"))

    def output_files(self) -> list[str]:
        if not self.output_dir.exists():
            return []
        return sorted(str(p.relative_to(self.output_dir)) for p in self.output_dir.rglob("*"))


@contextmanager
def moto_s3() -> Iterator[str]:
    """A real S3 API (moto's server mode) on 127.0.0.1 at a free port; yields its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def use_test_credentials(patch: pytest.MonkeyPatch, **variables: str) -> None:
    """Dummy AWS credentials for a moto server, plus ``variables`` (e.g. ``AWS_ENDPOINT_URL=url``); no
    profile, session token or other endpoint from the developer's environment leaks in."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        patch.delenv(name, raising=False)
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", **variables}.items():
        patch.setenv(name, value)


@contextmanager
def http_server(handler: type[BaseHTTPRequestHandler], **attributes) -> Iterator[ThreadingHTTPServer]:
    """A real HTTP server on 127.0.0.1 (a free port) for in-test model endpoints; ``attributes`` are set
    on the server for the handler to read (``self.server.<name>``)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    for name, value in attributes.items():
        setattr(server, name, value)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def run_crashing_after_shards(job: JobRoot, monkeypatch, shards: int) -> int:
    """Run the job with its main process dying once ``shards`` SHAP shards are checkpointed; returns the
    exit code. Every later run is normal again."""
    from analyzer.explain import shards as shard_module

    advance = shard_module._Progress.advance

    def crash(self, index):
        advance(self, index)
        if self.done == shards:
            raise RuntimeError("simulated crash")

    with monkeypatch.context() as patch:
        patch.setattr(shard_module._Progress, "advance", crash)
        return job.run()


@pytest.fixture
def job(tmp_path: Path) -> JobRoot:
    return JobRoot(tmp_path / "job")


@pytest.fixture
def demo_job(tmp_path: Path) -> JobRoot:
    write_demo_job(tmp_path / "demo", n_rows=600, seed=3)
    return JobRoot(tmp_path / "demo")


@pytest.fixture
def demo_config() -> dict:
    return json.loads(json.dumps(DEMO_CONFIG))


class FakeContainer(BaseHTTPRequestHandler):
    """A model container for ``http_server``: ``GET /ping`` answers 200; subclasses write ``do_POST``
    with ``request_body`` and ``answer`` (one write: headers and body together)."""

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        self.answer(200, b"")

    def request_body(self) -> bytes:
        return self.rfile.read(int(self.headers["Content-Length"]))

    def answer(self, status: int, body: bytes, content_type: str = "text/csv", *, length: int | None = None) -> None:
        """``body`` with ``status``; ``length``: the Content-Length to announce instead of the body's."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def csv_scoring_model(score: Callable, around: Callable | None = None) -> type[BaseHTTPRequestHandler]:
    """A model server's handler for ``http_server(handler, request_rows=[])``: ``GET`` answers 200, ``POST``
    reads CSV rows (no header), records how many in ``server.request_rows`` and answers ``score(frame)``
    as CSV in full precision. ``around(server, frame)``: a context manager the scoring runs in (a test's
    bookkeeping of requests in flight)."""

    class Model(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server API
            self.send_response(200)
            self.end_headers()

        def do_POST(self):  # noqa: N802 - http.server API
            import numpy as np
            import pandas as pd

            frame = pd.read_csv(StringIO(self.rfile.read(int(self.headers["Content-Length"])).decode()), header=None)
            self.server.request_rows.append(len(frame))
            out = StringIO()
            with around(self.server, frame) if around is not None else nullcontext():
                np.savetxt(out, score(frame), delimiter=",", fmt="%.17g")
            self.send_response(200)
            self.send_header("Content-Type", "text/csv")
            self.end_headers()
            self.wfile.write(out.getvalue().encode())

        def log_message(self, *args):
            pass

    return Model
