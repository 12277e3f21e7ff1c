"""so.diagnostics and so.anchor_due against values computed by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import loops
import spider_optax as so
from reference import clip_factor
from reference import flatten
from reference import global_norm
from reference import make_quartic_problem
from reference import quartic_grad_np
from reference import Spider
from reference import unflatten
from test_trajectory import ANCHOR_PERIOD
from test_trajectory import minibatches
from test_trajectory import run_spider
from test_trajectory import STEPS

LR, C0, C1 = 0.1, 2.0, 20.0


def run_with_diagnostics(params, data):
  """so.spider(diagnostics=True) on the quartic; so.diagnostics read in jit."""
  return jax.device_get(
    run_spider(
      so.spider(LR, C0, C1, diagnostics=True),
      params,
      data,
      trace=lambda params, state, updates: so.diagnostics(state),
    )
  )


def reference_diagnostics(params, data):
  """The same quantities in float64 from the NumPy reference trajectory."""
  ref = Spider(flatten(params), LR, C0, C1)
  sub = lambda a, b: {k: a[k] - b[k] for k in a}
  x_prev, accumulated, out = ref.x, 0.0, []
  for k, batch in enumerate(minibatches(data)):
    x = ref.x
    if k % ANCHOR_PERIOD == 0:
      g, diff, accumulated = quartic_grad_np(unflatten(x), data), None, 0.0
      ref.step(g)
    else:
      g = quartic_grad_np(unflatten(x), batch)
      diff = global_norm(sub(g, quartic_grad_np(unflatten(x_prev), batch)))
      accumulated += diff**2
      ref.step(g, quartic_grad_np(unflatten(x_prev), batch))
    step = global_norm(sub(x, x_prev))
    out.append(
      {
        'grad_norm': global_norm(g),
        'grad_diff_norm': 0.0 if diff is None else diff,
        'step_norm': step,
        'smoothness': np.nan if diff is None else diff / step,
        'estimate_norm': global_norm(ref.v),
        'accumulated_error': accumulated,
        # No grad_diff_variance was passed: unknown after a recursive step.
        'accumulated_variance': 0.0 if diff is None else np.nan,
        'steps_since_anchor': k % ANCHOR_PERIOD,
        'clip_factor': clip_factor(global_norm(ref.v), C0, C1),
      }
    )
    x_prev = x
  return out


def test_diagnostics_match_hand_computed_values():
  params64, data64 = make_quartic_problem()
  to32 = lambda t: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), t)
  got = run_with_diagnostics(to32(params64), to32(data64))
  want = reference_diagnostics(params64, data64)
  assert len(got) == len(want) == STEPS
  assert set(got[0]) == set(want[0])
  assert len({round(w['clip_factor'], 3) for w in want}) > 10, 'factors vary'
  for k, (g, w) in enumerate(zip(got, want)):
    for name, value in w.items():
      # The float32 trajectory agrees with the reference to 2e-4
      # (test_trajectory); differences of nearby gradients lose a little more.
      np.testing.assert_allclose(
        np.float64(g[name]),
        value,
        rtol=2e-3,
        atol=1e-5,
        err_msg=f'step {k}, {name}',
      )


def test_diagnostics_need_the_option():
  tx = so.spider(0.1)
  with pytest.raises(ValueError, match='diagnostics=True'):
    so.diagnostics(tx.init({'w': jnp.zeros(2)}))


def test_clip_factor_of_relaxed_clip():
  tx = so.relaxed_clip(c0=2.0, c1=5.0)
  u = {'w': jnp.array([3.0, 4.0])}
  state = tx.init(u)
  assert float(state.clip_factor) == 1.0
  _, state = tx.update(u, state)
  np.testing.assert_allclose(state.clip_factor, 0.2)  # min(1, 2/5, 5/25)


def run_adaptive(curvature, budget, split, steps=60, period=1000):
  """Anchor count of so.spider on 0.5 a s |x - z|^2 with noisy z and s.

  A sample's gradient difference along a step is a s (x_k - x_{k-1}), so the
  recursion's added error per step grows like a^2 |x_k - x_{k-1}|^2, and a
  higher curvature a spends the budget sooner. ``split``: the split-half
  estimates (anchor_due without batch_size), else the minibatch-mean rule.
  """
  rng = np.random.default_rng(0)

  def loss(p, batch):  # batch rows: (z_1..z_4, s)
    z, s = batch[:, :4], 1.0 + 0.5 * batch[:, 4]
    return 0.5 * curvature * jnp.mean(s * jnp.sum((p['x'] - z) ** 2, -1))

  batches = (
    (jnp.asarray(rng.normal(size=(8, 5)), jnp.float32),) for _ in range(steps)
  )
  run = loops.run_spider(
    so.spider(0.05 / curvature, diagnostics=True),  # no clip: same path
    {'x': jnp.full(4, 3.0)},
    batches,
    loss_fn=loss,
    anchor_period=period,
    error_budget=budget,
    batch_size=None if split else 8,
    split_batch=split,
  )
  return sum(run.anchors)


@pytest.mark.parametrize('split,budget', [(False, 0.03), (True, 0.003)])
def test_adaptive_anchoring_anchors_more_where_curvature_is_higher(
  split, budget
):
  # lr * a is the same, so the steps are alike; only the curvature differs.
  counts = [run_adaptive(a, budget, split) for a in (1.0, 4.0, 16.0)]
  assert counts[0] < counts[1] < counts[2], counts
  assert counts[0] >= 1


def test_anchor_due_is_the_accumulated_error_over_the_batch():
  tx = so.spider(0.5, diagnostics=True)
  x0 = {'w': jnp.array([1.0, 1.0])}
  state = tx.init(x0)
  _, state = tx.update({'w': jnp.array([4.0, 0.0])}, state, x0)
  x1 = {'w': jnp.array([0.5, 1.0])}
  _, state = tx.update(
    {'w': jnp.array([3.0, 0.0])},
    state,
    x1,
    prev_grads={'w': jnp.array([4.0, 0.0])},
  )
  # accumulated = |g - g'|^2 = 1; over a batch of 4: 0.25.
  assert bool(so.anchor_due(state, 0.24, batch_size=4))
  assert not bool(so.anchor_due(state, 0.26, batch_size=4))
  _, state = tx.update({'w': jnp.array([4.0, 0.0])}, state, x1)  # anchor
  assert float(so.diagnostics(state)['accumulated_error']) == 0.0
  with pytest.raises(ValueError, match='error_budget'):
    so.anchor_due(state, -1.0, batch_size=4)


def test_accumulated_variance_sums_the_passed_estimates():
  tx = so.spider(0.5, diagnostics=True)
  x = {'w': jnp.array([1.0, 1.0])}
  g = {'w': jnp.array([1.0, 0.0])}
  state = tx.init(x)
  _, state = tx.update(g, state, x)  # anchor
  assert float(so.diagnostics(state)['accumulated_variance']) == 0.0
  for variance in (0.3, 0.2):
    _, state = tx.update(
      g, state, x, prev_grads=g, grad_diff_variance=jnp.float32(variance)
    )
  np.testing.assert_allclose(so.diagnostics(state)['accumulated_variance'], 0.5)
  assert bool(so.anchor_due(state, 0.45))
  assert not bool(so.anchor_due(state, 0.55))
  _, state = tx.update(g, state, x)  # anchor: reset
  assert float(so.diagnostics(state)['accumulated_variance']) == 0.0
  assert not bool(so.anchor_due(state, 0.1))
  # A recursive step without an estimate: the sum is unknown. Deciding on it
  # is an error, eager and under jit (anchoring on every step would silently
  # pay a large batch per step).
  _, state = tx.update(g, state, x, prev_grads=g)
  assert np.isnan(so.diagnostics(state)['accumulated_variance'])
  with pytest.raises(ValueError, match='brought none: pass grad_diff_variance'):
    so.anchor_due(state, 1e9)
  with pytest.raises(Exception, match='brought none: pass grad_diff_variance'):
    jax.block_until_ready(jax.jit(so.anchor_due)(state, 1e9))
  with pytest.raises(ValueError, match='brought none: pass grad_diff_variance'):
    so.is_anchor_step(state, 10, error_budget=1e9)
  assert bool(so.anchor_due(state, 1e9, batch_size=4)) is False  # heuristic
  _, state = tx.update(g, state, x, prev_grads=g, grad_diff_variance=0.0)
  assert np.isnan(so.diagnostics(state)['accumulated_variance'])


def test_grad_diff_variance_needs_a_recursive_step_and_a_scalar():
  tx = so.spider(0.5, diagnostics=True)
  x = {'w': jnp.zeros(2)}
  state = tx.init(x)
  with pytest.raises(ValueError, match='with prev_grads'):
    tx.update(x, state, x, grad_diff_variance=0.1)
  with pytest.raises(ValueError, match='scalar'):
    tx.update(x, state, x, prev_grads=x, grad_diff_variance=jnp.ones(2))


def test_split_half_sum_is_the_estimators_expected_error():
  """E ||v_k - grad f(x_k)||^2 = E sum_j Var(g_j - g'_j) after an exact anchor
  (the recursion is a martingale), so the mean of accumulated_variance over
  independent runs must match the mean squared error of v_k, computed here
  from the full gradient."""
  n, d, q, runs, batch = 64, 3, 8, 4000, 6
  rng = np.random.default_rng(1)
  a = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
  y = jnp.asarray(rng.normal(size=n), jnp.float32)

  def loss(p, a, y):  # a (d, 1)-smooth non-convex finite sum
    return jnp.mean(jnp.log(1 + (a @ p['x'] - y) ** 2))

  tx = so.spider(0.3, diagnostics=True)
  x0 = {'x': jnp.asarray(rng.normal(size=d), jnp.float32)}

  def one_run(key):
    draws = [
      (a[idx], y[idx])
      for idx in (  # with replacement
        jax.random.randint(k, (batch,), 0, n)
        for k in jax.random.split(key, q - 1)
      )
    ]
    state = loops.run_spider(
      tx,
      x0,
      [(a, y)] + draws,
      loss_fn=loss,
      schedule=[True] + [False] * (q - 1),
      split_batch=True,
      jit=False,
    ).state
    # v_{q-1} is the estimate of grad f at the params of the last update.
    true = jnp.sum(
      (
        state[0].estimate['x']
        - jax.grad(loss)(so.prev_params(state), a, y)['x']
      )
      ** 2
    )
    return true, so.diagnostics(state)['accumulated_variance']

  true, estimate = map(
    np.asarray,
    jax.jit(jax.vmap(one_run))(jax.random.split(jax.random.key(0), runs)),
  )
  # Both means carry sampling error; allow 4 standard errors of each.
  tolerance = 4 * np.hypot(true.std(), estimate.std()) / np.sqrt(runs)
  assert true.mean() > 10 * tolerance / 4, 'the error must be measurable'
  assert abs(true.mean() - estimate.mean()) < tolerance, (
    true.mean(),
    estimate.mean(),
    tolerance,
  )


def test_a_state_with_diagnostics_can_be_donated():
  """Each diagnostics field has a buffer of its own: XLA refuses to donate
  one buffer twice, which a shared initial zero made every field."""
  params = {'w': jnp.ones(3)}
  tx = so.spider(0.1, c0=1.0, diagnostics=True)
  update = jax.jit(
    lambda g, s, p: tx.update(g, s, p, prev_grads=g), donate_argnums=(1,)
  )
  state = tx.init(params)
  for _ in range(2):
    _, state = update(params, state, params)
  assert float(so.diagnostics(state)['grad_norm']) > 0
