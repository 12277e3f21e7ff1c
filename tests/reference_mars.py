"""Float64 NumPy references of MARS-Lion, MARS-M and MARS-Shampoo.

Written from the official code, not from the package: ``update_fn`` of
AGI-Arena/MARS ``MARS/optimizers/mars.py`` (``mars_type`` 'mars-lion' and
'mars-shampoo') and ``MARS_M/optimizers/mars_m.py`` (``MARS_M.step``), with
NumPy in place of torch. The official code holds a linear layer's weight as
PyTorch does, ``(out, in)``; the package's params are JAX kernels ``(in,
out)``. So each 2-D leaf is transposed into PyTorch's layout on the way in
and back on the way out: the shape rules (``0.2 sqrt(max(A, B))``,
``sqrt(max(1, size(0) / size(1)))``, which side Newton-Schulz transposes)
are then applied as the official code applies them. The official code runs
Newton-Schulz in bfloat16; this runs it in float64.

Per step t = 1, 2, ..., for the leaves that take the member's rule:
  c = g + gamma_t * b1 / (1 - b1) * (g - last_grad)   (last_grad = 0 at t = 1)
  c <- c * max_norm / |c| where |c| > max_norm           (per leaf, or global)
  m = b1 m + (1 - b1) c
  lion:    x <- x - lr_t * (sign(m) + wd * x)
  muon:    x <- x * (1 - lr_t wd) - lr_t * rms * sqrt(max(A, B)) * NS(m)
  shampoo: x <- x - lr_t * (sqrt(max(1, A / B)) * NS_eps(m / (1 - b1)) + wd x)
and for the others AdamW on g with betas_1d, lr_1d and wd_1d: mars.py's
(eps after the bias corrections) for lion and shampoo, MARS-M's (eps before
them: m / (eps + sqrt(v)) * sqrt(1 - b2^t) / (1 - b1^t)) for muon.
"""

import numpy as np

from reference_correction import _f64

NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz(m, steps=5, eps=1e-7, coeffs=NS_COEFFS):
  """The official quintic iteration on a matrix in PyTorch's layout."""
  a, b, c = coeffs
  x = m / (np.linalg.norm(m) + eps)  # Frobenius norm
  transposed = m.shape[0] > m.shape[1]
  if transposed:
    x = x.T
  for _ in range(steps):
    gram = x @ x.T
    x = a * x + (b * gram + c * gram @ gram) @ x
  return x.T if transposed else x


def _torch(v):
  """A JAX leaf in PyTorch's layout: 2-D kernels (in, out) -> (out, in)."""
  return v.T if v.ndim == 2 else v


