"""The online response document (spec online-explainability.md section 5) and ``EnableExplanations`` (2.4).

The expected documents are the spec's verbatim examples (5.1 from the developer guide, 5.2 from the
notebooks' stored outputs), built here from the numbers they hold.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from analyzer.explain.online import (
    STDERR_KEY,
    OnlineShapSettings,
    check_enable_explanations,
    enable_explanations,
    fit_online_explainer,
    response_document,
)

# Spec 5.1, tabular: ShapBaseline '0,0,0,0', Body '1,2,3,4', Accept text/csv.
DG_TABULAR = json.loads("""
{
    "version": "1.0",
    "predictions": {"content_type": "text/csv; charset=utf-8", "data": "0.0006380207487381"},
    "explanations": {"kernel_shap": [[
        {"attributions": [{"attribution": [-0.00433456]}]},
        {"attributions": [{"attribution": [-0.005369821]}]},
        {"attributions": [{"attribution": [0.007917749]}]},
        {"attributions": [{"attribution": [-0.00261214]}]}
    ]]}
}""")

DG_NOT_SATISFIED = {"version": "1.0",
                    "predictions": {"content_type": "text/csv; charset=utf-8", "data": "0.6380207487381995"},
                    "explanations": {}}

# Spec 5.1, text: FeatureTypes ['text'], TextConfig token/en, Body '"This is a good product"'.
DG_TEXT_UNITS = [(-0.007270948666666712, "This", 0), (-0.018199033666666628, "is", 5), (0.01970993241666666, "a", 8),
                 (0.1253469515833334, "good", 10), (0.03291143366666657, "product", 15)]
DG_TEXT = {"version": "1.0", "predictions": {"content_type": "text/csv", "data": "0.9766594\n"},
           "explanations": {"kernel_shap": [[{
               "attributions": [{"attribution": [value], "description": {"partial_text": text, "start_idx": start}}
                                for value, text, start in DG_TEXT_UNITS],
               "feature_type": "text"}]]}}

# Spec 5.2, NB-TAB cell 48: 14 features with FeatureHeaders, no Accept.
NB_HEADERS = ["Age", "Workclass", "fnlwgt", "Education", "Education-Num", "Marital Status", "Occupation",
              "Relationship", "Ethnic group", "Sex", "Capital Gain", "Capital Loss", "Hours per week", "Country"]
NB_VALUES = [-0.002863750863790409, -7.958259263737853e-05, -0.0005799106931207973, 7.400679338294426e-05,
             -0.0011474692113115962, -0.0010910584437894126, 4.752810313976612e-05, -0.003110098727907769,
             -0.0010510744473187237, -2.486117335041576e-05, 0.007341078375308486, 0.0005919217832840569,
             -0.0003354581308615858, 2.9343273508735876e-05]
NB_TAB = {"explanations": {"kernel_shap": [[{"attributions": [{"attribution": [value]}], "feature_header": header}
                                            for header, value in zip(NB_HEADERS, NB_VALUES, strict=True)]]},
          "predictions": {"content_type": "text/csv; charset=utf-8", "data": "0.0006380207487381995\n"},
          "version": "1.0"}


def entry(values, descriptions=None, feature_type=None):
    """One record's entry as ``OnlineExplainer.explain`` builds it (standard errors included)."""
    attributions = [{"attribution": [v], STDERR_KEY: [0.0]} for v in values]
    if descriptions is not None:
        for item, (text, start) in zip(attributions, descriptions, strict=True):
            item["description"] = {"partial_text": text, "start_idx": start}
        return [{"feature_type": feature_type, "attributions": attributions}]
    return [{"attributions": [item]} for item in attributions]


def without_stderr(document):
    """The document as a boto3 user reads it: Lucent's extra key removed."""
    if isinstance(document, dict):
        return {k: without_stderr(v) for k, v in document.items() if k != STDERR_KEY}
    if isinstance(document, list):
        return [without_stderr(v) for v in document]
    return document


def test_tabular_example_from_the_developer_guide():
    values = [-0.00433456, -0.005369821, 0.007917749, -0.00261214]
    document = response_document(b"0.0006380207487381", "text/csv; charset=utf-8", [entry(values)], None, None)
    assert without_stderr(document) == DG_TABULAR
    assert all(a[STDERR_KEY] == [0.0] for f in document["explanations"]["kernel_shap"][0] for a in f["attributions"])
    assert json.loads(json.dumps(document, allow_nan=False)) == document


