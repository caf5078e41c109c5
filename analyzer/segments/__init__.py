"""``segment_config``: the analyses repeated on slices of the rows (docs/segments.md).

``intervals`` (standard library only) parses the items of a segment list and is read by config
validation; ``rows`` turns a column and its lists into one row set per segment (``__default__`` last);
``analysis`` runs the configured bias metrics and aggregates the job's local SHAP values per segment
into ``analysis.json``'s ``lucent.segments``. This file imports nothing, so that config validation
can import ``intervals`` without pulling in the analyses.
"""
