"""The data layer: read a dataset into the role columns (and features) the analyses need.

``load_dataset(config, path)`` is the entry point; formats and rules are described in
docs/data-formats.md and in the module docstrings (``csv_format`` for the CSV header and typing rules).
"""

from analyzer.data.column import Column
from analyzer.data.dataset import Dataset
from analyzer.data.files import resolve_local_path
from analyzer.data.loader import load_dataset

__all__ = ["Column", "Dataset", "load_dataset", "resolve_local_path"]
