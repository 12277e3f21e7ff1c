"""so.spider(..., lean=True): one parameter-sized array of state, x_{k-1}
rebuilt from x_k and the last step, and every wrong use an error.

Its trajectory against the float64 reference is in test_trajectory.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import spider_optax as so

PARAMS = {'a': jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), 'b': jnp.ones(4)}


def loss_fn(params, x):
  return jnp.sum((params['a'] * x) ** 2) + jnp.sum(jnp.sin(params['b'] * x))


def steps(tx, n=4):
  """An anchor and n - 1 recursive steps; the params and state after each."""
  params, state = PARAMS, tx.init(PARAMS)
  out = []
  for k in range(n):
    x = 1.0 + 0.1 * k
    grads = jax.grad(loss_fn)(params, x)
    extra = {}
    if k:
      prev = so.prev_params(state, params)
      extra['prev_grads'] = jax.grad(loss_fn)(prev, x)
    updates, state = tx.update(grads, state, params, **extra)
    params = optax.apply_updates(params, updates)
    out.append((params, state))
  return out


def test_the_state_holds_one_parameter_sized_array_per_leaf():
  state = so.spider(0.1, 1.0, lean=True).init(PARAMS)
  sizes = [x.size for x in jax.tree.leaves(state)]
  big = [n for n in sizes if n > 1]
  assert sorted(big) == sorted(x.size for x in jax.tree.leaves(PARAMS))
  full = so.spider(0.1, 1.0).init(PARAMS)
  assert sum(x.size for x in jax.tree.leaves(full)) > 2 * sum(big)


def test_the_rebuilt_point_is_the_last_params():
  tx = so.spider(0.3, c0=0.5, lean=True)
  history = steps(tx)
  for (before, _), (after, state) in zip(history, history[1:]):
    rebuilt = so.prev_params(state, after)
    jax.tree.map(
      lambda r, b: np.testing.assert_allclose(r, b, rtol=0, atol=1e-6),
      rebuilt,
      before,
    )


def test_without_params_prev_params_says_what_to_pass():
  state = so.spider(0.1, lean=True).init(PARAMS)
  with pytest.raises(ValueError, match=r'so\.prev_params\(state, params\)'):
    so.prev_params(state)


@pytest.mark.parametrize('jit', [False, True])
def test_params_changed_outside_the_optimizer_are_an_error(jit):
  tx = so.spider(0.1, c0=1.0, lean=True)
  params, state = steps(tx, 2)[-1]
  decayed = jax.tree.map(lambda p: p * 0.99, params)  # weight decay outside
  prev_params = jax.jit(so.prev_params) if jit else so.prev_params
  with pytest.raises(Exception, match='only by its own updates'):
    jax.block_until_ready(prev_params(state, decayed))
  jax.block_until_ready(prev_params(state, params))  # the right params pass
  # An update does not read the params; the change is caught at the next
  # rebuild, even after an anchor step.
  update = jax.jit(tx.update) if jit else tx.update
  grads = jax.grad(loss_fn)(decayed, 1.0)
  updates, state = update(grads, state, decayed)
  after = optax.apply_updates(decayed, updates)
  with pytest.raises(Exception, match='only by its own updates'):
    jax.block_until_ready(prev_params(state, after))


def test_a_skipped_step_keeps_params_and_state_together():
  tx = so.apply_if_finite(so.spider(0.1, c0=1.0, lean=True), 3)
  params, state = steps(tx, 2)[-1]
  bad = jax.tree.map(lambda g: g * jnp.nan, PARAMS)
  updates, state = tx.update(bad, state, params, prev_grads=bad)
  params = optax.apply_updates(params, updates)
  assert int(state.total_notfinite) == 1
  so.prev_params(state, params)  # still consistent: no error


@pytest.mark.parametrize(
  'kwargs, match',
  [
    (dict(diagnostics=True), 'keeps no diagnostics'),
    (dict(epsilon=1.0), 'keeps no diagnostics'),
  ],
)
def test_options_that_need_the_copy_are_refused(kwargs, match):
  with pytest.raises(ValueError, match=match):
    so.spider(0.1, lean=True, **kwargs)


def test_bfloat16_params_are_refused():
  params = {'w': jnp.ones(3, jnp.bfloat16)}
  with pytest.raises(TypeError, match=r"params\['w'\] of dtype bfloat16"):
    so.spider(0.1, lean=True).init(params)


def test_the_loop_and_linen_train_state_work_as_with_the_copy():
  """so.spider_loop anchors on the same schedule, and a Linen TrainState's
  prev_params rebuilds the point from its own params."""
  pytest.importorskip('flax')
  x = jnp.linspace(0.5, 1.5, 5)
  results = {}
  for lean in (False, True):
    tx = so.spider(0.2, c0=1.0, lean=lean)
    state = so.flax.TrainState.create(apply_fn=None, params=PARAMS, tx=tx)
    anchor_step, recursive_step = so.flax.linen_steps(loss_fn)
    batches = [(xi,) for xi in x]
    state, _ = so.spider_loop(
      anchor_step,
      recursive_step,
      state,
      batches,
      batches,
      anchor_period=3,
      num_steps=len(x),
    )
    results[lean] = state.params
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
    results[True],
    results[False],
  )


def test_nnx_steps_rebuild_the_point_from_the_model():
  nnx = pytest.importorskip('flax.nnx')
  x = jnp.ones((4, 2))
  results = {}
  for lean in (False, True):
    model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(
      model, so.spider(0.1, c0=1.0, lean=lean), wrt=nnx.Param
    )
    anchor, recursive = so.flax.nnx_steps(lambda m, x: jnp.sum(m(x) ** 2))
    anchor((model, optimizer), x)
    before = nnx.as_pure(nnx.state(model, nnx.Param))
    recursive((model, optimizer), 0.5 * x)
    rebuilt = so.flax.prev_params(optimizer, model)
    jax.tree.map(
      lambda r, b: np.testing.assert_allclose(r, b, atol=1e-6), rebuilt, before
    )
    for _ in range(3):
      recursive((model, optimizer), 0.5 * x)
    results[lean] = nnx.as_pure(nnx.state(model, nnx.Param))
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
    results[True],
    results[False],
  )
