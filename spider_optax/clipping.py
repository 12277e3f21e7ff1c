"""Relaxed (L0, L1) clipping of the step."""

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from spider_optax import _arrays
from spider_optax import _buffers
from spider_optax import _checks


def divide(x: Any, d: Any) -> chex.Array:
  """``x / d`` for a scalar ``d > 0``, also near float32's largest number.

  XLA on CPU computes a division by a scalar as a multiplication by its
  reciprocal on some paths: from ``d`` = 8.5e37 on, ``1 / d`` is a denormal,
  flushed to 0, and the quotient 0 (eagerly, and not under jit, or the other
  way round). Both are scaled by 2**-64 (exactly) first where ``d`` is huge.
  """
  x, d = jnp.asarray(x), jnp.asarray(d)
  dtype = jnp.promote_types(x.dtype, d.dtype)
  x, d = x.astype(dtype), d.astype(dtype)
  p = jnp.where(d > 2.0**100, 2.0**-64, 1.0).astype(dtype)
  return (x * p) / (d * p)


def sum_of_squares(tree: optax.Updates, scale: Any = 1.0) -> chex.Array:
  """sum |x / scale|^2 over every leaf, in at least float32 (complex too)."""
  total = jnp.zeros([], jnp.float32)
  for x in jax.tree.leaves(tree):
    x = divide(x.astype(jnp.promote_types(x.dtype, jnp.float32)), scale)
    total = total + jnp.sum(jnp.real(x * jnp.conj(x)))
  return total


# Below this sum of squares (a norm of 1e-15) the squares that make it up
# may be float32 denormals or zeros: rescaled instead.
_SMALLEST_PLAIN_SUM = 1e-30


def global_norm(tree: optax.Updates) -> chex.Array:
  r"""The L2 norm of all leaves of ``tree``, without over- or underflow.

  Sums :math:`|x|^2` in at least float32 (:math:`x \bar x` for complex
  leaves). Where that sum overflows although every entry is finite (float32
  squares overflow from :math:`|x| \approx 2 \cdot 10^{19}`) or is below
  :math:`10^{-30}` (squares of tiny entries underflow to 0, from
  :math:`|x| \approx 10^{-23}`), the norm is recomputed as
  :math:`m \|x / m\|` with :math:`m` the largest :math:`|x|`, in a branch
  that runs only then. (``optax.global_norm`` returns inf for the large
  ones, and a clip by it zeroes the step; 0 or a rounded value for the
  tiny ones.)

  Examples:
    >>> import jax.numpy as jnp, spider_optax as so
    >>> print(so.global_norm({'a': jnp.array([3e20, 4e20]), 'b': jnp.zeros(2)}))
    5e+20
    >>> print(so.global_norm({'z': jnp.array([3 + 4j])}))
    5.0
  """
  scale, root = norm_parts(_arrays.as_arrays(tree))  # {'w': 1.0} too
  return scale * root  # inf where the norm exceeds float32's range


def norm_parts(tree: optax.Updates) -> tuple[chex.Array, chex.Array]:
  """``(scale, root)`` with ``scale * root`` :func:`global_norm`'s value.

  ``scale`` is 1, or, where the plain sum of squares over- or underflows,
  the largest :math:`|x|`: then ``x / scale / root`` is the direction even
  where the norm itself (3e38 times the root of the number of such
  entries) exceeds float32's range.
  """
  total = sum_of_squares(tree)

  def rescaled():
    largest = jnp.zeros([], total.dtype)
    for x in jax.tree.leaves(tree):
      if x.size:  # an empty leaf (shape (0,) or (3, 0)) adds nothing
        largest = jnp.maximum(largest, jnp.max(jnp.abs(x)).astype(total.dtype))
    finite = jnp.isfinite(largest)
    safe = jnp.where(finite & (largest > 0), largest, 1.0)
    root = jnp.sqrt(sum_of_squares(tree, safe))
    return (
      jnp.where(finite, safe, jnp.inf).astype(total.dtype),
      jnp.where(finite, root, 1.0).astype(total.dtype),
    )

  # NaN takes the plain branch and stays NaN.
  extreme = jnp.isposinf(total) | (total < _SMALLEST_PLAIN_SUM)
  return _buffers.cond(
    extreme, rescaled, lambda: (jnp.ones([], total.dtype), jnp.sqrt(total))
  )


