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
  params = {
    'w1': jax.random.normal(k[0], (4, 8)),
    'b1': jnp.zeros(8),
    'w2': jax.random.normal(k[1], (8, 2)),
  }
  prev = jax.tree.map(
    lambda p, r: p + 0.3 * jax.random.normal(r, p.shape),
    params,
    {'w1': k[2], 'b1': k[3], 'w2': k[4]},
  )
  batch = {'x': jax.random.normal(k[5], (16, 4)), 'y': jnp.ones((16, 2))}
  return params, prev, batch


def close(a, b):
  jax.tree.map(
    lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), a, b
  )


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


@pytest.mark.parametrize('backend, vectorized', [('cpu', False), ('gpu', True)])
def test_the_default_is_chosen_by_backend(monkeypatch, backend, vectorized):
  params, prev, batch = setup()
  loss = lambda p, b: mlp_loss(p, b)[0]
  trace = lambda **kw: str(
    jax.make_jaxpr(so.paired_grad(loss, **kw))(params, prev, batch)
  )
  chosen = trace(vectorized=vectorized)
  assert chosen != trace(vectorized=not vectorized)
  monkeypatch.setattr(jax, 'default_backend', lambda: backend)
  assert trace() == chosen


@pytest.mark.parametrize('vectorized', [True, False])
def test_paired_value_and_grad_with_aux_and_kwargs(vectorized):
  params, prev, batch = setup()
  paired = so.paired_value_and_grad(
    mlp_loss, has_aux=True, vectorized=vectorized
  )
  got, prev_got = jax.jit(paired)(params, prev, batch, scale=3.0)
  want = jax.value_and_grad(mlp_loss, has_aux=True)(params, batch, scale=3.0)
  prev_want = jax.value_and_grad(mlp_loss, has_aux=True)(prev, batch, scale=3.0)
  close(got, want)
  close(prev_got, prev_want)


def test_paired_grad_with_aux():
  params, prev, batch = setup()
  (grads, aux), (prev_grads, prev_aux) = so.paired_grad(mlp_loss, has_aux=True)(
    params, prev, batch
  )
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
  np.testing.assert_array_equal(
    grads['w'], jax.grad(dropout_loss)(params, x, key)['w']
  )


def test_mismatched_prev_params_names_the_leaf():
  params, prev, batch = setup()
  prev['w1'] = prev['w1'][:3]
  loss = lambda p, b: mlp_loss(p, b)[0]
  with pytest.raises(
    ValueError, match=r"prev_params\['w1'\] has shape \(3, 8\)"
  ):
    so.paired_grad(loss)(params, prev, batch)


# --- split_batch: the two halves and the variance estimate -----------------


def lsq_loss(params, x, y):
  """Mean over samples of (x_i . w + c - y_i)^2; gradients written in NumPy."""
  return jnp.mean((x @ params['w'] + params['c'] - y) ** 2)


def lsq_per_sample_grads_np(params, x, y):
  """Per-sample float64 gradients: r_i = x_i.w + c - y_i, 2 r_i (x_i, 1)."""
  w, c = np.float64(params['w']), np.float64(params['c'])
  x, y = np.float64(x), np.float64(y)
  r = x @ w + c - y
  return np.concatenate([2 * r[:, None] * x, 2 * r[:, None]], axis=1)


def lsq_setup(b, seed=0):
  rng = np.random.default_rng(seed)
  f32 = lambda *s: np.float32(rng.normal(size=s))
  params = {'w': jnp.asarray(f32(3)), 'c': jnp.asarray(f32())}
  prev = {'w': params['w'] + 0.5 * f32(3), 'c': params['c'] + 0.5 * f32()}
  return params, prev, jnp.asarray(f32(b, 3)), jnp.asarray(f32(b))


