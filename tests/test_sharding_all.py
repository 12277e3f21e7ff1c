"""Every public optimizer, in every mode, on params sharded over 8 devices.

tests/sharding_all_worker.py runs them in a fresh interpreter with 8 CPU
devices, on a mesh of Explicit axes and on an ordinary ``NamedSharding``
FSDP layout (Auto axes), and reports what it saw; the tests here check:
each state leaf that corresponds to a param is sharded like it after a
jitted init and after 4 jitted steps, the params keep their sharding, and
the run equals the one-device run.
"""

import json
import pathlib

import pytest

import sharding_all_worker
import workers

_WORKER = pathlib.Path(__file__).resolve().with_name('sharding_all_worker.py')
TIMEOUT_S = 600
LAYOUTS = ('explicit', 'fsdp')
# Float32 rounding after 4 steps of updates of size ~0.1: a sharded
# reduction adds in another order.
TOLERANCE = 1e-5


@pytest.fixture(scope='module')
def results(tmp_path_factory) -> dict:
  out = tmp_path_factory.mktemp('sharding_all') / 'results.json'
  workers.run_worker(
    _WORKER,
    '--out',
    str(out),
    timeout=TIMEOUT_S,
    devices=8,
    what='sharding worker (all optimizers)',
  )
  return json.loads(out.read_text())


NAMES = sharding_all_worker.CASES


@pytest.mark.parametrize('layout', LAYOUTS)
@pytest.mark.parametrize('name', NAMES)
def test_sharded_like_the_params_and_equal_to_one_device(results, name, layout):
  entry = results[name][layout]
  assert entry['error'] is None, entry['error']
  assert entry['unsharded_init'] == [], 'after the jitted init'
  assert entry['unsharded_run'] == [], 'after the run'
  assert entry['params_unsharded'] == []
  assert entry['max_diff'] <= TOLERANCE