def relaxed_clip_factor(
  norm: chex.Array,
  c0: chex.Numeric | None = None,
  c1: chex.Numeric | None = None,
) -> chex.Array:
  """min(1, c0 / norm, c1 / norm**2), with None dropping a term; 1 at norm 0.

  ``c1 / norm / norm``: the square of a norm from 1.8e19 on would overflow
  float32 and give a factor of 0.
  """
  factor = jnp.ones_like(norm)
  safe_norm = jnp.where(norm > 0, norm, 1.0)
  if c0 is not None:
    factor = jnp.minimum(factor, divide(c0, safe_norm))
  if c1 is not None:
    factor = jnp.minimum(factor, divide(divide(c1, safe_norm), safe_norm))
  return jnp.where(norm > 0, factor, 1.0)


def step_length(
  norm: chex.Array, c0: chex.Numeric | None, c1: chex.Numeric | None
) -> chex.Array:
  """min(norm, c0, c1 / norm): the clipped update's norm (norm > 0)."""
  length = norm
  if c0 is not None:
    length = jnp.minimum(length, c0)
  if c1 is not None:
    length = jnp.minimum(length, divide(c1, jnp.where(norm > 0, norm, 1.0)))
  return length


def clip_leaf(
  u: chex.Array,
  parts: tuple[chex.Array, chex.Array],
  factor: chex.Array,
  length: chex.Array,
) -> chex.Array:
  """``u * factor`` in ``u``'s dtype, as ``u / norm * length`` when clipped.

  The direction first, as ``optax.clip_by_global_norm`` computes it, from
  the norm's :func:`norm_parts` (finite also where the norm overflows), by
  :func:`divide`: for a norm near float32's top (3e38) the factor ``c0 /
  norm`` is a denormal, flushed to 0 on some paths and not others (a zero
  step, and a different step eager and jitted).
  """
  scale, root = parts
  dtype = jnp.promote_types(u.dtype, root.dtype)
  safe = jnp.where(root > 0, root, 1.0).astype(dtype)
  clipped = divide(divide(u, scale.astype(dtype)), safe) * length.astype(dtype)
  return jnp.where(factor < 1, clipped, u).astype(u.dtype)


def apply_relaxed_clip(
  updates: optax.Updates, c0: chex.Numeric | None, c1: chex.Numeric | None
) -> tuple[optax.Updates, 'RelaxedClipState']:
  """:func:`relaxed_clip`'s update with thresholds taken as they are.

  For callers whose thresholds are valid by construction (automatic
  clipping's fitted ones), so that no check runs on every step.
  """
  parts = norm_parts(updates)
  norm = parts[0] * parts[1]
  factor = relaxed_clip_factor(norm, c0, c1)
  length = step_length(norm, c0, c1)
  updates = jax.tree.map(lambda u: clip_leaf(u, parts, factor, length), updates)
  return updates, RelaxedClipState(clip_factor=factor.astype(jnp.float32))


class RelaxedClipState(NamedTuple):
  """State of :func:`relaxed_clip`.

  Attributes:
    clip_factor: the factor min(1, c0/||u||, c1/||u||^2) of the last update
      (float32; 1 before the first), for logging how often clipping binds.
  """

  clip_factor: chex.Array


