"""SPIDER (so.spider) on a finite sum: a small MLP on all 1797 digits.

The objective is the mean loss over n = 1797 images, f(x) = (1/n) sum_i
f_i(x). SPIDER anchors its gradient estimate v with the full gradient every
q steps; in between, each step takes one minibatch at the current params
x_k and the previous ones x_{k-1} (``so.paired_grad``, ``so.prev_params``)
and moves v by the difference, v_k = v_{k-1} + g_k - g'_k. The step is
clipped by the (L0, L1) rule min(1, c0/|v|, c1/|v|^2). What its theory
bounds is the distance to a stationary point, the full gradient's norm,
which this script prints; the theory sets q = minibatch = ceil(sqrt(n)).

Data: scikit-learn's bundled 8x8 digits, nothing downloaded. Run (from the
repository root)::

  python examples/spider_finite_sum.py [--steps 2150]
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits

import spider_optax as so


def init_mlp(seed, sizes=(64, 32, 10)):
  """LeCun-normal weights and zero biases of an MLP with these widths."""
  rng = np.random.default_rng(seed)
  return [
    {
      'w': jnp.asarray(rng.standard_normal((m, k), np.float32) / np.sqrt(m)),
      'b': jnp.zeros(k),
    }
    for m, k in zip(sizes[:-1], sizes[1:])
  ]


def loss_fn(params, x, y, l2=1e-4):
  """Mean cross-entropy of a tanh MLP, plus (l2/2) |weights|^2."""
  for layer in params[:-1]:
    x = jnp.tanh(x @ layer['w'] + layer['b'])
  logits = x @ params[-1]['w'] + params[-1]['b']
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return loss + 0.5 * l2 * sum(jnp.sum(layer['w'] ** 2) for layer in params)


def main(argv=None):
  """Trains, printing |grad f| at the anchors; returns the final metrics."""
  parser = argparse.ArgumentParser(
    description='SPIDER on the digits finite sum.'
  )
  parser.add_argument('--steps', type=int, default=2150)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)

  pixels, labels = load_digits(return_X_y=True)
  x = jnp.asarray(pixels / 16.0, jnp.float32)
  y = jnp.asarray(labels, jnp.int32)
  n = len(y)
  # The finite-sum preset's anchor period and minibatch, q = S2 =
  # ceil(sqrt(n)) = 43, depend on n alone (the L0, L1 and epsilon given do
  # not change them). Its learning rate and clip need the smoothness
  # constants L0, L1, unknown here: we take those of a small sweep
  # (benchmarks/quickstart.py): lr 1, c0 0.1, c1 0.05.
  preset = so.theory.finite_sum(n=n, L0=1.0, L1=1.0, epsilon=0.1)
  q, batch = preset.anchor_period, preset.minibatch_size
  tx = so.spider(learning_rate=1.0, c0=0.1, c1=0.05)
  params = init_mlp(args.seed)
  state = tx.init(params)
  full_grad_norm = jax.jit(
    lambda p: optax.tree.norm(jax.grad(loss_fn)(p, x, y))
  )

  @jax.jit
  def anchor_step(params, state):
    """The full gradient: resets the estimator (v = grad f(x_k))."""
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss, grads

  @jax.jit
  def recursive_step(params, state, idx):
    """One minibatch at x_k and x_{k-1}: v += g_k - g'_k."""
    grads, prev_grads = so.paired_grad(loss_fn)(
      params, so.prev_params(state), x[idx], y[idx]
    )
    updates, state = tx.update(grads, state, params, prev_grads=prev_grads)
    return optax.apply_updates(params, updates), state

  initial = float(full_grad_norm(params))
  print(f'n = {n}, q = {q}, minibatch {batch}; |grad f| at init {initial:.4f}')
  rng = np.random.default_rng(args.seed)
  evaluations = 0  # per-example gradients: n per anchor, 2 * batch otherwise
  for k in range(args.steps):
    if k % q == 0:  # decided on the host: each step compiles once
      params, state, loss, grads = anchor_step(params, state)
      evaluations += n
      if (k // q) % 10 == 0:
        print(
          f'step {k:5d}: loss {float(loss):.4f}, '
          f'|grad f| {float(optax.tree.norm(grads)):.4f}'
        )
    else:
      idx = rng.choice(n, batch, replace=False)
      params, state = recursive_step(params, state, idx)
      evaluations += 2 * batch
  loss = float(loss_fn(params, x, y))
  grad_norm = float(full_grad_norm(params))
  print(
    f'after {args.steps} steps ({evaluations / n:.0f} passes over the data): '
    f'loss {loss:.4f}, |grad f| {grad_norm:.4f} (from {initial:.4f})'
  )
  return {'initial_grad_norm': initial, 'loss': loss, 'grad_norm': grad_norm}


if __name__ == '__main__':
  main()