def test_no_record_explained_gives_empty_explanations():
    assert response_document("0.6380207487381995", "text/csv; charset=utf-8", [None], None, None) == DG_NOT_SATISFIED
    two = response_document(b"0.0006380207487381995\n0.1621972769498825\n", "text/csv; charset=utf-8",
                            [None, None], NB_HEADERS, None)
    assert two == {"explanations": {}, "version": "1.0",
                   "predictions": {"content_type": "text/csv; charset=utf-8",
                                   "data": "0.0006380207487381995\n0.1621972769498825\n"}}
    assert response_document(b"", "text/csv", [], None, None)["explanations"] == {}


def test_text_example_from_the_developer_guide():
    values = [v for v, _, _ in DG_TEXT_UNITS]
    record = entry(values, [(t, s) for _, t, s in DG_TEXT_UNITS], feature_type="text")
    assert without_stderr(response_document(b"0.9766594\n", "text/csv", [record], None, None)) == DG_TEXT


def test_feature_headers_from_the_tabular_notebook():
    document = response_document(b"0.0006380207487381995\n", "text/csv; charset=utf-8", [entry(NB_VALUES)],
                                 NB_HEADERS, None)
    assert without_stderr(document) == NB_TAB


def test_unexplained_records_are_null_among_explained_ones():
    explained = [None, None, None, entry(NB_VALUES), None]
    document = response_document(b"1\n2\n3\n4\n5\n", "text/csv", explained, NB_HEADERS, None)
    kernel = document["explanations"]["kernel_shap"]
    assert [e is None for e in kernel] == [True, True, True, False, True]
    assert [f["feature_header"] for f in kernel[3]] == NB_HEADERS
    assert "null, null, null, [" in json.dumps(document)


def test_label_headers_only_when_known():
    assert "label_headers" not in response_document(b"0.5", "text/csv", [None], None, None)
    document = response_document(b"0.1,0.6,0.3", "text/csv", [None], None, ["cat", "dog", "fish"])
    assert document["label_headers"] == ["cat", "dog", "fish"]


def test_feature_headers_must_match_the_features():
    with pytest.raises(ValueError, match="FeatureHeaders has 2 name"):
        response_document(b"0.5", "text/csv", [entry([0.1, 0.2, 0.3])], ["a", "b"], None)


def test_a_real_explanation_fits_the_document():
    """The explainer's entries go straight into the document and serialise as strict JSON."""
    explainer = fit_online_explainer(np.zeros((1, 4)), lambda rows: rows @ np.array([0.1, -0.2, 0.3, 0.05]),
                                     OnlineShapSettings())
    explained = explainer.explain(np.array([[1.0, 2.0, 3.0, 4.0]]))
    document = response_document(b"0.95", "text/csv", explained, ["a", "b", "c", "d"], None)
    features = document["explanations"]["kernel_shap"][0]
    assert [f["feature_header"] for f in features] == ["a", "b", "c", "d"]
    np.testing.assert_allclose([f["attributions"][0]["attribution"][0] for f in features], [0.1, -0.4, 0.9, 0.2],
                               atol=1e-12)
    json.dumps(document, allow_nan=False)


# ---- EnableExplanations (spec 2.4) -------------------------------------------------------------------

@pytest.mark.parametrize(("expression", "output", "expected"), [
    ("`true`", [0.6], True),
    ("`false`", [0.6], False),
    ("[1]>`0.5`", [1, 0.6], True),  # CSV output '1,0.6'
    ("probability>`0.5`", {"predicted_label": 1, "probability": 0.6}, True),
    ("!contains(probabilities[:-1], max(probabilities))",
     {"probabilities": [0.4, 0.1, 0.4], "labels": ["cat", "dog", "fish"]}, False),
    ("[0]>`0.8`", [0.6380207487381995], False),  # the developer guide's "not satisfied" request
])
def test_spec_examples(expression, output, expected):
    assert enable_explanations(expression, [output]) == [expected]


def test_evaluated_per_record():
    outputs = [[0.997], [0.1], [0.97], [0.95]]
    assert enable_explanations("[0]>`0.95`", outputs) == [True, False, True, False]


def test_non_boolean_result_is_a_clear_error():
    with pytest.raises(ValueError, match=r"must evaluate to true or false, but gave 0\.6 for record 1"):
        enable_explanations("[1]", [[1, True], [0, 0.6]])
    with pytest.raises(ValueError, match="gave None"):  # a missing attribute compares to null
        enable_explanations("probability>`0.5`", [{"score": 0.6}])


def test_invalid_expression_is_refused():
    with pytest.raises(ValueError, match="not a valid JMESPath expression"):
        check_enable_explanations("[0]>0.5)")
    with pytest.raises(ValueError, match="not a valid JMESPath expression"):
        enable_explanations("[0]>0.5)", [[0.6]])
    check_enable_explanations("`true`")
