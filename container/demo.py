"""The bundled demos: reproducible synthetic datasets and jobs that analyse them.

Credit approval (``make demo``): the data is shaped like the tables users bring (Adult / German
credit): numeric and categorical features, two sensitive attributes, a group variable for conditional
metrics, a label, and a model's predicted label. Approval depends on the features and, deliberately,
a little on ``sex`` and ``race``, so the bias metrics have something to find.

Product reviews (``make demo-text``): English reviews built from template sentences whose sentiment
words follow a star rating, a category, and a TF-IDF + logistic regression model served through an
``inference.py``; the job explains every token of the reviews (``methods.shap.text_config``).

The endpoint (``make demo-endpoint``): the credit model behind ``lucent endpoint`` with data capture and
online explanations, called with boto3's ``sagemaker-runtime`` client as a SageMaker endpoint would be.
"""

from __future__ import annotations

import json
import re
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = ["age", "sex", "race", "education_years", "hours_per_week", "credit_amount", "age_group",
           "approved", "predicted_approved"]
RACES = np.array(["White", "Black", "Asian", "Hispanic", "Other"])
RACE_SHARES = [0.6, 0.13, 0.07, 0.15, 0.05]
AGE_GROUPS = np.array(["18-29", "30-44", "45-64", "65+"])

FEATURES = COLUMNS[:7]  # what the model sees: everything but the label and the predicted label
CATEGORICAL_FEATURES = ["sex", "race", "age_group"]

# The bias job on a dataset that already holds predicted labels (no model needed).
DEMO_CONFIG = {
    "dataset_type": "text/csv",
    "headers": COLUMNS,
    "label": "approved",
    "predicted_label": "predicted_approved",
    "label_values_or_threshold": [1],
    "facet": [
        {"name_or_index": "sex", "value_or_threshold": ["Female"]},
        {"name_or_index": "race"},
    ],
    "group_variable": "age_group",
    "methods": {
        "pre_training_bias": {"methods": "all"},
        "post_training_bias": {"methods": "all"},
        "report": {"name": "report", "title": "Lucent demo: credit approval"},
    },
}


# The full demo: the model's predictions come from the built-in model server on input/model.
MODEL_DEMO_CONFIG = {
    "dataset_type": "text/csv",
    "headers": COLUMNS[:8],
    "label": "approved",
    "label_values_or_threshold": [1],
    "facet": DEMO_CONFIG["facet"],
    "group_variable": "age_group",
    "probability_threshold": 0.5,
    "methods": {
        **DEMO_CONFIG["methods"],
        # Kernel SHAP on every record against one computed baseline row (the data's centre); with 7
        # features the 126 proper coalitions fit in the budget, so the values are exact.
        "shap": {"num_clusters": 1, "num_samples": 256, "seed": 0, "agg_method": "mean_abs"},
        "pdp": {"grid_resolution": 10, "top_k_features": 3},
    },
    # The built-in server answers predict_proba rows "p0,p1"; column 1 is the approval score.
    "predictor": {"content_type": "text/csv", "accept_type": "text/csv", "probability": 1},
}


