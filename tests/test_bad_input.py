"""Bad input never passes silently: the same verdict eager and under jit.

Hypothesis draws bad inputs of each class the README's "What happens with
bad input" table lists, and each test asserts the documented verdict: an
error naming the argument or leaf (a ``ValueError`` at once when eager; the
same message from a runtime error when the value is traced under
``jax.jit``), or a counted skip (``so.apply_if_finite``).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import spider_optax as so
from verdicts import verdict

PARAMS = {'w': jnp.array([1.0, -2.0, 3.0])}
GRADS = {'w': jnp.array([0.5, 0.25, -1.0])}


# --------------------------------------------------------------------------
# Hyperparameters: eager at construction, traced under inject_hyperparams
# --------------------------------------------------------------------------

# (factory, valid keyword arguments, the hyperparameter, its valid range).
POSITIVE = ('positive', lambda x: x > 0)
DECAY = ('a number in [0, 1)', lambda x: 0 <= x < 1)
NONNEGATIVE = ('a finite number >= 0', lambda x: 0 <= x < math.inf)
CASES = [
  (so.spider, dict(learning_rate=0.1, c0=1.0, c1=2.0), 'c0', POSITIVE),
  (so.spider, dict(learning_rate=0.1, c0=1.0, c1=2.0), 'c1', POSITIVE),
  (so.spider, dict(learning_rate=0.1, c0=1.0), 'learning_rate', NONNEGATIVE),
  (so.mars_adamw, dict(learning_rate=0.1), 'learning_rate', NONNEGATIVE),
  (so.mars_adamw, dict(learning_rate=0.1), 'b1', DECAY),
  (so.mars_adamw, dict(learning_rate=0.1), 'b2', DECAY),
  (so.mars_adamw, dict(learning_rate=0.1), 'gamma', NONNEGATIVE),
  (so.mars_adamw, dict(learning_rate=0.1), 'eps', NONNEGATIVE),
  (so.mars_adamw, dict(learning_rate=0.1), 'weight_decay', NONNEGATIVE),
  (so.mars_adamw, dict(learning_rate=0.1), 'max_norm', POSITIVE),
  (so.storm, dict(learning_rate=0.1, beta=0.9, approx=True), 'beta', DECAY),
  (so.recursive_correction, dict(beta=0.9, approx=True), 'gamma', NONNEGATIVE),
  (so.relaxed_clip, dict(c0=1.0), 'c0', POSITIVE),
]
IDS = [f'{f.__name__}-{name}' for f, _, name, _ in CASES]

bad_numbers = st.one_of(
  st.floats(allow_nan=True, allow_infinity=True),
  st.sampled_from([-1e-30, -1.0, 1.0, 1.5, math.inf, -math.inf, math.nan]),
)


@pytest.mark.parametrize('factory, kwargs, name, valid', CASES, ids=IDS)
@settings(max_examples=5, deadline=None)
@given(value=bad_numbers)
def test_a_hyperparameter_gets_one_verdict_eager_and_jitted(
  factory, kwargs, name, valid, value
):
  expected, in_range = valid
  message = f'{name} must be {expected}'
  with np.errstate(over='ignore'):
    as_float32 = float(np.float32(value))  # the value the step will use
  if abs(as_float32) < np.finfo(np.float32).tiny:
    as_float32 = 0.0  # and XLA flushes float32 denormals to zero
  ok = in_range(value) and in_range(as_float32)
  # Eager: the constructor decides, on the value and its float32 rounding.
  eager = verdict(factory, **{**kwargs, name: value})
  assert (eager is None) == ok, eager
  if not ok:
    assert message in eager
  # Jitted: injected, the same value arrives as a tracer in the update.
  tx = optax.inject_hyperparams(factory)(**kwargs)
  state = tx.init(PARAMS)
  with np.errstate(over='ignore'):
    state.hyperparams[name] = jnp.asarray(np.float32(value))
  jitted = verdict(jax.jit(tx.update), GRADS, state, PARAMS)
  if not in_range(as_float32):
    assert jitted is not None and message in jitted, jitted
  else:
    assert jitted is None, jitted


@settings(max_examples=10, deadline=None)
@given(slope=st.floats(0.2, 10.0), start=st.floats(0.0, 1.0))
def test_a_schedule_that_turns_negative_stops_at_that_step(slope, start):
  """Eager: ValueError on the update whose learning rate is negative; jitted:
  the same message from the runtime error, at the same step."""
  schedule = lambda count: start - slope * count
  first_bad = next(k for k in range(1000) if start - slope * k < 0)
  for jit in (False, True):
    tx = so.spider(schedule, c0=1.0)
    update = jax.jit(tx.update) if jit else tx.update
    state = tx.init(PARAMS)
    for k in range(first_bad + 1):
      error = verdict(update, GRADS, state, PARAMS)
      if k < first_bad:
        assert error is None, (k, error)
        _, state = update(GRADS, state, PARAMS)
      else:
        assert error is not None
        assert 'learning_rate must be a finite number >= 0' in error


@pytest.mark.parametrize('budget', [-1.0, 0.0, math.nan])
def test_anchor_due_refuses_a_bad_budget_eager_and_jitted(budget):
  tx = so.spider(0.1, c0=1.0, diagnostics=True)
  state = tx.init(PARAMS)
  message = 'error_budget must be positive'
  assert message in verdict(so.anchor_due, state, budget, 8)
  assert message in verdict(jax.jit(so.anchor_due), state, budget, 8)


# --------------------------------------------------------------------------
# Types
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
  'build, name',
  [
    (lambda: so.spider(0.1, c0='1.0'), 'c0'),
    (lambda: so.spider(0.1, c0=lambda n: 1.0), 'c0'),
    (lambda: so.spider('0.1'), 'learning_rate'),
    (lambda: so.mars_adamw(0.1, b1=True), 'b1'),
    (lambda: so.mars_adamw(0.1, eps=1j), 'eps'),
    (lambda: so.relaxed_clip(c1=jnp.ones(2)), 'c1'),
  ],
)
def test_what_is_not_a_number_is_refused_at_construction(build, name):
  with pytest.raises(TypeError, match=f'^{name} must be'):
    build()


@pytest.mark.parametrize(
  'value', [1, np.int32(2), np.int64(3), np.float32(0.5), jnp.float32(0.5)]
)
def test_every_python_and_numpy_number_is_accepted(value):
  so.spider(value, c0=value, c1=value)
  so.mars_adamw(value, gamma=value, max_norm=value)
  so.apply_if_finite(so.spider(0.1), max_consecutive_errors=np.int64(3))


@pytest.mark.parametrize('dtype', [jnp.int32, jnp.uint8, jnp.bool_])
@pytest.mark.parametrize(
  'tx', [so.spider(0.1), so.mars_adamw(0.1), so.storm(0.1, 0.9)]
)
def test_integer_params_are_refused_with_the_leaf(tx, dtype):
  params = {'a': jnp.ones(2), 'b': {'k': jnp.ones(3, dtype)}}
  with pytest.raises(TypeError, match=r"params\['b'\]\['k'\] of dtype"):
    tx.init(params)


# --------------------------------------------------------------------------
# Numeric edges
# --------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
  exponent=st.floats(-45.0, 37.0),
  values=st.lists(st.floats(-1.0, 1.0), min_size=1, max_size=6),
  complex_leaf=st.booleans(),
)
def test_global_norm_does_not_overflow(exponent, values, complex_leaf):
  """Against the float64 norm, from float32's smallest normal numbers
  (squares underflow) to near its largest (squares overflow). XLA flushes
  float32 denormals to zero on CPU: the reference does too."""
  tiny = np.finfo(np.float32).tiny
  flush = lambda a: np.where(np.abs(a) < tiny, 0.0, a)
  x = np.array(values) * 10.0**exponent
  tree = {'a': jnp.asarray(x, jnp.float32)}
  want = np.linalg.norm(flush(np.asarray(tree['a'], np.float64)))
  if complex_leaf:
    tree['z'] = jnp.asarray(x * (0.6 + 0.8j), jnp.complex64)
    z = np.asarray(tree['z'], np.complex128)
    want = math.hypot(want, np.linalg.norm(flush(z.real) + 1j * flush(z.imag)))
  for norm in (so.global_norm, jax.jit(so.global_norm)):
    got = float(norm(tree))
    assert math.isfinite(got)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_a_huge_gradient_is_clipped_not_zeroed():
  grads = {'w': jnp.array([3e20, -4e20, 0.0])}
  for tx in (so.relaxed_clip(c0=1.0), so.spider(1.0, c0=1.0)):
    updates, _ = jax.jit(tx.update)(grads, tx.init(PARAMS), PARAMS)
    np.testing.assert_allclose(float(so.global_norm(updates)), 1.0, rtol=1e-5)


def test_complex_params_step_along_the_gradient():
  """|z|^2 = z conj(z): the clip scales a complex gradient, never rotates it."""
  params = {'z': jnp.array([1 + 1j, 2 - 1j], jnp.complex64)}
  grads = {'z': jnp.array([3 + 4j, 0j], jnp.complex64)}
  tx = so.spider(1.0, c0=1.0)
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(
    np.asarray(updates['z']), -np.asarray(grads['z']) / 5, rtol=1e-6
  )


def test_apply_if_finite_counts_an_overflow_of_the_inner_update():
  """A float16 estimator overflows to inf on finite gradients: the step is
  skipped and counted, and the inner state stays as it was."""
  params = {'w': jnp.ones(2, jnp.float16)}
  tx = so.apply_if_finite(
    so.spider(1.0, estimator_dtype=jnp.float16), max_consecutive_errors=5
  )
  state = tx.init(params)
  grads = {'w': jnp.array([6e4, 6e4], jnp.float16)}
  _, state = tx.update(grads, state, params)
  huge = {'w': jnp.array([6e4, -6e4], jnp.float16)}
  updates, state = jax.jit(tx.update)(
    grads, state, params, prev_grads=huge
  )  # v = 6e4 + 6e4 - (-6e4) overflows float16
  assert not bool(state.last_finite)
  assert int(state.total_notfinite) == 1
  np.testing.assert_array_equal(updates['w'], 0)


# --------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------

extreme = st.floats(
  min_value=5e-324, max_value=1.7e308, allow_nan=False, allow_infinity=False
)


@settings(max_examples=60, deadline=None)
@given(
  L0=extreme,
  L1=st.one_of(st.just(0.0), extreme),
  epsilon=extreme,
  sigma=st.one_of(st.just(0.0), extreme),
  initial_gap=extreme,
)
def test_presets_are_finite_or_refused_with_a_reason(
  L0, L1, epsilon, sigma, initial_gap
):
  for preset in (
    lambda: so.theory.online(L0, L1, epsilon, sigma, initial_gap=initial_gap),
    lambda: so.theory.finite_sum(100, L0, L1, epsilon, initial_gap=initial_gap),
  ):
    try:
      p = preset()
    except ValueError as error:  # never ZeroDivisionError or OverflowError
      names = ('L0', 'L1', 'epsilon', 'sigma', 'initial_gap')
      assert any(name in str(error) for name in names), error
      continue
    assert 0 < p.learning_rate < math.inf
    assert 0 < p.c0 < math.inf
    assert p.c1 is None or 0 < p.c1 < math.inf
    so.spider(p.learning_rate, p.c0, p.c1)  # the settings are accepted


# --------------------------------------------------------------------------
# The traced checks under jax.grad and jax.vmap
# --------------------------------------------------------------------------


def _step_sum(lr):
  """sum(x + u) after one so.spider step from x = 1 with g = 1 (c0 = 1)."""
  params = {'w': jnp.ones(3)}
  tx = so.spider(lr, c0=1.0)
  updates, _ = tx.update(params, tx.init(params), params)
  return jnp.sum(optax.apply_updates(params, updates)['w'])


def test_meta_gradients_flow_through_a_checked_update():
  """d/d lr of sum(x - lr g/|g|) is -sum(g)/|g| = -sqrt(3)."""
  for grad in (jax.grad(_step_sum), jax.jit(jax.grad(_step_sum))):
    np.testing.assert_allclose(float(grad(0.1)), -math.sqrt(3), rtol=1e-6)


def test_a_vmapped_grid_checks_every_lane():
  grid = jax.jit(jax.vmap(_step_sum))
  np.testing.assert_allclose(
    grid(jnp.array([0.0, 0.5])), [3.0, 3.0 - 0.5 * math.sqrt(3)], rtol=1e-6
  )
  error = verdict(grid, jnp.array([0.1, -0.1]))
  assert error is not None and 'learning_rate must be' in error


def test_a_checked_traced_value_keeps_its_dtype_and_weak_type():
  """Checking a weakly typed learning rate must not turn bfloat16 updates
  into float32 ones (the check's zero is added to the value)."""
  from spider_optax import _checks

  @jax.jit
  def scaled(lr, count, flag):
    lr = _checks.check_nonnegative('learning_rate', lr)
    count = _checks.check_positive('count', count)
    flag = _checks.error_if(flag, 'flag', result=flag)
    return jnp.ones(2, jnp.bfloat16) * lr, count, flag

  out = jax.make_jaxpr(scaled)(0.5, 3, False).out_avals
  assert [(a.dtype, a.weak_type) for a in out] == [
    (jnp.bfloat16, False),
    (jnp.int32, True),
    (jnp.bool_, False),
  ]
  assert verdict(scaled, -0.5, 3, False) is not None
