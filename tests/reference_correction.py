"""Float64 NumPy references of MARS-AdamW and STORM.

Written from the papers' update rules and the official MARS code's
``update_fn`` (AGI-Arena/MARS, ``MARS/optimizers/mars.py``), not from the
package: pytrees are flat dicts of NumPy arrays and the test loss has its
gradient written out by hand.
"""

import numpy as np


def _f64(tree):
  return {k: np.array(v, np.float64) for k, v in tree.items()}


def global_norm(tree):
  return np.sqrt(sum(np.sum(np.square(v)) for v in tree.values()))


class MarsAdamW:
  """MARS-AdamW as the official ``update_fn`` steps it, one tree at a time.

  Per step t = 1, 2, ...:
    c = g + gamma * b1 / (1 - b1) * (g - last_grad)   (last_grad = 0 at t = 1)
    c <- c / |c| * max_norm where |c| > max_norm      (per leaf, or global)
    m = b1 m + (1 - b1) c,   v = b2 v + (1 - b2) c^2
    x <- x - lr_t * (m / ((sqrt(v) / sqrt(1 - b2^t) + eps) (1 - b1^t))
                     + wd * x)
  ``last_grad`` is the previous step's gradient (approx) or the gradient at
  the previous params on this step's minibatch (exact). With ``adamw_1d`` the
  leaves of fewer than 2 dimensions take plain AdamW on g with ``betas_1d``.
  """

  def __init__(
    self,
    params,
    learning_rate,
    *,
    b1=0.95,
    b2=0.99,
    gamma=0.025,
    eps=1e-8,
    weight_decay=0.0,
    decay_mask=None,
    max_norm=1.0,
    approx=True,
    per_tensor_clip=False,
    adamw_1d=False,
    adamw_leaves='below_2d',
    betas_1d=(0.9, 0.95),
    lr_1d=None,
    weight_decay_1d=None,
  ):
    self.lr, self.b1, self.b2, self.gamma = learning_rate, b1, b2, gamma
    self.lr_1d = learning_rate if lr_1d is None else lr_1d
    self.wd_1d = weight_decay if weight_decay_1d is None else weight_decay_1d
    self.eps, self.wd, self.max_norm = eps, weight_decay, max_norm
    self.approx, self.per_tensor_clip = approx, per_tensor_clip
    self.betas_1d = betas_1d
    self.x = _f64(params)
    self.x_prev = self.x
    self.decay_mask = decay_mask or {k: True for k in self.x}
    # The official rule (optimize_1d=False) sends every leaf that is not
    # 2-D to AdamW ('not_2d'); 'below_2d' only those of fewer dimensions.
    keeps = (
      (lambda v: v.ndim >= 2)
      if adamw_leaves == 'below_2d'
      else (lambda v: v.ndim == 2)
    )
    self.mars_leaves = [
      k for k, v in self.x.items() if not adamw_1d or keeps(v)
    ]
    zeros = lambda: {k: np.zeros_like(v) for k, v in self.x.items()}
    self.m, self.v, self.last_grad = zeros(), zeros(), zeros()
    self.t = 0
    self.clipped = []  # whether the clip changed c, per step

  def step(self, grads, prev_grads=None):
    """One step; ``prev_grads`` (exact mode) is ignored at t = 1."""
    grads = _f64(grads)
    self.t += 1
    t = self.t
    if not self.approx:
      self.last_grad = (
        _f64(prev_grads)
        if t > 1
        else {k: np.zeros_like(v) for k, v in grads.items()}
      )
    gamma = self.gamma(t - 1) if callable(self.gamma) else self.gamma
    scale = gamma * self.b1 / (1 - self.b1)
    c = {
      k: grads[k] + scale * (grads[k] - self.last_grad[k])
      for k in self.mars_leaves
    }
    if self.per_tensor_clip:
      norms = {k: np.linalg.norm(c[k]) for k in c}
    else:
      norms = dict.fromkeys(c, global_norm(c))
    self.clipped.append(any(n > self.max_norm for n in norms.values()))
    c = {
      k: c[k] / norms[k] * self.max_norm if norms[k] > self.max_norm else c[k]
      for k in c
    }
    at = lambda value: value(t - 1) if callable(value) else value
    new_x = {}
    for k, x in self.x.items():
      lr = at(self.lr) if k in c else at(self.lr_1d)
      b1, b2 = (self.b1, self.b2) if k in c else self.betas_1d
      u = c[k] if k in c else grads[k]
      self.m[k] = b1 * self.m[k] + (1 - b1) * u
      self.v[k] = b2 * self.v[k] + (1 - b2) * u * u
      denom = (np.sqrt(self.v[k]) / np.sqrt(1 - b2**t) + self.eps) * (1 - b1**t)
      wd = (self.wd if k in c else self.wd_1d) if self.decay_mask[k] else 0.0
      new_x[k] = x - lr * (self.m[k] / denom + wd * x)
    if self.approx:
      self.last_grad = grads
    self.x_prev, self.x = self.x, new_x
    return self.x


