"""Model folders -> handler chains, in this process (the HTTP side is in test_sidecar_server.py)."""

from __future__ import annotations

import json
import sys
import tarfile

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from container.sidecar.errors import ModelLoadError
from container.sidecar.model import (
    InvocationContext,
    InvocationError,
    call_handler,
    load_handlers,
    prepare_model_dir,
)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    return x, (x[:, 0] + x[:, 1] > 0).astype(int)


def _csv(rows: np.ndarray) -> bytes:
    return "\n".join(",".join(repr(float(v)) for v in row) for row in rows).encode()


def test_bare_joblib_classifier_answers_with_all_probability_columns(tmp_path, data):
    x, y = data
    model = LogisticRegression().fit(x, y)
    joblib.dump(model, tmp_path / "model.joblib")
    handlers = load_handlers(tmp_path)
    body, content_type = handlers.invoke(_csv(x[:5]), "text/csv", "application/json")
    assert content_type == "application/json"
    np.testing.assert_allclose(json.loads(body), model.predict_proba(x[:5]), rtol=1e-12)


def test_tarball_and_folder_holding_only_the_tarball_are_extracted(tmp_path, data):
    x, y = data
    source = tmp_path / "src"
    source.mkdir()
    joblib.dump(LogisticRegression().fit(x, y), source / "model.pkl")
    tarball = tmp_path / "holder" / "model.tar.gz"
    tarball.parent.mkdir()
    with tarfile.open(tarball, "w:gz") as archive:
        archive.add(source / "model.pkl", arcname="model.pkl")
    for target in (tarball, tarball.parent):
        folder, temp = prepare_model_dir(target)
        assert temp is not None and (folder / "model.pkl").is_file()
        load_handlers(folder)
        temp.cleanup()
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"not a tarball")
    with pytest.raises(ModelLoadError, match="cannot extract"):
        prepare_model_dir(broken)


@pytest.mark.parametrize("files, message", [
    ({}, "is empty"),
    ({"README.md": b"hi"}, "no model file found .* holds README.md"),
    ({"a.joblib": b"", "b.pkl": b""}, "several model files .*: a.joblib, b.pkl"),
    ({"model.joblib": b"garbage, not a pickle"}, "cannot load model.joblib: "),
    ({"model.joblib": None}, "holds a builtins.dict, which has no predict"),
])
def test_folder_problems_are_explained(tmp_path, files, message):
    for name, content in files.items():
        if content is None:
            joblib.dump({"not": "a model"}, tmp_path / name)
        else:
            (tmp_path / name).write_bytes(content)
    with pytest.raises(ModelLoadError, match=message):
        load_handlers(tmp_path)


def test_nested_folder_gets_a_hint(tmp_path):
    (tmp_path / "model").mkdir()
    with pytest.raises(ModelLoadError, match="top level: is model/ the folder"):
        load_handlers(tmp_path)


def test_script_errors_are_load_errors(tmp_path):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "inference.py").write_text("import not_a_module_anywhere\n")
    with pytest.raises(ModelLoadError, match="importing code/inference.py failed: ModuleNotFoundError"):
        load_handlers(tmp_path)
    (tmp_path / "code" / "inference.py").write_text("def model_fn(model_dir):\n    raise OSError('no weights')\n")
    with pytest.raises(ModelLoadError, match="model_fn in inference.py failed: OSError: no weights"):
        load_handlers(tmp_path)


def test_context_is_passed_only_to_handlers_that_take_it():
    context = InvocationContext(custom_attributes="trace=1", headers={"x-amzn-sagemaker-custom-attributes": "trace=1"})
    assert call_handler(lambda data, content_type: data, "a", "b", context=context) == "a"
    assert call_handler(lambda data, content_type, ctx: ctx.custom_attributes, "a", "b", context=context) == "trace=1"
    assert call_handler(lambda data, content_type="x": content_type, "a", "b", context=context) == "b"
    assert context.get_request_header(0, "X-Amzn-SageMaker-Custom-Attributes") == "trace=1"


def test_default_decoding_errors_are_client_errors(tmp_path, data):
    x, y = data
    joblib.dump(LogisticRegression().fit(x, y), tmp_path / "model.joblib")
    handlers = load_handlers(tmp_path)
    with pytest.raises(InvocationError) as error:
        handlers.invoke(b"1,2\n3", "text/csv", "text/csv")
    assert error.value.status == 400
    # A bare model file has no predict_fn: the failure names what ran, the built-in predict.
    with pytest.raises(InvocationError, match=r"^the built-in predict \(model.predict / predict_proba\) failed: "
                                              "ValueError: X has 3 features") as error:
        handlers.invoke(b"1,2,3", "text/csv", "text/csv")
    assert error.value.status == 500