@_arrays.scalar_leaves
def relaxed_clip(
  c0: chex.Numeric | None = None,
  c1: chex.Numeric | None = None,
) -> optax.GradientTransformation:
  r"""Scales updates by the relaxed (L0, L1) clipping factor.

  .. math::

    u \leftarrow \min\left(1, \frac{c_0}{\|u\|}, \frac{c_1}{\|u\|^2}\right) u

  where :math:`\|u\|` is the global L2 norm over the whole pytree (as in
  :func:`optax.clip_by_global_norm`). ``c0=None`` or ``c1=None`` drops that
  term; with both ``None`` this is the identity. After a learning rate
  :math:`\eta`, the step length is
  :math:`\eta \min(\|u\|, c_0, c_1 / \|u\|)`: the step shrinks where the
  gradient, and with it the local smoothness :math:`L_0 + L_1\|\nabla f\|`, is
  large. A zero update stays zero (no NaN). The ratio :math:`c_1/c_0` is the
  norm above which the :math:`c_1` term binds (:math:`L_0/L_1` in
  :mod:`spider_optax.theory`'s presets).

  With only ``c0`` this equals ``optax.clip_by_global_norm(c0)``. It composes
  with any optax chain; :func:`spider` puts it after :func:`spider_estimator`.

  The authors' PyTorch code applies min(1, c0/g, c1/g^2) with g the *squared*
  norm; this uses the true norm, as the paper's analysis does.

  Examples:
    >>> import jax.numpy as jnp, optax, spider_optax as so
    >>> tx = so.relaxed_clip(c0=2.0, c1=5.0)
    >>> u = {'w': jnp.array([3.0, 4.0])}  # norm 5: factor min(1, 2/5, 5/25)
    >>> print(tx.update(u, tx.init(u))[0]['w'])
    [0.6 0.8]

  Args:
    c0: threshold of the norm term (> 0), or None to drop it.
    c1: threshold of the squared-norm term (> 0), or None to drop it.

  Returns:
    A :class:`optax.GradientTransformation` whose state, a
    :class:`RelaxedClipState`, records the last factor applied.

  References:
    Reisizadeh, Li, Das, Jadbabaie, `Variance-reduced Clipping for Non-convex
    Optimization <https://arxiv.org/abs/2303.00883>`_, 2023.

    Zhang, He, Sra, Jadbabaie, `Why gradient clipping accelerates training
    <https://arxiv.org/abs/1905.11881>`_, ICLR 2020.
  """
  c0 = _checks.check_positive('c0', c0, allow_none=True)
  c1 = _checks.check_positive('c1', c1, allow_none=True)

  def init_fn(params):
    _checks.check_float_params('relaxed_clip', params)
    return RelaxedClipState(clip_factor=jnp.ones([], jnp.float32))

  def update_fn(updates, state, params=None):
    del params
    _checks.check_state(state, RelaxedClipState, 'relaxed_clip')
    if c0 is None and c1 is None:
      return updates, RelaxedClipState(clip_factor=jnp.ones([], jnp.float32))
    return apply_relaxed_clip(updates, c0, c1)

  return optax.GradientTransformation(init_fn, update_fn)


@_arrays.scalar_leaves
def clip_by_leaf_norm(max_norm: chex.Numeric) -> optax.GradientTransformation:
  r"""Clips each leaf to L2 norm ``max_norm`` on its own (per tensor).

  .. math::

    u \leftarrow u \cdot \min\left(1, \frac{\text{max\_norm}}{\|u\|}\right)
    \quad \text{for each leaf } u

  The per-tensor clip of the official MARS code; for one norm over the whole
  tree use :func:`optax.clip_by_global_norm`.

  Examples:
    >>> import jax.numpy as jnp, spider_optax as so
    >>> tx = so.clip_by_leaf_norm(1.0)
    >>> u = {'a': jnp.array([3.0, 4.0]), 'b': jnp.array([0.5])}
    >>> out, _ = tx.update(u, tx.init(u))
    >>> print(out['a'], out['b'])
    [0.6 0.8] [0.5]

  Args:
    max_norm: the largest norm a leaf keeps (> 0).

  Returns:
    A stateless :class:`optax.GradientTransformation`.
  """
  max_norm = _checks.check_positive('max_norm', max_norm)

  def init_fn(params):
    _checks.check_float_params('clip_by_leaf_norm', params)
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params

    def clip(u):
      parts = norm_parts(u)
      norm = parts[0] * parts[1]  # 0 for an empty leaf: passed through
      factor = jnp.where(norm > max_norm, 0.0, 1.0)
      return clip_leaf(u, parts, factor, jnp.minimum(norm, max_norm))

    return jax.tree.map(clip, updates), state

  return optax.GradientTransformation(init_fn, update_fn)
