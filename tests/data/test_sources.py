"""Locating datasets: fail fast when missing, read any prepared TFDS dataset."""
import glob
import json
import os
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxlab.data import DatasetNotPreparedError, get_source, make_train_iterator


class JaxlabTestTiny(tfds.core.GeneratorBasedBuilder):
  """A tiny third-party-style image dataset (not one of jaxlab's own)."""

  name = 'jaxlab_test_tiny'
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        'image': tfds.features.Tensor(shape=(4, 4, 1), dtype=np.uint8),
        'label': tfds.features.ClassLabel(num_classes=3)}))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples(24), 'test': self._generate_examples(6)}

  def _generate_examples(self, n):
    for i in range(n):
      yield i, {'image': np.full((4, 4, 1), 10 * i, np.uint8), 'label': i % 3}


def test_unprepared_standard_dataset_fails_fast(tmp_path):
  start = time.time()
  with pytest.raises(DatasetNotPreparedError) as err:
    get_source('mnist', 'train', str(tmp_path))
  assert time.time() - start < 10
  msg = str(err.value)
  assert 'mnist' in msg and 'TFDS_DATA_DIR' in msg and str(tmp_path) in msg
  assert 'tfds build mnist --file_format=array_record' in msg


def test_unknown_dataset_lists_jaxlab_datasets(tmp_path):
  with pytest.raises(ValueError, match='mnist5k') as err:
    get_source('no_such_dataset_xyz', 'train', str(tmp_path))
  assert not isinstance(err.value, DatasetNotPreparedError)


def test_prepared_third_party_dataset_works(tmp_path):
  data_dir = str(tmp_path)
  with pytest.raises(DatasetNotPreparedError, match='jaxlab_test_tiny'):
    get_source('jaxlab_test_tiny', 'train', data_dir)  # never prepared implicitly
  tfds.builder('jaxlab_test_tiny', data_dir=data_dir).download_and_prepare(
      file_format='array_record')
  src = get_source('jaxlab_test_tiny', 'train', data_dir)
  assert len(src) == 24
  cfg = {'name': 'jaxlab_test_tiny', 'data_dir': data_dir, 'task': 'classification',
         'train_split': 'train', 'eval_split': 'test'}
  b = next(make_train_iterator(cfg, batch_size=8, seed=0))
  assert b['image'].shape == (8, 4, 4, 1) and b['image'].dtype == np.float32
  index = np.round(b['image'][:, 0, 0, 0] * 255 / 10).astype(int)  # example i has pixels 10*i
  assert len(set(index)) == 8 and np.array_equal(index % 3, b['label'])


def test_tfrecord_only_dataset_is_reported(tmp_path):
  data_dir = str(tmp_path)
  builder = tfds.builder('jaxlab_test_tiny', data_dir=data_dir)
  builder.download_and_prepare(file_format='array_record')
  info_path = os.path.join(builder.data_dir, 'dataset_info.json')
  with open(info_path) as f:
    info = json.load(f)
  info['fileFormat'] = 'tfrecord'  # as left by a `tfds build` without --file_format
  with open(info_path, 'w') as f:
    json.dump(info, f)
  for path in glob.glob(os.path.join(builder.data_dir, '*.array_record-*')):
    os.rename(path, path.replace('.array_record-', '.tfrecord-'))
  with pytest.raises(DatasetNotPreparedError, match='only as tfrecord .2 shard files'):
    get_source('jaxlab_test_tiny', 'train', data_dir)
