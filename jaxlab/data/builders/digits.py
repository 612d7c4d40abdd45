"""`digits`: scikit-learn's 1,797 8x8 handwritten digits (UCI optdigits test set)."""
import tensorflow_datasets as tfds

from jaxlab.data.builders.image_csv import ImageCsvBuilder, package_file


def digits_csv_path() -> str:
  """Path of sklearn's digits.csv.gz (65 columns: 64 pixels 0..16 row-major, then the label)."""
  return package_file('sklearn', 'datasets', 'data', 'digits.csv.gz',
                      missing='digits needs the `scikit-learn` package.')


class Digits(ImageCsvBuilder):
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
  IMAGE_SIDE = 8
  csv_path = staticmethod(digits_csv_path)
