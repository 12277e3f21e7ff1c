"""Float64 NumPy reference of SPIDER with the clipped learning rate.

Written from the formulas of SPEC section 2, not from the package: pytrees are
plain dicts of NumPy arrays, the global norm is computed over all leaves, and
the quartic test loss has its gradient written out by hand. The package's
side of each comparison runs through the tests' one loop, tests/loops.py;
this module shares no code with it.
"""

import numpy as np


def global_norm(tree):
  return np.sqrt(
    sum(np.sum(np.asarray(x, np.float64) ** 2) for x in tree.values())
  )


def clip_terms(norm, c0, c1):
  """The terms of min(1, c0/norm, c1/norm^2) by name; only 1 at norm 0."""
  terms = {'none': 1.0}
  if norm > 0 and c0 is not None:
    terms['c0'] = c0 / norm
  if norm > 0 and c1 is not None:
    terms['c1'] = c1 / norm**2
  return terms


def clip_factor(norm, c0, c1):
  """min(1, c0/norm, c1/norm^2); 1 at norm 0 (a zero step)."""
  return min(clip_terms(norm, c0, c1).values())


class Spider:
  """x_{k+1} = x_k - lr_k * min(1, c0/|v_k|, c1/|v_k|^2) * v_k."""

  def __init__(self, params, learning_rate, c0=None, c1=None):
    self.lr, self.c0, self.c1 = learning_rate, c0, c1
    self.x = {k: np.asarray(v, np.float64) for k, v in params.items()}
    self.x_prev = None
    self.v = None
    self.k = 0
    self.active_terms = []  # which clipping term set each step's factor

  def step(self, grads, prev_grads=None):
    """One step; prev_grads=None is an anchor. Returns the new params."""
    if prev_grads is None or self.v is None:
      self.v = {k: np.asarray(g, np.float64) for k, g in grads.items()}
    else:
      self.v = {k: self.v[k] + grads[k] - prev_grads[k] for k in self.v}
    lr = self.lr(self.k) if callable(self.lr) else self.lr
    terms = clip_terms(global_norm(self.v), self.c0, self.c1)
    self.active_terms.append(min(terms, key=terms.get))
    eta = lr * terms[self.active_terms[-1]]
    self.x_prev = self.x
    self.x = {k: self.x[k] - eta * self.v[k] for k in self.x}
    self.k += 1
    return self.x


# A quartic loss with several leaves: per sample i,
#   r_i = x_i @ W + b - y_i,   loss_i = |r_i|^4 / 4 + sum_j (u_j - z_ij)^4 / 4,
# averaged over the batch. Its smoothness grows with the gradient norm, which
# is where the clipping terms matter.


def quartic_loss_np(params, batch):
  x, y, z = batch['x'], batch['y'], batch['z']
  r = x @ params['layer']['kernel'] + params['layer']['bias'] - y
  return np.mean(
    0.25 * np.sum(r**2, axis=1) ** 2
    + 0.25 * np.sum((params['u'] - z) ** 4, axis=1)
  )


def quartic_grad_np(params, batch):
  """Hand-written gradient of quartic_loss_np, flattened to a flat dict."""
  x, y, z = batch['x'], batch['y'], batch['z']
  n = x.shape[0]
  r = x @ params['layer']['kernel'] + params['layer']['bias'] - y
  sq = np.sum(r**2, axis=1, keepdims=True)  # |r_i|^2
  dr = sq * r / n  # d loss / d r_i
  return {
    'layer/kernel': x.T @ dr,
    'layer/bias': np.sum(dr, axis=0),
    'u': np.sum((params['u'] - z) ** 3, axis=0) / n,
  }


def flatten(params):
  return {
    'layer/kernel': params['layer']['kernel'],
    'layer/bias': params['layer']['bias'],
    'u': params['u'],
  }


def unflatten(flat):
  return {
    'layer': {'kernel': flat['layer/kernel'], 'bias': flat['layer/bias']},
    'u': flat['u'],
  }


def make_quartic_problem(seed=0, n=64, d_in=3, d_out=4, d_u=2):
  rng = np.random.default_rng(seed)
  data = {
    'x': rng.normal(size=(n, d_in)),
    'y': rng.normal(size=(n, d_out)),
    'z': rng.normal(size=(n, d_u)),
  }
  params = {
    'layer': {
      'kernel': rng.normal(size=(d_in, d_out)),
      'bias': rng.normal(size=(d_out,)),
    },
    'u': 2.0 + rng.normal(size=(d_u,)),
  }
  return params, data
