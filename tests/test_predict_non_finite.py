"""Non-finite model outputs (NaN, inf, -inf) for post-training bias: named by row in every answer format,
never turned into a predicted label. And the two kinds of model failure, as the job tells them apart."""

from __future__ import annotations

import io
import json
import math
import pickle

import numpy as np
import pytest

from analyzer.config.model import Predictor
from analyzer.errors import DependencyError, UserError
from analyzer.predict import ModelError, ModelTransportError, parse_response, predicted_labels_for_bias
from analyzer.predict.predictions import check_finite_outputs

CSV, JSONL, JSON, NPY = "text/csv", "application/jsonlines", "application/json", "application/x-npy"
SCORES = [0.2, math.nan, 0.9, math.inf, 0.4, -math.inf]  # rows 1, 3 and 5 are not finite


def body(accept: str, scores: list[float]) -> bytes:
    if accept == CSV:
        return "".join(f"{s}\n" for s in scores).encode()
    if accept == JSONL:
        return "".join(json.dumps({"score": s}) + "\n" for s in scores).encode()  # NaN / Infinity tokens
    if accept == JSON:
        return json.dumps({"predictions": [{"score": s} for s in scores]}).encode()
    buffer = io.BytesIO()
    np.save(buffer, np.array(scores))
    return buffer.getvalue()


LOCATOR = {CSV: None, JSONL: "score", JSON: "predictions[*].score", NPY: None}


@pytest.mark.parametrize("accept", [CSV, JSONL, JSON, NPY])
def test_non_finite_scores_fail_predicted_labels_naming_the_rows(accept):
    predictor = Predictor(probability=LOCATOR[accept]) if LOCATOR[accept] else Predictor()
    out = parse_response(body(accept, SCORES), accept, predictor, len(SCORES), first_row=100)
    assert np.isnan(out.scores[1, 0]) and out.scores[3, 0] == math.inf  # read as the numbers they are
    with pytest.raises(UserError, match=r"NaN or infinite predictor.probability for 3 of 6 record\(s\), at dataset "
                                        r"rows 101 \(nan\), 103 \(inf\), 105 \(-inf\)\. Post-training bias"):
        predicted_labels_for_bias(out)


def test_finite_scores_still_give_labels():
    out = parse_response(body(JSON, [0.2, 0.9]), JSON, Predictor(probability="predictions[*].score"), 2)
    assert predicted_labels_for_bias(out).tolist() == [0, 1]


def test_a_nan_in_a_score_list_fails_the_argmax_rules():
    # label list + score list (rule 2), and a score list with label_headers (rule 3)
    lines = b'{"labels": ["no", "yes"], "p": [0.3, 0.7]}\n{"labels": ["no", "yes"], "p": [NaN, 0.1]}\n'
    out = parse_response(lines, JSONL, Predictor(label="labels", probability="p"), 2)
    with pytest.raises(UserError, match=r"for 1 of 2 record\(s\), at dataset rows 1 \(nan\)"):
        predicted_labels_for_bias(out)
    out = parse_response(b"0.3,0.7\ninf,0.1\n", CSV, Predictor(label_headers=["no", "yes"]), 2)
    with pytest.raises(UserError, match=r"at dataset rows 1 \(inf\)"):
        predicted_labels_for_bias(out)


def test_a_numeric_label_that_is_nan_fails_text_labels_pass():
    out = parse_response(b"1\nnan\n0\n", CSV, Predictor(label=0), 3)
    with pytest.raises(UserError, match=r"NaN or infinite predictor.label for 1 of 3 record\(s\), at dataset rows 1"):
        predicted_labels_for_bias(out)
    out = parse_response(b'"cat"\n"NaN"\n"dog"\n', JSONL, Predictor(label="@"), 3)
    assert predicted_labels_for_bias(out).tolist() == ["cat", "NaN", "dog"]  # the text "NaN" is a label


def test_many_bad_rows_are_summarised():
    values = np.full(40, np.nan)
    with pytest.raises(UserError, match=r"for 40 of 40 record\(s\), at dataset rows 0 \(nan\), .* 9 \(nan\) and 30 "
                                        r"more\."):
        check_finite_outputs(values, "predictor.probability")


def test_object_arrays_are_checked_value_by_value():
    check_finite_outputs(np.array(["a", 1, 2.5], dtype=object), "predictor.label")
    with pytest.raises(UserError, match=r"rows 7 \(-inf\)"):
        check_finite_outputs(np.array(["a", -math.inf], dtype=object), "predictor.label", first_row=6)


# -- the user's problem, or not ----------------------------------------------------------------------------

def test_a_refused_record_is_the_users_problem_a_lost_connection_is_not():
    assert issubclass(ModelError, UserError)
    assert issubclass(ModelTransportError, DependencyError) and not issubclass(ModelTransportError, UserError)


def test_model_errors_survive_a_trip_between_processes():
    # SHAP worker processes raise them; the job process reads them from the pool's result.
    transport = pickle.loads(pickle.dumps(ModelTransportError("no answer within 2 s")))
    assert isinstance(transport, ModelTransportError) and str(transport) == "no answer within 2 s"
    refused = pickle.loads(pickle.dumps(ModelError("refused row 3", row=3, reason="HTTP 400")))
    assert (refused.row, refused.reason, str(refused)) == (3, "HTTP 400", "refused row 3")
