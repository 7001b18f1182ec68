"""The multimodal Parquet format: schema, writer, reader, batches and missingness."""

from multivae.data.batch import Batch, Sample, collate
from multivae.data.errors import DataFormatError
from multivae.data.missingness import (
    PresenceMasks,
    apply_presence,
    missing_completely_at_random,
    missing_not_at_random_by_class,
    polymnist_scheme,
)
from multivae.data.reader import (
    BlockBatchSampler,
    BlockShuffleSampler,
    MultimodalDataset,
    list_splits,
    make_dataloader,
    read_schema,
    split_files,
)
from multivae.data.schema import (
    SPLITS,
    DatasetSchema,
    ModalitySpec,
    imputed_column,
    presence_column,
)
from multivae.data.writer import SplitArrays, SplitWriter, write_dataset, write_split

__all__ = [
    "SPLITS",
    "Batch",
    "BlockBatchSampler",
    "BlockShuffleSampler",
    "DataFormatError",
    "DatasetSchema",
    "ModalitySpec",
    "MultimodalDataset",
    "PresenceMasks",
    "Sample",
    "SplitArrays",
    "SplitWriter",
    "apply_presence",
    "collate",
    "imputed_column",
    "list_splits",
    "make_dataloader",
    "missing_completely_at_random",
    "missing_not_at_random_by_class",
    "polymnist_scheme",
    "presence_column",
    "read_schema",
    "split_files",
    "write_dataset",
    "write_split",
]
