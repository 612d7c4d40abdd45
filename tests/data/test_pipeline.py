"""grain pipelines on real prepared data."""
import collections
import itertools
import json

import ml_collections
import numpy as np
import pytest

from jaxlab.data import dataset_spec, eval_batches, get_source, make_train_iterator
from jaxlab.errors import UserError


def _cfg(data_dir, name='digits', **kw):
  base = dict(name=name, data_dir=data_dir, task='classification', train_split='train',
              eval_split='test', image_key='image', label_key='label')
  if name == 'shakespeare':
    base.update(task='lm', eval_split='validation', seq_len=64, text_key='text')
  return ml_collections.ConfigDict({**base, **kw})


def _take(it, n):
  return list(itertools.islice(it, n))


def _ids(batches, key='image'):
  """Per-example content ids (image bytes + label), in stream order."""
  out = []
  for b in batches:
    for i in range(len(b['label'])):
      if b.get('mask', np.ones(len(b['label'])))[i]:
        out.append((b[key][i].tobytes(), int(b['label'][i])))
  return out


def _split_ids(data_dir, name, split, scale):
  src = get_source(name, split, data_dir)
  return collections.Counter(
      ((ex['image'].astype(np.float32) * np.float32(1 / scale)).tobytes(), int(ex['label']))
      for ex in src.__getitems__(list(range(len(src)))))


@pytest.mark.parametrize('name,shape,scale', [('mnist5k', (28, 28, 1), 255), ('digits', (8, 8, 1), 16)])
def test_classification_batches(tfds_data_dir, name, shape, scale):
  cfg = _cfg(tfds_data_dir, name)
  spec = dataset_spec(cfg)
  assert spec.task == 'classification' and spec.num_classes == 10 and spec.input_shape == shape
  b = next(make_train_iterator(cfg, batch_size=32, seed=0))
  assert set(b) == {'image', 'label'}
  assert b['image'].dtype == np.float32 and b['image'].shape == (32, *shape)
  assert b['label'].dtype == np.int32 and b['label'].shape == (32,)
  assert 0.0 <= b['image'].min() and b['image'].max() == 1.0  # scaled by the dataset's max
  assert 0 <= b['label'].min() and b['label'].max() <= 9
  # Values are exactly raw / scale: every batch example is a real train example.
  train = _split_ids(tfds_data_dir, name, 'train', scale)
  assert all(i in train for i in _ids([b]))


def test_determinism(tfds_data_dir):
  cfg = _cfg(tfds_data_dir)
  a = _take(make_train_iterator(cfg, batch_size=64, seed=3), 5)
  b = _take(make_train_iterator(cfg, batch_size=64, seed=3), 5)
  c = _take(make_train_iterator(cfg, batch_size=64, seed=4), 5)
  assert all(np.array_equal(x['image'], y['image']) for x, y in zip(a, b))
  assert not np.array_equal(a[0]['label'], c[0]['label'])


