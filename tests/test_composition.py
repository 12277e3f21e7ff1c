"""so.spider inside real optax compositions: chains, inject_hyperparams,
schedules and the apply_if_finite guard."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import loops
import spider_optax as so
from reference import global_norm
from reference import Spider

PARAMS = {'a': jnp.array([1.0, -2.0, 3.0]), 'b': {'c': jnp.ones((2, 2))}}


def gradient_sequence(seed=0, steps=12):
  """Random (grads, prev_grads or None) pairs; every 4th step is an anchor."""
  rng = np.random.default_rng(seed)
  rand = lambda: jax.tree.map(
    lambda p: jnp.asarray(3 * rng.normal(size=p.shape), p.dtype), PARAMS
  )
  return [(rand(), None if k % 4 == 0 else rand()) for k in range(steps)]


def run(tx, steps, jit=True):
  """tx on the given steps: the params after each step, and the final state."""
  out = loops.run_spider(
    tx,
    PARAMS,
    steps,
    schedule=[prev is None for _, prev in steps],
    jit=jit,
    trace=lambda params, state, updates: params,
  )
  return out.trace, out.state


def assert_trajectories_close(got, want, rtol=1e-6):
  for g, w in zip(got, want, strict=True):
    jax.tree.map(
      lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-6), g, w
    )


def reference_trajectory(steps, learning_rate, c0=None, c1=None):
  flat = lambda t: {
    'a': np.asarray(t['a'], np.float64),
    'c': np.asarray(t['b']['c'], np.float64),
  }
  ref = Spider(flat(PARAMS), learning_rate, c0, c1)
  out = []
  for grads, prev_grads in steps:
    x = ref.step(flat(grads), None if prev_grads is None else flat(prev_grads))
    out.append({'a': x['a'], 'b': {'c': x['c']}})
  return out


def test_transformations_take_extra_args():
  for tx in (
    so.spider(0.1),
    so.spider_estimator(),
    so.apply_if_finite(so.spider(0.1), 1),
  ):
    assert isinstance(tx, optax.GradientTransformationExtraArgs)


def test_spider_is_the_chain_of_its_parts():
  steps = gradient_sequence()
  chained = optax.chain(
    so.spider_estimator(),
    so.relaxed_clip(1.0, 2.0),
    optax.scale_by_learning_rate(0.1),
  )
  assert_trajectories_close(
    run(so.spider(0.1, 1.0, 2.0), steps)[0], run(chained, steps)[0], rtol=0
  )


def test_chain_with_clip_by_global_norm_and_sgd():
  """clip_by_global_norm(c) + sgd after the estimator == spider(lr, c0=c)."""
  steps = gradient_sequence()
  tx = optax.chain(
    so.spider_estimator(), optax.clip_by_global_norm(1.5), optax.sgd(0.1)
  )
  got, _ = run(tx, steps)
  assert_trajectories_close(got, reference_trajectory(steps, 0.1, c0=1.5))
  assert_trajectories_close(got, run(so.spider(0.1, c0=1.5), steps)[0])


def test_relaxed_clip_after_adam():
  """relaxed_clip composes anywhere: here it clips adam's direction."""
  grads = {'a': jnp.array([30.0, -40.0, 0.0]), 'b': {'c': jnp.ones((2, 2))}}
  tx = optax.chain(optax.scale_by_adam(), so.relaxed_clip(c0=0.5, c1=0.3))
  adam_updates, _ = optax.scale_by_adam().update(
    grads, optax.scale_by_adam().init(PARAMS)
  )
  updates, _ = tx.update(grads, tx.init(PARAMS))
  norm = global_norm({'a': adam_updates['a'], 'c': adam_updates['b']['c']})
  factor = min(1, 0.5 / norm, 0.3 / norm**2)
  assert factor < 0.5  # the clip is active
  jax.tree.map(
    lambda u, a: np.testing.assert_allclose(
      u, factor * np.asarray(a), rtol=1e-6
    ),
    updates,
    adam_updates,
  )


def test_schedule_learning_rate():
  steps = gradient_sequence()
  schedule = optax.exponential_decay(0.2, transition_steps=3, decay_rate=0.5)
  got, _ = run(so.spider(schedule, 1.0, 2.0), steps)
  # The schedule's count advances on every update, anchors included.
  want = reference_trajectory(steps, lambda k: 0.2 * 0.5 ** (k / 3), 1.0, 2.0)
  assert_trajectories_close(got, want, rtol=1e-5)


