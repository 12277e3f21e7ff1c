"""Flax NNX models as users write them: BatchNorm in training mode and
Dropout drawing from the model's own nnx.Rngs, through so.flax."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
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
  # The model's state moved once, as one forward pass at x_k moves it.
  np.testing.assert_allclose(model.norm.mean[...], after.norm.mean[...])
  np.testing.assert_allclose(model.norm.var[...], after.norm.var[...])
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
