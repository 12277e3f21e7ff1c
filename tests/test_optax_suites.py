"""optax's own conformance suites, run with this library's optimizers.

Not an adaptation (tests/test_conformance.py is one): the installed files
themselves, with their optimizer lists replaced by ours.

- ``optax/contrib/_common_test.py``: what optax asks of each optimizer it
  ships in ``optax.contrib``. It builds its lists at module level, and its
  parameterized ``ContribTest`` reads them when the class is defined, so
  this module runs the file's source up to ``class ContribTest(``, puts our
  members in ``_MAIN_OPTIMIZERS_UNDER_TEST`` and
  ``_ALL_OPTIMIZERS_UNDER_TEST`` and our factories behind
  ``_get_opt_factory``, then defines the class from the rest of the file.
  pytest collects it here as a unittest class. Its checks call
  ``update(grads, state, params)`` with no ``prev_grads``, so only the
  members' one-gradient (approx) modes can take them.
- ``optax/_src/sharding_test.py``: the state's sharding types on an explicit
  8-device mesh. It needs 8 CPU devices, which JAX fixes when it starts, so
  tests/optax_sharding_worker.py runs it in a fresh interpreter.

A change in optax that moves the split points fails here loudly.
"""

import importlib.util
import json
import pathlib
import unittest
from typing import Any

import pytest

import optax_sharding_worker
import spider_optax as so
import workers

_SHARDING_WORKER = (
  pathlib.Path(__file__).resolve().with_name('optax_sharding_worker.py')
)
TIMEOUT_S = 300


def _source(module: str, marker: str) -> tuple[str, str, str]:
  """(path, source before ``marker``, source from it) of an optax test file."""
  spec = importlib.util.find_spec(module)
  assert spec is not None and spec.origin, module
  text = pathlib.Path(spec.origin).read_text()
  head, found, tail = text.partition(marker)
  assert found, f'{spec.origin} no longer holds {marker!r}'
  assert marker not in tail, f'{spec.origin} holds {marker!r} twice'
  return spec.origin, head, found + tail


def run_split(
  module: str, marker: str, replace: dict[str, Any], name: str
) -> dict[str, Any]:
  """Runs an optax test file's source in a fresh namespace, with the globals
  of ``replace`` set between its part before ``marker`` and the rest.

  The second part is compiled at its own line numbers, so that tracebacks
  point into the file.
  """
  path, head, tail = _source(module, marker)
  namespace: dict[str, Any] = {'__name__': name, '__file__': path}
  exec(compile(head, path, 'exec'), namespace)
  for key in replace:
    assert key in namespace, f'{path} no longer defines {key}'
  namespace.update(replace)
  padding = '\n' * head.count('\n')
  exec(compile(padding + tail, path, 'exec'), namespace)
  return namespace


# --------------------------------------------------------------------------
# optax/contrib/_common_test.py
# --------------------------------------------------------------------------

FACTORIES = {
  'mars_adamw': so.mars_adamw,
  'mars_lion': so.mars_lion,
  'mars_muon': so.mars_muon,
  'mars_shampoo': so.mars_shampoo,
  'storm': so.storm,
}


def _get_opt_factory(opt_name: str):
  """The file's lookup, for our names only: a typo fails, as in optax."""
  if opt_name not in FACTORIES:
    raise ValueError(f'Unknown optimizer: {opt_name}')
  return FACTORIES[opt_name]


def _member(opt_name: str, **opt_kwargs) -> dict[str, Any]:
  return {
    'opt_name': opt_name,
    'opt_kwargs': opt_kwargs,
    'wrapper_name': None,
    'wrapper_kwargs': None,
  }


# Learning rates for the file's 30000-step runs, checked to rtol = atol =
# 3e-2 (0.06 at the minima of these targets, whose entries are at most 4):
# AdamW's for the AdamW-type members; Lion's sign steps settle within about
# lr of the minimum (2e-3 here), and Muon's orthogonalised steps within
# about 0.2 sqrt(2) lr on the 2x2 matrix.
MEMBERS = (
  _member('mars_adamw', learning_rate=1e-2),
  _member(
    'mars_adamw',
    learning_rate=1e-2,
    adamw_1d=True,
    adamw_leaves='not_2d',
    lr_1d=3e-3,
    weight_decay=1e-4,
  ),
  _member('mars_lion', learning_rate=2e-3),
  _member('mars_lion', learning_rate=2e-3, adamw_1d=True, lr_1d=1e-2),
  _member('mars_muon', learning_rate=1e-2),
  _member('mars_muon', learning_rate=1e-2, max_norm=None, lr_1d=3e-3),
  _member('mars_shampoo', learning_rate=1e-2, per_tensor_clip=True),
  _member('storm', learning_rate=1e-2, beta=0.5, c0=1.0, approx=True),
)

_common = run_split(
  'optax.contrib._common_test',
  '\nclass ContribTest(',
  {
    '_MAIN_OPTIMIZERS_UNDER_TEST': MEMBERS,
    '_ALL_OPTIMIZERS_UNDER_TEST': MEMBERS,
    '_get_opt_factory': _get_opt_factory,
  },
  __name__ + '.contrib_common_test',
)
ContribTest = _common['ContribTest']
ContribTest.__module__ = __name__

# Each member in each of the file's tests: extra args (wrapped and not), the
# four convergence targets, inject_hyperparams, dtype (2), MultiSteps (2),
# state stability (4 dtypes), learning-rate schedules.
TESTS_PER_MEMBER = 2 + 4 + 1 + 2 + 2 + 4 + 1


def test_contrib_test_holds_our_members_only():
  names = unittest.TestLoader().getTestCaseNames(ContribTest)
  assert len(names) == TESTS_PER_MEMBER * len(MEMBERS), len(names)
  # The lists the class was built from are ours, not optax's.
  assert _common['_ALL_OPTIMIZERS_UNDER_TEST'] is MEMBERS
  assert {m['opt_name'] for m in MEMBERS} == set(FACTORIES)


# --------------------------------------------------------------------------
# optax/_src/sharding_test.py
# --------------------------------------------------------------------------


@pytest.fixture(scope='module')
def sharding_outcomes(tmp_path_factory) -> dict[str, str]:
  """Runs the worker once: ``{test name: 'ok' or what went wrong}``."""
  out = tmp_path_factory.mktemp('optax_sharding') / 'outcomes.json'
  # Exit 1 with the outcomes written is failing tests, reported one by one.
  proc = workers.run_worker(
    _SHARDING_WORKER,
    '--out',
    str(out),
    timeout=TIMEOUT_S,
    devices=8,
    ok=(0, 1),
    what='optax sharding worker',
  )
  assert out.exists(), proc.stderr[-10000:]
  outcomes = json.loads(out.read_text())
  assert (proc.returncode == 0) == all(v == 'ok' for v in outcomes.values())
  return outcomes


SHARDING_TESTS = [
  f'{test}_{member}'
  for test in optax_sharding_worker.OPTIMIZER_TESTS
  for member in optax_sharding_worker.MEMBERS
]


def test_optax_sharding_suite_ran_each_test(sharding_outcomes):
  assert sorted(sharding_outcomes) == sorted(SHARDING_TESTS)


@pytest.mark.parametrize('name', SHARDING_TESTS)
def test_optax_sharding_suite(sharding_outcomes, name):
  """One of optax's sharding tests, on one member (a skip fails too)."""
  outcome = sharding_outcomes.get(name, 'not run')
  if outcome != 'ok':
    pytest.fail(f'{name}: {outcome}', pytrace=False)