@pytest.mark.parametrize('jit', [True, False], ids=['jit', 'nojit'])
def test_inject_hyperparams(jit):
  steps = gradient_sequence()
  tx = optax.inject_hyperparams(so.spider)(learning_rate=0.1, c0=1.0, c1=2.0)
  got, state = run(tx, steps[:6], jit=jit)
  assert_trajectories_close(
    got, reference_trajectory(steps[:6], 0.1, 1.0, 2.0), rtol=1e-5
  )
  assert set(state.hyperparams) == {'learning_rate', 'c0', 'c1'}

  # Changing the injected values mid-run changes the step as the formula says.
  state.hyperparams['learning_rate'] = jnp.asarray(0.05)
  state.hyperparams['c1'] = jnp.asarray(0.5)
  grads, prev_grads = steps[6]
  params = got[-1]
  v_before = state.inner_state[0].estimate
  updates, state = tx.update(grads, state, params, prev_grads=prev_grads)
  v = jax.tree.map(lambda v, g, pg: v + g - pg, v_before, grads, prev_grads)
  norm = float(so.global_norm(v))
  eta = 0.05 * min(1, 1.0 / norm, 0.5 / norm**2)
  jax.tree.map(
    lambda u, v: np.testing.assert_allclose(u, -eta * v, rtol=1e-5), updates, v
  )
  np.testing.assert_array_equal(so.prev_params(state)['a'], params['a'])


def test_inject_hyperparams_with_a_dropped_term():
  """None stays a static 'drop this term', only numbers are injected."""
  tx = optax.inject_hyperparams(so.spider)(learning_rate=0.1, c0=1.0)
  state = tx.init(PARAMS)
  assert set(state.hyperparams) == {'learning_rate', 'c0'}
  steps = gradient_sequence()
  assert_trajectories_close(
    run(tx, steps)[0], reference_trajectory(steps, 0.1, c0=1.0), rtol=1e-5
  )


def test_inject_hyperparams_bfloat16_params_float32_estimator():
  params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), PARAMS)
  tx = optax.inject_hyperparams(so.spider, hyperparam_dtype=jnp.float32)(
    learning_rate=0.1, c0=1.0, estimator_dtype='float32'
  )
  grads = jax.tree.map(jnp.ones_like, params)
  state = tx.init(params)
  updates, state = jax.jit(tx.update)(grads, state, params)
  updates, state = jax.jit(tx.update)(grads, state, params, prev_grads=grads)
  estimate = state.inner_state[0].estimate
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(estimate))
  norm = np.sqrt(7.0)  # seven ones
  jax.tree.map(
    lambda u: np.testing.assert_allclose(u, -0.1 / norm, rtol=1e-6), updates
  )
  # Without hyperparam_dtype optax injects bfloat16 hyperparameters: valid.
  state = optax.inject_hyperparams(so.spider)(learning_rate=0.1).init(params)
  assert state.hyperparams['learning_rate'].dtype == jnp.bfloat16


def _with_nan(tree):
  return jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.nan), tree)


@pytest.mark.parametrize('bad', ['grads', 'prev_grads'])
def test_apply_if_finite_skips_nonfinite_step(bad):
  """A NaN in grads or prev_grads is skipped; the rest of the run is as if the
  bad step had never happened."""
  steps = gradient_sequence()
  grads, prev_grads = steps[5]
  assert prev_grads is not None  # a recursive step
  poisoned = (
    (_with_nan(grads), prev_grads)
    if bad == 'grads'
    else (grads, _with_nan(prev_grads))
  )
  tx = so.apply_if_finite(so.spider(0.1, 1.0, 2.0), max_consecutive_errors=2)
  got, state = run(tx, steps[:5] + [poisoned] + steps[5:])
  # The skipped step leaves params, estimator and previous params unchanged.
  assert_trajectories_close([got[5]], [got[4]], rtol=0)
  want, _ = run(so.spider(0.1, 1.0, 2.0), steps)
  assert_trajectories_close(got[:5] + got[6:], want, rtol=0)
  assert int(state.total_notfinite) == 1 and int(state.notfinite_count) == 0
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(got))


def test_optax_apply_if_finite_misses_prev_grads():
  """Why so.apply_if_finite exists: optax's guard lets a NaN prev_grads poison
  the estimator until the next anchor."""
  steps = gradient_sequence()
  grads, prev_grads = steps[5]
  steps[5] = (grads, _with_nan(prev_grads))
  tx = optax.apply_if_finite(so.spider(0.1, 1.0, 2.0), max_consecutive_errors=2)
  _, state = run(tx, steps[:7])
  assert not np.all(np.isfinite(state.inner_state[0].estimate['a']))


def test_apply_if_finite_gives_up_after_max_consecutive_errors():
  steps = gradient_sequence()
  bad = (steps[1][0], _with_nan(steps[1][1]))
  tx = so.apply_if_finite(so.spider(0.1), max_consecutive_errors=2)
  got, state = run(tx, steps[:1] + [bad] * 3)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(got[:3]))
  assert not np.all(np.isfinite(got[3]['a']))  # third in a row is applied
  assert int(state.notfinite_count) == 3


def test_apply_if_finite_bfloat16_params_float32_estimator():
  """The skipped step's zeros take the inner output's dtype (float32 here)."""
  params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), PARAMS)
  tx = so.apply_if_finite(so.spider(0.1, estimator_dtype=jnp.float32), 1)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, state = jax.jit(tx.update)(grads, state, params)
  updates, state = jax.jit(tx.update)(
    grads, state, params, prev_grads=_with_nan(grads)
  )
  assert all(u.dtype == jnp.float32 for u in jax.tree.leaves(updates))
  assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates))


