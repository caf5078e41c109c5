"""Response parsing and predicted-label rules (spec 5.3): every documented extraction example."""

from __future__ import annotations

import logging

import jmespath
import numpy as np
import pandas as pd
import pytest

from analyzer.config.model import Predictor
from analyzer.errors import UserError
from analyzer.predict import Predictions, parse_response, predicted_labels_for_bias
from analyzer.predict.locator import JsonLocator

CSV, JSONL, JSON = "text/csv", "application/jsonlines", "application/json"


def parse(body: bytes, accept: str, n: int, **predictor: object) -> Predictions:
    return parse_response(body, accept, Predictor(**predictor), n)  # type: ignore[arg-type]


def values(array: np.ndarray | None) -> list | None:
    return None if array is None else array.tolist()


# -- spec 5.3 extraction examples --------------------------------------------------------------------

def test_csv_one_score_per_line():
    out = parse(b"0.6\n0.3\n", CSV, 2)
    assert values(out.probability) == [0.6, 0.3]
    assert out.scores.tolist() == [[0.6], [0.3]]


def test_csv_single_line_answers_two_records():
    out = parse(b"0.6,0.3", CSV, 2)
    assert out.scores.tolist() == [[0.6], [0.3]]


def test_csv_label_and_probability_columns():
    out = parse(b"1,0.6\n0,0.3", CSV, 2, label=0, probability=1)
    assert values(out.label) == [1, 0]
    assert values(out.probability) == [0.6, 0.3]


def test_csv_without_probability_the_whole_row_is_the_scores():
    out = parse(b"0.1,0.6,0.3\n0.5,0.2,0.3", CSV, 2)
    assert out.scores.tolist() == [[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]]


AUTOPILOT = b'"dog",0.6,"[\'cat\', \'dog\', \'fish\']","[0.1, 0.6, 0.3]"'


def test_csv_autopilot_stringified_lists():
    out = parse(AUTOPILOT, CSV, 1, label=2, probability=3)
    assert values(out.label) == [["cat", "dog", "fish"]]
    assert values(out.probability) == [[0.1, 0.6, 0.3]]
    assert out.predicted_labels().tolist() == ["dog"]
    assert parse(AUTOPILOT, CSV, 1, label=0, probability=1).predicted_labels().tolist() == ["dog"]


def test_csv_ragged_rows_still_locate_by_index():
    out = parse(b"1,0.9,extra\n0,0.2", CSV, 2, label=0, probability=1)
    assert values(out.label) == [1, 0]
    assert values(out.probability) == [0.9, 0.2]


def test_jsonlines_score():
    out = parse(b'{"score":0.6}\n{"score":0.3}', JSONL, 2, probability="score")
    assert values(out.probability) == [0.6, 0.3]


def test_jsonlines_prediction_label():
    out = parse(b'{"prediction":1,"score":0.6}\n{"prediction":0,"score":0.3}\n', JSONL, 2, label="prediction")
    assert values(out.label) == [1, 0]
    assert out.predicted_labels().tolist() == [1, 0]


@pytest.mark.parametrize("locator", [{"probability": "[*]"}, {}])
def test_json_list_of_scores(locator):
    out = parse(b"[0.6,0.3]", JSON, 2, **locator)
    assert out.scores.tolist() == [[0.6], [0.3]]


def test_json_predicted_labels_object():
    out = parse(b'{"predicted_labels":[1,0]}', JSON, 2, label="predicted_labels")
    assert values(out.label) == [1, 0]


def test_json_predictions_list_of_objects():
    body = b'{"predictions":[{"label":1,"score":0.6},{"label":0,"score":0.3}]}'
    out = parse(body, JSON, 2, label="predictions[*].label", probability="predictions[*].score")
    assert values(out.label) == [1, 0]
    assert values(out.probability) == [0.6, 0.3]


def test_json_top_level_list_of_objects():
    body = b'[{"predicted_label":"cat","probabilities":[0.7,0.3]},{"predicted_label":"dog","probabilities":[0.1,0.9]}]'
    out = parse(body, JSON, 2, label="[*].predicted_label", probability="[*].probabilities")
    assert values(out.label) == ["cat", "dog"]
    assert out.scores.tolist() == [[0.7, 0.3], [0.1, 0.9]]


