"""Bad input raises an error that names the problem and says what to do."""

import math

import jax
import jax.numpy as jnp
import optax
import pytest

import spider_optax as so

PARAMS = {'layer': {'kernel': jnp.ones((2, 3)), 'bias': jnp.zeros(3)}}
GRADS = jax.tree.map(jnp.ones_like, PARAMS)


@pytest.mark.parametrize('bad', [0.0, -0.1, math.nan, jnp.array(-1.0)])
@pytest.mark.parametrize('name', ['c0', 'c1'])
def test_non_positive_hyperparameters(name, bad):
  with pytest.raises(ValueError, match=f'{name} must be positive'):
    so.spider(learning_rate=0.1, **{name: bad})
  with pytest.raises(ValueError, match=f'{name} must be positive'):
    so.relaxed_clip(**{name: bad})


@pytest.mark.parametrize('bad', [-0.1, math.nan, math.inf, jnp.array(-1.0)])
@pytest.mark.parametrize(
  'factory',
  [
    so.spider,
    so.mars_adamw,
    lambda lr: so.storm(lr, 0.9),
    lambda lr: so.spider(lr, epsilon=1.0),
  ],
)
def test_bad_learning_rates(factory, bad):
  with pytest.raises(ValueError, match='learning_rate must be a finite number'):
    factory(bad)


@pytest.mark.parametrize(
  'factory',
  [
    so.spider,
    so.mars_adamw,
    lambda lr: so.storm(lr, 0.9, approx=True),
    lambda lr: so.spider(lr, epsilon=1.0),
  ],
)
@pytest.mark.parametrize('inject', [False, True])
def test_a_learning_rate_of_zero_is_allowed(factory, inject):
  """As in optax: a warmup from 0, a decay to 0, or a constant 0 (no step)."""
  warmup = optax.warmup_cosine_decay_schedule(0.0, 0.1, 3, 10, end_value=0.0)
  for lr in (0.0, warmup):
    tx = optax.inject_hyperparams(factory)(lr) if inject else factory(lr)
    for update in (tx.update, jax.jit(tx.update)):
      state = tx.init(PARAMS)
      updates, _ = update(GRADS, state, PARAMS)
      assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(updates))


def test_non_positive_injected_hyperparameter():
  tx = optax.inject_hyperparams(so.spider)(learning_rate=0.1, c1=-2.0)
  with pytest.raises(ValueError, match='c1 must be positive'):
    tx.init(PARAMS)


def test_non_scalar_hyperparameter():
  with pytest.raises(TypeError, match='c0 must be positive, a real scalar'):
    so.relaxed_clip(c0=jnp.ones(3))


def _mismatched(kind):
  """prev_grads differing from grads in one leaf."""
  if kind == 'structure':
    return {'layer': {'kernel': jnp.ones((2, 3))}}
  if kind == 'shape':
    return {'layer': {'kernel': jnp.ones((2, 4)), 'bias': jnp.zeros(3)}}
  return {
    'layer': {'kernel': jnp.ones((2, 3), jnp.bfloat16), 'bias': jnp.zeros(3)}
  }


@pytest.mark.parametrize('jit', [True, False], ids=['jit', 'nojit'])
@pytest.mark.parametrize(
  'kind,error,message',
  [
    (
      'structure',
      ValueError,
      r"prev_grads has no leaf prev_grads\['layer'\]\['bias'\] that grads has",
    ),
    (
      'shape',
      ValueError,
      r"prev_grads\['layer'\]\['kernel'\] has shape \(2, 4\) but "
      r"grads\['layer'\]\['kernel'\] has shape \(2, 3\)",
    ),
    (
      'dtype',
      TypeError,
      r"prev_grads\['layer'\]\['kernel'\] has dtype bfloat16 but "
      r"grads\['layer'\]\['kernel'\] has dtype float32",
    ),
  ],
)
def test_prev_grads_mismatch_names_the_leaf(kind, error, message, jit):
  tx = so.spider(0.1)
  update = jax.jit(tx.update) if jit else tx.update
  state = tx.init(PARAMS)
  with pytest.raises(error, match=message) as info:
    update(GRADS, state, PARAMS, prev_grads=_mismatched(kind))
  assert 'so.paired_grad' in str(info.value)  # says what to do


def test_grads_mismatching_params():
  tx = so.spider(0.1)
  grads = {'layer': {'kernel': jnp.ones((3, 2)), 'bias': jnp.zeros(3)}}
  with pytest.raises(
    ValueError, match=r"grads\['layer'\]\['kernel'\] has shape"
  ):
    tx.update(grads, tx.init(PARAMS), PARAMS)


def test_update_without_params():
  tx = so.spider(0.1)
  with pytest.raises(
    ValueError, match=r'needs params: call tx.update\(grads, state, params\)'
  ):
    tx.update(GRADS, tx.init(PARAMS))


@pytest.mark.parametrize(
  'bad,error', [(-1, ValueError), (1.5, TypeError), (None, TypeError)]
)
def test_apply_if_finite_bad_max_consecutive_errors(bad, error):
  with pytest.raises(error, match='max_consecutive_errors must be an int'):
    so.apply_if_finite(so.spider(0.1), bad)


def test_fit_learning_rate_needs_epsilon():
  """fit_learning_rate sets the learning rate from the (L0, L1) fit of
  automatic clipping: without epsilon there is no fit, and it raises."""
  with pytest.raises(ValueError, match='epsilon'):
    so.spider(0.1, fit_learning_rate=True)


def test_epsilon_needs_diagnostics():
  """Automatic clipping fits the diagnostics: diagnostics=False raises, the
  default and True keep them."""
  with pytest.raises(ValueError, match='diagnostics'):
    so.spider(0.1, epsilon=0.5, diagnostics=False)
  for diagnostics in (None, True):
    state = so.spider(0.1, epsilon=0.5, diagnostics=diagnostics).init(PARAMS)
    assert set(so.diagnostics(state)) >= {'grad_norm', 'smoothness'}