@pytest.mark.filterwarnings("ignore:.*Unknown file format")  # xgboost-model has no suffix; xgboost guesses JSON
def test_xgboost_model_files(tmp_path, data):
    xgb = pytest.importorskip("xgboost")
    x, y = data
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 2, "nthread": 1}, xgb.DMatrix(x, label=y), 5)
    expected = booster.predict(xgb.DMatrix(x[:4]))
    for name in ("model.json", "model.ubj", "xgboost-model"):
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        booster.save_model(str(folder / (name if name != "xgboost-model" else "m.json")))
        if name == "xgboost-model":
            (folder / "m.json").rename(folder / name)
        body, _ = load_handlers(folder).invoke(_csv(x[:4]), "text/csv", "application/jsonlines")
        np.testing.assert_allclose([json.loads(line) for line in body.splitlines()], expected, rtol=1e-6)


def test_lightgbm_model_file(tmp_path, data):
    lgb = pytest.importorskip("lightgbm")
    x, y = data
    booster = lgb.train({"objective": "multiclass", "num_class": 3, "verbose": -1, "min_data_in_leaf": 5, "num_threads": 1},
                        lgb.Dataset(x, label=(x[:, 0] > 0).astype(int) + (x[:, 1] > 1)), num_boost_round=5)
    booster.save_model(str(tmp_path / "model.txt"))
    (tmp_path / "notes.txt").write_text("not a model: ignored because it does not start with 'tree'")
    body, _ = load_handlers(tmp_path).invoke(_csv(x[:4]), "text/csv", "text/csv")
    rows = [[float(v) for v in line.split(",")] for line in body.decode().splitlines()]
    np.testing.assert_allclose(rows, booster.predict(x[:4]), rtol=1e-6)


def test_sklearn_api_boosters_pickled_use_predict_proba(tmp_path, data):
    xgb = pytest.importorskip("xgboost")
    x, y = data
    model = xgb.XGBClassifier(n_estimators=5, max_depth=2, n_jobs=1).fit(x, y)
    joblib.dump(model, tmp_path / "model.joblib")
    body, _ = load_handlers(tmp_path).invoke(_csv(x[:3]), "text/csv", "application/json")
    np.testing.assert_allclose(json.loads(body), model.predict_proba(x[:3]), rtol=1e-6)


def test_missing_optional_library_is_named(tmp_path, monkeypatch):
    (tmp_path / "xgboost-model").write_bytes(b"{}")
    monkeypatch.setitem(sys.modules, "xgboost", None)  # what an absent package looks like to import
    with pytest.raises(ModelLoadError, match="needs the 'xgboost' package, which is not installed"):
        load_handlers(tmp_path)


@pytest.mark.filterwarnings("ignore:.*Unknown file format")
def test_a_request_without_accept_gets_what_sagemakers_container_for_the_model_answers(tmp_path, data, monkeypatch):
    """SageMaker's XGBoost container answers text/csv; its scikit-learn container JSON (seed 002's traffic
    reads `0.76\\n`, and its capture files hold text/csv)."""
    import io

    from container.sidecar.app import SidecarApp

    xgb = pytest.importorskip("xgboost")
    monkeypatch.delenv("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", raising=False)
    x, y = data
    (tmp_path / "xgb").mkdir()
    xgb.train({"objective": "binary:logistic", "max_depth": 2, "nthread": 1}, xgb.DMatrix(x, label=y),
              3).save_model(str(tmp_path / "xgb" / "xgboost-model.json"))
    (tmp_path / "xgb" / "xgboost-model.json").rename(tmp_path / "xgb" / "xgboost-model")
    (tmp_path / "sk").mkdir()
    joblib.dump(LogisticRegression().fit(x, y), tmp_path / "sk" / "model.joblib")

    def invoke(folder, accept=None):
        body = _csv(x[:2])
        environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/invocations", "CONTENT_TYPE": "text/csv",
                   "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body)}
        if accept is not None:
            environ["HTTP_ACCEPT"] = accept
        answer = {}
        payload = b"".join(SidecarApp(folder)(environ, lambda status, headers: answer.update(headers)))
        return answer["Content-Type"], payload

    content_type, body = invoke(tmp_path / "xgb")
    assert content_type == "text/csv" and len(body.decode().split()) == 2
    assert invoke(tmp_path / "xgb", "*/*")[0] == "text/csv"
    assert invoke(tmp_path / "sk")[0] == "application/json"
    monkeypatch.setenv("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", "application/jsonlines")  # the variable wins
    assert invoke(tmp_path / "xgb")[0] == "application/jsonlines"