def make_credit_dataset(n_rows: int = 2000, seed: int = 0) -> pd.DataFrame:
    """A credit-approval table with the columns of ``COLUMNS`` (vectorised: 10M rows in seconds)."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, n_rows)
    sex = np.where(rng.random(n_rows) < 0.45, "Female", "Male")
    race = RACES[rng.choice(len(RACES), n_rows, p=RACE_SHARES)]
    education_years = np.clip(np.round(rng.normal(13, 2.5, n_rows)), 6, 20).astype(np.int64)
    hours_per_week = np.clip(np.round(rng.normal(40, 9, n_rows)), 5, 80).astype(np.int64)
    credit_amount = np.round(rng.lognormal(8.0, 0.7, n_rows), 2)
    age_group = AGE_GROUPS[np.digitize(age, [30, 45, 65])]

    score = (0.25 * (education_years - 13) + 0.04 * (hours_per_week - 40) - 0.35 * np.log(credit_amount / 3000)
             + 0.02 * (age - 40) - 0.45 * (sex == "Female") - 0.3 * np.isin(race, ["Black", "Hispanic"]))
    approved = (score + rng.logistic(0, 1, n_rows) > 0).astype(np.int64)
    # The "model" sees the features with its own noise and a slightly stronger sex effect.
    predicted = (score - 0.15 * (sex == "Female") + rng.logistic(0, 0.6, n_rows) > 0).astype(np.int64)
    return pd.DataFrame({
        "age": age, "sex": sex, "race": race, "education_years": education_years,
        "hours_per_week": hours_per_week, "credit_amount": credit_amount, "age_group": age_group,
        "approved": approved, "predicted_approved": predicted,
    }, columns=COLUMNS)


def train_credit_model(data: pd.DataFrame, seed: int = 0):
    """A scikit-learn pipeline (one-hot + scaling + logistic regression) on the demo features.

    Columns are selected by position so the model accepts the plain arrays the model server
    decodes from CSV requests, with no inference script.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    categorical = [FEATURES.index(c) for c in CATEGORICAL_FEATURES]
    numeric = [i for i in range(len(FEATURES)) if i not in categorical]
    encode = ColumnTransformer([("categories", OneHotEncoder(handle_unknown="ignore"), categorical),
                                ("numbers", StandardScaler(), numeric)])
    model = make_pipeline(encode, LogisticRegression(max_iter=1000, random_state=seed))
    return model.fit(data[FEATURES].to_numpy(dtype=object), data["approved"].to_numpy())


def write_demo_job(root: Path, n_rows: int = 2000, seed: int = 0, config: dict | None = None,
                   with_model: bool = False) -> Path:
    """Lay out a processing root for the demo job; returns ``root``.

    ``with_model``: also train and save the model in ``input/model`` and drop the predicted-label
    column from the data, so post-training bias gets its predictions from the model.
    """
    import joblib

    root = Path(root)
    for folder in ("config", "data"):
        (root / "input" / folder).mkdir(parents=True, exist_ok=True)
    data = make_credit_dataset(n_rows, seed)
    if with_model:
        (root / "input" / "model").mkdir(parents=True, exist_ok=True)
        joblib.dump(train_credit_model(data, seed), root / "input" / "model" / "model.joblib")
        data = data.drop(columns=["predicted_approved"])
    config = config or (MODEL_DEMO_CONFIG if with_model else DEMO_CONFIG)
    (root / "input" / "config" / "analysis_config.json").write_text(json.dumps(config, indent=2) + "\n",
                                                                    encoding="utf-8")
    data.to_csv(root / "input" / "data" / "credit.csv", index=False, header=False)
    return root


# ---------------------------------------------------------------------------------------------
# Text demo: product reviews, a TF-IDF + logistic regression model behind an inference.py, and a job
# that explains every word of the reviews (methods.shap.text_config) and checks the data for bias.

REVIEW_CATEGORIES = np.array(["Digital_Software", "Books", "Toys", "Kitchen"])
REVIEW_CATEGORY_SHARES = [0.3, 0.3, 0.2, 0.2]
# Mean star rating shift per category: software reviews are harsher, so pre-training bias has a finding.
_CATEGORY_MOOD = {"Digital_Software": -0.6, "Books": 0.3, "Toys": 0.1, "Kitchen": 0.0}
_PRODUCT = {
    "Digital_Software": ("app", ["interface", "installer", "latest update", "sync feature", "license"]),
    "Books": ("book", ["plot", "writing", "ending", "translation", "cover"]),
    "Toys": ("toy", ["design", "packaging", "battery life", "paint", "instructions"]),
    "Kitchen": ("kettle", ["handle", "lid", "coating", "cord", "switch"]),
}
_GOOD = ["great", "excellent", "wonderful", "perfect", "solid", "intuitive", "delightful", "reliable"]
_BAD = ["terrible", "awful", "disappointing", "broken", "confusing", "useless", "flimsy", "buggy"]
_LIKE = ["love", "enjoy", "recommend", "adore"]
_DISLIKE = ["hate", "regret buying", "returned", "cannot stand"]
_SENTENCES_GOOD = ["Worth every penny.", "Five stars from me.", "Would buy again.", "Exceeded my expectations."]
_SENTENCES_BAD = ["Waste of money.", "Avoid this one.", "Asked for a refund.", "Never again."]
_FILLER = ["I bought it last month.", "It arrived on a Tuesday.", "My sister uses one too.",
           "We tried it for a week.", "The delivery took three days.", "I got it as a gift.",
           "I read the other reviews first.", "This is my second one."]
