"""The model server as real processes on loopback: model folders made here with scikit-learn."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import textwrap
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestRegressor
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from container.sidecar import ModelLoadError, ModelServer, PortInUseError, start_model_server

HEALTHY_TIMEOUT_S = 60
REPO_ROOT = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def post(server: ModelServer, body: bytes, content_type: str | None, accept: str | None = None,
         **headers: str) -> tuple[int, str, bytes]:
    """POST /invocations; returns (status, response Content-Type, body) for errors too."""
    request = urllib.request.Request(f"{server.url}/invocations", data=body, method="POST")
    for name, value in {"Content-Type": content_type, "Accept": accept, **headers}.items():
        if value is not None:
            request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


def ping(server: ModelServer) -> int:
    try:
        with urllib.request.urlopen(f"{server.url}/ping", timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, read from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def csv_body(rows: np.ndarray | pd.DataFrame) -> bytes:
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    return frame.to_csv(header=False, index=False).encode()


def parse_csv(body: bytes) -> np.ndarray:
    return np.array([[float(v) for v in line.split(",")] for line in body.decode().splitlines()])


@pytest.fixture(scope="module")
def numeric_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(300, 5))
    return x, (x[:, 0] - x[:, 2] > 0).astype(int)


ABALONE_HEADER = ["rings", "sex", "length", "diameter", "whole_weight"]


@pytest.fixture(scope="module")
def abalone(tmp_path_factory) -> tuple[Path, pd.DataFrame, Pipeline]:
    """A model folder as the seed's training script leaves it: model.joblib (a pipeline that selects
    columns by name) and config_data.json with the header the predict_fn needs."""
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"sex": rng.choice(["M", "F", "I"], 120), "length": rng.uniform(0.1, 0.8, 120),
                          "diameter": rng.uniform(0.1, 0.6, 120), "whole_weight": rng.uniform(0.01, 2.5, 120)})
    rings = (frame["length"] * 20 + (frame["sex"] == "M") * 2).round()
    preprocessor = ColumnTransformer([("num", FunctionTransformer(), ["length", "diameter", "whole_weight"]),
                                      ("cat", OneHotEncoder(handle_unknown="ignore"), ["sex"])])
    model = Pipeline([("preprocessor", preprocessor),
                      ("regressor", RandomForestRegressor(n_estimators=5, random_state=0, n_jobs=1))])
    model.fit(frame, rings)
    folder = tmp_path_factory.mktemp("abalone")
    joblib.dump(model, folder / "model.joblib")
    (folder / "config_data.json").write_text(json.dumps({"header": ABALONE_HEADER}))
    return folder, frame, model


def with_script(folder: Path, target: Path, script: str, **helpers: str) -> Path:
    """Copy a model folder and add code/inference.py (+ helper modules) to the copy."""
    target.mkdir()
    for path in folder.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    (target / "code").mkdir()
    (target / "code" / "inference.py").write_text(textwrap.dedent(script))
    for name, source in helpers.items():
        (target / "code" / f"{name}.py").write_text(textwrap.dedent(source))
    return target


@pytest.fixture
def serve():
    """Start servers for a test and always stop them, checking nothing is left behind."""
    servers: list[ModelServer] = []

    def start(model_dir: Path, workers: int = 1, healthy: bool = True) -> ModelServer:
        server = start_model_server(model_dir, workers=workers)
        servers.append(server)
        if healthy:
            server.wait_healthy(HEALTHY_TIMEOUT_S)
        return server

    yield start
    for server in servers:
        server.stop()
        assert group_members(server.pid) == []


# --------------------------------------------------------------------------------------------
# Bare model files
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier_server(tmp_path_factory, numeric_data):
    x, y = numeric_data
    model = HistGradientBoostingClassifier(max_iter=10).fit(x, y)
    folder = tmp_path_factory.mktemp("hgb")
    joblib.dump(model, folder / "model.joblib")
    with start_model_server(folder, workers=1) as server:
        server.wait_healthy(HEALTHY_TIMEOUT_S)
        yield server, model
    assert group_members(server.pid) == []


def _bodies(x: np.ndarray) -> dict[str, bytes]:
    npy = io.BytesIO()
    np.save(npy, x)
    return {
        "text/csv": csv_body(x),
        "application/jsonlines": "\n".join(json.dumps(row) for row in x.tolist()).encode(),
        "application/json": json.dumps({"instances": [{"features": row} for row in x.tolist()]}).encode(),
        "application/x-npy": npy.getvalue(),
    }


def _parse(body: bytes, accept: str) -> np.ndarray:
    if accept == "text/csv":
        return parse_csv(body)
    if accept == "application/jsonlines":
        return np.array([json.loads(line) for line in body.decode().splitlines()])
    if accept == "application/json":
        return np.array(json.loads(body))
    return np.load(io.BytesIO(body))


@pytest.mark.parametrize("content_type", ["text/csv", "application/jsonlines", "application/json", "application/x-npy"])
@pytest.mark.parametrize("accept", ["text/csv", "application/jsonlines", "application/json", "application/x-npy"])
def test_every_content_and_accept_type_returns_one_probability_row_per_record(classifier_server, numeric_data,
                                                                             content_type, accept):
    server, model = classifier_server
    x = numeric_data[0][:25]
    status, response_type, body = post(server, _bodies(x)[content_type], content_type, accept)
    assert status == 200, body
    assert response_type == accept
    np.testing.assert_allclose(_parse(body, accept), model.predict_proba(x), rtol=1e-12)


def test_missing_accept_defaults_to_json_and_single_records_work(classifier_server, numeric_data):
    server, model = classifier_server
    x = numeric_data[0][:1]
    status, response_type, body = post(server, json.dumps(x[0].tolist()).encode(), "application/json")
    assert (status, response_type) == (200, "application/json")
    np.testing.assert_allclose(json.loads(body), model.predict_proba(x), rtol=1e-12)


@pytest.mark.parametrize("body, content_type, accept, status, message", [
    (b"1,2,3\n4,5\n", "text/csv", "text/csv", 400, "malformed text/csv body"),
    (b"[[1, 2", "application/json", "text/csv", 400, "malformed application/json body"),
    (b"GIF89a", "image/gif", "text/csv", 415, "unsupported Content-Type 'image/gif'"),
    (b"1,2,3,4,5", "text/csv", "text/html", 406, "unsupported Accept 'text/html'"),
    (b"1,2,3", "text/csv", "text/csv", 500,
     "the built-in predict (model.predict / predict_proba) failed: ValueError: X has 3 features"),
])
def test_bad_requests_get_a_clear_plain_text_error_and_the_server_stays_up(classifier_server, body, content_type,
                                                                            accept, status, message):
    server, _ = classifier_server
    got_status, response_type, got_body = post(server, body, content_type, accept)
    assert got_status == status
    assert response_type.startswith("text/plain")
    assert message in got_body.decode()
    assert ping(server) == 200


def test_routes_methods_and_info(classifier_server):
    server, _ = classifier_server
    info = server.info()
    assert info["loaded"] and info["default_io"] and "HistGradientBoostingClassifier" in info["model"]
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(f"{server.url}/predict", timeout=10)
    assert error.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(f"{server.url}/invocations", timeout=10)
    assert error.value.code == 405


def test_large_npy_bodies_are_read_whole(classifier_server):
    server, model = classifier_server
    x = np.random.default_rng(2).normal(size=(60_000, 5))  # 2.4 MB: many socket reads
    status, _, body = post(server, _bodies(x)["application/x-npy"], "application/x-npy", "application/x-npy")
    assert status == 200, body
    np.testing.assert_array_equal(np.load(io.BytesIO(body)), model.predict_proba(x))


SLOW_SECOND_WORKER = """
    import os, time
    import joblib

    def model_fn(model_dir):
        try:  # the first worker to get here loads at once, the others take their time
            os.close(os.open(os.path.join(model_dir, "first-worker"), os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            time.sleep(1.5)
        return joblib.load(os.path.join(model_dir, "model.joblib"))
"""


def test_wait_healthy_returns_once_every_worker_has_loaded_the_model(serve, tmp_path, numeric_data):
    x, y = numeric_data
    joblib.dump(LogisticRegression().fit(x, y), tmp_path / "model.joblib")
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "inference.py").write_text(textwrap.dedent(SLOW_SECOND_WORKER))
    started = time.monotonic()
    server = serve(tmp_path, workers=2)  # /ping answers after ~1 s (the first worker); wait_healthy waits for both
    assert time.monotonic() - started >= 1.5
    assert server.log_tail(100).count("model loaded from") == 2


def test_pipeline_in_a_model_tarball(serve, tmp_path, numeric_data):
    x, y = numeric_data
    model = Pipeline([("scale", StandardScaler()), ("classify", LogisticRegression())]).fit(x, y)
    joblib.dump(model, tmp_path / "model.pkl")
    tarball = tmp_path / "model.tar.gz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(tmp_path / "model.pkl", arcname="model.pkl")
    server = serve(tarball)
    status, _, body = post(server, csv_body(x[:10]), "text/csv", "text/csv")
    assert status == 200
    np.testing.assert_allclose(parse_csv(body), model.predict_proba(x[:10]), rtol=1e-12)


# --------------------------------------------------------------------------------------------
# code/inference.py
# --------------------------------------------------------------------------------------------

# All four handlers, written like the seed's abalone script: text bodies arrive as str, input_fn
# returns a DataFrame whose columns predict_fn renames, output_fn returns a bare CSV string. The
# predict_fn also takes the context (custom attributes) and imports a helper module from code/.
FOUR_HANDLERS = """
    import json
    import os
    import time
    from io import StringIO

    import joblib
    import pandas as pd

    from helpers import check_attributes

    def model_fn(model_dir):
        model = joblib.load(os.path.join(model_dir, "model.joblib"))
        with open(os.path.join(model_dir, "config_data.json")) as json_file:
            config_data = json.load(json_file)
        return model, config_data

    def input_fn(input_data, content_type="text/csv"):
        if content_type != "text/csv":
            raise ValueError(f"{content_type} not supported by script!")
        assert isinstance(input_data, str), type(input_data)
        return pd.read_csv(StringIO(input_data), header=None)

    def predict_fn(input_data, model, context):
        trained_model, config_data = model
        attributes = context.custom_attributes or ""
        check_attributes(attributes)
        if attributes.startswith("meet="):  # a barrier: returns once two requests have arrived in parallel
            folder = attributes[len("meet="):]
            open(os.path.join(folder, str(os.getpid())), "w").close()
            deadline = time.monotonic() + 20
            while len(os.listdir(folder)) < 2:
                if time.monotonic() > deadline:
                    raise RuntimeError("no second request ran beside this one")
                time.sleep(0.01)
        input_data.columns = config_data["header"][1:]
        return pd.DataFrame(trained_model.predict(input_data))

    def output_fn(prediction, accept="text/csv"):
        return prediction.to_csv(index=False, header=None)

    if __name__ == "__main__":
        raise SystemExit("training code: must not run when the server imports this script")
"""

HELPERS = """
    def check_attributes(attributes):
        if "explode" in attributes:
            raise RuntimeError("model exploded on purpose")
"""


def test_inference_script_with_all_four_handlers(serve, tmp_path, abalone):
    folder, frame, model = abalone
    server = serve(with_script(folder, tmp_path / "four", FOUR_HANDLERS, helpers=HELPERS), workers=2)
    assert server.info()["default_io"] is False  # its own input_fn/output_fn decide the wire format
    status, response_type, body = post(server, csv_body(frame.head(8)), "text/csv", "text/csv")
    assert (status, response_type) == (200, "text/csv")
    np.testing.assert_allclose(parse_csv(body)[:, 0], model.predict(frame.head(8)))

    # User errors: the message reaches the caller, and the server keeps serving.
    status, _, body = post(server, csv_body(frame.head(2)), "text/csv", "text/csv",
                           **{"X-Amzn-SageMaker-Custom-Attributes": "explode=1"})
    assert status == 500 and body.decode() == "predict_fn failed: RuntimeError: model exploded on purpose"
    status, _, body = post(server, b"{}", "application/json", "text/csv")
    assert status == 400 and "application/json not supported by script!" in body.decode()
    assert ping(server) == 200

    # Two workers answer two requests at the same time: each request waits in the handler until the
    # other one has reached it too. The second is sent once the first is in its handler, so the first
    # worker is busy in the app and only the second one can take it.
    meeting = tmp_path / "meeting"
    meeting.mkdir()

    def meet(_=None):
        return post(server, csv_body(frame.head(3)), "text/csv", "text/csv",
                    **{"X-Amzn-SageMaker-Custom-Attributes": f"meet={meeting}"})

    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(meet)
        deadline = time.monotonic() + 20
        while not any(meeting.iterdir()) and not first.done() and time.monotonic() < deadline:
            time.sleep(0.01)
        second = meet()
        first = first.result()
    assert (first[0], second[0]) == (200, 200), (first, second)
    assert len(list(meeting.iterdir())) == 2  # two worker processes, one request each


def test_abalone_style_model_fn_and_predict_fn_with_default_io(serve, tmp_path, abalone):
    folder, frame, model = abalone
    script = """
        import json
        import os

        import joblib
        import pandas as pd

        def model_fn(model_dir):
            with open(os.path.join(model_dir, "config_data.json")) as json_file:
                config_data = json.load(json_file)
            return joblib.load(os.path.join(model_dir, "model.joblib")), config_data

        def predict_fn(input_data, model):
            trained_model, config_data = model
            # Clarify sends no header; the model was trained on named columns.
            frame = pd.DataFrame(input_data, columns=config_data["header"][1:])
            return trained_model.predict(frame)
    """
    server = serve(with_script(folder, tmp_path / "abalone", script))
    expected = model.predict(frame.head(6))
    # The default input_fn decodes the mixed string/number rows; the default output_fn encodes.
    status, _, body = post(server, csv_body(frame.head(6)), "text/csv", "text/csv")
    assert status == 200
    np.testing.assert_allclose(parse_csv(body)[:, 0], expected)
    records = frame.head(6).to_dict(orient="split")["data"]
    status, _, body = post(server, "\n".join(json.dumps({"features": r}) for r in records).encode(),
                           "application/jsonlines", "application/json")
    assert status == 200
    np.testing.assert_allclose(json.loads(body), expected)


# --------------------------------------------------------------------------------------------
# Failures to start or load
# --------------------------------------------------------------------------------------------


def test_empty_model_folder_is_reported_by_wait_healthy(serve, tmp_path):
    server = serve(tmp_path, healthy=False)
    with pytest.raises(ModelLoadError, match=f"model folder {tmp_path} is empty"):
        server.wait_healthy(HEALTHY_TIMEOUT_S)
    assert server.is_alive() and ping(server) == 503  # it keeps explaining itself until stopped
    status, _, body = post(server, b"1", "text/csv")
    assert status == 503 and body.decode().startswith("model folder unloadable: ")


def test_unloadable_model_file_is_reported_by_wait_healthy(serve, tmp_path):
    (tmp_path / "model.joblib").write_bytes(b"this is not a pickle")
    server = serve(tmp_path, healthy=False)
    with pytest.raises(ModelLoadError, match="cannot load model.joblib: "):
        server.wait_healthy(HEALTHY_TIMEOUT_S)


def test_missing_model_folder_fails_at_start(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        start_model_server(tmp_path / "nowhere")


def test_port_already_taken_fails_fast_with_the_port_named(tmp_path):
    (tmp_path / "model.joblib").write_bytes(b"")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(PortInUseError, match=f"port {port} on 127.0.0.1 is already in use"):
            start_model_server(tmp_path, port=port)
        assert time.monotonic() - started < 1
        cli = subprocess.run([sys.executable, "-m", "container.sidecar", "--model-dir", str(tmp_path),
                              "--host", "127.0.0.1", "--port", str(port)],
                             capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
        assert cli.returncode == 1
        assert f"error: port {port} on 127.0.0.1 is already in use" in cli.stderr


def test_stop_kills_workers_orphaned_by_a_crashed_master(serve, tmp_path, numeric_data):
    x, y = numeric_data
    joblib.dump(LogisticRegression().fit(x, y), tmp_path / "model.joblib")
    server = serve(tmp_path, workers=2)
    os.kill(server.pid, signal.SIGKILL)  # the master only: its workers live on, orphaned
    deadline = time.monotonic() + 10
    while server.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not server.is_alive()
    assert len(group_members(server.pid)) == 2
    server.stop()  # the serve fixture then checks that the group is empty
    assert group_members(server.pid) == []


def test_server_stops_when_the_process_that_started_it_dies(tmp_path, numeric_data):
    x, y = numeric_data
    joblib.dump(LogisticRegression().fit(x, y), tmp_path / "model.joblib")
    launcher = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from pathlib import Path
            from container.sidecar import start_model_server
            server = start_model_server({str(tmp_path)!r}, workers=2, log_file=Path({str(tmp_path / "server.log")!r}))
            server.wait_healthy({HEALTHY_TIMEOUT_S})
            print(server.pid, flush=True)
            time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        server_pid = int(launcher.stdout.readline())
        assert len(group_members(server_pid)) == 3  # master + 2 workers
        launcher.send_signal(signal.SIGKILL)  # no chance to call stop()
        deadline = time.monotonic() + 15
        while group_members(server_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert group_members(server_pid) == []
    finally:
        launcher.kill()
        launcher.wait()
        launcher.stdout.close()


def test_the_model_code_does_not_see_the_endpoints_signing_secret(tmp_path: Path, monkeypatch) -> None:
    """`lucent endpoint` checks callers with LUCENT_ENDPOINT_* credentials; the model server it starts runs
    the user's inference.py, which must not be able to read them from its environment."""
    from container.sidecar.server import start_model_server

    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "inference.py").write_text(textwrap.dedent("""
        import json, os

        def model_fn(model_dir):
            return None

        def transform_fn(model, body, content_type, accept):
            names = sorted(name for name in os.environ if name.startswith(("LUCENT_ENDPOINT_", "QA_")))
            return json.dumps(names), "application/json"
    """))
    monkeypatch.setenv("LUCENT_ENDPOINT_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("LUCENT_ENDPOINT_SECRET_ACCESS_KEY", "endpoint-secret")
    monkeypatch.setenv("QA_VISIBLE", "1")  # everything else is passed on
    with start_model_server(tmp_path, workers=1) as server:
        server.wait_healthy()
        request = urllib.request.Request(f"{server.url}/invocations", data=b"1", headers={"Content-Type": "text/csv"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.loads(response.read()) == ["QA_VISIBLE"]
