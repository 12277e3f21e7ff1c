"""so.theory presets: their formulas, their scalings, their errors, and one
empirical check on a finite sum whose (L0, L1) are known in closed form."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import loops
import spider_optax as so

REL = 1e-12  # float rounding of the presets' arithmetic


def log_uniform(lo, hi):
  return st.floats(math.log10(lo), math.log10(hi)).map(lambda e: 10.0**e)


def simulated_oracle_calls(steps, q, s1, s2):
  """Walks the schedule step by step: k % q == 0 is an anchor (S1 samples),
  any other step a recursive one (one minibatch of S2 at two points)."""
  k = np.arange(steps, dtype=np.int64)
  return int(np.sum(np.where(k % q == 0, s1, 2 * s2), dtype=np.int64))


def assert_ceil(value, x):
  """value == ceil(x) up to the float rounding of x."""
  assert isinstance(value, int)
  assert value >= x * (1 - REL), (value, x)
  assert value - 1 < x * (1 + REL), (value, x)


def assert_common(p, L0, L1, epsilon, initial_gap):
  """What both presets share: the docstring's lr, c0, c1 and K."""
  assert p.learning_rate == pytest.approx(1 / (4 * L0), rel=REL)
  assert p.learning_rate * p.c0 == pytest.approx(epsilon / (4 * L0), rel=REL)
  if L1 == 0:
    assert p.c1 is None
  else:
    assert p.learning_rate * p.c1 == pytest.approx(epsilon / (4 * L1), rel=REL)
    # The step length lr min(|v|, c0, c1/|v|) <= lr c0 = eps/(4 L0) stays in
    # the ball |x - y| <= 1/L1 where the smoothness assumptions hold.
    assert p.learning_rate * p.c0 <= 1 / L1 * (1 + REL)
  assert_ceil(p.steps, 8 * initial_gap * (L0 / epsilon**2 + L1 / epsilon))
  assert p.oracle_calls == simulated_oracle_calls(
    p.steps, p.anchor_period, p.anchor_batch_size, p.minibatch_size
  )


@st.composite
def smoothness(draw):
  """(L0, L1, epsilon, initial_gap) with epsilon <= L0/L1 and a modest K."""
  L0 = draw(log_uniform(0.1, 10.0))
  L1 = draw(st.one_of(st.just(0.0), log_uniform(0.01, 10.0)))
  top = min(10.0, L0 / L1) if L1 > 0 else 10.0
  epsilon = top * draw(st.floats(0.05, 1.0))
  initial_gap = draw(log_uniform(0.01, 1.0))
  return L0, L1, epsilon, initial_gap


# --------------------------------------------------------------------------
# The formulas of the module docstring
# --------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(smoothness(), st.one_of(st.just(0.0), log_uniform(1e-2, 3.0)))
def test_online_preset_follows_its_formulas(smooth, sigma):
  L0, L1, epsilon, initial_gap = smooth
  p = so.theory.online(L0, L1, epsilon, sigma, initial_gap=initial_gap)
  assert_common(p, L0, L1, epsilon, initial_gap)
  # q = ceil(sigma/eps), S1 = ceil(8 sigma^2/eps^2), S2 = 2q, at least 1 each.
  if sigma == 0:
    assert p.anchor_period == 1 and p.anchor_batch_size == 1
  else:
    assert_ceil(p.anchor_period, sigma / epsilon)
    assert_ceil(p.anchor_batch_size, 8 * sigma**2 / epsilon**2)
  assert p.minibatch_size == 2 * p.anchor_period
  # The anchor's error sigma^2/S1 and the epoch's drift q (eps/2)^2 / S2 add
  # up to at most eps^2/4 (step 2 of the derivation).
  drift = p.anchor_period * (epsilon / 2) ** 2 / p.minibatch_size
  assert sigma**2 / p.anchor_batch_size + drift <= epsilon**2 / 4 * (1 + REL)


