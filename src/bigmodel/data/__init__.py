"""Data: sources → records → deterministic splits; the dataset that encodes examples lazily, the
resumable sampler, tokenizers and the tabular feature encoder."""

from bigmodel.data.records import ColumnRecords, HFRecords, Records, records_from_rows
from bigmodel.data.sources import SPLITS, load_source, open_external, open_splits
from bigmodel.data.splits import split_indices

__all__ = [
    "SPLITS",
    "ColumnRecords",
    "HFRecords",
    "Records",
    "load_source",
    "open_external",
    "open_splits",
    "records_from_rows",
    "split_indices",
]
