"""Automatic clipping: so.spider(..., epsilon=...)."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

import loops
import spider_optax as so
from reference import clip_factor

# f(x) = mean_i sum_j cosh(x_j) (1 + s_ij) + z_i . x, s ~ U[-1/2, 1/2] and
# z ~ N(0, 1). For the mean, Hess = diag(cosh x_j) and grad = sinh(x). From
# x0 = (4, 4, 4, 4) the coordinates stay about equal, where ||Hess|| = cosh x
# and ||grad|| = 2 |sinh x| (4 coordinates), so along the path
# ||Hess|| <= 1 + ||grad|| / 2: (L0, L1) = (1, 0.5), tight at x = 0 (L0) and
# as |x| grows (L1).
DIM, BATCH, PERIOD = 4, 16, 10
EPSILON = 2.0  # step caps eps/(4 L): ~0.05 at |grad| = 27, so x reaches 0


def loss(params, s, z):
  x = params['x']
  return jnp.mean(jnp.sum(jnp.cosh(x) * (1 + s), -1) + z @ x)


def batches(seed, count):
  rng = np.random.default_rng(seed)
  for _ in range(count):
    yield (
      jnp.asarray(rng.uniform(-0.5, 0.5, (BATCH, DIM)), jnp.float32),
      jnp.asarray(rng.normal(size=(BATCH, DIM)), jnp.float32),
    )


def joined(batches, k=8):
  """Batches k times larger: k consecutive ones of ``batches`` joined."""
  while chunk := list(itertools.islice(batches, k)):
    yield tuple(jnp.concatenate(parts) for parts in zip(*chunk))


def full_gradient(x):
  return np.sinh(np.float64(x))  # s and z have mean 0 in expectation


def run(tx, steps=200, x0=4.0, seed=0):
  """SPIDER with 8x larger anchor batches every PERIOD steps: the final params
  and the state after each step."""
  out = loops.run_spider(
    tx,
    {'x': jnp.full(DIM, x0, jnp.float32)},
    batches(seed, steps),
    loss_fn=loss,
    anchor_period=PERIOD,
    anchor_batches=joined(batches(seed + 1, steps)),
    trace=lambda params, state, updates: state,
  )
  return out.params, out.trace


@pytest.fixture(scope='module')
def auto_run():
  return run(so.spider(0.2, c0=1.0, c1=3.0, epsilon=EPSILON))


def test_fit_recovers_the_constants(auto_run):
  _, states = auto_run
  fit = states[-1].fit
  # The run goes from |grad| = 27 to ~0.2 (test_auto_clipping_converges), so
  # both ends of the envelope are seen. Secant slopes average f'' over a step
  # (below the envelope) and s moves each sample's curvature by up to 50%
  # (the fit's per-bin quantile trims the top 10%): within 20% of (1, 0.5).
  assert 0.8 <= float(fit.L0) <= 1.2, fit
  assert 0.4 <= float(fit.L1) <= 0.6, fit
  assert int(states[-1].num_samples) == 200 - 200 // PERIOD


def test_thresholds_follow_the_fit(auto_run):
  _, states = auto_run
  ready = [s for s in states if np.isfinite(float(s.fit.L0))]
  warmup = [s for s in states if not np.isfinite(float(s.fit.L0))]
  assert warmup and ready
  for s in warmup:  # c0 and c1 as given until the fit is ready
    assert (float(s.c0), float(s.c1)) == (1.0, 3.0)
  cap = lambda L: EPSILON / (4 * 0.2 * L) if L > 0 else np.inf
  for s in ready:  # eta * c_i = epsilon / (4 L_i); a zero L_i caps nothing
    np.testing.assert_allclose(float(s.c0), cap(float(s.fit.L0)), rtol=1e-6)
    np.testing.assert_allclose(float(s.c1), cap(float(s.fit.L1)), rtol=1e-6)


def test_update_is_the_clipped_step(auto_run):
  _, states = auto_run
  tx = so.spider(0.2, c0=1.0, c1=3.0, epsilon=EPSILON)
  state = states[-1]
  params = {'x': jnp.full(DIM, 0.3)}
  g = {'x': jnp.array([1.0, -2.0, 0.5, 3.0])}
  pg = {'x': jnp.array([0.5, -1.0, 0.0, 1.0])}
  updates, new = tx.update(g, state, params, prev_grads=pg)
  v = np.float64(state.inner_state[0].estimate['x']) + np.float64(
    g['x'] - pg['x']
  )
  want = -0.2 * clip_factor(np.linalg.norm(v), float(new.c0), float(new.c1)) * v
  np.testing.assert_allclose(updates['x'], want, rtol=1e-5)
  np.testing.assert_allclose(
    so.diagnostics(new)['clip_factor'],
    clip_factor(np.linalg.norm(v), float(new.c0), float(new.c1)),
    rtol=1e-5,
  )


def test_auto_clipping_converges(auto_run):
  params, _ = auto_run
  assert np.linalg.norm(full_gradient(params['x'])) < 0.5


def test_fit_learning_rate():
  _, states = run(
    so.spider(0.2, c0=1.0, epsilon=0.5, fit_learning_rate=True), steps=60
  )
  s = states[-1]
  np.testing.assert_allclose(
    float(s.learning_rate), 1 / (4 * float(s.fit.L0)), rtol=1e-6
  )
  np.testing.assert_allclose(float(s.c0), 0.5, rtol=1e-5)  # = epsilon
  assert float(states[0].learning_rate) == pytest.approx(0.2)


def test_auto_clipping_errors():
  with pytest.raises(ValueError, match='epsilon'):
    so.spider(0.1, epsilon=-1.0)
  with pytest.raises(ValueError, match='epsilon'):
    so.spider(0.1, epsilon=float('inf'))
  with pytest.raises(ValueError, match='window'):
    so.autoclip.auto_clip_spider(0.1, 0.5, window=4)


@pytest.mark.parametrize('refit_every', [1, 5])
def test_the_fit_is_redone_every_refit_every_samples(refit_every):
  """Until ready on every sample; then only when the sample count reaches a
  multiple of refit_every, to the fit of the buffers at that step."""
  tx = so.autoclip.auto_clip_spider(
    0.2, EPSILON, c0=1.0, c1=3.0, refit_every=refit_every
  )
  _, states = run(tx, steps=80)
  refits = 0
  for before, after in zip(states, states[1:]):
    ready = np.isfinite(float(before.fit.L0))
    pushed = int(after.num_samples) > int(before.num_samples)
    due = pushed and (not ready or int(after.num_samples) % refit_every == 0)
    want = (
      so.smoothness_fit.fit_smoothness(after.grad_norms, after.smoothness)
      if due
      else before.fit
    )
    np.testing.assert_allclose(
      [float(after.fit.L0), float(after.fit.L1)],
      [float(want.L0), float(want.L1)],
      rtol=1e-6,
    )
    refits += due
  assert refits > 3
