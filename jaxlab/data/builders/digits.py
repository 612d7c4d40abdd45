"""`digits`: scikit-learn's 1,797 8x8 handwritten digits (UCI optdigits test set)."""
import importlib.util
import os

import numpy as np
import tensorflow_datasets as tfds

from jaxlab.data.builders.mnist5k import stratified_split

SPLIT_SEED = 0


def digits_csv_path() -> str:
  """Path of sklearn's digits.csv.gz (65 columns: 64 pixels 0..16 row-major, then the label)."""
  spec = importlib.util.find_spec('sklearn')
  if spec is None or not spec.submodule_search_locations:
    raise ModuleNotFoundError('digits needs the `scikit-learn` package.')
  return os.path.join(spec.submodule_search_locations[0], 'datasets', 'data', 'digits.csv.gz')


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 digits; pixel values are 0..16 (not 0..255).

  Splits (stratified, deterministic): per class (0..9, one shared
  `np.random.default_rng(0)`), the row indices are permuted and the first
  round(0.8 * n_class) go to `train`, the rest to `test`.
  train: 1,438, test: 359 (per-class test counts 36,36,35,37,36,36,36,36,35,36).
  """

  name = 'digits'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MAX_PIXEL = 16

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
            'label': tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager):
    data = np.loadtxt(digits_csv_path(), delimiter=',', dtype=np.int64)
    images = data[:, :-1].astype(np.uint8).reshape(-1, 8, 8, 1)
    labels = data[:, -1]
    train, test = stratified_split(labels, 0.2, SPLIT_SEED)
    return {
        'train': self._generate_examples(images, labels, train),
        'test': self._generate_examples(images, labels, test),
    }

  def _generate_examples(self, images, labels, indices):
    for i in indices:
      yield int(i), {'image': images[i], 'label': int(labels[i])}
