"""Prepares jaxlab's datasets as array_record.

  python -m jaxlab.data.prepare --datasets=mnist5k,digits,shakespeare [--data_dir=DIR]
"""
import time

from absl import app, flags

from jaxlab.data import sources

_DATASETS = flags.DEFINE_list('datasets', list(sources.JAXLAB_DATASETS),
                              f'Datasets to prepare, any of {sources.JAXLAB_DATASETS}.')
_DATA_DIR = flags.DEFINE_string('data_dir', None,
                                'TFDS data dir (default: $TFDS_DATA_DIR, else ~/tensorflow_datasets).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  data_dir = sources.resolve_data_dir(_DATA_DIR.value)
  for name in _DATASETS.value:
    start = time.time()
    builder = sources.prepare(name, data_dir)
    splits = {k: v.num_examples for k, v in builder.info.splits.items()}
    print(f'{name}: {splits} at {builder.data_dir} ({time.time() - start:.1f}s)', flush=True)


if __name__ == '__main__':
  app.run(main)
