"""Paired-gradient estimators inside optax.partition, multi_transform, masked.

The reference runs each group's optimizer on its own sub-tree, with the
paired gradient taken at the whole model's previous point, which the test
loop itself remembers.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import loops
import spider_optax as so

LABELS = {'w': 'spider', 'b': 'adam'}
SCHEDULE = [True, False, False, False, True, False, False]


def loss_fn(params, x, y):
  return jnp.mean((jnp.tanh(x @ params['w']) + params['b'] - y) ** 2)


def init_params():
  k = jax.random.split(jax.random.key(0), 2)
  return {
    'w': jax.random.normal(k[0], (3, 2)) * 0.5,
    'b': jax.random.normal(k[1], (2,)) * 0.5,
  }


def batches():
  keys = jax.random.split(jax.random.key(1), len(SCHEDULE))
  out = []
  for key in keys:
    kx, ky = jax.random.split(key)
    out.append((jax.random.normal(kx, (8, 3)), jax.random.normal(ky, (8, 2))))
  return out


def reference(groups):
  """Each group's optimizer on its own sub-tree (``groups``: label -> tx),
  grads of the whole loss at x_k and, on recursive steps, at the whole x_{k-1}
  that this loop remembers."""
  params = init_params()
  names = {label: [k for k in params if LABELS[k] == label] for label in groups}
  sub = lambda tree, label: {k: tree[k] for k in names[label]}
  states = {label: tx.init(sub(params, label)) for label, tx in groups.items()}
  prev = params
  for anchor, batch in zip(SCHEDULE, batches()):
    grads = jax.grad(loss_fn)(params, *batch)
    prev_grads = jax.grad(loss_fn)(prev, *batch)
    new = dict(params)
    for label, tx in groups.items():
      extra = {} if anchor else {'prev_grads': sub(prev_grads, label)}
      updates, states[label] = tx.update(
        sub(grads, label), states[label], sub(params, label), **extra
      )
      new.update(optax.apply_updates(sub(params, label), updates))
    prev, params = params, new
  return params


def run(tx):
  return loops.run_spider(
    tx, init_params(), batches(), loss_fn=loss_fn, schedule=SCHEDULE
  ).params


def assert_close(actual, expected):
  jax.tree.map(
    lambda a, e: np.testing.assert_allclose(a, e, rtol=2e-6, atol=1e-7),
    actual,
    expected,
  )


def spider():
  return so.spider(0.2, c0=1.0, c1=0.5)


def test_spider_on_one_group_and_adam_on_the_other():
  tx = optax.chain(
    so.keep_prev_params(),
    optax.partition({'spider': spider(), 'adam': optax.adam(0.05)}, LABELS),
  )
  assert_close(
    run(tx), reference({'spider': spider(), 'adam': optax.adam(0.05)})
  )


def test_multi_transform_with_a_frozen_group():
  tx = optax.chain(
    so.keep_prev_params(),
    optax.multi_transform(
      {'spider': spider(), 'adam': optax.set_to_zero()}, LABELS
    ),
  )
  params = run(tx)
  np.testing.assert_array_equal(params['b'], init_params()['b'])
  assert_close(params, reference({'spider': spider()}))


def test_masked_spider_with_the_rest_frozen():
  trainable = {'w': True, 'b': False}
  frozen = {'w': False, 'b': True}
  tx = optax.chain(
    so.keep_prev_params(),
    optax.masked(spider(), trainable),
    optax.masked(optax.set_to_zero(), frozen),
  )
  assert_close(run(tx), reference({'spider': spider()}))


def test_one_clipping_norm_across_groups_is_the_unpartitioned_spider():
  """Estimators per group, then one relaxed clip over the whole tree: the
  same algorithm as so.spider on the whole model. The two estimators'
  previous params are merged leaf by leaf."""
  tx = optax.chain(
    optax.partition(
      {'spider': so.spider_estimator(), 'adam': so.spider_estimator()},
      LABELS,
    ),
    so.relaxed_clip(c0=1.0, c1=0.5),
    optax.scale_by_learning_rate(0.2),
  )
  assert_close(run(tx), run(spider()))


@pytest.mark.parametrize(
  'tx',
  [
    optax.partition({'spider': spider(), 'adam': optax.adam(0.05)}, LABELS),
    optax.masked(spider(), {'w': True, 'b': False}),
  ],
  ids=['partition', 'masked'],
)
def test_a_group_without_previous_params_says_what_to_add(tx):
  state = tx.init(init_params())
  with pytest.raises(ValueError, match=r"\['b'\].*so\.keep_prev_params\(\)"):
    so.prev_params(state)


def test_keep_prev_params_passes_updates_and_keeps_params():
  tx = so.keep_prev_params()
  params = init_params()
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  moved = jax.tree.map(lambda p: p + 1.0, params)
  updates, state = jax.jit(tx.update)(grads, state, moved)
  assert_close(updates, grads)
  assert_close(so.prev_params(state), moved)
  with pytest.raises(ValueError, match='needs params'):
    tx.update(grads, state)
  with pytest.raises(ValueError, match=r'tx\.init\(params\)'):
    tx.update(grads, state, {'w': params['w']})
