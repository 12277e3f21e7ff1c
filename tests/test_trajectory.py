"""so.spider's trajectory against the float64 reference (tests/reference.py)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import loops
import spider_optax as so
from reference import flatten
from reference import make_quartic_problem
from reference import quartic_grad_np
from reference import Spider
from reference import unflatten

STEPS, ANCHOR_PERIOD, MINIBATCH = 40, 5, 8


def quartic_loss(params, batch):
  r = (
    batch['x'] @ params['layer']['kernel']
    + params['layer']['bias']
    - batch['y']
  )
  return jnp.mean(
    0.25 * jnp.sum(r**2, axis=1) ** 2
    + 0.25 * jnp.sum((params['u'] - batch['z']) ** 4, axis=1)
  )


def minibatches(data, seed=1):
  rng = np.random.default_rng(seed)
  n = data['x'].shape[0]
  for _ in range(STEPS):
    idx = rng.choice(n, MINIBATCH, replace=False)
    yield {k: v[idx] for k, v in data.items()}


def run_spider(
  tx,
  params,
  data,
  *,
  jit=True,
  trace=lambda params, state, updates: flatten(params),
):
  """so.spider on the quartic: full-batch anchors every q steps, a minibatch
  drawn every step; trace(params, state, updates) after each step."""
  return loops.run_spider(
    tx,
    params,
    ((batch,) for batch in minibatches(data)),
    loss_fn=quartic_loss,
    anchor_period=ANCHOR_PERIOD,
    anchor_batches=itertools.repeat((data,)),
    jit=jit,
    trace=trace,
  ).trace


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
  'sarah': (None, None),  # constant step
  'normalised': (0.5, None),  # SPIDER-SFO
  'l0_l1': (2.0, 20.0),  # c1 while |v| > c1/c0 = 10, then c0
}


@pytest.mark.parametrize(
  'jit, lean',
  [(True, False), (False, False), (True, True)],
  ids=['jit', 'nojit', 'jit-lean'],
)
@pytest.mark.parametrize('clipping', list(CLIPPING), ids=list(CLIPPING))
def test_trajectory_matches_float64_reference(clipping, jit, lean):
  """Also with lean=True, whose x_{k-1} is rebuilt from x_k and the step."""
  c0, c1 = CLIPPING[clipping]
  lr = 0.01 if clipping == 'sarah' else 0.1
  params64, data64 = make_quartic_problem()
  to32 = lambda t: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), t)
  tx = so.spider(lr, c0, c1, lean=lean)
  got = run_spider(tx, to32(params64), to32(data64), jit=jit)
  want, active_terms = run_reference(params64, data64, lr, c0, c1)
  assert len(got) == len(want) == STEPS
  for term, threshold in (('c0', c0), ('c1', c1)):  # each term given is used
    assert threshold is None or term in active_terms, term
  moved = np.abs(want[-1]['u'] - flatten(params64)['u']).max()
  assert moved > 0.1, 'the run must move the params for the test to mean much'
  for k, (g, w) in enumerate(zip(got, want)):
    for name in w:
      np.testing.assert_allclose(
        np.asarray(g[name], np.float64),
        w[name],
        rtol=2e-4,
        atol=2e-5,
        err_msg=f'step {k}, leaf {name}',
      )


def test_trajectory_float64_exact():
  """With JAX in float64 the agreement is to rounding, not to float32."""
  params64, data64 = make_quartic_problem()
  lr, c0, c1 = 0.1, *CLIPPING['l0_l1']
  with jax.enable_x64(True):
    to64 = lambda t: jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), t)
    got = run_spider(
      so.spider(lr, c0, c1), to64(params64), to64(data64), jit=True
    )
  want, _ = run_reference(params64, data64, lr, c0, c1)
  for k, (g, w) in enumerate(zip(got, want)):
    for name in w:
      np.testing.assert_allclose(
        np.asarray(g[name]),
        w[name],
        rtol=1e-10,
        atol=1e-12,
        err_msg=f'step {k}, leaf {name}',
      )