def test_multi_epoch_reshuffles_and_covers(tfds_data_dir):
  cfg = _cfg(tfds_data_dir)
  train = _split_ids(tfds_data_dir, 'digits', 'train', 16)
  n = sum(train.values())
  stream = _ids(_take(make_train_iterator(cfg, batch_size=100, seed=0), 3 * n // 100))
  epochs = [stream[i * n:(i + 1) * n] for i in range(3) if len(stream) >= (i + 1) * n]
  assert len(epochs) == 2
  for epoch in epochs:
    assert collections.Counter(epoch) == train  # each example exactly once per epoch
  assert epochs[0] != epochs[1]  # reshuffled


def test_iterator_state_round_trip(tfds_data_dir):
  cfg = _cfg(tfds_data_dir)  # 1438 train examples, 128/batch: crosses an epoch at batch 11
  it = make_train_iterator(cfg, batch_size=128, seed=1)
  _take(it, 7)
  state = json.loads(json.dumps(it.get_state()))
  expected = _take(it, 12)
  fresh = make_train_iterator(cfg, batch_size=128, seed=1)
  fresh.set_state(state)
  got = _take(fresh, 12)
  for x, y in zip(expected, got, strict=True):
    assert np.array_equal(x['image'], y['image']) and np.array_equal(x['label'], y['label'])
  assert not np.array_equal(expected[0]['image'], _take(make_train_iterator(cfg, batch_size=128, seed=1), 1)[0]['image'])


def test_per_host_sharding(tfds_data_dir):
  """Each host reads its contiguous rows of the global batch; together they are the one-host
  batch, so a run does not depend on the process count."""
  cfg = _cfg(tfds_data_dir)
  train = _split_ids(tfds_data_dir, 'digits', 'train', 16)
  one = _take(make_train_iterator(cfg, batch_size=64, seed=0), 1438 // 64 + 2)
  for hosts in (2, 4):
    per_host = [_take(make_train_iterator(cfg, batch_size=64, seed=0, process_index=h,
                                          process_count=hosts), len(one)) for h in range(hosts)]
    assert per_host[0][0]['image'].shape[0] == 64 // hosts
    for j, whole in enumerate(one):
      for key in ('image', 'label'):
        np.testing.assert_array_equal(np.concatenate([b[j][key] for b in per_host]), whole[key])
  assert collections.Counter(_ids(one)[:1438]) == train  # one epoch covers the split once
  with pytest.raises(UserError, match='batch_size'):
    make_train_iterator(cfg, batch_size=63, seed=0, process_index=0, process_count=2)


def test_per_host_augmentation_matches_one_host(tfds_data_dir):
  cfg = _cfg(tfds_data_dir, 'mnist5k')
  cfg.augment_shift = 2
  one = _take(make_train_iterator(cfg, batch_size=32, seed=3), 2)
  hosts = [_take(make_train_iterator(cfg, batch_size=32, seed=3, process_index=h,
                                     process_count=2), 2) for h in range(2)]
  for j in range(2):
    np.testing.assert_array_equal(np.concatenate([h[j]['image'] for h in hosts]), one[j]['image'])


def test_train_state_restores_under_another_process_count(tfds_data_dir):
  cfg = _cfg(tfds_data_dir)
  two = [make_train_iterator(cfg, batch_size=64, seed=0, process_index=h, process_count=2)
         for h in range(2)]
  for it in two:
    _take(it, 5)
  one = make_train_iterator(cfg, batch_size=64, seed=0)
  one.set_state(two[0].get_state())
  assert two[0].get_state() == two[1].get_state()
  np.testing.assert_array_equal(next(one)['image'],
                                np.concatenate([next(it)['image'] for it in two]))


def test_lm_batches(tfds_data_dir):
  cfg = _cfg(tfds_data_dir, 'shakespeare')
  spec = dataset_spec(cfg)
  assert spec.task == 'lm' and spec.vocab_size == 256
  train_text = b'\n\n'.join(e['text'] for e in get_source('shakespeare', 'train', tfds_data_dir))
  assert spec.num_train_examples == len(train_text) // 65
  b = next(make_train_iterator(cfg, batch_size=8, seed=0))
  assert set(b) == {'inputs', 'targets'}
  assert b['inputs'].dtype == np.int32 and b['inputs'].shape == (8, 64) == b['targets'].shape
  np.testing.assert_array_equal(b['inputs'][:, 1:], b['targets'][:, :-1])
  for inp, tgt in zip(b['inputs'], b['targets']):
    window = bytes(inp.astype(np.uint8)) + bytes([tgt[-1]])
    start = train_text.find(window)
    assert start >= 0 and start % 65 == 0  # a non-overlapping window of the train text


def test_eval_batches_mask_covers_split_once(tfds_data_dir):
  cfg = _cfg(tfds_data_dir, 'mnist5k')
  test = _split_ids(tfds_data_dir, 'mnist5k', 'test', 255)
  batches = list(eval_batches(cfg, batch_size=128))
  assert len(batches) == 8 and all(b['image'].shape == (128, 28, 28, 1) for b in batches)
  last = batches[-1]
  assert last['mask'].dtype == np.float32 and last['mask'].sum() == 1000 - 7 * 128
  assert not last['image'][104:].any() and not last['mask'][104:].any()
  assert collections.Counter(_ids(batches)) == test
  assert _ids(batches) == _ids(eval_batches(cfg, batch_size=128))  # deterministic
  for n in (2, 4):  # the union of the hosts' example ids is the split, each id once
    hosts = [list(eval_batches(cfg, batch_size=96, process_index=i, process_count=n))
             for i in range(n)]
    assert len({len(h) for h in hosts}) == 1
    assert sum((collections.Counter(_ids(h)) for h in hosts), collections.Counter()) == test
    assert sum(b['mask'].sum() for h in hosts for b in h) == 1000


def test_lm_eval_batches(tfds_data_dir):
  cfg = _cfg(tfds_data_dir, 'shakespeare')
  n = dataset_spec(cfg).num_eval_examples
  batches = list(eval_batches(cfg, batch_size=256))
  assert sum(b['mask'].sum() for b in batches) == n == (362_984 + 3 * 2) // 65 and len(batches) == -(-n // 256)
  assert {k: v.shape for k, v in batches[-1].items()} == {
      'inputs': (256, 64), 'targets': (256, 64), 'mask': (256,)}
  assert len(list(eval_batches(cfg, batch_size=256, max_batches=3))) == 3
