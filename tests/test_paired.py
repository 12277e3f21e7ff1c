"""so.paired_grad / so.paired_value_and_grad against separate jax.grad calls."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spider_optax as so


def mlp_loss(params, batch, *, scale=1.0):
  h = jnp.tanh(batch['x'] @ params['w1'] + params['b1'])
  logits = h @ params['w2']
  loss = jnp.mean((logits - batch['y']) ** 2) * scale
  return loss, {'logits_mean': jnp.mean(logits)}


def setup(seed=0):
  k = jax.random.split(jax.random.key(seed), 6)
  params = {'w1': jax.random.normal(k[0], (4, 8)), 'b1': jnp.zeros(8),
            'w2': jax.random.normal(k[1], (8, 2))}
  prev = jax.tree.map(lambda p, r: p + 0.3 * jax.random.normal(r, p.shape),
                      params, {'w1': k[2], 'b1': k[3], 'w2': k[4]})
  batch = {'x': jax.random.normal(k[5], (16, 4)), 'y': jnp.ones((16, 2))}
  return params, prev, batch


def close(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5,
                                                       atol=1e-6), a, b)


@pytest.mark.parametrize('vectorized', [True, False])
@pytest.mark.parametrize('jit', [True, False], ids=['jit', 'nojit'])
def test_paired_grad_equals_two_grad_calls(vectorized, jit):
  params, prev, batch = setup()
  loss = lambda p, b: mlp_loss(p, b)[0]
  paired = so.paired_grad(loss, vectorized=vectorized)
  paired = jax.jit(paired) if jit else paired
  grads, prev_grads = paired(params, prev, batch)
  close(grads, jax.grad(loss)(params, batch))
  close(prev_grads, jax.grad(loss)(prev, batch))
  assert not np.allclose(grads['w1'], prev_grads['w1'])  # the points differ


@pytest.mark.parametrize('vectorized', [True, False])
def test_paired_value_and_grad_with_aux_and_kwargs(vectorized):
  params, prev, batch = setup()
  paired = so.paired_value_and_grad(mlp_loss, has_aux=True,
                                    vectorized=vectorized)
  got, prev_got = jax.jit(paired)(params, prev, batch, scale=3.0)
  want = jax.value_and_grad(mlp_loss, has_aux=True)(params, batch, scale=3.0)
  prev_want = jax.value_and_grad(mlp_loss, has_aux=True)(prev, batch, scale=3.0)
  close(got, want)
  close(prev_got, prev_want)


def test_paired_grad_with_aux():
  params, prev, batch = setup()
  (grads, aux), (prev_grads, prev_aux) = so.paired_grad(
      mlp_loss, has_aux=True)(params, prev, batch)
  want, want_aux = jax.grad(mlp_loss, has_aux=True)(params, batch)
  close((grads, aux), (want, want_aux))
  close((prev_grads, prev_aux), jax.grad(mlp_loss, has_aux=True)(prev, batch))


def test_same_randomness_at_both_points():
  """A dropout key passed as an argument is shared: same mask at both points."""
  def dropout_loss(params, x, key):
    keep = jax.random.bernoulli(key, 0.5, x.shape)
    return jnp.sum(jnp.where(keep, x, 0.0) * params['w'])
  params, prev = {'w': jnp.ones(32)}, {'w': 2 * jnp.ones(32)}
  x, key = jnp.ones(32), jax.random.key(3)
  grads, prev_grads = so.paired_grad(dropout_loss)(params, prev, x, key)
  np.testing.assert_array_equal(grads['w'], prev_grads['w'])  # linear loss
  np.testing.assert_array_equal(grads['w'], jax.grad(dropout_loss)(params, x, key)['w'])


def test_mismatched_prev_params_names_the_leaf():
  params, prev, batch = setup()
  prev['w1'] = prev['w1'][:3]
  loss = lambda p, b: mlp_loss(p, b)[0]
  with pytest.raises(ValueError, match=r"prev_params\['w1'\] has shape \(3, 8\)"):
    so.paired_grad(loss)(params, prev, batch)
