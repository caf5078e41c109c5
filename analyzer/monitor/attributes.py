"""What a monitoring job definition says about the captured records (``EndpointInput``'s attributes).

Shared by the job-definition parser (``container.monitor.definition``) and the merge
(``analyzer.monitor.merge``), so that neither imports the other. Standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

# The two monitoring types this module serves (CreateMonitoringSchedule's MonitoringType).
BIAS, EXPLAINABILITY = "ModelBias", "ModelExplainability"
KINDS = (BIAS, EXPLAINABILITY)

# The config keys the response parser and the pipeline name in their messages, and the EndpointInput
# attribute each one holds when the monitor filled it in from the job definition.
PARSER_KEYS = {"predictor.label": "InferenceAttribute", "predictor.probability": "ProbabilityAttribute"}


@dataclass(frozen=True)
class EndpointAttributes:
    """How to read features, the predicted label and the score out of a captured record.

    Field names follow ``EndpointInput`` (spec model-monitor.md 4.1); each is the job definition's
    string as written (JMESPath for JSON payloads, a zero-based column index for CSV), None when absent.
    ``path`` and ``source`` say where the user wrote them, for messages: ``ModelBiasJobInput.EndpointInput``
    and ``job definition bias-job.json`` (they take no part in comparisons).
    """

    features_attribute: str | None = None  # JMESPath to the feature list in a JSON input record
    inference_attribute: str | None = None  # predicted label in the output record
    probability_attribute: str | None = None  # score in the output record
    probability_threshold_attribute: float | None = None  # score > threshold -> label 1 (default 0.5 when a score is used)
    exclude_features_attribute: str | None = None  # features left out of the analysis
    path: str = field(default="EndpointInput", compare=False)
    source: str | None = field(default=None, compare=False)

    def field_name(self, name: str) -> str:
        """``ModelBiasJobInput.EndpointInput.ProbabilityAttribute`` for ``ProbabilityAttribute``."""
        return f"{self.path}.{name}"

    def named(self, text: str, keys: Mapping[str, str]) -> str:
        """``text`` with each config key of ``keys`` (``predictor.probability``) replaced by the job
        definition field it came from (``ModelBiasJobInput.EndpointInput.ProbabilityAttribute``), the
        first one followed by the file that holds it: the user wrote the field, not the key."""
        if not keys:
            return text
        pattern = re.compile(r"(?<![\w.])(?:" + "|".join(re.escape(k) for k in sorted(keys, key=len, reverse=True))
                             + r")(?!\w)")
        first = True

        def replace(match: re.Match) -> str:
            nonlocal first
            name = self.field_name(keys[match.group(0)])
            if first and self.source:
                name += f" ({self.source})"
            first = False
            return name

        return pattern.sub(replace, text)
