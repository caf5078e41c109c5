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

DEMO_CONFIG = {
    "dataset_type": "text/csv",
    "headers": COLUMNS,
    "label": "approved",
    "predicted_label": "predicted_approved",
    "label_values_or_threshold": [1],
    "facet": [
        {"name_or_index": "sex", "value_or_threshold": ["Female"]},
        {"name_or_index": "race"},
        {"name_or_index": "age", "value_or_threshold": [60]},
    ],
    "group_variable": "age_group",
    "methods": {
        "pre_training_bias": {"methods": "all"},
        "post_training_bias": {"methods": "all"},
        "report": {"name": "report", "title": "Lucent demo: credit approval"},
    },
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


def write_demo_job(root: Path, n_rows: int = 2000, seed: int = 0, config: dict | None = None) -> Path:
    """Lay out a processing root (input/config, input/data) for the demo job; returns ``root``."""
    root = Path(root)
    (root / "input" / "config").mkdir(parents=True, exist_ok=True)
    (root / "input" / "data").mkdir(parents=True, exist_ok=True)
    (root / "input" / "config" / "analysis_config.json").write_text(
        json.dumps(config or DEMO_CONFIG, indent=2) + "\n", encoding="utf-8")
    make_credit_dataset(n_rows, seed).to_csv(root / "input" / "data" / "credit.csv", index=False, header=False)
    return root


def main(argv: list[str] | None = None) -> int:
    """``python -m container.demo [DIR]``: write the demo job to DIR (default build/demo) and run it."""
    import argparse

    from container.job import JobPaths, configure_logging, run_job

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("root", nargs="?", type=Path, default=Path("build/demo"))
    parser.add_argument("--rows", type=int, default=2000)
    args = parser.parse_args(argv)
    configure_logging()
    write_demo_job(args.root, args.rows)
    code = run_job(JobPaths.for_root(args.root))
    output = args.root / "output"
    print(f"\nDemo job finished with exit code {code}.\n  config:  {args.root / 'input/config/analysis_config.json'}"
          f"\n  data:    {args.root / 'input/data/credit.csv'} ({args.rows} rows)\n  results: {output}/")
    for path in sorted(output.rglob("*")):
        if path.is_file():
            print(f"           {path}")
    print(f"  message: {(args.root / 'message').read_text().strip()}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
