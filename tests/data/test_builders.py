"""Real builds of jaxlab's datasets: counts, split hygiene, determinism."""
import numpy as np
import pytest

from jaxlab.data import get_source, prepare
from jaxlab.data.builders import shakespeare


def _examples(name, split, data_dir):
  src = get_source(name, split, data_dir)
  return src.__getitems__(list(range(len(src))))


@pytest.mark.parametrize('name,counts,per_class', [
    ('mnist5k', {'train': 4000, 'test': 1000}, {'train': [400] * 10, 'test': [100] * 10}),
    ('digits', {'train': 1438, 'test': 359},
     {'test': [36, 36, 35, 37, 36, 36, 36, 36, 35, 36]}),
])
def test_image_split_counts(tfds_data_dir, name, counts, per_class):
  builder = prepare(name, tfds_data_dir)
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == counts
  for split, expected in per_class.items():
    labels = [ex['label'] for ex in _examples(name, split, tfds_data_dir)]
    assert np.bincount(labels, minlength=10).tolist() == expected


@pytest.mark.parametrize('name,shape,max_value', [('mnist5k', (28, 28, 1), 255),
                                                  ('digits', (8, 8, 1), 16)])
def test_image_features(tfds_data_dir, name, shape, max_value):
  ex = _examples(name, 'train', tfds_data_dir)
  images = np.stack([e['image'] for e in ex])
  assert images.dtype == np.uint8 and images.shape[1:] == shape
  assert images.max() == max_value


def test_mnist5k_splits_disjoint(tfds_data_dir):
  train = {e['image'].tobytes() for e in _examples('mnist5k', 'train', tfds_data_dir)}
  test = {e['image'].tobytes() for e in _examples('mnist5k', 'test', tfds_data_dir)}
  assert len(test) > 990 and not train & test


def test_shakespeare_splits(tfds_data_dir):
  train = {e['title'].decode(): e['text'] for e in _examples('shakespeare', 'train', tfds_data_dir)}
  val = {e['title'].decode(): e['text'] for e in _examples('shakespeare', 'validation', tfds_data_dir)}
  assert sorted(val) == sorted(shakespeare.VALIDATION_WORKS)
  assert len(train) == 38 and not set(train) & set(val)
  assert not any(t.endswith('_f') for t in [*train, *val])  # no folio (_gut_f) editions
  assert {'hamlet', 'sonnets', 'henry_v', 'tempest'} <= set(train)
  assert sum(map(len, train.values())) == 4_694_214
  assert sum(map(len, val.values())) == 362_984
  corpus = b'\n'.join(train.values())
  for title, text in val.items():
    assert len(text) > 10_000, title
    for start in range(0, len(text) - 400, len(text) // 8):  # no 400-byte passage leaks
      assert text[start:start + 400] not in corpus, (title, start)


@pytest.mark.parametrize('name', ['mnist5k', 'digits'])
def test_prepare_is_deterministic(tmp_path, name):
  a, b = str(tmp_path / 'a'), str(tmp_path / 'b')
  prepare(name, a), prepare(name, b)
  for split in ('train', 'test'):
    ea, eb = _examples(name, split, a), _examples(name, split, b)
    assert len(ea) == len(eb) > 0
    for x, y in zip(ea, eb):
      assert x['label'] == y['label'] and np.array_equal(x['image'], y['image'])