@settings(max_examples=60, deadline=None)
@given(smoothness(), st.integers(1, 10**6))
def test_finite_sum_preset_follows_its_formulas(smooth, n):
  L0, L1, epsilon, initial_gap = smooth
  p = so.theory.finite_sum(n, L0, L1, epsilon, initial_gap=initial_gap)
  assert_common(p, L0, L1, epsilon, initial_gap)
  assert p.anchor_batch_size == n  # the full gradient
  q = p.anchor_period
  assert q == p.minibatch_size
  assert q * q >= n > (q - 1) * (q - 1)  # q = ceil(sqrt(n)), exactly
  drift = q * (epsilon / 2) ** 2 / p.minibatch_size
  assert drift <= epsilon**2 / 4 * (1 + REL)


@settings(max_examples=40, deadline=None)
@given(
  st.integers(0, 3000),
  st.integers(1, 50),
  st.integers(1, 10**4),
  st.integers(1, 10**3),
)
def test_oracle_calls_counts_the_schedule(steps, q, s1, s2):
  assert so.theory.oracle_calls(steps, q, s1, s2) == simulated_oracle_calls(
    steps, q, s1, s2
  )


def test_l1_zero_drops_c1():
  for p in (
    so.theory.online(2.0, 0.0, 5.0, 1.0),
    so.theory.finite_sum(100, 2.0, 0.0, 5.0),
  ):
    assert p.c1 is None
    assert p.learning_rate * p.c0 == pytest.approx(5.0 / (4 * 2.0))


# --------------------------------------------------------------------------
# Scalings the presets predict
# --------------------------------------------------------------------------


def log_log_slope(x, y):
  return np.polyfit(
    np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1
  )[0]


def test_online_oracle_calls_grow_like_eps_to_the_minus_3():
  eps = np.geomspace(1e-2, 1e-4, 9)
  calls = [so.theory.online(1.0, 1.0, e, 1.0).oracle_calls for e in eps]
  assert np.all(np.diff(calls) > 0)
  assert 2.8 <= log_log_slope(1 / eps, calls) <= 3.2


def test_online_oracle_calls_grow_linearly_in_sigma():
  sigmas = np.geomspace(1.0, 1e3, 7)
  calls = [so.theory.online(1.0, 1.0, 1e-2, s).oracle_calls for s in sigmas]
  assert 0.95 <= log_log_slope(sigmas, calls) <= 1.05


def test_finite_sum_oracle_calls_grow_like_sqrt_n():
  # eps = 1e-3: K = 8 (1/eps^2 + 1/eps) ~ 8e6 steps, so 3 K sqrt(n) >> n up
  # to n = 2^24 and the sqrt(n) term dominates.
  ns = [2**k for k in range(14, 25)]
  calls = [so.theory.finite_sum(n, 1.0, 1.0, 1e-3).oracle_calls for n in ns]
  assert 0.45 <= log_log_slope(ns, calls) <= 0.55
  # ... against O(n eps^-2) for full-gradient descent: n K.
  K = so.theory.finite_sum(ns[-1], 1.0, 1.0, 1e-3).steps
  assert calls[-1] < ns[-1] * K / 100


def test_finite_sum_oracle_calls_are_n_when_few_steps_are_needed():
  # A tiny initial gap: K = 1, one full gradient, O(n).
  ns = [2**k for k in range(10, 21, 2)]
  presets = [
    so.theory.finite_sum(n, 1.0, 1.0, 0.5, initial_gap=1e-3) for n in ns
  ]
  assert all(p.steps == 1 for p in presets)
  assert [p.oracle_calls for p in presets] == ns


def test_finite_sum_oracle_calls_grow_like_eps_to_the_minus_2():
  eps = np.geomspace(1e-2, 1e-4, 9)
  calls = [so.theory.finite_sum(4096, 1.0, 1.0, e).oracle_calls for e in eps]
  assert 1.9 <= log_log_slope(1 / eps, calls) <= 2.1


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------