@pytest.mark.parametrize(("body", "locator"), [
    (b"[0.1,0.6,0.3]", {}), (b"[0.1,0.6,0.3]", {"probability": "[*]"}),
    (b'{"prediction":[0.1,0.6,0.3]}', {"probability": "prediction"}),
])
def test_image_classification_outputs_for_one_record(body, locator):
    assert parse(body, JSON, 1, **locator).scores.tolist() == [[0.1, 0.6, 0.3]]


def test_json_single_record_scalar_output():
    out = parse(b'{"predicted_label":1,"score":0.8}', JSON, 1, label="predicted_label", probability="score")
    assert values(out.label) == [1]
    assert values(out.probability) == [0.8]


def test_integer_locators_index_each_records_list():
    assert values(parse(b"[1,0.8]\n[0,0.1]", JSONL, 2, probability=1).probability) == [0.8, 0.1]
    assert values(parse(b"[[1,0.8],[0,0.1]]", JSON, 2, label=0).label) == [1, 0]


# -- predicted label for bias -------------------------------------------------------------------------

def test_rule_1_scalar_label_is_the_predicted_label():
    out = parse(b"yes,0.2\nno,0.9", CSV, 2, label=0, probability=1)
    assert out.predicted_labels().tolist() == ["yes", "no"]


def test_rule_2_label_list_and_probability_list_take_argmax():
    body = b'{"labels":["cat","dog","fish"],"probs":[0.35,0.25,0.4]}\n{"labels":["cat","dog","fish"],"probs":[0.5,0.3,0.2]}'
    out = parse(body, JSONL, 2, label="labels", probability="probs")
    assert out.predicted_labels().tolist() == ["fish", "cat"]


def test_rule_3_probability_list_with_label_headers():
    out = parse(b"[[0.35,0.25,0.4],[0.1,0.8,0.1]]", JSON, 2, label_headers=["cat", "dog", "fish"])
    assert out.predicted_labels().tolist() == ["fish", "dog"]


def test_rule_3_without_label_headers_uses_the_position():
    assert parse(b"0.2,0.8\n0.9,0.1", CSV, 2).predicted_labels().tolist() == [1, 0]


def test_rule_4_single_score_is_strictly_greater_than_threshold():
    out = parse(b"0.8\n0.80000001\n0.2\n0.5", CSV, 4)
    assert out.predicted_labels(0.8).tolist() == [0, 1, 0, 0]
    assert out.predicted_labels().tolist() == [1, 1, 0, 0]
    # a one-element score list and one label header still mean one score: config (d) of spec 2.7
    out = parse(b'{"pr":[0.7]}\n{"pr":[0.1]}', JSONL, 2, probability="pr", label_headers=["success"])
    assert out.predicted_labels().tolist() == [1, 0]


def test_predicted_labels_for_bias_is_a_series_and_logs_the_threshold(caplog):
    out = parse(b"0.9\n0.1", CSV, 2)
    with caplog.at_level(logging.INFO, logger="analyzer.predict"):
        series = predicted_labels_for_bias(out, probability_threshold=0.8)
    assert isinstance(series, pd.Series)
    assert series.tolist() == [1, 0]
    assert "We assume a prediction above 0.800 indicates 1 and below or equal indicates 0." in caplog.text


def test_label_not_in_label_headers_is_an_error():
    out = parse(b'{"l":"cat"}\n{"l":"cow"}', JSONL, 2, label="l", label_headers=["cat", "dog"])
    with pytest.raises(UserError, match=r"predicted label 'cow' \(row 1\), which is not one of"):
        out.predicted_labels()


def test_label_headers_match_numbers_loosely():
    out = parse(b"1.0\n0", CSV, 2, label=0, label_headers=[0, 1])
    assert out.predicted_labels().tolist() == [1.0, 0.0]


def test_label_list_without_probability_is_an_error():
    out = parse(b'{"labels":["a","b"]}', JSONL, 1, label="labels")
    with pytest.raises(UserError, match="predictor.probability must give a list"):
        out.predicted_labels()


