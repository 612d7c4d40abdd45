"""grain pipelines over TFDS array_record sources.

Small splits are read once through `tfds.data_source` and kept in memory as
numpy arrays (random-access sources). Training: shuffle (fresh permutation each
epoch) -> repeat -> batch(drop_remainder) as one random-access grain source of
batches (`ShuffledBatches`) -> map -> to_iter_dataset. This is the semantics of
grain's `source.shuffle(seed).repeat().batch(b)` chain, vectorised per batch:
grain's per-example chain costs ~30 us/example (~250 batches/s at 128);
`ShuffledBatches` gives several thousand batches/s.

Many hosts: every host draws the same global order and reads only its own
contiguous slice of each global batch (host i: rows [i*b/n, (i+1)*b/n)), which is
the slice `jax.make_array_from_process_local_data` places on its devices. The
global batch, and so the whole run, is the same for any process count, and the
iterator state (a batch index) restores under any process count.
"""
import dataclasses
import functools
import math
import sys
from typing import Any, Iterator

import grain
import jax
import numpy as np

from jaxlab.data import sources
from jaxlab.errors import UserError

LM_VOCAB_SIZE = 256
LM_SEPARATOR = b'\n\n'
# Max pixel value per dataset (images are scaled to [0, 1] by it); default 255.
PIXEL_MAX = {'digits': 16.0}
_READ_CHUNK = 1024


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """Static facts about a data config."""
  task: str
  num_classes: int | None = None  # classification
  input_shape: tuple[int, ...] | None = None  # classification, (H, W, C)
  vocab_size: int | None = None  # lm
  num_train_examples: int = 0  # examples (lm: windows) in the train split
  num_eval_examples: int = 0


def _get(cfg: Any, key: str, default=None):
  """Reads `key` from a ConfigDict / mapping / attribute object."""
  if hasattr(cfg, 'get'):
    return cfg.get(key, default)
  return getattr(cfg, key, default)


def _task(cfg) -> str:
  task = _get(cfg, 'task', 'classification')
  if task not in ('classification', 'lm'):
    raise UserError(f"config.data.task={task!r}; valid: classification, lm")
  return task


class ArraySource:
  """Random-access source over equally long numpy arrays; item i is {key: array[i]}."""

  def __init__(self, **arrays: np.ndarray):
    self.arrays = arrays
    self._len = len(next(iter(arrays.values())))

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    return {k: v[i] for k, v in self.arrays.items()}

  def gather(self, idx: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in self.arrays.items()}


class WindowSource:
  """Non-overlapping (seq_len + 1)-byte windows of a token array; item i is {'inputs', 'targets'}."""

  def __init__(self, tokens: np.ndarray, seq_len: int):
    n = len(tokens) // (seq_len + 1)
    self.windows = tokens[:n * (seq_len + 1)].reshape(n, seq_len + 1)

  def __len__(self) -> int:
    return len(self.windows)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    w = self.windows[i]
    return {'inputs': w[:-1], 'targets': w[1:]}

  def gather(self, idx: np.ndarray) -> dict[str, np.ndarray]:
    w = self.windows[idx]
    return {'inputs': w[:, :-1], 'targets': w[:, 1:]}


class ShuffledBatches:
  """Host `host`'s slice of global batch j of the infinite stream that visits `indices` once
  per epoch in a fresh order.

  Epoch e's order is a permutation drawn from np.random.default_rng([seed, e]);
  batches run across epoch boundaries (repeat before batch). Of each global batch of
  `batch_size` examples, host h of n reads rows [h * batch_size / n, (h + 1) * batch_size / n).
  """

  def __init__(self, src, indices: np.ndarray, batch_size: int, seed: int, host: int = 0,
               num_hosts: int = 1):
    self.src, self.indices, self.batch_size = src, indices, batch_size
    local = batch_size // num_hosts
    self.rows = slice(host * local, (host + 1) * local)
    self.seed = seed % 2**64
    self._order = functools.lru_cache(maxsize=4)(self._epoch_order)

  def _epoch_order(self, epoch: int) -> np.ndarray:
    rng = np.random.default_rng([self.seed, epoch])
    return self.indices[rng.permutation(len(self.indices))]

  def __len__(self) -> int:
    return sys.maxsize

  def __getitem__(self, j: int) -> dict[str, np.ndarray]:
    n = len(self.indices)
    epoch, start = divmod(j * self.batch_size, n)
    idx = self._order(epoch)[start:start + self.batch_size]
    while len(idx) < self.batch_size:  # batch spans an epoch boundary
      epoch += 1
      idx = np.concatenate([idx, self._order(epoch)[:self.batch_size - len(idx)]])
    return self.src.gather(idx[self.rows])


