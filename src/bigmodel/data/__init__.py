"""Data: sources → table → deterministic splits → normalisation → resumable batches."""

from bigmodel.data.loader import BatchLoader, batches
from bigmodel.data.sources import Table, columns_from_records, load_source, table_from_columns
from bigmodel.data.splits import split_indices
from bigmodel.data.transforms import Normalizer

__all__ = [
    "BatchLoader",
    "batches",
    "Normalizer",
    "Table",
    "columns_from_records",
    "load_source",
    "split_indices",
    "table_from_columns",
]
