"""The bundled demo: a reproducible credit-approval dataset and a job that analyses it.

The data is synthetic but shaped like the tables users bring (Adult / German credit): numeric and
categorical features, two sensitive attributes, a group variable for conditional metrics, a label,
and a model's predicted label. Approval depends on the features and, deliberately, a little on
``sex`` and ``race``, so the bias metrics have something to find.
"""

from __future__ import annotations

import json
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


def main(argv: list[str] | None = None) -> int:
    """``python -m container.demo [DIR]``: write the demo job to DIR (default build/demo) and run it."""
    import argparse

    from container.job import JobPaths, configure_logging, run_job

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("root", nargs="?", type=Path, default=Path("build/demo"))
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--no-model", action="store_true",
                        help="use the predicted labels in the data instead of a model")
    args = parser.parse_args(argv)
    configure_logging()
    write_demo_job(args.root, args.rows, with_model=not args.no_model)
    code = run_job(JobPaths.for_root(args.root))
    output = args.root / "output"
    print(f"\nDemo job finished with exit code {code}.\n  config:  {args.root / 'input/config/analysis_config.json'}"
          f"\n  data:    {args.root / 'input/data/credit.csv'} ({args.rows} rows)"
          f"\n  model:   {args.root / 'input/model/model.joblib'}\n  results: {output}/")
    for path in sorted(output.rglob("*")):
        if path.is_file():
            print(f"           {path}")
    print(f"  message: {(args.root / 'message').read_text().strip()}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