class Storm:
  """STORM (Cutkosky & Orabona 2019, Algorithm 1) with constant a = 1 - beta.

    d_1 = g_1,   d_t = g_t + beta (d_{t-1} - g'_t)
    x <- x - lr_t * min(1, c0 / |d_t|, c1 / |d_t|^2) * d_t

  with g'_t the gradient at the previous params on this step's minibatch
  (exact) or the previous step's gradient (approx).
  """

  def __init__(
    self, params, learning_rate, beta, c0=None, c1=None, *, approx=False
  ):
    self.lr, self.beta, self.c0, self.c1 = learning_rate, beta, c0, c1
    self.approx = approx
    self.x = _f64(params)
    self.x_prev = self.x
    self.d = None
    self.last_grad = None
    self.t = 0
    self.factors = []  # the clip factor of each step

  def step(self, grads, prev_grads=None):
    grads = _f64(grads)
    if self.d is None:
      self.d = grads
    else:
      g_prev = self.last_grad if self.approx else _f64(prev_grads)
      self.d = {
        k: grads[k] + self.beta * (self.d[k] - g_prev[k]) for k in grads
      }
    norm = global_norm(self.d)
    factor = 1.0
    if norm > 0 and self.c0 is not None:
      factor = min(factor, self.c0 / norm)
    if norm > 0 and self.c1 is not None:
      factor = min(factor, self.c1 / norm**2)
    self.factors.append(factor)
    lr = self.lr(self.t) if callable(self.lr) else self.lr
    self.t += 1
    self.last_grad = grads
    self.x_prev = self.x
    self.x = {k: v - lr * factor * self.d[k] for k, v in self.x.items()}
    return self.x


# The test loss, per sample i:
#   r_i = x_i @ kernel + bias - y_i,
#   loss_i = |r_i|^2 / 2 + sum_j (scale_j - z_ij)^4 / 4,
# averaged over the batch: least squares on a 2-D and a 1-D leaf, a quartic
# on another 1-D leaf.


def loss_np(params, batch):
  r = batch['x'] @ params['kernel'] + params['bias'] - batch['y']
  return np.mean(
    0.5 * np.sum(r**2, axis=1)
    + 0.25 * np.sum((params['scale'] - batch['z']) ** 4, axis=1)
  )


def grad_np(params, batch):
  """The gradient of :func:`loss_np`, by hand."""
  x, y, z = batch['x'], batch['y'], batch['z']
  n = x.shape[0]
  r = x @ params['kernel'] + params['bias'] - y  # d loss / d r_i = r_i / n
  return {
    'kernel': x.T @ r / n,
    'bias': np.sum(r, axis=0) / n,
    'scale': np.sum((params['scale'] - z) ** 3, axis=0) / n,
  }


def make_problem(seed=0, n=64, d_in=3, d_out=4, d_s=2):
  rng = np.random.default_rng(seed)
  data = {
    'x': rng.normal(size=(n, d_in)),
    'y': rng.normal(size=(n, d_out)),
    'z': rng.normal(size=(n, d_s)),
  }
  params = {
    'kernel': rng.normal(size=(d_in, d_out)),
    'bias': rng.normal(size=(d_out,)),
    'scale': 1.5 + rng.normal(size=(d_s,)),
  }
  return params, data
