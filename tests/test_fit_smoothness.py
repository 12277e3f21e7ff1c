"""so.theory.fit_smoothness: recovers (L0, L1) of functions where they are
known in closed form, matches a brute-force float64 NumPy reference of its
definition, ignores NaN, and runs under jit.

Traces are built as SPIDER records them: a point x, a previous point x' a small
step away, g = |grad f(x)| and L_hat = |grad f(x) - grad f(x')| / |x - x'|,
all in float64 NumPy.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spider_optax as so

fit_smoothness = so.theory.fit_smoothness
T = 256  # samples per trace: one shape, so one compilation for most tests
STEP = 1e-3  # |x - x'| <= STEP


def trace(grad, x, rng, step=STEP):
  """(|grad(x)|, L_hat) with x' = x + d, |d| in [step/2, step] along a random
  direction (x of shape (T,) is 1-D, (T, d) is d-dimensional)."""
  x = np.asarray(x, np.float64)
  direction = rng.normal(size=x.shape)
  if x.ndim == 1:
    direction = np.sign(direction)
  else:
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
  length = step * rng.uniform(0.5, 1.0, size=x.shape[:1])
  d = direction * (length if x.ndim == 1 else length[:, None])
  g0, g1 = grad(x), grad(x + d)
  if x.ndim == 1:
    return np.abs(g0), np.abs(g1 - g0) / length
  return (
    np.linalg.norm(g0, axis=-1),
    np.linalg.norm(g1 - g0, axis=-1) / length,
  )


def line_errors(fit, L0, L1, mean_g):
  """Errors of the fitted L0 and L1 * mean_g, relative to the true bound at
  the mean gradient norm: a uniform scale also where L0 or L1 is 0."""
  bound = L0 + L1 * mean_g
  return (
    abs(float(fit.L0) - L0) / bound,
    abs(float(fit.L1) - L1) * mean_g / bound,
  )


# --------------------------------------------------------------------------
# Functions with known (L0, L1)
# --------------------------------------------------------------------------
#
# L_hat is the mean of f'' over [x, x'] (1-D; the mean value theorem), i.e.
# f''(xi) for some xi within STEP of x. For the exponential-type cases below
# f''(xi)/f''(x) = exp(c (xi - x)) lies within exp(+-c STEP), c <= 2: the
# samples lie within 0.2% of the exact curve (h, g), whence RTOL_FD.
RTOL_FD = 3e-3


def shifted_exp_case(L0, L1):
  # f(x) = exp(L1 x)/L1 - (L0/L1) x:  f' = exp(L1 x) - L0/L1,
  # f'' = L1 exp(L1 x) = L0 + L1 f'. Where f' >= 0 the samples lie ON the
  # line h = L0 + L1 g; where f' < 0, h = L0 - L1 |f'| lies below it. Every
  # valid pair has L0' >= L0 (at f' = 0, h = L0) and L1' >= L1 (h/g -> L1
  # as g -> inf): (L0, L1) is the unique tightest pair.
  return (
    lambda x: np.exp(L1 * x) - L0 / L1,
    (-4.0 / L1, 10.0 / L1),
    (L0, L1),
    RTOL_FD,
  )


CASES = {
  # f(x) = exp(2x)/2: f'' = 2 f', samples on h = 2g: (0, 2). L1 < 2
  # fails as g -> inf, and with L1 = 2 no L0 > 0 is needed.
  'exp': (lambda x: np.exp(2.0 * x), (-3.0, 3.0), (0.0, 2.0), RTOL_FD),
  'shifted_exp': shifted_exp_case(2.0, 0.5),
  'shifted_exp_steep': shifted_exp_case(0.3, 1.5),
  # f(x) = 3 log cosh(x): f' = 3 tanh x, f'' = 3 (1 - tanh^2) = 3 - g^2/3:
  # (3, 0), reached only at x = 0. Trimming drops the top 10% of h in the
  # lowest-g bin, i.e. the 4 samples nearest 0, so L0 is f'' at the 5th
  # nearest, 3 (1 - tanh^2 x) >= 3 (1 - x^2): within 3% while |x| < 0.17,
  # which 256 uniform samples on [-3, 3] (14.5 expected there) miss with
  # probability P(Poisson(14.5) <= 4) < 1e-3.
  'log_cosh': (lambda x: 3.0 * np.tanh(x), (-3.0, 3.0), (3.0, 0.0), 3e-2),
}


def case_trace(name, seed):
  """A trace of CASES[name] at T uniform points, its (L0, L1) and tolerance,
  and the generator, to draw more from."""
  grad, (lo, hi), (L0, L1), rtol = CASES[name]
  rng = np.random.default_rng(seed)
  g, h = trace(grad, rng.uniform(lo, hi, T), rng)
  return g, h, L0, L1, rtol, rng


@pytest.mark.parametrize('name', sorted(CASES))
@pytest.mark.parametrize('seed', [0, 1])
def test_recovers_known_constants(name, seed):
  g, h, L0, L1, rtol, _ = case_trace(name, seed)
  fit = fit_smoothness(g, h)
  assert int(fit.num_samples) == T
  assert max(line_errors(fit, L0, L1, g.mean())) <= rtol, (fit, L0, L1)


@pytest.mark.parametrize('L', [0.5, 3.0])
def test_isotropic_quadratic_gives_flat_line(L):
  # f(x) = L/2 |x|^2 in 5-D: grad = L x, L_hat = L along every direction,
  # while |grad| spans four decades: (L, 0) up to float32 rounding.
  rng = np.random.default_rng(0)
  radius = 10.0 ** rng.uniform(-2, 2, T)
  x = rng.normal(size=(T, 5))
  x *= (radius / np.linalg.norm(x, axis=-1))[:, None]
  g, h = trace(lambda x: L * x, x, rng)
  fit = fit_smoothness(g, h)
  np.testing.assert_allclose(float(fit.L0), L, rtol=1e-5)
  assert float(fit.L1) == 0.0


def test_cosh_fit_is_the_chord_of_a_convex_envelope():
  # f(x) = cosh(x): f' = sinh, f'' = cosh = sqrt(1 + g^2) <= 1 + g, tight
  # pair (1, 1) (equality at g = 0 and as g -> inf). The samples lie on the
  # convex curve sqrt(1 + g^2) (within 0.1%), so the lowest line above them
  # is the chord between the extreme kept samples g_a < g_b: its slope is in
  # [(sqrt(1 + g_b^2) - sqrt(1 + g_a^2))/g_b, 1] >= 1 - 1.01/g_b, and its
  # intercept in [1 - g_a, 1/sqrt(1 + g_a^2)]. With g_a < 0.05 and
  # g_b > 15 both lie in [0.93, 1] (+0.2% for the finite differences).
  rng = np.random.default_rng(0)
  g, h = trace(np.sinh, rng.uniform(-4.0, 4.0, T), rng)
  assert g.min() < 0.05 and np.sort(g)[-T // 40] > 15  # kept g_b > 15
  fit = fit_smoothness(g, h)
  assert 0.93 <= float(fit.L0) <= 1.002, fit
  assert 0.93 <= float(fit.L1) <= 1.002, fit


def test_quartic_fit_is_the_tangent_at_the_mean_gradient_norm():
  # f(x) = x^4/4: f' = x^3, f'' = 3 x^2 = 3 g^(2/3), concave in g: every
  # tangent line is a valid (L0, L1) and none is tightest. The fit, the
  # lowest line at the mean m, is the tangent there:
  # L1 = 2 m^(-1/3), L0 = 3 m^(2/3) - m L1 = m^(2/3); up to 5% because the
  # line goes through the two samples straddling m, not through m itself.
  for seed in range(2):
    rng = np.random.default_rng(seed)
    g, h = trace(lambda x: x**3, rng.uniform(-3.0, 3.0, T), rng)
    m = g.mean()
    fit = fit_smoothness(g, h)
    np.testing.assert_allclose(float(fit.L0), m ** (2 / 3), rtol=0.05)
    np.testing.assert_allclose(float(fit.L1), 2 * m ** (-1 / 3), rtol=0.05)


def dirty(g, h, rng, outliers=5):
  """Outliers (L_hat x 10-100, e.g. a pair across a kink), NaN L_hat on one
  step in ten (anchor steps), and non-finite or negative grad norms."""
  g, h = g.copy(), h.copy()
  bad = rng.choice(T, outliers, replace=False)
  h[bad] *= rng.uniform(10.0, 100.0, outliers)
  h[::10] = np.nan
  g[rng.choice(T, 3, replace=False)] = np.inf
  g[rng.choice(T, 2, replace=False)] = np.nan
  h[rng.choice(T, 2, replace=False)] = -np.inf
  return g, h, bad


def outliers_per_bin(g, h, bad, num_bins=8):
  valid = np.isfinite(g) & np.isfinite(h)
  order = np.flatnonzero(valid)[np.argsort(g[valid], kind='stable')]
  return [np.isin(b, bad).sum() for b in np.array_split(order, num_bins)]


@pytest.mark.parametrize('name', sorted(CASES))
def test_outliers_and_nans_do_not_move_the_fit(name):
  g, h, L0, L1, rtol, rng = case_trace(name, 3)
  g, h, bad = dirty(g, h, rng)
  # quantile 0.9 trims the top 3 of each bin's ~28 samples (those above
  # position 0.9 * 27 = 24.3): enough for these outliers.
  assert max(outliers_per_bin(g, h, bad)) <= 3
  valid = np.isfinite(g) & np.isfinite(h) & (h >= 0)
  fit = fit_smoothness(g, h)
  assert int(fit.num_samples) == valid.sum()
  assert max(line_errors(fit, L0, L1, g[valid].mean())) <= rtol, fit
  # Without trimming the outliers set the envelope: many times too high.
  untrimmed = fit_smoothness(g, h, quantile=1.0)
  bound = lambda f: float(f.L0) + float(f.L1) * g[valid].mean()
  assert bound(untrimmed) > 3 * bound(fit)


@pytest.mark.parametrize('name', sorted(CASES))
def test_noisy_measurements_give_the_noise_envelope(name):
  # L_hat x U(0.8, 1): e.g. curvature along the step below the Hessian norm.
  # The true line (x 1.003 for the finite differences) is still above every
  # sample, so the lowest one is at most that at the mean m; samples reach
  # 0.8-1.0 of the line in every bin, so it is at least ~0.8 of it there,
  # and either coefficient moves by at most ~20% of the bound at m.
  g, h, L0, L1, rtol, rng = case_trace(name, 4)
  h *= rng.uniform(0.8, 1.0, T)
  fit = fit_smoothness(g, h)
  m = g.mean()
  at_mean = float(fit.L0) + float(fit.L1) * m
  assert 0.8 <= at_mean / (L0 + L1 * m) <= 1 + rtol, fit
  assert max(line_errors(fit, L0, L1, m)) <= 0.2, fit


# --------------------------------------------------------------------------
# The definition, against a brute-force float64 reference
# --------------------------------------------------------------------------


def lowest_line_reference(g, h, mean_g):
  """min L0 + L1 mean_g over L0, L1 >= 0 with L0 + L1 g_i >= h_i, by
  enumerating the vertices of the feasible polygon: intersections of two of
  the constraint lines (samples, L0 = 0, L1 = 0)."""
  A = np.concatenate([np.stack([np.ones_like(g), g], 1), [[1, 0], [0, 1]]])
  b = np.concatenate([h, [0.0, 0.0]])
  i, j = np.triu_indices(len(b), 1)
  det = A[i, 0] * A[j, 1] - A[i, 1] * A[j, 0]
  ok = np.abs(det) > 1e-12
  i, j, det = i[ok], j[ok], det[ok]
  L0 = (b[i] * A[j, 1] - A[i, 1] * b[j]) / det  # Cramer's rule
  L1 = (A[i, 0] * b[j] - b[i] * A[j, 0]) / det
  slack = A @ np.stack([L0, L1]) - b[:, None]
  feasible = np.all(slack >= -1e-9 * (1 + np.abs(b[:, None])), axis=0)
  objective = np.where(feasible, L0 + L1 * mean_g, np.inf)
  best = np.argmin(objective)
  return L0[best], L1[best]


def fit_reference(g, h, quantile, num_bins):
  """The docstring's steps 1-3, in float64 NumPy."""
  g, h = np.asarray(g, np.float64), np.asarray(h, np.float64)
  valid = np.isfinite(g) & np.isfinite(h) & (g >= 0) & (h >= 0)
  if valid.sum() < num_bins:
    return np.nan, np.nan
  g, h = g[valid], h[valid]
  order = np.argsort(g, kind='stable')
  keep = np.concatenate(
    [
      h[b] <= np.quantile(h[b], quantile)
      for b in np.array_split(order, num_bins)
    ]
  )
  order = np.concatenate(np.array_split(order, num_bins))
  return lowest_line_reference(g[order][keep], h[order][keep], g.mean())