@pytest.mark.parametrize('b', [2, 7, 8])
@pytest.mark.parametrize('vectorized', [True, False])
@pytest.mark.parametrize('jit', [True, False], ids=['jit', 'nojit'])
def test_split_batch_matches_float64_reference(b, vectorized, jit):
  params, prev, x, y = lsq_setup(b)
  paired = so.paired_value_and_grad(
    lsq_loss, vectorized=vectorized, split_batch=True
  )
  paired = jax.jit(paired) if jit else paired
  (value, grads), (prev_value, prev_grads), variance = paired(
    params, prev, x, y
  )

  g, pg = (
    lsq_per_sample_grads_np(params, x, y),
    lsq_per_sample_grads_np(prev, x, y),
  )
  flat = lambda t: np.concatenate([np.ravel(t['w']), np.ravel(t['c'])])
  np.testing.assert_allclose(flat(grads), g.mean(0), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(flat(prev_grads), pg.mean(0), rtol=1e-5, atol=1e-5)
  residual = lambda p: (
    np.float64(x) @ np.float64(p['w']) + np.float64(p['c']) - np.float64(y)
  )
  np.testing.assert_allclose(value, np.mean(residual(params) ** 2), rtol=1e-5)
  np.testing.assert_allclose(
    prev_value, np.mean(residual(prev) ** 2), rtol=1e-5
  )
  m = b // 2
  d = g - pg
  want = m * (b - m) / b**2 * np.sum((d[:m].mean(0) - d[m:].mean(0)) ** 2)
  assert variance.dtype == jnp.float32 and variance.shape == ()
  np.testing.assert_allclose(variance, want, rtol=1e-4)

  grads_only = so.paired_grad(lsq_loss, vectorized=vectorized, split_batch=True)
  g2, pg2, v2 = grads_only(params, prev, x, y)
  close((g2, pg2, v2), (grads, prev_grads, variance))


def test_split_batch_variance_is_unbiased():
  """Over batches drawn with replacement from n samples, the mean estimate
  is Var(d_bar) = sigma^2 / b, sigma^2 the population variance of d_i."""
  n, b, draws = 40, 6, 20000
  params, prev, x, y = lsq_setup(n, seed=3)
  d = lsq_per_sample_grads_np(params, x, y) - lsq_per_sample_grads_np(
    prev, x, y
  )
  sigma2 = np.mean(np.sum((d - d.mean(0)) ** 2, axis=1))
  idx = jax.random.randint(jax.random.key(0), (draws, b), 0, n)
  split = so.paired_grad(lsq_loss, split_batch=True)
  estimates = np.asarray(
    jax.jit(jax.vmap(lambda i: split(params, prev, x[i], y[i])[2]))(idx),
    np.float64,
  )
  standard_error = estimates.std() / np.sqrt(draws)
  assert abs(estimates.mean() - sigma2 / b) < 4 * standard_error, (
    estimates.mean(),
    sigma2 / b,
    standard_error,
  )


def test_split_batch_with_aux_combines_the_halves():
  """Float aux leaves: the halves' weighted mean; others: the first half's."""
  params, prev, x, y = lsq_setup(7)

  def with_aux(params, x, y):
    return lsq_loss(params, x, y), (jnp.mean(y), jnp.int32(3))

  (grads, (mean_y, count)), _, variance = so.paired_grad(
    with_aux, has_aux=True, split_batch=True
  )(params, prev, x, y)
  np.testing.assert_allclose(
    mean_y, np.mean(np.asarray(y, np.float64)), rtol=1e-5
  )
  assert count.dtype == jnp.int32 and int(count) == 3
  want, _, want_variance = so.paired_grad(lsq_loss, split_batch=True)(
    params, prev, x, y
  )
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  np.testing.assert_allclose(variance, want_variance, rtol=1e-6)


def test_split_batch_errors():
  params, prev, x, y = lsq_setup(8)
  split = so.paired_grad(lsq_loss, split_batch=True)
  with pytest.raises(ValueError, match=r'args\[1\] has first axis 7'):
    split(params, prev, x, y[:7])
  with pytest.raises(ValueError, match='at least 2 samples'):
    split(params, prev, x[:1], y[:1])
  with pytest.raises(ValueError, match='keyword arguments'):
    split(params, prev, x, 1.0)
  with pytest.raises(ValueError, match='positional'):
    so.paired_grad(lambda p: jnp.sum(p['w']), split_batch=True)(params, prev)


def dropout_loss(params, x, *, key):
  """Mean over samples of ((mask_i * x_i) . w)^2 / 2, mask ~ Bernoulli(1/2)
  drawn from ``key``: non-linear in w, so the masks move g - g'."""
  keep = jax.random.bernoulli(key, 0.5, x.shape)
  return 0.5 * jnp.mean((jnp.where(keep, x, 0.0) @ params['w']) ** 2)


@pytest.mark.parametrize('vectorized', [True, False])
@pytest.mark.parametrize('jit', [True, False], ids=['jit', 'nojit'])
def test_split_batch_halves_draw_their_own_dropout(vectorized, jit):
  """The halves get fold_in(key, 0) and fold_in(key, 1): with identical
  samples the dropout masks are the only noise, and the variance estimate
  is the formula on the halves' independent masks, not 0."""
  b, m = 8, 4
  params, prev = {'w': jnp.arange(1.0, 7.0)}, {'w': jnp.ones(6)}
  x = jnp.tile(jnp.linspace(-1.0, 1.0, 6), (b, 1))  # every sample the same
  key = jax.random.key(0)
  paired = so.paired_grad(dropout_loss, vectorized=vectorized, split_batch=True)
  paired = jax.jit(paired) if jit else paired
  grads, prev_grads, variance = paired(params, prev, x, key=key)

  grad = lambda p, half, i: np.float64(
    jax.grad(dropout_loss)(p, half, key=jax.random.fold_in(key, i))['w']
  )
  g_a, g_b = grad(params, x[:m], 0), grad(params, x[m:], 1)
  pg_a, pg_b = grad(prev, x[:m], 0), grad(prev, x[m:], 1)
  want = m * (b - m) / b**2 * np.sum(((g_a - pg_a) - (g_b - pg_b)) ** 2)
  assert want > 1.0, 'the masks of the halves must differ for this test'
  np.testing.assert_allclose(variance, want, rtol=1e-5)  # one shared key: 0
  np.testing.assert_allclose(
    grads['w'], (m * g_a + (b - m) * g_b) / b, rtol=1e-5
  )
  np.testing.assert_allclose(
    prev_grads['w'], (m * pg_a + (b - m) * pg_b) / b, rtol=1e-5
  )


def test_split_batch_refuses_a_legacy_key():
  """A uint32 key cannot take the half's index: a TypeError says to pass a
  typed key."""
  paired = so.paired_grad(dropout_loss, split_batch=True)
  with pytest.raises(TypeError, match='pass a typed key'):
    paired(
      {'w': jnp.ones(6)},
      {'w': jnp.zeros(6)},
      jnp.ones((4, 6)),
      key=jax.random.PRNGKey(0),
    )
