"""The window's columns (``ColumnLayout``): which captured values are features, which is the label, the predicted
label and the role columns; fixed by the first record seen."""

from __future__ import annotations

from dataclasses import dataclass

from analyzer.config.model import AnalysisConfig
from analyzer.data.locate import locate_column
from analyzer.errors import UserError
from analyzer.monitor.attributes import EndpointAttributes

PREDICTED_LABEL = "predicted_label"  # the predicted label's column when the config names none


@dataclass
class ColumnLayout:
    """Names of the captured values and of the table's columns, fixed by the first record seen."""

    headers: list[str]  # the dataset's columns
    captured: list[str]  # names of the captured values, in order
    label: str | None  # the label's column (bias)
    predicted: str | None  # the predicted label's column (bias)
    feature_names: list[str]
    roles: dict[str, str]  # "facet:<i>" / "group" -> column name

    @staticmethod
    def build(config: AnalysisConfig, attributes: EndpointAttributes, bias: bool, json_input: bool,
              n_values: int, where: str) -> ColumnLayout:
        headers = list(config.headers) if config.headers is not None else None
        source = "`headers` in the analysis config"
        predicted = None
        if bias:
            predicted = config.predicted_label if isinstance(config.predicted_label, str) else PREDICTED_LABEL
        if headers is None:
            captured = [f"column_{i}" for i in range(n_values)]
            label = (config.label if isinstance(config.label, str) and not json_input else "label") if bias else None
            headers = captured + [name for name in (label, predicted) if name is not None]
        else:
            others = [h for h in headers if h != predicted]
            label = config.label
            label_name = None
            if isinstance(label, str) and label in others:
                label_name = label
            elif not json_input and isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(others):
                label_name = others[label]
            elif json_input and len(others) == n_values + 1:  # JSON datasets: features, then the label's name
                label_name = others[-1]
            captured = [h for h in others if h != label_name]
            if len(captured) != n_values:
                raise UserError(
                    f"{where} has {n_values} feature value(s), but {source} names {len(captured)} feature(s) "
                    f"({len(headers)} headers"
                    + (f" minus the label {label_name!r}" if label_name else "")
                    + (f" minus the predicted label {predicted!r}" if predicted in headers else "")
                    + "). The captured requests must send the features the headers list, in order.")
            fallback = config.label if isinstance(config.label, str) and not json_input else "label"
            label = (label_name if label_name is not None else fallback) if bias else label_name
            if bias and label not in headers:
                headers = [*headers, label]
            if bias and predicted not in headers:
                headers = [*headers, predicted]
        roles: dict[str, str] = {}
        for i, facet in enumerate(config.facet if bias else []):  # SHAP needs no role columns
            roles[f"facet:{i}"] = locate_column(facet.name_or_index, headers, role="facet", source="the window")
        if bias and config.group_variable is not None:
            roles["group"] = locate_column(config.group_variable, headers, role="group_variable", source="the window")
        for name in roles.values():
            if name not in captured and name != label:
                raise UserError(f"{name!r} is a facet or group variable but not a captured feature "
                                f"or the label of the window (captured: {captured})")
        excluded = {locate_column(c, headers, role="excluded_columns", source="the window")
                    for c in config.excluded_columns or []}
        for item in (attributes.exclude_features_attribute or "").split(","):
            item = item.strip()
            if item:
                excluded.add(locate_column(int(item) if item.isdigit() else item, captured,
                                           role="excluded_columns", source="the captured features "
                                           "(ExcludeFeaturesAttribute)"))
        feature_names = [name for name in captured if name not in excluded]
        return ColumnLayout(headers, captured, label, predicted, feature_names, roles)