def _read_all(src, keys: tuple[str, ...]) -> dict[str, list]:
  out = {k: [] for k in keys}
  for start in range(0, len(src), _READ_CHUNK):
    for ex in src.__getitems__(list(range(start, min(len(src), start + _READ_CHUNK)))):
      for k in keys:
        out[k].append(ex[k])
  return out


@functools.lru_cache(maxsize=16)
def _image_arrays(name, split, data_dir, image_key, label_key) -> ArraySource:
  cols = _read_all(sources.get_source(name, split, data_dir), (image_key, label_key))
  images = np.stack(cols[image_key])
  if images.ndim == 3:
    images = images[..., None]
  return ArraySource(image=images, label=np.asarray(cols[label_key], np.int32))


@functools.lru_cache(maxsize=16)
def _split_tokens(name, split, data_dir, text_key) -> np.ndarray:
  texts = _read_all(sources.get_source(name, split, data_dir), (text_key,))[text_key]
  texts = [t.encode('utf-8') if isinstance(t, str) else bytes(t) for t in texts]
  return np.frombuffer(LM_SEPARATOR.join(texts), np.uint8)


def _source(cfg, split: str):
  name, data_dir = _get(cfg, 'name'), sources.resolve_data_dir(_get(cfg, 'data_dir'))
  if _task(cfg) == 'lm':
    seq_len = _get(cfg, 'seq_len')
    if not seq_len:
      raise UserError('config.data.seq_len is missing; lm data configs need it (e.g. 256)')
    return WindowSource(_split_tokens(name, split, data_dir, _get(cfg, 'text_key', 'text')), seq_len)
  return _image_arrays(name, split, data_dir, _get(cfg, 'image_key', 'image'),
                       _get(cfg, 'label_key', 'label'))


def _postprocess(cfg):
  """Batch -> model inputs: images float32 in [0, 1], labels/tokens int32."""
  if _task(cfg) == 'lm':
    return lambda b: {k: v.astype(np.int32) for k, v in b.items()}
  scale = np.float32(1.0 / PIXEL_MAX.get(sources._base_name(_get(cfg, 'name')), 255.0))
  return lambda b: {'image': b['image'].astype(np.float32) * scale,
                    'label': b['label'].astype(np.int32)}


def random_shift(images: np.ndarray, rng: np.random.Generator, max_shift: int,
                 rows: slice = slice(None), num_rows: int | None = None) -> np.ndarray:
  """Translates each image [B,H,W,C] by an independent integer offset in [-max_shift, max_shift]
  along both axes, filling with zeros (the standard MNIST/CIFAR pad-and-crop augmentation).

  The images may be rows `rows` of a batch of `num_rows` (default B): the offsets are drawn for
  the whole batch and sliced, so each image's shift does not depend on how the batch is split.
  """
  b, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)))
  dy, dx = rng.integers(0, 2 * max_shift + 1, size=(2, num_rows or b))[:, rows]
  rows = dy[:, None] + np.arange(h)[None, :]  # [B, H]
  cols = dx[:, None] + np.arange(w)[None, :]  # [B, W]
  return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def _augment(cfg, seed: int, rows: slice, global_batch: int):
  """(batch index, this host's rows of the batch) -> the rows with `augment_shift` applied, seeded
  by (seed, index) so that resuming from an iterator state reproduces the same augmented
  batches, under any process count."""
  max_shift = int(_get(cfg, 'augment_shift', 0) or 0)
  if _task(cfg) != 'classification' or max_shift <= 0:
    return None

  def fn(j, batch):
    rng = np.random.default_rng([seed % 2**64, j, 1])
    return dict(batch, image=random_shift(batch['image'], rng, max_shift, rows, global_batch))

  return fn


