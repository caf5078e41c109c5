"""What this Lucent version cannot run yet, in one table.

Each entry names the config key that asks for the feature, when it applies, and why. When a
feature lands, delete its line. ``methods.report`` is deliberately absent: the job runs without it
and logs that it skipped the report.
"""

from __future__ import annotations

from collections.abc import Callable

from analyzer.config.model import AnalysisConfig

NOT_YET = "is not supported yet in this Lucent version"

UNSUPPORTED: tuple[tuple[str, Callable[[AnalysisConfig], bool], str], ...] = (
    ("dataset_type", lambda c: c.dataset_type == "application/sagemakercapturejson",
     f"application/sagemakercapturejson (Model Monitor capture data) {NOT_YET}"),
)


def unsupported_methods(config: AnalysisConfig) -> list[str]:
    """Why this Lucent version cannot run ``config`` (one line per reason, key path first); empty
    when it can."""
    return [f"{path}: {reason}" for path, applies, reason in UNSUPPORTED if applies(config)]
