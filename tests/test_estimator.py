"""spider_estimator's state and so.prev_params."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import loops
import spider_optax as so

PARAMS = {
  'layer': {'kernel': jnp.arange(6.0).reshape(2, 3), 'bias': jnp.zeros(3)}
}


def tree(value):
  return jax.tree.map(lambda p: jnp.full_like(p, value), PARAMS)


@pytest.mark.parametrize('jit', [True, False], ids=['jit', 'nojit'])
def test_anchor_and_recursive_steps(jit):
  tx = so.spider_estimator()
  update = jax.jit(tx.update) if jit else tx.update
  state = tx.init(PARAMS)
  assert int(state.count) == 0
  np.testing.assert_array_equal(state.estimate['layer']['kernel'], 0)

  v, state = update(tree(2.0), state, PARAMS)  # anchor
  np.testing.assert_array_equal(v['layer']['kernel'], 2.0)
  assert (int(state.count), int(state.steps_since_anchor)) == (1, 0)

  params1 = tree(7.0)
  v, state = update(tree(5.0), state, params1, prev_grads=tree(1.0))
  np.testing.assert_array_equal(v['layer']['bias'], 2.0 + 5.0 - 1.0)
  assert (int(state.count), int(state.steps_since_anchor)) == (2, 1)
  np.testing.assert_array_equal(so.prev_params(state)['layer']['bias'], 7.0)

  v, state = update(tree(-1.0), state, params1, prev_grads=tree(0.5))
  np.testing.assert_array_equal(v['layer']['bias'], 6.0 - 1.0 - 0.5)
  assert int(state.steps_since_anchor) == 2

  v, state = update(tree(3.0), state, params1)  # anchor resets
  np.testing.assert_array_equal(v['layer']['bias'], 3.0)
  assert (int(state.count), int(state.steps_since_anchor)) == (4, 0)


def test_first_recursive_step_acts_as_an_anchor():
  """Without an anchor there is no estimate to correct: v_0 = g_0, not 0."""
  tx = so.spider_estimator()
  v, state = tx.update(tree(4.0), tx.init(PARAMS), PARAMS, prev_grads=tree(4.0))
  np.testing.assert_array_equal(v['layer']['kernel'], 4.0)
  assert int(state.steps_since_anchor) == 0


def test_estimator_dtype_for_bfloat16_params():
  params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), PARAMS)
  tx = so.spider_estimator(estimator_dtype=jnp.float32)
  state = tx.init(params)
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(state.estimate))
  ones = jax.tree.map(lambda p: jnp.full_like(p, 1.0), params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  small = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), params)
  step = float(small['layer']['bias'][0])  # 1e-3 rounded to bfloat16
  # An anchor on ones, then v = 1 + k * 1e-3 over 10 recursive steps: lost in
  # bfloat16 (eps 2**-7), kept in f32.
  run = lambda tx, jit: loops.run_spider(
    tx,
    params,
    [(ones, None)] + [(small, zeros)] * 10,
    schedule=[True] + [False] * 10,
    jit=jit,
    trace=lambda params, state, updates: updates,
  )
  out = run(tx, jit=True)
  v = out.trace[-1]
  np.testing.assert_allclose(v['layer']['bias'], 1 + 10 * step, rtol=1e-6)
  assert v['layer']['bias'].dtype == jnp.float32
  prev = so.prev_params(out.state)
  assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(prev))

  # The default keeps the params' dtype, and loses the small corrections.
  v16 = run(so.spider_estimator(), jit=False).trace[-1]
  assert v16['layer']['bias'].dtype == jnp.bfloat16
  assert float(v16['layer']['bias'][0]) == 1.0


def test_spider_updates_bfloat16_params():
  params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), PARAMS)
  tx = so.spider(0.1, c0=1.0, estimator_dtype=jnp.float32)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, state = tx.update(grads, state, params)
  assert all(u.dtype == jnp.float32 for u in jax.tree.leaves(updates))
  new_params = optax.apply_updates(params, updates)
  assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(new_params))


@pytest.mark.parametrize(
  'wrap',
  [
    lambda: so.spider(0.1),
    lambda: optax.chain(optax.identity(), so.spider(0.1)),
    lambda: optax.inject_hyperparams(so.spider)(learning_rate=0.1),
    lambda: optax.apply_if_finite(so.spider(0.1), 3),
    lambda: so.apply_if_finite(
      optax.inject_hyperparams(so.spider)(learning_rate=0.1), 3
    ),
  ],
  ids=[
    'spider',
    'chain',
    'inject_hyperparams',
    'optax_apply_if_finite',
    'so_apply_if_finite',
  ],
)
def test_prev_params_finds_the_estimator(wrap):
  tx = wrap()
  state = tx.init(PARAMS)
  params1 = tree(9.0)
  _, state = jax.jit(tx.update)(tree(1.0), state, params1)
  prev = so.prev_params(state)
  jax.tree.map(np.testing.assert_array_equal, prev, params1)


def test_prev_params_without_an_estimator():
  state = optax.sgd(0.1).init(PARAMS)
  with pytest.raises(ValueError, match='keeps no previous parameters'):
    so.prev_params(state)


def test_prev_params_with_two_estimators():
  """Two estimators of the same leaves are ambiguous (which one is the
  paired gradient for?), and so are estimators of two models."""
  state = optax.chain(so.spider(0.1), so.spider(0.1)).init(PARAMS)
  with pytest.raises(ValueError, match='2 paired-gradient estimators'):
    so.prev_params(state)
  other = {'only': jnp.zeros(3)}
  states = (so.spider(0.1).init(PARAMS), so.spider(0.1).init(other))
  with pytest.raises(ValueError, match='holds 2 sets of previous parameters'):
    so.prev_params(states)


def test_each_step_function_compiles_once():
  """The state keeps its shapes and dtypes (no weak types creeping in), so a
  jitted anchor step and a jitted recursive step are each traced once: the
  update is traced twice in all."""
  params = jax.tree.map(lambda p: p.astype(jnp.bfloat16), PARAMS)
  tx = so.spider(0.1, 1.0, 2.0, estimator_dtype=jnp.float32)
  traces = []

  def update(*args, **kwargs):
    traces.append(sorted(kwargs))  # once per trace under jit
    return tx.update(*args, **kwargs)

  counted = optax.GradientTransformationExtraArgs(tx.init, update)
  grads = jax.tree.map(jnp.ones_like, params)
  run = loops.run_spider(counted, params, [(grads, grads)] * 8, anchor_period=4)
  assert run.anchors == [True, False, False, False] * 2
  assert len(traces) == 2, traces
  chex.assert_trees_all_equal_shapes_and_dtypes(run.state, tx.init(run.params))


@pytest.mark.parametrize(
  'recursive', [True, False], ids=['recursive', 'anchor']
)
def test_donated_step_writes_its_state_in_place(recursive):
  # A step that donates params and state must write every output into a
  # donated buffer: a fresh output buffer per step costs a page-faulting
  # allocation on CPU (the old prev_params buffer used to be dropped).
  tx = so.spider(0.1, c0=1.0, c1=2.0)
  params = {'kernel': jnp.ones((64, 64)), 'bias': jnp.ones(64)}

  def step(params, state, grads, prev_grads):
    extra = {'prev_grads': prev_grads} if recursive else {}
    updates, state = tx.update(grads, state, params, **extra)
    return optax.apply_updates(params, updates), state

  memory = (
    jax.jit(step, donate_argnums=(0, 1))
    .lower(params, tx.init(params), params, params)
    .compile()
    .memory_analysis()
  )
  # Scalars, and what the overflow check's reduction of the estimator keeps
  # of the 1-D leaf on CPU (about 2 bias-sized buffers): never a copy of the
  # kernel (16 KB), the leaf that dominates a real model.
  assert memory.temp_size_in_bytes < params['kernel'].nbytes // 8
  assert memory.output_size_in_bytes - memory.alias_size_in_bytes < 1024
