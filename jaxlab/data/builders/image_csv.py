"""Image classification datasets stored as one gzipped CSV of uint8 pixels and a label."""
import abc
import importlib.util
import os

import numpy as np
import tensorflow_datasets as tfds

SPLIT_SEED = 0
TEST_FRACTION = 0.2


def package_file(package: str, *parts: str, missing: str) -> str:
  """Path of a data file inside an installed (not imported) package; ModuleNotFoundError(missing)
  when the package is not installed."""
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise ModuleNotFoundError(missing)
  return os.path.join(spec.submodule_search_locations[0], *parts)


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


class ImageCsvBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Rows of csv_path(): IMAGE_SIDE**2 pixels row-major, then the label (10 classes); images
  [IMAGE_SIDE, IMAGE_SIDE, 1] uint8. Splits `train` / `test`: stratified_split with
  TEST_FRACTION and SPLIT_SEED. Subclasses set name, VERSION, RELEASE_NOTES, IMAGE_SIDE and csv_path."""

  IMAGE_SIDE: int

  @staticmethod
  @abc.abstractmethod
  def csv_path() -> str:
    """Path of the gzipped CSV."""

  def _info(self) -> tfds.core.DatasetInfo:
    side = self.IMAGE_SIDE
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(side, side, 1), dtype=np.uint8),
            'label': tfds.features.ClassLabel(num_classes=10),
        }),
        supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager):
    data = np.loadtxt(self.csv_path(), delimiter=',', dtype=np.int64)
    images = data[:, :-1].astype(np.uint8).reshape(-1, self.IMAGE_SIDE, self.IMAGE_SIDE, 1)
    labels = data[:, -1]
    train, test = stratified_split(labels, TEST_FRACTION, SPLIT_SEED)
    return {
        'train': self._generate_examples(images, labels, train),
        'test': self._generate_examples(images, labels, test),
    }

  def _generate_examples(self, images, labels, indices):
    for i in indices:
      yield int(i), {'image': images[i], 'label': int(labels[i])}