GOOD = dict(L0=1.0, L1=1.0, epsilon=0.1)
NAN = float('nan')


def online(**kwargs):
  return so.theory.online(**{**GOOD, 'sigma': 1.0, **kwargs})


def finite_sum(**kwargs):
  return so.theory.finite_sum(**{**GOOD, 'n': 100, **kwargs})


@pytest.mark.parametrize('preset', [online, finite_sum])
@pytest.mark.parametrize(
  'kwargs, fragment',
  [
    (dict(L0=1.0, L1=2.0, epsilon=0.6), 'exceeds L0/L1'),
    (dict(L0=0.0), 'L0 must be positive'),
    (dict(L0=-1.0), 'L0 must be positive'),
    (dict(L0=NAN), 'L0 must be positive'),
    (dict(epsilon=0.0), 'epsilon must be positive'),
    (dict(epsilon=-0.1), 'epsilon must be positive'),
    (dict(epsilon=NAN), 'epsilon must be positive'),
    (dict(initial_gap=0.0), 'initial_gap must be positive'),
    (dict(initial_gap=-2.0), 'initial_gap must be positive'),
    (dict(L1=-0.5), 'L1 must be >= 0'),
    (dict(L1=NAN), 'L1 must be >= 0'),
  ],
)
def test_bad_smoothness_arguments_raise(preset, kwargs, fragment):
  with pytest.raises(ValueError, match=fragment):
    preset(**kwargs)


@pytest.mark.parametrize('sigma', [-1.0, -1e-12, NAN])
def test_bad_sigma_raises(sigma):
  with pytest.raises(ValueError, match='sigma must be >= 0'):
    online(sigma=sigma)


@pytest.mark.parametrize('n', [0, -5, 100.0, 2.5, '100', None, True])
def test_bad_n_raises(n):
  with pytest.raises(ValueError, match='n must be a positive int'):
    finite_sum(n=n)


INF = float('inf')


@pytest.mark.parametrize(
  'kwargs', [dict(L0=INF), dict(initial_gap=INF), dict(sigma=INF), dict(L1=INF)]
)
def test_infinite_arguments_raise_value_error(kwargs):
  with pytest.raises(ValueError, match=next(iter(kwargs))):
    online(**kwargs)


def test_numpy_integer_n_is_accepted():
  p = finite_sum(n=np.int64(100))
  assert p.anchor_batch_size == 100 and type(p.anchor_batch_size) is int


def test_epsilon_at_the_boundary_is_allowed():
  p = online(L0=1.0, L1=2.0, epsilon=0.5)
  assert p.learning_rate * p.c0 == pytest.approx(1 / 2 / 4)


# --------------------------------------------------------------------------
# Empirical: a finite sum with known (L0, L1) reaches eps within the budget
# --------------------------------------------------------------------------
#
# f_i(x) = sum_j 2 cosh(x_j) (1 + s_ij),  s_ij in [-1/2, 1/2],  mean_i s_ij = 0
# exactly (antithetic pairs s_{i + n/2} = -s_i), so
#   f(x) = (1/n) sum_i f_i(x) = sum_j 2 cosh(x_j),   f* = f(0) = 2d,
#   grad f(x) = 2 sinh(x)  (elementwise).
# Since cosh(t) = sqrt(1 + sinh(t)^2) <= 1 + |sinh(t)|, each component's
# Hessian, diag(2 cosh(x_j) (1 + s_ij)), has norm
#   max_j 2 cosh(x_j) (1 + s_ij) <= 3/2 max_j (2 + 2 |sinh(x_j)|)
#                                <= 3 + 1.5 ||grad f(x)||,
# i.e. every component, hence their mean square, is (L0, L1) = (3, 1.5)
# smooth with respect to the full gradient (Hessian form; the module doc
# absorbs Zhang et al.'s constants for the |x - y| <= 1/L1 form), and f itself
# (Hessian norm <= 2 + ||grad f||) is too. epsilon = 0.5 <= L0/L1 = 2.

