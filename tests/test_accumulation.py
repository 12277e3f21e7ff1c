"""Gradient accumulation: so.paired_grad(..., microbatches=k) against the
whole batch and a float64 reference; optax.MultiSteps is refused."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import spider_optax as so

B, D = 24, 5


def loss_fn(params, x, y):
  return jnp.mean((x @ params['w'] + params['b'] - y) ** 2)


def grad_np(params, x, y):
  """Least squares by hand, float64: d/dw mean((xw + b - y)^2)."""
  w, b = (np.float64(params[k]) for k in ('w', 'b'))
  x, y = np.float64(x), np.float64(y)
  r = x @ w + b - y
  return {'w': 2 * x.T @ r / len(y), 'b': 2 * r.mean()}, np.mean(r**2)


def data(seed=0):
  rng = np.random.default_rng(seed)
  params = {
    'w': jnp.asarray(rng.normal(size=D), jnp.float32),
    'b': jnp.float32(0.3),
  }
  prev = jax.tree.map(lambda p: p - 0.1, params)
  x = jnp.asarray(rng.normal(size=(B, D)), jnp.float32)
  y = jnp.asarray(rng.normal(size=B), jnp.float32)
  return params, prev, x, y


@pytest.mark.parametrize('k', [1, 2, 3, 8, 24])
@pytest.mark.parametrize('jit', [False, True])
def test_microbatches_equal_the_whole_batch(k, jit):
  params, prev, x, y = data()
  paired = so.paired_value_and_grad(loss_fn, microbatches=k)
  paired = jax.jit(paired) if jit else paired
  (value, grads), (prev_value, prev_grads) = paired(params, prev, x, y)
  for point, got_value, got in (
    (params, value, grads),
    (prev, prev_value, prev_grads),
  ):
    want, want_value = grad_np(point, x, y)
    np.testing.assert_allclose(got_value, want_value, rtol=1e-5)
    for key in want:  # float32 rounding of sums of B terms of size ~10
      np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5)


def test_microbatched_step_equals_the_whole_batch_step():
  params, _, x, y = data(1)
  tx = so.spider(0.1, c0=1.0)
  state = tx.init(params)
  _, state = tx.update(jax.grad(loss_fn)(params, x, y), state, params)
  moved = jax.tree.map(lambda p: p * 0.9, params)
  whole = so.paired_grad(loss_fn)(moved, so.prev_params(state), x, y)
  parts = so.paired_grad(loss_fn, microbatches=4)(
    moved, so.prev_params(state), x, y
  )
  updates = [
    tx.update(g, state, moved, prev_grads=pg)[0] for g, pg in (whole, parts)
  ]
  for a, b in zip(*map(jax.tree.leaves, updates)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_aux_is_averaged_and_keys_are_folded_per_microbatch():
  params, prev, x, y = data()
  key = jax.random.key(7)

  def noisy(params, x, y, *, key):
    noise = jax.random.normal(key, ())
    return loss_fn(params, x, y) + noise, noise

  (value, _), _ = so.paired_value_and_grad(noisy, has_aux=True, microbatches=3)(
    params, prev, x, y, key=key
  )
  loss, aux = value
  want = [jax.random.normal(jax.random.fold_in(key, i), ()) for i in range(3)]
  np.testing.assert_allclose(aux, np.mean(want), rtol=1e-6)  # float aux: mean
  np.testing.assert_allclose(
    loss, grad_np(params, x, y)[1] + np.mean(want), rtol=1e-5
  )


@pytest.mark.parametrize(
  'k,message',
  [
    (5, 'microbatches=5 must divide the batch size, 24'),
    (0, 'microbatches must be a positive int'),
    (2.0, 'microbatches must be a positive int'),
  ],
)
def test_bad_microbatches(k, message):
  params, prev, x, y = data()
  with pytest.raises(ValueError, match=message):
    so.paired_grad(loss_fn, microbatches=k)(params, prev, x, y)


@pytest.mark.parametrize(
  'tx', [so.spider(0.1), so.mars_adamw(0.1, approx=False), so.storm(0.1, 0.9)]
)
def test_multisteps_around_a_paired_transformation_says_what_to_use(tx):
  params, _, _, _ = data()
  state = optax.MultiSteps(tx, every_k_schedule=4).init(params)
  with pytest.raises(ValueError, match=r'microbatches=k'):
    so.prev_params(state)


def test_non_float_aux_comes_from_the_first_microbatch():
  params, prev, x, y = data()

  def with_counter(params, x, y):
    return loss_fn(params, x, y), (jnp.int32(7) + 0 * x.shape[0], x[0, 0])

  (value, _), _ = so.paired_value_and_grad(
    with_counter, has_aux=True, microbatches=4
  )(params, prev, x, y)
  counter, first = value[1]
  assert counter.dtype == jnp.int32 and int(counter) == 7
  np.testing.assert_allclose(first, np.mean(np.asarray(x)[::6, 0]), rtol=1e-6)
