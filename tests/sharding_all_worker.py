"""Subprocess worker for tests/test_sharding_all.py: every public optimizer,
in every mode, on 8 CPU devices.

Run in a fresh interpreter with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``::

  python sharding_all_worker.py --out FILE

For each optimizer of :func:`cases` and each layout (``explicit``: a mesh of
Explicit axes, ``fsdp``: an ordinary ``NamedSharding`` FSDP layout on a mesh
of Auto axes) it shards the params of a small MLP over the 8 devices along
their first axis, builds the state with ``jax.jit(tx.init)``, and writes to
FILE (JSON), per case and layout: the state leaves that correspond to params
(``optax.tree_utils.tree_map_params``) but are not sharded like them,
after the jitted init and after the run; the largest difference of the
params after 4 jitted steps from the same steps on one device; and the
error, where a step raised.
"""

import argparse
import json
import os
import sys
import traceback
from typing import Any

STEPS = 4
CASES = (
  'spider',
  'spider_lean',
  'spider_estimator',
  'storm',
  'storm_approx',
  'mars_adamw',
  'mars_adamw_exact',
  'mars_adamw_1d',
  'mars_lion',
  'mars_lion_exact',
  'mars_muon',
  'mars_muon_exact',
  'mars_shampoo',
  'recursive_correction',
  'corrected_momentum',
  'clip_by_leaf_norm',
  'relaxed_clip',
  'keep_prev_params',
  'apply_if_finite',
)


def cases() -> dict[str, tuple[Any, bool]]:
  """name -> (transformation, whether its update takes prev_grads), one per
  name of :data:`CASES`."""
  import optax

  import spider_optax as so

  return {
    'spider': (so.spider(0.1, c0=1.0, c1=0.5), True),
    'spider_lean': (so.spider(0.1, c0=1.0, lean=True), True),
    'spider_estimator': (so.spider_estimator(), True),
    'storm': (so.storm(0.1, 0.9), True),
    'storm_approx': (so.storm(0.1, 0.9, approx=True), False),
    'mars_adamw': (so.mars_adamw(0.01), False),
    'mars_adamw_exact': (so.mars_adamw(0.01, approx=False), True),
    'mars_adamw_1d': (so.mars_adamw(0.01, adamw_1d=True), False),
    'mars_lion': (so.mars_lion(0.01), False),
    'mars_lion_exact': (so.mars_lion(0.01, approx=False), True),
    'mars_muon': (so.mars_muon(0.01), False),
    'mars_muon_exact': (so.mars_muon(0.01, approx=False), True),
    'mars_shampoo': (so.mars_shampoo(0.01), False),
    'recursive_correction': (
      optax.chain(so.recursive_correction(0.9, approx=True), optax.sgd(0.01)),
      False,
    ),
    'corrected_momentum': (so.corrected_momentum(0.9, 0.1), False),
    'clip_by_leaf_norm': (so.clip_by_leaf_norm(1.0), False),
    'relaxed_clip': (
      optax.with_extra_args_support(so.relaxed_clip(1.0)),
      False,
    ),
    'keep_prev_params': (
      optax.chain(so.keep_prev_params(), optax.sgd(0.01)),
      True,
    ),
    'apply_if_finite': (so.apply_if_finite(so.spider(0.1, c0=1.0), 3), True),
  }


def problem():
  import numpy as np

  rng = np.random.default_rng(0)
  params = {
    'w1': rng.normal(size=(16, 8)).astype(np.float32) / 4,
    'b1': np.zeros(16, np.float32),
    'w2': rng.normal(size=(8, 16)).astype(np.float32) / 4,
    'b2': np.zeros(8, np.float32),
  }
  x = rng.normal(size=(32, 8)).astype(np.float32)
  return params, x


def loss(params, x):
  import jax.numpy as jnp

  h = jnp.tanh(x @ params['w1'].T + params['b1'])
  out = h @ params['w2'].T + params['b2']
  return jnp.mean((out - jnp.sin(x)) ** 2)


def run(tx, paired: bool, params, x):
  import jax
  import optax

  import spider_optax as so

  state = jax.jit(tx.init)(params)
  first = state

  @jax.jit
  def step(params, state, x):
    if paired:
      prev = so.prev_params(state, params)
      grads, prev_grads = so.paired_grad(loss)(params, prev, x)
      extra = {'prev_grads': prev_grads}
    else:
      grads, extra = jax.grad(loss)(params, x), {}
    updates, state = tx.update(grads, state, params, **extra)
    return optax.apply_updates(params, updates), state

  for k in range(STEPS):
    params, state = step(params, state, x[8 * k : 8 * k + 8])
  return first, params, state


def unsharded(tx, state, params) -> list[str]:
  """Paths of the state leaves that correspond to params, not sharded so."""
  import jax
  import optax

  masked = lambda v: isinstance(v, optax.MaskedNode)

  def same(leaf, param):
    if masked(leaf) or getattr(leaf, 'shape', None) != param.shape:
      return True
    return leaf.sharding.is_equivalent_to(param.sharding, param.ndim)

  checked = optax.tree_utils.tree_map_params(
    tx,
    same,
    state,
    params,
    transform_non_params=lambda _: True,
    is_leaf=masked,
  )
  return [
    jax.tree_util.keystr(path)
    for path, ok in jax.tree_util.tree_flatten_with_path(checked)[0]
    if not ok
  ]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument('--out', required=True)
  args = parser.parse_args(argv)
  import jax
  import numpy as np
  from jax.sharding import AxisType
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec

  params_np, x = problem()
  meshes = {
    'explicit': jax.make_mesh((8,), ('d',), axis_types=(AxisType.Explicit,)),
    'fsdp': jax.make_mesh((8,), ('d',), axis_types=(AxisType.Auto,)),
  }
  results: dict[str, Any] = {}
  todo = cases()
  assert tuple(todo) == CASES, 'CASES names every case'
  for name, (tx, paired) in todo.items():
    _, single, _ = run(
      tx, paired, jax.tree.map(jax.numpy.asarray, params_np), x
    )
    results[name] = {}
    for layout, mesh in meshes.items():
      params = {
        k: jax.device_put(
          a, NamedSharding(mesh, PartitionSpec('d', *[None] * (a.ndim - 1)))
        )
        for k, a in params_np.items()
      }
      entry: dict[str, Any] = dict(error=None)
      try:
        first, final, state = run(tx, paired, params, x)
        entry['unsharded_init'] = unsharded(tx, first, params)
        entry['unsharded_run'] = unsharded(tx, state, final)
        entry['params_unsharded'] = [
          k
          for k in final
          if not final[k].sharding.is_equivalent_to(
            params[k].sharding, params[k].ndim
          )
        ]
        entry['max_diff'] = max(
          float(np.max(np.abs(np.asarray(final[k]) - np.asarray(single[k]))))
          for k in final
        )
      except Exception:  # noqa: BLE001  (reported, and the test fails)
        entry['error'] = traceback.format_exc(limit=3)[-2000:]
      results[name][layout] = entry
  with open(args.out, 'w') as f:
    json.dump(results, f, indent=1)
  return 0


if __name__ == '__main__':
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  sys.exit(main())
