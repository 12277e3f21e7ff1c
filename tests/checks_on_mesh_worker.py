"""Worker: run-time checks that fail in a step split over 8 CPU devices.

Each case builds a sharded step whose check fails when it runs, and records
the error it raised (every device runs the check's callback: none waits for
another in a collective, which would abort the process after 40 s). Writes
``{case: error message or None}`` as JSON to ``--out``.
"""

import argparse
import contextlib
import json
import os
import sys


def cases():
  import jax
  import jax.numpy as jnp
  import optax
  from jax.sharding import AxisType
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  import spider_optax as so

  def split(mesh, tree):
    return jax.device_put(tree, NamedSharding(mesh, P('d')))

  def injected_lr(kind):
    mesh = jax.make_mesh((8,), ('d',), axis_types=(kind,))
    with jax.set_mesh(mesh):
      params = split(mesh, {'w': jnp.ones(16)})
      tx = optax.inject_hyperparams(so.mars_adamw)(learning_rate=0.1)
      state = jax.jit(tx.init)(params)
      state.hyperparams['learning_rate'] = jnp.asarray(-1.0)
      grads = jax.tree.map(jnp.ones_like, params)
      return jax.jit(tx.update)(grads, state, params)

  def overflow(kind, build, with_mesh):
    mesh = jax.make_mesh((8,), ('d',), axis_types=(kind,))
    params = split(mesh, {'w': jnp.ones(16)})
    grads = split(mesh, {'w': jnp.full(16, 3e38)})
    minus = jax.tree.map(lambda g: -g, grads)
    tx = build()
    with jax.set_mesh(mesh) if with_mesh else contextlib.nullcontext():
      state = jax.jit(tx.init)(params)
      _, state = jax.jit(tx.update)(grads, state, params, prev_grads=minus)
      return jax.jit(tx.update)(grads, state, params, prev_grads=minus)

  spider = lambda: so.spider(0.1, c0=1.0)
  exact_mars = lambda: so.mars_adamw(0.1, approx=False)
  return {
    'injected_lr_auto_set_mesh': lambda: injected_lr(AxisType.Auto),
    'injected_lr_explicit_set_mesh': lambda: injected_lr(AxisType.Explicit),
    'spider_overflow_auto_set_mesh': lambda: overflow(
      AxisType.Auto, spider, True
    ),
    'spider_overflow_explicit': lambda: overflow(
      AxisType.Explicit, spider, False
    ),
    'mars_overflow_explicit': lambda: overflow(
      AxisType.Explicit, exact_mars, False
    ),
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument('--out', required=True)
  args = parser.parse_args(argv)
  import jax

  results = {}
  for name, case in cases().items():
    try:
      jax.block_until_ready(case())
      results[name] = None
    except Exception as error:  # noqa: BLE001  (the test reads it)
      results[name] = str(error)
  with open(args.out, 'w') as f:
    json.dump(results, f, indent=1)
  return 0


if __name__ == '__main__':
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  sys.exit(main())
