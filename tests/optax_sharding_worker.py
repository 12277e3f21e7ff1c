"""Subprocess worker for tests/test_optax_suites.py: optax's sharding suite.

Not a test module: it runs the installed ``optax/_src/sharding_test.py`` with
this library's optimizers in its ``OPTIMIZERS``, on 8 CPU devices::

  python optax_sharding_worker.py

The file's tests need 8 devices, a count JAX fixes when its backend starts;
the file sets ``XLA_FLAGS`` when imported, too late in a pytest process that
has started JAX. So this sets it (and ``JAX_PLATFORMS=cpu``) before JAX is
imported, runs the file's source up to ``class ShardingTest(``, replaces
``OPTIMIZERS``, defines the class from the rest of the file and runs its
tests of the optimizers (:data:`OPTIMIZER_TESTS`). It writes each test's
outcome ('ok', or the error, failure or skip with its traceback) to the
JSON file, and exits 0 only when every test ran and passed: a skipped test
fails it too.

The file skips its sharding-in-types tests where ``jax.__version__ <
'0.7.2'`` (and ``'0.8.1'``), a comparison of strings, which is True for
JAX 0.10.2 ('1' < '7'): it would skip them on every JAX from 0.10 on. The
class here sees ``jax.__version__`` as a string that compares as a version,
so that they run.

Heavy imports live inside functions: pytest imports this file to collect
doctests, and that must not start JAX's backend.
"""

import argparse
import json
import os
import re
import sys
import types
import unittest

DEVICES = 8
_FLAG = f'--xla_force_host_platform_device_count={DEVICES}'


class VersionString(str):
  """A version string whose comparisons compare versions, not text.

  >>> VersionString('0.10.2') < '0.7.2', str.__lt__('0.10.2', '0.7.2')
  (False, True)
  """

  @staticmethod
  def _key(version: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r'\d+', version.split('+')[0]))

  def __lt__(self, other):
    return self._key(self) < self._key(other)

  def __le__(self, other):
    return self._key(self) <= self._key(other)

  def __gt__(self, other):
    return self._key(self) > self._key(other)

  def __ge__(self, other):
    return self._key(self) >= self._key(other)

  __hash__ = str.__hash__


# The file's tests that take each entry of OPTIMIZERS. Its other tests
# (test_microbatch_with_explicit_sharding) check optax.microbatching, none of
# our code, and are not run here.
OPTIMIZER_TESTS = (
  'test_init_with_abstract_input',
  'test_state_sharding_type_init_match_update',
  'test_state_sharding_type_preserved_with_jit',
)
OTHER_TESTS = ('test_microbatch_with_explicit_sharding',)
MEMBERS = (
  'mars_adamw',
  'mars_adamw_not_2d',
  'mars_adamw_per_tensor_clip',
  'mars_lion',
  'mars_muon',
  'mars_muon_3d',
  'mars_shampoo',
  'storm_approx',
)


def optimizers() -> dict:
  """Our members for the file's OPTIMIZERS, each in its one-gradient mode.

  The file's param is one (2, 8, 4) float16 array, split over the 8 devices
  along axis 1. By default the matrix members send it (3-D) to their AdamW;
  ``mars_muon_3d`` reads it as a batch of (8, 4) matrices (axis 0 a batch
  axis), so that Newton-Schulz runs on it, contracting the split axis.
  """
  from optax.contrib import MuonDimensionNumbers

  import spider_optax as so

  batch_of_matrices = MuonDimensionNumbers(reduction_axis=1, output_axis=2)
  members = {
    'mars_adamw': so.mars_adamw(1.0),
    'mars_adamw_not_2d': so.mars_adamw(
      1.0, adamw_1d=True, adamw_leaves='not_2d'
    ),
    'mars_adamw_per_tensor_clip': so.mars_adamw(1.0, per_tensor_clip=True),
    'mars_lion': so.mars_lion(1.0),
    'mars_muon': so.mars_muon(1.0),
    'mars_muon_3d': so.mars_muon(
      1.0, muon_weight_dimension_numbers=batch_of_matrices
    ),
    'mars_shampoo': so.mars_shampoo(1.0),
    'storm_approx': so.storm(1.0, 0.5, 1.0, approx=True),
  }
  assert tuple(members) == MEMBERS
  return members


def sharding_test_class(replace_optimizers: dict) -> type:
  """optax's ShardingTest, built over ``replace_optimizers``."""
  import importlib.util
  import pathlib

  import jax

  module = 'optax._src.sharding_test'
  marker = '\nclass ShardingTest('
  spec = importlib.util.find_spec(module)
  assert spec is not None and spec.origin, module
  path = spec.origin
  head, found, tail = pathlib.Path(path).read_text().partition(marker)
  assert found, f'{path} no longer holds {marker!r}'
  assert marker not in tail, f'{path} holds {marker!r} twice'
  namespace = {'__name__': 'optax_sharding_test', '__file__': path}
  exec(compile(head, path, 'exec'), namespace)
  assert 'OPTIMIZERS' in namespace, f'{path} no longer defines OPTIMIZERS'
  namespace['OPTIMIZERS'] = replace_optimizers
  proxy = types.ModuleType('jax')
  proxy.__getattr__ = lambda name: getattr(jax, name)  # pyright: ignore
  proxy.__version__ = VersionString(jax.__version__)
  namespace['jax'] = proxy
  padding = '\n' * head.count('\n')  # tracebacks at the file's lines
  exec(compile(padding + found + tail, path, 'exec'), namespace)
  return namespace['ShardingTest']


def outcomes(result: unittest.TestResult, tests) -> dict[str, str]:
  """``{test method name: 'ok' or what went wrong}`` for each test."""
  found = {test: 'ok' for test in tests}
  for kind, pairs in (
    ('error', result.errors),
    ('failure', result.failures),
    ('skipped', result.skipped),
  ):
    for test, detail in pairs:
      found[test] = f'{kind}:\n{detail}'
  return {test._testMethodName: outcome for test, outcome in found.items()}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', required=True, help='the JSON file to write')
  args = parser.parse_args(argv)
  os.environ['JAX_PLATFORMS'] = 'cpu'
  flags = os.environ.get('XLA_FLAGS', '')
  if _FLAG not in flags:
    os.environ['XLA_FLAGS'] = f'{flags} {_FLAG}'.strip()
  import jax

  if jax.device_count() != DEVICES:
    sys.exit(f'needs {DEVICES} devices, got {jax.devices()}')
  test_class = sharding_test_class(optimizers())
  names = unittest.TestLoader().getTestCaseNames(test_class)
  ours = [f'{test}_{member}' for test in OPTIMIZER_TESTS for member in MEMBERS]
  others = [n for n in names if n not in ours]
  # The file's tests are ours and OTHER_TESTS: a test optax adds fails here.
  assert sorted(ours) == sorted(n for n in names if n in ours), names
  assert all(n.startswith(OTHER_TESTS) for n in others), others
  tests = [test_class(name) for name in ours]  # the suite drops them as run
  suite = unittest.TestSuite(tests)
  result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2).run(suite)
  found = outcomes(result, tests)
  with open(args.out, 'w') as f:
    json.dump(found, f, indent=1)
  print(f'{result.testsRun} tests run, {len(result.skipped)} skipped')
  ok = sorted(found) == sorted(ours) and all(v == 'ok' for v in found.values())
  return 0 if ok else 1


if __name__ == '__main__':
  sys.exit(main())