_TOKEN = re.compile(r"\w+|[^\w\s]")  # about what spaCy's English tokenizer counts as tokens


def _review(rng: np.random.Generator, category: str, stars: int, length: int) -> str:
    """One review of about ``length`` tokens whose words lean with ``stars`` (1-5)."""
    noun, aspects = _PRODUCT[category]
    p_good = (0.06, 0.2, 0.5, 0.8, 0.94)[stars - 1]  # chance that a sentiment sentence is positive
    target = max(6, int(round(length * rng.uniform(0.67, 1.33))))
    sentences: list[str] = []
    tokens = 0
    while tokens < target:
        roll = rng.random()
        good = rng.random() < p_good
        if roll < 0.25:
            sentence = str(rng.choice(_FILLER))
        elif roll < 0.5:
            verb = rng.choice(_LIKE if good else _DISLIKE)
            sentence = f"I {verb} this {noun}."
        elif roll < 0.85:
            adjective = rng.choice(_GOOD if good else _BAD)
            aspect = rng.choice(aspects)
            sentence = f"The {aspect} is {'really ' if rng.random() < 0.3 else ''}{adjective}."
        else:
            sentence = str(rng.choice(_SENTENCES_GOOD if good else _SENTENCES_BAD))
        sentences.append(sentence)
        tokens += len(_TOKEN.findall(sentence))
    return " ".join(sentences)


def make_review_dataset(n_rows: int = 400, seed: int = 0, length: int = 30) -> pd.DataFrame:
    """Synthetic English product reviews: review_id, review_body, product_category, star_rating, label.

    Each review is a few template sentences of about ``length`` tokens (the demo's 30 gives 20-40;
    benchmarks ask for more), whose sentiment words (love / terrible / refund ...) follow the star
    rating, so a bag-of-words model learns them. ``label`` is 1 for 4 or 5 stars. Software reviews
    get lower ratings on average, for the pre-training bias metrics to find.
    """
    rng = np.random.default_rng(seed)
    categories = REVIEW_CATEGORIES[rng.choice(len(REVIEW_CATEGORIES), n_rows, p=REVIEW_CATEGORY_SHARES)]
    mood = np.array([_CATEGORY_MOOD[c] for c in categories]) + rng.normal(3.4, 1.3, n_rows)
    stars = np.clip(np.round(mood), 1, 5).astype(np.int64)
    bodies = [_review(rng, str(c), int(s), length) for c, s in zip(categories, stars, strict=True)]
    return pd.DataFrame({
        "review_id": [f"R{seed:02d}-{i:06d}" for i in range(n_rows)],
        "review_body": bodies,
        "product_category": categories,
        "star_rating": stars,
        "label": (stars >= 4).astype(np.int64),
    })


REVIEW_FEATURES = ["review_body", "product_category"]  # what the model sees, in request order


def train_review_model(data: pd.DataFrame, seed: int = 0):
    """A scikit-learn pipeline: TF-IDF on the review text + one-hot category -> logistic regression.

    It takes a DataFrame with the columns of ``REVIEW_FEATURES`` (the demo's inference.py builds one).
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    encode = ColumnTransformer([
        ("text", TfidfVectorizer(ngram_range=(1, 1), min_df=2, sublinear_tf=True), "review_body"),
        ("category", OneHotEncoder(handle_unknown="ignore"), ["product_category"]),
    ])
    model = Pipeline([("encode", encode), ("classify", LogisticRegression(C=4.0, max_iter=1000, random_state=seed))])
    return model.fit(data[REVIEW_FEATURES], data["label"].to_numpy())


# The model server's script for the review model (docs/model-server.md): JSON Lines in and out.
REVIEW_INFERENCE_SCRIPT = '''\
"""Serve the Lucent text demo's review model: JSON Lines in, JSON Lines out.

