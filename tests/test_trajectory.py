"""so.spider's trajectory against the float64 NumPy reference (tests/reference.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import spider_optax as so
from reference import (Spider, flatten, make_quartic_problem, quartic_grad_np,
                       unflatten)

STEPS, ANCHOR_PERIOD, MINIBATCH = 40, 5, 8


def quartic_loss(params, batch):
  r = batch['x'] @ params['layer']['kernel'] + params['layer']['bias'] - batch['y']
  return jnp.mean(0.25 * jnp.sum(r**2, axis=1) ** 2
                  + 0.25 * jnp.sum((params['u'] - batch['z']) ** 4, axis=1))


def minibatches(data, seed=1):
  rng = np.random.default_rng(seed)
  n = data['x'].shape[0]
  for _ in range(STEPS):
    idx = rng.choice(n, MINIBATCH, replace=False)
    yield {k: v[idx] for k, v in data.items()}


def run_spider(tx, params, data, *, jit):
  """so.spider on the quartic: full-batch anchors every q steps."""
  def anchor(params, state):
    grads = jax.grad(quartic_loss)(params, data)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  def recursive(params, state, batch):
    grads, prev_grads = so.paired_grad(quartic_loss)(
        params, so.prev_params(state), batch)
    updates, state = tx.update(grads, state, params, prev_grads=prev_grads)
    return optax.apply_updates(params, updates), state

  if jit:
    anchor, recursive = jax.jit(anchor), jax.jit(recursive)
  state = tx.init(params)
  trajectory = []
  for k, batch in enumerate(minibatches(data)):
    if k % ANCHOR_PERIOD == 0:
      params, state = anchor(params, state)
    else:
      params, state = recursive(params, state, batch)
    trajectory.append(flatten(params))
  return trajectory


def run_reference(params, data, learning_rate, c0, c1):
  """The same loop in float64 NumPy with hand-written gradients."""
  ref = Spider(flatten(params), learning_rate, c0, c1)
  trajectory = []
  for k, batch in enumerate(minibatches(data)):
    x = unflatten(ref.x)
    if k % ANCHOR_PERIOD == 0:
      ref.step(quartic_grad_np(x, data))
    else:
      prev_x = unflatten(ref.x_prev)
      ref.step(quartic_grad_np(x, batch), quartic_grad_np(prev_x, batch))
    trajectory.append(ref.x)
  return trajectory, ref.active_terms


CLIPPING = {
    'sarah': (None, None),          # constant step
    'normalised': (0.5, None),      # SPIDER-SFO
    'l0_l1': (2.0, 20.0),           # c1 while |v| > c1/c0 = 10, then c0
}


@pytest.mark.parametrize('jit', [True, False], ids=['jit', 'nojit'])
@pytest.mark.parametrize('clipping', list(CLIPPING), ids=list(CLIPPING))
def test_trajectory_matches_float64_reference(clipping, jit):
  c0, c1 = CLIPPING[clipping]
  lr = 0.01 if clipping == 'sarah' else 0.1
  params64, data64 = make_quartic_problem()
  to32 = lambda t: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), t)
  got = run_spider(so.spider(lr, c0, c1), to32(params64), to32(data64), jit=jit)
  want, active_terms = run_reference(params64, data64, lr, c0, c1)
  assert len(got) == len(want) == STEPS
  for term, threshold in (('c0', c0), ('c1', c1)):  # each term given is used
    assert threshold is None or term in active_terms, term
  moved = np.abs(want[-1]['u'] - flatten(params64)['u']).max()
  assert moved > 0.1, 'the run must move the params for the test to mean much'
  for k, (g, w) in enumerate(zip(got, want)):
    for name in w:
      np.testing.assert_allclose(
          np.asarray(g[name], np.float64), w[name], rtol=2e-4, atol=2e-5,
          err_msg=f'step {k}, leaf {name}')


def test_trajectory_float64_exact():
  """With JAX in float64 the agreement is to rounding, not to float32."""
  params64, data64 = make_quartic_problem()
  lr, c0, c1 = 0.1, *CLIPPING['l0_l1']
  with jax.enable_x64(True):
    to64 = lambda t: jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), t)
    got = run_spider(so.spider(lr, c0, c1), to64(params64), to64(data64),
                     jit=True)
  want, _ = run_reference(params64, data64, lr, c0, c1)
  for k, (g, w) in enumerate(zip(got, want)):
    for name in w:
      np.testing.assert_allclose(np.asarray(g[name]), w[name], rtol=1e-10,
                                 atol=1e-12, err_msg=f'step {k}, leaf {name}')
