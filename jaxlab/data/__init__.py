"""jaxlab data: TFDS builders, array_record sources and grain pipelines."""
from jaxlab.data import builders
from jaxlab.data.pipeline import DataSpec, dataset_spec, eval_batches, make_train_iterator
from jaxlab.data.sources import (JAXLAB_DATASETS, DatasetNotPreparedError, default_data_dir,
                                 get_builder, get_source, prepare)

__all__ = [
    'JAXLAB_DATASETS', 'DataSpec', 'DatasetNotPreparedError', 'builders', 'dataset_spec',
    'default_data_dir', 'eval_batches', 'get_builder', 'get_source', 'make_train_iterator',
    'prepare',
]