def test_label_headers_length_must_match_scores():
    out = parse(b"[[0.1,0.9]]", JSON, 1, label_headers=["a", "b", "c"])
    with pytest.raises(UserError, match="label_headers has 3 entries but the model returns 2"):
        out.predicted_labels()


# -- scores and keys for explanations -----------------------------------------------------------------

def test_scores_come_from_probability_else_label():
    assert parse(b"1,0.6", CSV, 1, label=0, probability=1).scores.tolist() == [[0.6]]
    assert parse(b"1,0.6", CSV, 1, label=1).scores.tolist() == [[0.6]]  # SDK model_scores -> predictor.label


def test_score_keys():
    assert parse(b"0.1,0.9", CSV, 1, probability=None).score_keys() == ["label0", "label1"]
    assert parse(b"[[0.1,0.9]]", JSON, 1, label_headers=["no", "yes"]).score_keys() == ["no", "yes"]
    # scores located by predictor.label: Clarify names them by the first record's values (spec 4.3)
    body = b'{"predictions":[{"score":0.7956783771514893},{"score":0.1}]}'
    assert parse(body, JSON, 2, label="predictions[*].score").score_keys() == ["0.7956783771514893"]


def test_non_numeric_score_is_an_error_quoting_the_value():
    with pytest.raises(UserError, match=r"row 1 is not a number: 'high'"):
        parse(b'{"s":0.5}\n{"s":"high"}', JSONL, 2, probability="s")
    with pytest.raises(UserError, match=r"row 1 is not a number: 'abc'; if the model returns predicted labels"):
        parse(b"0.5\nabc", CSV, 2)
    with pytest.raises(UserError, match="is not a number: None"):
        parse(b"[0.5, null]", JSON, 2)


def test_non_numeric_label_only_fails_when_used_as_scores():
    out = parse(b"cat\ndog", CSV, 2, label=0)
    assert out.predicted_labels().tolist() == ["cat", "dog"]
    with pytest.raises(UserError, match="predictor.label for row 0 is not a number: 'cat'"):
        _ = out.scores


# -- wrong shapes ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "accept", "locator", "got"), [
    (b"0.1\n0.2", CSV, {}, 2),
    (b"0.1\n0.2\n0.3\n0.4", CSV, {}, 4),
    (b'{"s":1}\n{"s":2}', JSONL, {"probability": "s"}, 2),
    (b"[0.1,0.2]", JSON, {}, 2),
    (b'{"p":[0.1,0.2,0.3,0.4]}', JSON, {"probability": "p"}, 4),
])
def test_prediction_count_must_match_records(body, accept, locator, got):
    with pytest.raises(UserError, match=rf"sent 3 record\(s\) \(rows 0 to 2\), got {got} "):
        parse(body, accept, 3, **locator)


def test_error_messages_use_the_callers_row_numbers():
    with pytest.raises(UserError, match=r"rows 100 to 102"):
        parse_response(b"0.1", CSV, Predictor(), 3, first_row=100)
    with pytest.raises(UserError, match=r"row 101 is not a number"):
        parse_response(b"0.1\nx\n0.3", CSV, Predictor(), 3, first_row=100)


def test_json_object_output_without_locator_asks_for_one():
    with pytest.raises(UserError, match="is a JSON object, not a value.*set predictor.probability"):
        parse(b'{"score":0.6}', JSONL, 1)


def test_csv_locator_beyond_the_row():
    with pytest.raises(UserError, match="predictor.probability is column 3 but .* has 2 column"):
        parse(b"1,0.5", CSV, 1, probability=3)


def test_ragged_score_lists_are_an_error():
    with pytest.raises(UserError, match="has 2 value.*but 3 for row 1"):
        parse(b"[[0.1,0.9],[0.1,0.2,0.7]]", JSON, 2)


def test_invalid_json_is_reported_with_an_excerpt():
    with pytest.raises(UserError, match="not valid JSON"):
        parse(b"{oops", JSON, 1)
    with pytest.raises(UserError, match="Line 2 of the model's application/jsonlines response is not valid JSON"):
        parse(b'{"s":1}\n{oops', JSONL, 2, probability="s")