Request, one record per line:   {"features": ["<review text>", "<product category>"]}
Response, one line per record:  {"predicted_label": 0 or 1, "probability": <P(label = 1)>}
"""

import json
import os

import joblib
import pandas as pd

COLUMNS = ["review_body", "product_category"]


def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))


def input_fn(input_data, content_type):
    if not content_type.startswith("application/jsonlines"):
        raise ValueError(f"expected application/jsonlines, got {content_type}")
    text = input_data.decode("utf-8") if isinstance(input_data, bytes) else input_data
    rows = [json.loads(line)["features"] for line in text.splitlines() if line.strip()]
    return pd.DataFrame(rows, columns=COLUMNS)


def predict_fn(input_data, model):
    return model.predict_proba(input_data)[:, 1]


def output_fn(prediction, accept):
    lines = [json.dumps({"predicted_label": int(p >= 0.5), "probability": float(p)}) for p in prediction]
    return "".join(line + "\\n" for line in lines), "application/jsonlines"
'''

TEXT_DEMO_ROWS = 300

# Kernel SHAP on every review: each token of review_body is a feature, and so is product_category. A
# masked token becomes "<PAD>" (Clarify's default), which the model's vocabulary does not know.
TEXT_DEMO_CONFIG = {
    "dataset_type": "application/jsonlines",
    "features": "features",
    "headers": ["review_body", "product_category", "label"],
    "label": "label",
    "label_values_or_threshold": [1],
    "facet": [{"name_or_index": "product_category", "value_or_threshold": ["Digital_Software"]}],
    "methods": {
        "pre_training_bias": {"methods": "all"},
        "shap": {
            "baseline": [{"features": ["<PAD>", "Digital_Software"]}],
            "seed": 0,
            "agg_method": "mean_abs",
            "save_local_shap_values": True,
            "text_config": {"granularity": "token", "language": "english", "max_top_tokens": 50},
        },
        "report": {"name": "report", "title": "Lucent demo: product review sentiment"},
    },
    "predictor": {
        "content_type": "application/jsonlines",
        "accept_type": "application/jsonlines",
        "content_template": '{"features":$features}',
        "probability": "probability",
    },
}


def write_text_demo_job(root: Path, n_rows: int = TEXT_DEMO_ROWS, seed: int = 0, length: int = 30,
                        config: dict | None = None) -> Path:
    """Lay out a processing root for the text demo; returns ``root``.

    ``input/data/reviews.jsonl`` holds ``{"review_id": ..., "features": [review_body, product_category],
    "label": 0|1}`` per line (``review_id`` is for people; the job reads ``features`` and ``label``).
    ``input/model`` holds ``model.joblib`` (``train_review_model``) and ``code/inference.py``.
    """
    import joblib

    root = Path(root)
    for folder in ("config", "data", "model/code"):
        (root / "input" / folder).mkdir(parents=True, exist_ok=True)
    data = make_review_dataset(n_rows, seed, length)
    joblib.dump(train_review_model(data, seed), root / "input" / "model" / "model.joblib")
    (root / "input" / "model" / "code" / "inference.py").write_text(REVIEW_INFERENCE_SCRIPT, encoding="utf-8")
    (root / "input" / "config" / "analysis_config.json").write_text(
        json.dumps(config or TEXT_DEMO_CONFIG, indent=2) + "\n", encoding="utf-8")
    with (root / "input" / "data" / "reviews.jsonl").open("w", encoding="utf-8") as handle:
        for review_id, body, category, label in data[["review_id", *REVIEW_FEATURES, "label"]].itertuples(
                index=False):
            record = {"review_id": review_id, "features": [body, category], "label": int(label)}
            handle.write(json.dumps(record) + "\n")
    return root


# ---------------------------------------------------------------------------------------------
# Endpoint demo: the credit model behind `lucent endpoint`, with data capture (every invocation) and
# online explanations (Kernel SHAP against one baseline row, the data's centre), called with boto3's
# sagemaker-runtime client as a SageMaker endpoint would be.

ENDPOINT_DEMO_NAME = "lucent-demo"
ENDPOINT_DEMO_REQUESTS = 20  # single-record invocations, each explained and captured
ENDPOINT_START_SECONDS = 120.0  # the built-in model server loads the model first
# EnableExplanations is a JMESPath expression; this literal answers a request without SHAP values.
NO_EXPLANATIONS = "`false`"


def endpoint_demo_config(baseline_csv: str, capture_destination: str) -> dict:
    """The ``CreateEndpointConfig`` body of the demo endpoint, with the keys the SageMaker SDK writes."""
    return {
        "ProductionVariants": [{"VariantName": "AllTraffic"}],
        "DataCaptureConfig": {
            "EnableCapture": True,
            "InitialSamplingPercentage": 100,
            "DestinationS3Uri": capture_destination,
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
            "CaptureContentTypeHeader": {"CsvContentTypes": ["text/csv"], "JsonContentTypes": ["application/json"]},
        },
        "ExplainerConfig": {"ClarifyExplainerConfig": {
            # The built-in server answers predict_proba rows "p0,p1": column 1 is the approval score.
            "InferenceConfig": {"FeatureHeaders": FEATURES, "ProbabilityIndex": 1},
            "ShapConfig": {"ShapBaselineConfig": {"MimeType": "text/csv", "ShapBaseline": baseline_csv}, "Seed": 0},
        }},
    }


def csv_record(values) -> str:
    """One CSV line of feature values (the demo's values hold no commas or quotes)."""
    return ",".join(f"{v:.2f}".rstrip("0").rstrip(".") if isinstance(v, float | np.floating) else str(v)
                    for v in values)


def write_endpoint_demo(root: Path, seed: int = 0) -> tuple[Path, str, pd.DataFrame]:
    """Lay out the endpoint demo in ``root``: ``model/model.joblib`` (the credit model) and
    ``endpoint-config.json`` (capture to ``root/capture``; the SHAP baseline is the data's centre, as the
    batch demo computes it). Returns the config's path, the baseline record and the records to send
    (unseen applicants)."""
    import joblib

    from analyzer.explain import compute_baseline

    root = Path(root)
    (root / "model").mkdir(parents=True, exist_ok=True)
    data = make_credit_dataset(2000, seed)
    joblib.dump(train_credit_model(data, seed), root / "model" / "model.joblib")
    categorical = [FEATURES.index(c) for c in CATEGORICAL_FEATURES]
    baseline = csv_record(compute_baseline(data[FEATURES], 1, categorical=categorical, seed=seed)[0])
    config = endpoint_demo_config(baseline, str((root / "capture").resolve()))
    config_path = root / "endpoint-config.json"
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    records = make_credit_dataset(ENDPOINT_DEMO_REQUESTS, seed + 1)[FEATURES]
    return config_path, baseline, records


class RunningEndpoint:
    """A ``lucent endpoint`` process started by :func:`running_endpoint`: its Popen handle and URL."""

    def __init__(self, process, url: str, log_path: Path):
        self.process, self.url, self.log_path = process, url, log_path

    @property
    def exit_code(self) -> int | None:
        return self.process.returncode


@contextmanager
def running_endpoint(config_path: Path, endpoint_name: str, model_dir: Path, log_path: Path,
                     port: int | None = None, start_timeout: float = ENDPOINT_START_SECONDS,
                     stop_timeout: float = 120.0) -> Iterator[RunningEndpoint]:
    """``lucent endpoint`` on the built-in model server over ``model_dir``, on ``port`` (default: a free
    one) of 127.0.0.1, its output in ``log_path``; yielded once ``GET /ping`` answers 200. On the way out
    it gets SIGTERM (it finishes requests in flight and flushes capture) and is waited for; its exit code
    is then ``exit_code``."""
    import subprocess
    import sys

    from container.model_endpoint import _free_port

    port = port or _free_port()
    command = [sys.executable, "-m", "container.cli", "endpoint", "--config", str(config_path),
               "--endpoint-name", endpoint_name, "--model-dir", str(model_dir), "--port", str(port)]
    with Path(log_path).open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    endpoint = RunningEndpoint(process, f"http://127.0.0.1:{port}", Path(log_path))
    try:
        _wait_in_service(endpoint, start_timeout)
        yield endpoint
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_in_service(endpoint: RunningEndpoint, timeout: float) -> None:
    """Return once ``GET /ping`` answers 200; RuntimeError with the log's tail if the endpoint exits or
    takes longer than ``timeout``."""
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if endpoint.process.poll() is not None:
            raise RuntimeError(f"lucent endpoint exited with code {endpoint.process.returncode}:\n"
                               + _tail(endpoint.log_path))
        try:
            with urllib.request.urlopen(f"{endpoint.url}/ping", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)  # polling the endpoint's own health check: there is no event to wait on
    raise RuntimeError(f"lucent endpoint not in service after {timeout:g} s:\n" + _tail(endpoint.log_path))


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def runtime_client(url: str):
    """boto3's ``sagemaker-runtime`` client for a local endpoint. Any credentials do: the endpoint checks
    signatures only when its ``LUCENT_ENDPOINT_*`` keys are set."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(aws_access_key_id="demo", aws_secret_access_key="demo", region_name="us-east-1")
    return session.client("sagemaker-runtime", endpoint_url=url,
                          config=Config(retries={"max_attempts": 1}, max_pool_connections=4))


def _approval(answer: dict) -> float:
    """P(approved) in an endpoint answer: column 1 of the model's CSV answer ``p0,p1``."""
    return float(answer["predictions"]["data"].strip().split(",")[1])


def _print_explained(record, answer: dict, baseline_answer: dict, baseline: str, inference_id: str) -> None:
    """One explained prediction: the record, the prediction, the expected value and the attributions."""
    prediction, expected = _approval(answer), _approval(baseline_answer)
    features = answer["explanations"]["kernel_shap"][0]
    attributions = [(f["feature_header"], f["attributions"][0]["attribution"][0]) for f in features]
    attributions.sort(key=lambda item: -abs(item[1]))
    total = sum(value for _, value in attributions)
    print(f"\nOne explained prediction (InferenceId {inference_id}):")
    print(f"  record          {', '.join(f'{n}={v}' for n, v in zip(FEATURES, record, strict=True))}")
    print(f"  prediction      {prediction:.6f}  P(approved): column 1 of the model's answer "
          f"{answer['predictions']['data'].strip()!r}")
    print(f"  expected value  {expected:.6f}  the baseline's prediction (baseline: "
          f"{', '.join(f'{n}={v}' for n, v in zip(FEATURES, baseline.split(','), strict=True))})")
    print("  attributions (Kernel SHAP, largest effect first):")
    for name, value in attributions:
        print(f"    {name:<16}{value:+.6f}")
    print(f"  sum of attributions {total:+.6f} = prediction - expected value {prediction - expected:+.6f}")


def run_endpoint_demo(root: Path, port: int | None = None) -> int:
    """``make demo-endpoint``: start ``lucent endpoint`` on the credit model with capture and
    explanations, send it traffic with boto3, print one explained prediction, stop it with SIGTERM and
    list the capture files. Exit code 0 when every invocation was captured."""
    root = Path(root)
    config_path, baseline, records = write_endpoint_demo(root)
    capture = root / "capture"
    log_path = root / "endpoint.log"
    print(f"Starting lucent endpoint {ENDPOINT_DEMO_NAME}\n  config:  {config_path}\n"
          f"  model:   {root / 'model/model.joblib'}\n  log:     {log_path}", flush=True)
    invocations = explained = 0
    with running_endpoint(config_path, ENDPOINT_DEMO_NAME, root / "model", log_path, port) as endpoint:
        runtime = runtime_client(endpoint.url)

        def invoke(body: str, inference_id: str, **options: str) -> dict:
            nonlocal invocations
            response = runtime.invoke_endpoint(EndpointName=ENDPOINT_DEMO_NAME, ContentType="text/csv",
                                               Accept="text/csv", Body=body, InferenceId=inference_id, **options)
            invocations += 1
            return json.loads(response["Body"].read())

        answers = [invoke(csv_record(record), f"demo-{i:04d}")
                   for i, record in enumerate(records.itertuples(index=False))]
        explained = sum(1 for answer in answers if answer["explanations"])
        # The expected value is the baseline's own prediction, asked without explanations (how the SDK's
        # notebooks get it for their plots).
        baseline_answer = invoke(baseline, "demo-baseline", EnableExplanations=NO_EXPLANATIONS)
        print(f"\nSent {invocations} invocations with boto3 (sagemaker-runtime, endpoint_url={endpoint.url}); "
              f"{explained} came back explained.")
        # Shown: the applicant whose prediction is furthest from the expected value (most to explain).
        shown = max(range(len(answers)), key=lambda i: abs(_approval(answers[i]) - _approval(baseline_answer)))
        _print_explained(records.iloc[shown].tolist(), answers[shown], baseline_answer, baseline, f"demo-{shown:04d}")
        print(f"\nCapture: every invocation, to {capture}/ (files are published when they roll or at shutdown)")
        print(f"\nStopping the endpoint (SIGTERM to pid {endpoint.process.pid}) ...", flush=True)
    files = sorted(path for path in capture.rglob("*.jsonl") if not path.name.startswith("."))
    lines = 0
    print(f"Endpoint exited with code {endpoint.exit_code}. Capture files:")
    for path in files:
        count = sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
        lines += count
        print(f"  {path} ({count} lines)")
    print(f"{lines} captured lines for {invocations} invocations.")
    return 0 if endpoint.exit_code == 0 and lines == invocations else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m container.demo [--text | --endpoint] [DIR]``: write a demo job to DIR and run it.

    Default: the credit-approval job in build/demo. ``--text``: the product-review job (text
    explanations) in build/demo-text. ``--endpoint``: the credit model behind ``lucent endpoint``
    (capture and explanations), called with boto3, in build/demo-endpoint.
    """
    import argparse

    from container.job import JobPaths, configure_logging, run_job

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("root", nargs="?", type=Path, default=None,
                        help="processing root to create (default build/demo, or build/demo-text with --text)")
    parser.add_argument("--rows", type=int, default=None,
                        help=f"rows of data (default 2000, or {TEXT_DEMO_ROWS} with --text)")
    parser.add_argument("--text", action="store_true",
                        help="the text demo: product reviews, every word explained by Kernel SHAP")
    parser.add_argument("--no-model", action="store_true",
                        help="use the predicted labels in the data instead of a model (credit demo only)")
    parser.add_argument("--endpoint", action="store_true",
                        help="the endpoint demo: the credit model behind `lucent endpoint`, called with boto3")
    args = parser.parse_args(argv)
    if args.text and args.no_model:
        parser.error("--no-model applies to the credit demo only")
    if args.endpoint:
        if args.text or args.no_model or args.rows is not None:
            parser.error("--endpoint takes no --text, --no-model or --rows")
        return run_endpoint_demo(args.root or Path("build/demo-endpoint"))
    root = args.root or Path("build/demo-text" if args.text else "build/demo")
    configure_logging()
    if args.text:
        rows = args.rows or TEXT_DEMO_ROWS
        write_text_demo_job(root, rows)
        data, model = root / "input/data/reviews.jsonl", root / "input/model/ (model.joblib, code/inference.py)"
    else:
        rows = args.rows or 2000
        write_demo_job(root, rows, with_model=not args.no_model)
        data, model = root / "input/data/credit.csv", root / "input/model/model.joblib"
    code = run_job(JobPaths.for_root(root))
    output = root / "output"
    print(f"\nDemo job finished with exit code {code}.\n  config:  {root / 'input/config/analysis_config.json'}"
          f"\n  data:    {data} ({rows} rows)\n  model:   {model}\n  results: {output}/")
    for path in sorted(output.rglob("*")):
        if path.is_file():
            print(f"           {path}")
    print(f"  message: {(root / 'message').read_text().strip()}")
    return code

if __name__ == "__main__":
    raise SystemExit(main())