class MarsMember:
  """MARS-Lion, MARS-M or MARS-Shampoo as the official code steps it.

  ``matrices``: the names of the leaves that take the member's rule (the
  official ``is_grad_2d`` / ``muon_params``); the others take AdamW on the
  raw gradient. ``decay_mask``: where the weight decay applies (all leaves
  when None); the official code decays every leaf.
  """

  def __init__(
    self,
    kind,
    params,
    learning_rate,
    *,
    matrices,
    b1=0.95,
    gamma=0.025,
    weight_decay=0.0,
    decay_mask=None,
    max_norm=1.0,
    approx=True,
    per_tensor_clip=False,
    ns_steps=5,
    ns_eps=1e-7,
    consistent_rms=0.2,
    betas_1d=(0.9, 0.95),
    eps=1e-8,
    lr_1d=None,
    weight_decay_1d=None,
  ):
    assert kind in ('lion', 'muon', 'shampoo')
    self.kind, self.lr, self.b1, self.gamma = kind, learning_rate, b1, gamma
    self.wd, self.max_norm, self.approx = weight_decay, max_norm, approx
    self.per_tensor_clip, self.ns_steps, self.ns_eps = (
      per_tensor_clip,
      ns_steps,
      ns_eps,
    )
    self.rms, self.betas_1d, self.eps = consistent_rms, betas_1d, eps
    self.lr_1d = learning_rate if lr_1d is None else lr_1d
    self.wd_1d = weight_decay if weight_decay_1d is None else weight_decay_1d
    self.w = {k: _torch(v) for k, v in _f64(params).items()}  # torch layout
    self.w_prev = self.w
    self.matrices = list(matrices)
    self.decay_mask = decay_mask or {k: True for k in self.w}
    zeros = lambda: {k: np.zeros_like(v) for k, v in self.w.items()}
    self.m, self.v, self.last_grad = zeros(), zeros(), zeros()
    self.t = 0
    self.clipped = []  # whether the clip changed c, per step
    self.smallest_m = np.inf  # min |m| under a sign (lion), over the run

  @property
  def x(self):
    """The params, in JAX's layout."""
    return {k: _torch(v) for k, v in self.w.items()}

  @property
  def x_prev(self):
    """The params before the last step, in JAX's layout."""
    return {k: _torch(v) for k, v in self.w_prev.items()}

  @staticmethod
  def _at(value, t):
    return value(t - 1) if callable(value) else value

  def step(self, grads, prev_grads=None):
    """One step on JAX-layout gradients; returns JAX-layout params."""
    grads = {k: _torch(v) for k, v in _f64(grads).items()}
    self.t += 1
    t = self.t
    if not self.approx:
      self.last_grad = (
        {k: _torch(v) for k, v in _f64(prev_grads).items()}
        if t > 1
        else {k: np.zeros_like(v) for k, v in grads.items()}
      )
    b1, lr, lr_1d = self.b1, self._at(self.lr, t), self._at(self.lr_1d, t)
    factor = self._at(self.gamma, t) * b1 / (1 - b1)
    c = {
      k: grads[k] + factor * (grads[k] - self.last_grad[k])
      for k in self.matrices
    }
    if self.max_norm is not None:
      if self.per_tensor_clip:
        norms = {k: np.linalg.norm(c[k]) for k in c}
      else:
        total = np.sqrt(sum(np.sum(v**2) for v in c.values()))
        norms = dict.fromkeys(c, total)
      self.clipped.append(any(n > self.max_norm for n in norms.values()))
      c = {
        k: c[k] * self.max_norm / norms[k] if norms[k] > self.max_norm else c[k]
        for k in c
      }
    new_w = {}
    for k, w in self.w.items():
      wd = self.wd if self.decay_mask[k] else 0.0
      wd_1d = self.wd_1d if self.decay_mask[k] else 0.0
      if k in c:
        self.m[k] = b1 * self.m[k] + (1 - b1) * c[k]
        new_w[k] = self._matrix_step(w, self.m[k], lr, wd)
      else:
        new_w[k] = self._adamw_step(k, w, grads[k], t, lr_1d, wd_1d)
    if self.approx:
      self.last_grad = grads
    self.w_prev, self.w = self.w, new_w
    return self.x

  def _matrix_step(self, x, m, lr, wd):
    if self.kind == 'lion':
      self.smallest_m = min(self.smallest_m, np.abs(m).min())
      return x - lr * (wd * x + np.sign(m))
    if self.kind == 'muon':  # mars_m.py: p *= 1 - lr wd; p -= adjusted_lr u
      u = newton_schulz(m, self.ns_steps, self.ns_eps)
      if self.rms is None:
        scale = max(1.0, x.shape[0] / x.shape[1]) ** 0.5
      else:
        scale = self.rms * max(x.shape[:2]) ** 0.5
      return x * (1 - lr * wd) - lr * scale * u
    # mars.py's mars-shampoo branch
    scale = max(1.0, x.shape[0] / x.shape[1]) ** 0.5
    u = newton_schulz(m / (1 - self.b1), self.ns_steps, self.eps)
    return x - lr * (u * scale + wd * x)

  def _adamw_step(self, k, x, g, t, lr, wd):
    b1, b2 = self.betas_1d
    self.m[k] = b1 * self.m[k] + (1 - b1) * g
    self.v[k] = b2 * self.v[k] + (1 - b2) * g * g
    bc1, bc2 = 1 - b1**t, 1 - b2**t
    if self.kind == 'muon':  # MARS_M.step's AdamW backup
      direction = self.m[k] / (self.eps + np.sqrt(self.v[k]))
      return x * (1 - lr * wd) - lr / (bc1 / bc2**0.5) * direction
    denom = (np.sqrt(self.v[k]) / np.sqrt(bc2) + self.eps) * bc1
    return x - lr * (wd * x + self.m[k] / denom)