def test_invalid_locators_are_config_errors():
    with pytest.raises(UserError, match="not a valid JMESPath"):
        parse(b"{}", JSON, 1, probability="a[")
    with pytest.raises(UserError, match="0-based column index"):
        parse(b"1", CSV, 1, label="score")


def test_concat_rejects_a_change_of_shape():
    first = parse(b"0.1\n0.2", CSV, 2)
    second = parse_response(b"0.1,0.9", CSV, Predictor(), 1, first_row=2)
    with pytest.raises(UserError, match="changed shape between requests.*row 2"):
        Predictions.concat([first, second])
    joined = Predictions.concat([first, parse_response(b"0.3", CSV, Predictor(), 1, first_row=2)])
    assert joined.scores.tolist() == [[0.1], [0.2], [0.3]]


# -- JMESPath fast paths ----------------------------------------------------------------------------

DOCUMENTS = [
    {"score": 0.5, "a": {"b": 2}, "predictions": [{"score": 1}, {"label": 2}, {"score": None}, 5]},
    {"score": None, "a": [1], "predictions": {"score": 1}},
    [1, None, {"score": 3}],
    "text",
    None,
    {"a": {"b": {"c": [1, 2]}}, "predictions": []},
]


@pytest.mark.parametrize("expression", ["score", "a.b", "a.b.c", "predictions[*].score", "[*]", "[*].score",
                                        "predictions[*]", "a.b.c[*]", "predictions[0].score", "[1]"])
def test_locator_fast_paths_agree_with_jmespath(expression):
    locator = JsonLocator(expression, "predictor.probability")
    for document in DOCUMENTS:
        assert locator.search(document) == jmespath.search(expression, document)
    assert locator.search_each(DOCUMENTS) == [jmespath.search(expression, d) for d in DOCUMENTS]


def test_npy_answers_read_like_csv_columns():
    """Lucent's own server answers npy: the same column indexes give the same scores as CSV."""
    import io

    from analyzer.predict.decode import ResponseParser

    scores = np.array([[0.25, 0.75], [0.9, 0.1], [1 / 3, 2 / 3]])
    buffer = io.BytesIO()
    np.save(buffer, scores)
    csv_body = "".join(f"{a!r},{b!r}\n" for a, b in scores.tolist()).encode()
    for probability in (1, None):
        predictor = Predictor(content_type="text/csv", probability=probability)
        from_npy = ResponseParser(predictor, "application/x-npy").parse(buffer.getvalue(), 3)
        from_csv = ResponseParser(predictor, "text/csv").parse(csv_body, 3)
        assert np.array_equal(from_npy.scores, from_csv.scores)
    with pytest.raises(UserError, match="exactly one prediction per record"):
        ResponseParser(Predictor(probability=1), "application/x-npy").parse(buffer.getvalue(), 4)


def test_text_where_the_whole_output_is_read_as_scores_is_labels_not_scores_by_type():
    """The parser tells labels from scores by type (``LabelsNotScores`` and its ``label``), its message as before."""
    import io

    from analyzer.predict.decode import LabelsNotScores, ResponseParser

    with pytest.raises(LabelsNotScores, match=r"^Model output score for row 1 is not a number: 'dog'; if the model "
                                              r"returns predicted labels, set predictor.label$") as caught:
        parse(b"0.5\ndog\ncat", CSV, 3)
    assert caught.value.label == "dog"
    with pytest.raises(LabelsNotScores) as caught:
        parse(b'["yes", "no"]', JSON, 2)
    assert caught.value.label == "yes"
    buffer = io.BytesIO()
    np.save(buffer, np.array(["no", "yes"]))  # numpy strings: an npy answer can carry them
    with pytest.raises(LabelsNotScores, match=r"not a number: np.str_\('no'\)") as caught:
        ResponseParser(Predictor(), "application/x-npy").parse(buffer.getvalue(), 2)
    assert caught.value.label == "no" and type(caught.value.label) is str
    # Not text: a null is no label, and labels that predictor.label locates are read as labels
    with pytest.raises(UserError, match="is not a number: None") as caught:
        parse(b"[0.5, null]", JSON, 2)
    assert not isinstance(caught.value, LabelsNotScores)
    assert parse(b"cat\ndog", CSV, 2, label=0).label.tolist() == ["cat", "dog"]
