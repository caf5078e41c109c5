"""What a monitoring job definition says about the captured records (``EndpointInput``'s attributes).

Shared by the job-definition parser (``container.monitor.definition``) and the merge
(``analyzer.monitor.merge``), so that neither imports the other. Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass

# The two monitoring types this module serves (CreateMonitoringSchedule's MonitoringType).
BIAS, EXPLAINABILITY = "ModelBias", "ModelExplainability"
KINDS = (BIAS, EXPLAINABILITY)


@dataclass(frozen=True)
class EndpointAttributes:
    """How to read features, the predicted label and the score out of a captured record.

    Field names follow ``EndpointInput`` (spec model-monitor.md 4.1); each is the job definition's
    string as written (JMESPath for JSON payloads, a zero-based column index for CSV), None when absent.
    """

    features_attribute: str | None = None  # JMESPath to the feature list in a JSON input record
    inference_attribute: str | None = None  # predicted label in the output record
    probability_attribute: str | None = None  # score in the output record
    probability_threshold_attribute: float | None = None  # score > threshold -> label 1 (default 0.5 when a score is used)
    exclude_features_attribute: str | None = None  # features left out of the analysis