def _hosts(batch_size, process_index, process_count) -> tuple[int, int, int]:
  pi = jax.process_index() if process_index is None else process_index
  pc = jax.process_count() if process_count is None else process_count
  if batch_size <= 0 or batch_size % pc:
    raise UserError(f'batch_size={batch_size} (config.batch_size / config.eval_batch_size) must be '
                    f'a positive multiple of the process count ({pc})')
  return pi, pc, batch_size // pc


def dataset_spec(data_cfg) -> DataSpec:
  """Task, shapes and sizes of a data config (loads the splits if needed)."""
  train = _source(data_cfg, _get(data_cfg, 'train_split', 'train'))
  evals = _source(data_cfg, _get(data_cfg, 'eval_split', 'test'))
  if _task(data_cfg) == 'lm':
    return DataSpec('lm', vocab_size=LM_VOCAB_SIZE, num_train_examples=len(train),
                    num_eval_examples=len(evals))
  labels = np.concatenate([train.arrays['label'], evals.arrays['label']])
  builder = sources.get_builder(_get(data_cfg, 'name'), _get(data_cfg, 'data_dir'))
  label_feature = builder.info.features[_get(data_cfg, 'label_key', 'label')]
  num_classes = getattr(label_feature, 'num_classes', None) or int(labels.max()) + 1
  return DataSpec('classification', num_classes=int(num_classes),
                  input_shape=tuple(train.arrays['image'].shape[1:]),
                  num_train_examples=len(train), num_eval_examples=len(evals))


def make_train_iterator(data_cfg, *, batch_size: int, seed: int,
                        process_index: int | None = None,
                        process_count: int | None = None) -> grain.DatasetIterator:
  """Infinite, per-epoch reshuffled iterator over this host's rows of each global batch of the
  train split.

  `batch_size` is global; each host yields batch_size // process_count examples, its slice of
  the global batch (see the module docstring). The iterator's get_state()/set_state()
  round-trip exactly (JSON-serializable), and a state restores under any process count.
  """
  pi, pc, local_batch = _hosts(batch_size, process_index, process_count)
  src = _source(data_cfg, _get(data_cfg, 'train_split', 'train'))
  if len(src) == 0:
    raise UserError(f'config.data.name={_get(data_cfg, "name")!r}: its train split is empty')
  batches = ShuffledBatches(src, np.arange(len(src)), batch_size, seed, pi, pc)
  ds = grain.MapDataset.source(batches)
  augment = _augment(data_cfg, seed, batches.rows, batch_size)
  if augment is not None:
    ds = ds.map_with_index(augment)
  ds = ds.map(_postprocess(data_cfg))
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))


def eval_batches(data_cfg, *, batch_size: int, split: str | None = None,
                 process_index: int | None = None, process_count: int | None = None,
                 max_batches: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """One deterministic pass over the eval split; this host's rows of each global batch.

  Global batch b holds examples [b * batch_size, (b + 1) * batch_size), the last one zero-padded;
  host h of n reads its contiguous rows of it (static shape [batch_size // n, ...]), and 'mask'
  (float32) marks real examples with 1. Every example is read exactly once across the hosts, all
  hosts yield the same number of batches, and the global batches do not depend on n.
  """
  pi, pc, local_batch = _hosts(batch_size, process_index, process_count)
  src = _source(data_cfg, split or _get(data_cfg, 'eval_split', 'test'))
  num_batches = math.ceil(len(src) / batch_size)
  if max_batches is not None:
    num_batches = min(num_batches, max_batches)
  post = _postprocess(data_cfg)
  for b in range(num_batches):
    start = b * batch_size + pi * local_batch
    chunk = np.arange(start, min(start + local_batch, len(src)))
    n = len(chunk)
    batch = post(src.gather(np.pad(chunk, (0, local_batch - n))))
    mask = np.zeros(local_batch, np.float32)
    mask[:n] = 1.0
    for v in batch.values():
      v[n:] = 0
    batch['mask'] = mask
    yield batch