def random_trace(seed, size=T):
  """Scattered samples: g over three decades, h noisy around a line, some
  outliers and NaN, in float32 as the estimator records them."""
  rng = np.random.default_rng(seed)
  g = 10.0 ** rng.uniform(-1, 2, size)
  h = (rng.uniform(0.1, 2) + rng.uniform(0, 1) * g) * rng.lognormal(
    0, 0.3, size
  )
  h[rng.choice(size, size // 50, replace=False)] *= 30
  h[rng.choice(size, size // 10, replace=False)] = np.nan
  return g.astype(np.float32), h.astype(np.float32)


@pytest.mark.parametrize(
  'quantile, num_bins', [(1.0, 8), (0.9, 8), (0.75, 8), (0.5, 3), (1.0, 3)]
)
@pytest.mark.parametrize('seed', range(3))
def test_matches_brute_force_reference(seed, quantile, num_bins):
  g, h = random_trace(seed)
  fit = fit_smoothness(g, h, quantile=quantile, num_bins=num_bins)
  L0, L1 = fit_reference(g, h, quantile, num_bins)
  valid = np.isfinite(h)
  m = g[valid].mean(dtype=np.float64)
  # The LP optimum's value: float32 rounding of the data and of the snap.
  np.testing.assert_allclose(
    float(fit.L0) + float(fit.L1) * m, L0 + L1 * m, rtol=1e-5
  )
  # The line itself (unique for data in general position).
  np.testing.assert_allclose(
    [float(fit.L0), float(fit.L1) * m],
    [L0, L1 * m],
    rtol=1e-3,
    atol=1e-4 * (L0 + L1 * m),
  )


@pytest.mark.parametrize('quantile', [1.0, 0.9, 0.6])
@pytest.mark.parametrize('seed', range(3))
def test_line_lies_above_the_quantile_of_every_bin(seed, quantile):
  g, h = random_trace(seed)
  fit = fit_smoothness(g, h, quantile=quantile)
  line = float(fit.L0) + float(fit.L1) * g.astype(np.float64)
  under = h <= line * (1 + 1e-6)  # float32 rounding
  assert float(fit.L0) >= 0 and float(fit.L1) >= 0
  valid = np.flatnonzero(np.isfinite(h))
  for b in np.array_split(valid[np.argsort(g[valid], kind='stable')], 8):
    # At least floor(q (c - 1)) + 1 of a bin's c samples: all for q = 1.
    assert under[b].sum() >= np.floor(quantile * (len(b) - 1)) + 1


def test_degenerate_traces():
  ones = np.ones(T, np.float32)
  fit = fit_smoothness(np.linspace(0, 5, T), 2.0 * ones)  # constant L_hat
  assert (float(fit.L0), float(fit.L1)) == (2.0, 0.0)
  fit = fit_smoothness(np.linspace(0, 5, T), 0.0 * ones)  # linear f
  assert (float(fit.L0), float(fit.L1)) == (0.0, 0.0)
  h = np.linspace(1, 3, T)
  fit = fit_smoothness(3.0 * ones, h, quantile=1.0)  # one gradient norm
  assert (float(fit.L0), float(fit.L1)) == (3.0, 0.0)


# --------------------------------------------------------------------------
# Masking, jit, too few samples
# --------------------------------------------------------------------------


def test_jit_and_numpy_agree():
  g, h = random_trace(0)
  eager = fit_smoothness(g, h)
  jitted = jax.jit(fit_smoothness)(jnp.asarray(g), jnp.asarray(h))
  for a, b in zip(eager, jitted):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  assert eager.L0.dtype == eager.L1.dtype == jnp.float32
  assert eager.num_samples.dtype == jnp.int32
  # Float64 and 2-D (steps, k) traces are accepted.
  again = fit_smoothness(
    g.astype(np.float64).reshape(16, 16), h.reshape(16, 16)
  )
  np.testing.assert_allclose(again.L1, eager.L1, rtol=1e-6)


def test_traced_quantile_matches_static():
  g, h = random_trace(1)
  f = jax.jit(lambda g, h, q: fit_smoothness(g, h, quantile=q))
  for q in (0.9, 0.6):
    np.testing.assert_allclose(
      f(g, h, q).L0, fit_smoothness(g, h, quantile=q).L0, rtol=1e-6
    )


def test_nan_slots_are_ignored_like_missing_samples():
  # A ring buffer of 64 with 40 slots filled, in scrambled positions, fits as
  # the 40 samples alone; the sample order does not matter.
  g, h = random_trace(2, size=40)
  h = np.where(np.isnan(h), 1.0, h)
  rng = np.random.default_rng(0)
  slots = rng.choice(64, 40, replace=False)
  g_buf = np.full(64, np.nan, np.float32)
  h_buf = np.full(64, np.nan, np.float32)
  g_buf[slots], h_buf[slots] = g, h
  buffered = jax.jit(fit_smoothness)(g_buf, h_buf)
  alone = fit_smoothness(g, h)
  perm = rng.permutation(40)
  shuffled = fit_smoothness(g[perm], h[perm])
  assert int(buffered.num_samples) == 40
  for a, b, c in zip(buffered, alone, shuffled):
    np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_allclose(c, b, rtol=1e-6)


@pytest.mark.parametrize('filled', [0, 1, 7])
def test_fewer_valid_samples_than_bins_give_nan(filled):
  g = np.full(64, np.nan, np.float32)
  h = np.full(64, np.nan, np.float32)
  g[:filled], h[:filled] = 1.0, 2.0
  h[filled : filled + 5] = 3.0  # a grad norm without L_hat: not a sample
  g[filled + 5 : filled + 8], h[filled + 5 : filled + 8] = -1.0, 1.0  # negative
  fit = jax.jit(fit_smoothness)(g, h)
  assert np.isnan(fit.L0) and np.isnan(fit.L1)
  assert int(fit.num_samples) == filled


def test_exactly_num_bins_samples_fit_and_empty_or_short_traces_do_not():
  g = np.arange(1.0, 9.0, dtype=np.float32)
  fit = fit_smoothness(g, 2 * g, quantile=1.0)
  np.testing.assert_allclose([fit.L0, fit.L1], [0.0, 2.0], atol=1e-6)
  for size in (0, 5):
    fit = fit_smoothness(np.ones(size), np.ones(size))
    assert np.isnan(fit.L0) and int(fit.num_samples) == size


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
  'quantile', [0, 0.0, -0.5, 1.5, np.nan, np.inf, None, 'high', [0.5, 0.9]]
)
def test_bad_quantile_raises(quantile):
  with pytest.raises(
    ValueError, match=r'quantile must be a number in \(0, 1\]'
  ):
    fit_smoothness(np.ones(16), np.ones(16), quantile=quantile)


@pytest.mark.parametrize('num_bins', [1, 0, -3, 2.5, 8.0, True, '8', None])
def test_bad_num_bins_raises(num_bins):
  with pytest.raises(ValueError, match='num_bins must be an int >= 2'):
    fit_smoothness(np.ones(16), np.ones(16), num_bins=num_bins)


def test_mismatched_shapes_raise():
  with pytest.raises(
    ValueError,
    match=r'grad_norms has shape \(5,\) but '
    r'smoothness has shape \(6,\)',
  ):
    fit_smoothness(np.ones(5), np.ones(6))
  with pytest.raises(ValueError, match='shape'):
    jax.jit(fit_smoothness)(jnp.ones((4, 2)), jnp.ones(8))


def test_numpy_integer_num_bins_is_accepted():
  g, h = random_trace(0)
  fit = fit_smoothness(g, h, num_bins=np.int64(8))
  np.testing.assert_allclose(fit.L1, fit_smoothness(g, h).L1)
