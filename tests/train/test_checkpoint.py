"""jaxlab.train.checkpoint's asyncio log filter, through asyncio's own "never retrieved" path
(the end-to-end corrupt-checkpoint runs are in tests/reliability/test_corrupt_checkpoint.py)."""

import asyncio
import gc
import logging

import pytest

from jaxlab.train import checkpoint

READ_ERROR = "Encountered error while reading array index: (slice(0, 784, 1), slice(0, 64, 1))"


class _Records(logging.Handler):

  def __init__(self):
    super().__init__()
    self.messages = []

  def emit(self, record):
    self.messages.append(record.getMessage().partition("\n")[0])


def _abandon(kind: str, error: Exception) -> None:
  """Leaves a failed Task / Future / gather() unretrieved and garbage-collects it, so asyncio
  logs "<class> exception was never retrieved" as it does for a failed restore's reads."""
  loop = asyncio.new_event_loop()

  async def fail():
    raise error

  async def start():
    if kind == "task":
      return asyncio.ensure_future(fail())
    if kind == "gather":  # the outer _GatheringFuture; gather retrieves its child's exception
      return asyncio.gather(fail())
    future = loop.create_future()
    future.set_exception(error)
    return future

  future = loop.run_until_complete(start())
  loop.run_until_complete(asyncio.sleep(0))
  loop.run_until_complete(asyncio.sleep(0))
  loop.close()
  del future
  gc.collect()


@pytest.mark.parametrize("kind", ["task", "future", "gather"])
def test_drops_abandoned_reads_of_a_failed_restore_and_passes_everything_else(kind):
  logger = logging.getLogger("asyncio")
  records = _Records()
  logger.addHandler(records)
  logger.addFilter(checkpoint._orphaned_read_filter)  # pylint: disable=protected-access
  try:
    _abandon(kind, Exception(READ_ERROR))
    assert not records.messages
    _abandon(kind, ValueError("something else"))  # not an orbax read: still logged
    [message] = records.messages
    assert message.endswith("exception was never retrieved")
  finally:
    logger.removeFilter(checkpoint._orphaned_read_filter)  # pylint: disable=protected-access
    logger.removeHandler(records)