def test_apply_if_finite_skips_a_nonfinite_grad_diff_variance():
  """A NaN variance estimate would make the adaptive-anchoring sum unknown."""
  tx = so.apply_if_finite(so.spider(0.1, diagnostics=True), 1)
  grads = jax.tree.map(jnp.ones_like, PARAMS)
  state = tx.init(PARAMS)
  _, state = tx.update(grads, state, PARAMS)
  _, state = tx.update(
    grads, state, PARAMS, prev_grads=grads, grad_diff_variance=jnp.float32(0.25)
  )
  updates, state = tx.update(
    grads,
    state,
    PARAMS,
    prev_grads=grads,
    grad_diff_variance=jnp.float32(jnp.nan),
  )
  assert int(state.total_notfinite) == 1
  assert all(np.all(u == 0) for u in jax.tree.leaves(updates))
  assert float(so.diagnostics(state)['accumulated_variance']) == 0.25


def scale_by_extra(traces=None):
  """updates * scale, with scale a keyword-only extra argument of update; the
  state counts the updates applied. Appends to ``traces`` on every call."""

  def update_fn(updates, state, params=None, *, scale=1.0, **extra_args):
    del params, extra_args  # e.g. prev_grads, for the estimator in a chain
    if traces is not None:
      traces.append(1)
    return jax.tree.map(lambda u: u * scale, updates), state + 1

  return optax.GradientTransformationExtraArgs(
    lambda params: jnp.zeros([], jnp.int32), update_fn
  )


def bits(tree):
  """Each leaf's dtype, shape and raw bytes, for bitwise comparison."""
  return jax.tree.map(
    lambda x: (x.dtype, x.shape, np.asarray(x).tobytes()), tree
  )


@pytest.mark.parametrize('scale', [jnp.nan, jnp.inf])
def test_apply_if_finite_checks_every_float_extra_arg(scale):
  """A NaN or Inf in an extra argument of any name (here scale=) is skipped
  and counted: zero updates, and the inner state (estimator, previous params
  and the custom counter) is left bit for bit as it was."""
  tx = so.apply_if_finite(
    optax.chain(so.spider(0.1, 1.0, 2.0), scale_by_extra()), 1
  )
  update = jax.jit(tx.update)
  grads, prev_grads = gradient_sequence()[1]
  _, state = update(grads, tx.init(PARAMS), PARAMS, scale=jnp.float32(2.0))
  updates, new = update(
    grads, state, PARAMS, prev_grads=prev_grads, scale=jnp.float32(scale)
  )
  assert int(new.total_notfinite) == 1 and not bool(new.last_finite)
  assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates))
  assert bits(new.inner_state) == bits(state.inner_state)
  # A finite scale is applied: the counter moves on.
  _, new = update(
    grads, state, PARAMS, prev_grads=prev_grads, scale=jnp.float32(0.5)
  )
  assert int(new.total_notfinite) == 0 and int(new.inner_state[1]) == 2


def test_apply_if_finite_traces_the_inner_update_once():
  """One trace of the inner update per jitted step, finite or not (no second
  trace to find the output's shape), and none again for the next step."""
  traces = []
  tx = so.apply_if_finite(scale_by_extra(traces), 2)
  update = jax.jit(tx.update)
  grads = jax.tree.map(jnp.ones_like, PARAMS)
  state = tx.init(PARAMS)
  for scale in (1.0, jnp.nan, 3.0):
    updates, state = update(grads, state, PARAMS, scale=jnp.float32(scale))
  assert len(traces) == 1
  assert int(state.total_notfinite) == 1 and int(state.inner_state) == 2
  jax.tree.map(lambda u: np.testing.assert_array_equal(u, 3.0), updates)


@pytest.mark.parametrize(
  'factory,kwargs',
  [
    (so.spider, {'estimator_dtype': None}),
    (so.mars_adamw, {'mu_dtype': None}),
    (so.storm, {'beta': 0.9, 'approx': True, 'mu_dtype': None}),
  ],
)
@pytest.mark.parametrize(
  'dtype', [jnp.float32, 'float32', jnp.dtype('float32')]
)
def test_inject_hyperparams_takes_a_state_dtype_as_written(
  factory, kwargs, dtype
):
  """optax.inject_hyperparams calls jnp.float32 as if it were a schedule."""
  params = {'w': jnp.ones(3, jnp.bfloat16)}
  kwargs = {k: dtype if v is None else v for k, v in kwargs.items()}
  tx = optax.inject_hyperparams(factory)(learning_rate=0.1, **kwargs)
  state = tx.init(params)
  kept = [x for x in jax.tree.leaves(state.inner_state) if jnp.shape(x) == (3,)]
  assert any(x.dtype == jnp.float32 for x in kept), kept
  updates, _ = jax.jit(tx.update)(params, state, params)
  assert updates['w'].dtype in (jnp.float32, jnp.bfloat16)


def test_a_bad_state_dtype_says_what_it_needs():
  with pytest.raises(
    TypeError, match='estimator_dtype must be a floating-point dtype'
  ):
    so.spider(0.1, estimator_dtype='float33')
