"""Flax models as users write them: BatchNorm in training mode and
Dropout from the model's own RNG (NNX) or a key (Linen), through so.flax."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen
from flax import nnx

import spider_optax as so


class Net(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(4, 8, rngs=rngs)
    self.norm = nnx.BatchNorm(8, rngs=rngs)
    self.drop = nnx.Dropout(0.5, rngs=rngs)
    self.out = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x):
    return self.out(self.drop(jax.nn.relu(self.norm(self.hidden(x)))))


def loss_fn(model, x, y):
  logits = model(x)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return loss, jnp.mean(jnp.argmax(logits, -1) == y)


X = jax.random.normal(jax.random.key(0), (16, 4))
Y = jnp.arange(16) % 3


def trained_one_step():
  """A model in training mode and its optimizer after one anchor step."""
  model = Net(nnx.Rngs(0, dropout=1))
  model.train()
  optimizer = nnx.Optimizer(model, so.spider(0.1), wrt=nnx.Param)
  anchor, _ = so.flax.nnx_steps(loss_fn, has_aux=True)
  anchor((model, optimizer), X, Y)
  return model, optimizer


def reference_at(model, params=None):
  """jax.grad of a clone (the same batch statistics and dropout masks)."""
  clone = nnx.clone(model)
  if params is not None:
    nnx.update(clone, params)
  (loss, acc), grads = nnx.value_and_grad(loss_fn, has_aux=True)(clone, X, Y)
  return loss, acc, nnx.to_pure_dict(grads), clone


@pytest.mark.parametrize('jit', [False, True])
def test_paired_grads_with_batchnorm_and_model_dropout(jit):
  model, optimizer = trained_one_step()
  prev = nnx.state(so.flax.prev_model(model, optimizer), nnx.Param)
  loss, acc, want, after = reference_at(model)
  prev_loss, _, want_prev, _ = reference_at(model, prev)
  count = model.drop.rngs.count[...]
  paired = so.flax.paired_value_and_grad(loss_fn, has_aux=True)
  paired = nnx.jit(paired) if jit else paired
  ((got_loss, got_acc), grads), ((got_prev_loss, _), prev_grads) = paired(
    model, optimizer, X, Y
  )
  np.testing.assert_allclose(got_loss, loss, rtol=1e-6)
  np.testing.assert_allclose(got_acc, acc)
  np.testing.assert_allclose(got_prev_loss, prev_loss, rtol=1e-6)
  assert got_prev_loss != got_loss  # the two points differ
  for got, ref in ((grads, want), (prev_grads, want_prev)):
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
      nnx.to_pure_dict(got),
      ref,
    )
  # The model's state moved once, as one forward pass at x_k moves it (to
  # float32 rounding: jitted, XLA fuses the statistics differently).
  for stat in ('mean', 'var'):
    np.testing.assert_allclose(
      getattr(model.norm, stat)[...], getattr(after.norm, stat)[...], rtol=1e-6
    )
  assert model.drop.rngs.count[...] == count + 1


def test_nnx_steps_train_with_batchnorm_and_model_dropout():
  model, optimizer = trained_one_step()
  _, recursive = so.flax.nnx_steps(loss_fn, has_aux=True)
  means = [np.asarray(model.norm.mean[...])]
  for _ in range(3):
    _, (loss, acc) = recursive((model, optimizer), X, Y)
    means.append(np.asarray(model.norm.mean[...]))
    assert np.isfinite(loss) and 0 <= acc <= 1
  assert int(optimizer.opt_state[0].count[...]) == 4
  assert all(not np.allclose(a, b) for a, b in zip(means, means[1:]))


def test_split_batch_with_model_state():
  model, optimizer = trained_one_step()
  tx_model = model
  grads, prev_grads, variance = so.flax.paired_grad(
    lambda m, x, y: loss_fn(m, x, y)[0], split_batch=True
  )(tx_model, optimizer, X, Y)
  assert float(variance) > 0
  assert jax.tree.structure(grads) == jax.tree.structure(prev_grads)


# --------------------------------------------------------------------------
# Linen: mutable batch_stats and a dropout key, through so.flax.linen_steps
# --------------------------------------------------------------------------


class LinenNet(linen.Module):
  @linen.compact
  def __call__(self, x, train: bool):
    x = jax.nn.relu(
      linen.BatchNorm(use_running_average=not train)(linen.Dense(8)(x))
    )
    return linen.Dense(3)(linen.Dropout(0.5, deterministic=not train)(x))


LINEN = LinenNet()


def linen_loss(params, batch_stats, x, y, dropout_key):
  logits, updates = LINEN.apply(
    {'params': params, 'batch_stats': batch_stats},
    x,
    train=True,
    mutable=['batch_stats'],
    rngs={'dropout': dropout_key},
  )
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return loss, (updates['batch_stats'], logits)


def assert_close(actual, expected):
  jax.tree.map(
    lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6),
    actual,
    expected,
  )


def linen_reference(params, batch_stats, key):
  """jax.grad by hand: the loss, grads and new statistics at ``params``."""
  (loss, (stats, _)), grads = jax.value_and_grad(linen_loss, has_aux=True)(
    params, batch_stats, X, Y, key
  )
  return loss, grads, stats


def test_linen_steps_with_batch_stats_and_a_dropout_key():
  variables = LINEN.init(jax.random.key(0), X, train=False)
  tx = so.spider(0.1, 1.0)
  state = so.flax.TrainState.create(
    apply_fn=LINEN.apply,
    params=variables['params'],
    batch_stats=variables['batch_stats'],
    tx=tx,
  )
  anchor_step, recursive_step = so.flax.linen_steps(linen_loss, has_aux=True)
  keys = jax.random.split(jax.random.key(5), 2)

  state, (loss0, logits) = anchor_step(state, X, Y, keys[0])
  want0, grads0, stats0 = linen_reference(
    variables['params'], variables['batch_stats'], keys[0]
  )
  np.testing.assert_allclose(loss0, want0, rtol=1e-6)
  assert logits.shape == (16, 3)
  assert_close(state.batch_stats, stats0)

  # The recursive step, by hand: both points from the same statistics and
  # the same dropout key; the state keeps x_k's new statistics.
  want1, grads1, stats1 = linen_reference(state.params, stats0, keys[1])
  _, prev_grads1, _ = linen_reference(state.prev_params, stats0, keys[1])
  opt_state = tx.update(
    grads0, tx.init(variables['params']), variables['params']
  )[1]
  updates, _ = tx.update(
    grads1, opt_state, state.params, prev_grads=prev_grads1
  )
  want_params = optax.apply_updates(state.params, updates)

  state, (loss1, _) = recursive_step(state, X, Y, keys[1])
  np.testing.assert_allclose(loss1, want1, rtol=1e-6)
  assert_close(state.params, want_params)
  assert_close(state.batch_stats, stats1)
  assert int(state.step) == 2
