"""Locating and preparing TFDS datasets as random-access (array_record) sources.

jaxlab's own datasets (mnist5k, digits, shakespeare) are built on first use.
Any other TFDS name must already be prepared as array_record in `data_dir`;
otherwise `DatasetNotPreparedError` is raised at once (no network download).
"""
import difflib
import functools
import glob
import os

import tensorflow_datasets as tfds

from jaxlab.data import builders
from jaxlab.errors import UserError

JAXLAB_DATASETS = tuple(builders.BUILDERS)
_ARRAY_RECORD = tfds.core.FileFormat.ARRAY_RECORD


class DatasetNotPreparedError(FileNotFoundError):
  """A TFDS dataset is not available as array_record in the data dir."""


def default_data_dir() -> str:
  """$TFDS_DATA_DIR if set, else ~/tensorflow_datasets."""
  return os.environ.get('TFDS_DATA_DIR') or os.path.expanduser('~/tensorflow_datasets')


def resolve_data_dir(data_dir: str | None) -> str:
  return os.path.expanduser(os.fspath(data_dir)) if data_dir else default_data_dir()


def _base_name(name: str) -> str:
  return name.split(':')[0].split('/')[0]


def prepare(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """Builds one of jaxlab's datasets into `data_dir` as array_record (no-op if already there)."""
  if _base_name(name) not in JAXLAB_DATASETS:
    raise UserError(f'{name!r} is not one of jaxlab\'s datasets {JAXLAB_DATASETS}; '
                     f'prepare it with `tfds build {name} --file_format=array_record`.')
  builder = tfds.builder(name, data_dir=resolve_data_dir(data_dir), file_format='array_record')
  if not builder.is_prepared():
    builder.download_and_prepare(file_format='array_record')
  return builder


def _formats(builder) -> set:
  info = builder.info
  return {tfds.core.FileFormat(info.file_format)} | {
      tfds.core.FileFormat(f) for f in (getattr(info, 'alternative_file_formats', None) or ())}


def _not_prepared(name: str, data_dir: str, detail: str) -> DatasetNotPreparedError:
  return DatasetNotPreparedError(
      f'TFDS dataset {name!r} is not prepared as array_record in data_dir={data_dir!r} '
      f'({detail}). The data dir defaults to $TFDS_DATA_DIR (else ~/tensorflow_datasets); '
      f'set TFDS_DATA_DIR or the data config\'s `data_dir` to where it lives. To prepare it, '
      f'run `tfds build {name} --file_format=array_record --data_dir=<dir>` on a machine with '
      f'internet access and copy <dir>/{_base_name(name)} into {data_dir}. '
      f'jaxlab never downloads it here (offline downloads retry for minutes).')


def prepared_datasets(data_dir: str) -> list[str]:
  """Names of the datasets found in `data_dir` (<name>/<version>/dataset_info.json)."""
  infos = glob.glob(os.path.join(glob.escape(data_dir), '*', '*', 'dataset_info.json'))
  return sorted({os.path.basename(os.path.dirname(os.path.dirname(p))) for p in infos})


def _unknown_dataset_message(name: str, data_dir: str) -> str:
  prepared = prepared_datasets(data_dir)
  known = sorted(set(JAXLAB_DATASETS) | set(prepared))
  close = difflib.get_close_matches(_base_name(name), known, n=3, cutoff=0.5)
  hint = f'did you mean {" or ".join(map(repr, close))}? ' if close else ''
  return (f'config.data.name={name!r} is not a known dataset: {hint}valid: jaxlab\'s own '
          f'{list(JAXLAB_DATASETS)}, or one prepared as array_record in data_dir={data_dir!r} '
          f'({prepared or "none there"}; set config.data.data_dir or $TFDS_DATA_DIR)')


def get_builder(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """A prepared, array_record-readable builder for `name`; prepares jaxlab's own datasets.

  Cached per (name, resolved data dir): a run loads the dataset info once, not once per split
  and feature lookup. Failures are not cached, so a dataset prepared later is found.
  """
  return _builder(name, resolve_data_dir(data_dir))


@functools.lru_cache(maxsize=None)
def _builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
  if _base_name(name) in JAXLAB_DATASETS:
    return prepare(name, data_dir)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except (tfds.core.registered.DatasetNotFoundError, ValueError):  # unknown, or not a TFDS name
    # `from None`: the tfds error lists its whole catalogue (hundreds of lines).
    raise UserError(_unknown_dataset_message(name, data_dir)) from None
  if not builder.is_prepared():
    raise _not_prepared(name, data_dir, f'nothing found at {builder.data_dir}')
  if _ARRAY_RECORD not in _formats(builder):
    fmt = tfds.core.FileFormat(builder.info.file_format).value
    shards = len(glob.glob(os.path.join(builder.data_dir, f'*.{fmt}-*-of-*')))
    raise _not_prepared(
        name, data_dir, f'it exists at {builder.data_dir} but only as {fmt} ({shards} shard '
        f'files), which tfds.data_source cannot read; rebuild it with --file_format=array_record')
  return builder


def get_source(name: str, split: str, data_dir: str | None = None):
  """Random-access source for `split` of TFDS dataset `name` (tfds.data_source(...)[split])."""
  return get_builder(name, data_dir).as_data_source(split=split)