N, D, EPSILON, L0, L1 = 256, 10, 0.5, 3.0, 1.5


def component_loss(x, s):
  """Mean of f_i over the rows s_i of s (a minibatch, or all n of them)."""
  return jnp.mean(jnp.sum(2 * jnp.cosh(x) * (1 + s), axis=-1))


def full_gradient_norm(x):
  return jnp.linalg.norm(2 * jnp.sinh(x))


def make_run(p, s, max_steps):
  """so.spider on the finite sum, until ||grad f(x_k)|| <= eps or max_steps.

  Returns (k, oracle calls spent on steps 0..k-1, ||grad f(x_k)||) at the
  first iterate x_k that is eps-stationary (or at max_steps).
  """
  tx = so.spider(p.learning_rate, p.c0, p.c1)
  q, batch = p.anchor_period, p.minibatch_size
  s = jnp.asarray(s)
  anchor = loops.anchor_step(tx, component_loss)
  recursive = loops.recursive_step(tx, component_loss)

  def step(carry):
    x, state, key, k, calls = carry
    key, sub = jax.random.split(key)
    # The full gradient (n oracle calls), or one with-replacement minibatch
    # at both points (2 S2).
    rows = s[jax.random.randint(sub, (batch,), 0, N)]
    x, state, _ = jax.lax.cond(
      k % q == 0, lambda: anchor(x, state, s), lambda: recursive(x, state, rows)
    )
    cost = jnp.where(k % q == 0, N, 2 * batch)
    return x, state, key, k + 1, calls + cost

  def keep_going(carry):
    x, _, _, k, _ = carry
    return (full_gradient_norm(x) > EPSILON) & (k < max_steps)

  @jax.jit
  def run(x0, key):
    carry = (
      x0,
      tx.init(x0),
      key,
      jnp.zeros([], jnp.int32),
      jnp.zeros([], jnp.int32),
    )
    x, _, _, k, calls = jax.lax.while_loop(keep_going, step, carry)
    return k, calls, full_gradient_norm(x)

  return run


def empirical_oracle_calls(x0_value, seeds=(0, 1, 2)):
  rng = np.random.default_rng(0)
  half = rng.uniform(-0.5, 0.5, size=(N // 2, D))
  s = np.concatenate([half, -half]).astype(np.float32)
  assert np.all(np.abs(s) <= 0.5) and np.all(s[: N // 2] + s[N // 2 :] == 0)
  x0 = np.full(D, x0_value, np.float32)
  initial_gap = float(np.sum(2 * np.cosh(np.float64(x0))) - 2 * D)
  p = so.theory.finite_sum(N, L0, L1, EPSILON, initial_gap=initial_gap)
  run = make_run(p, s, max_steps=p.steps)
  results = [
    tuple(map(float, run(jnp.asarray(x0), jax.random.key(seed))))
    for seed in seeds
  ]
  return p, results


@pytest.mark.parametrize('x0_value', [2.0, 3.0])
def test_finite_sum_reaches_epsilon_within_predicted_oracle_calls(x0_value):
  p, results = empirical_oracle_calls(x0_value)
  assert p.anchor_batch_size == N and p.anchor_period == p.minibatch_size == 16
  for k, calls, grad_norm in results:
    assert grad_norm <= EPSILON, (k, calls, grad_norm, p)
    assert k <= p.steps
    assert calls <= p.oracle_calls, (calls, p.oracle_calls)
    # The count is the SPEC's: ceil(k/q) anchors of n, the rest 2 S2 each.
    assert calls == so.theory.oracle_calls(
      int(k), p.anchor_period, p.anchor_batch_size, p.minibatch_size
    )
