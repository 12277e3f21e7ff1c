"""The matrix side of MARS-M: orthogonalised momentum and its AdamW fallback.

Small optax pieces that :func:`spider_optax.mars_muon` and
:func:`spider_optax.mars_shampoo` chain after the recursive correction and
the clip. The Newton-Schulz iteration is optax's own (``optax.contrib.muon``
runs it), which computes the official rule exactly; what
differs from ``optax.contrib.scale_by_muon`` (its momentum is bias-corrected
and Nesterov by default, MARS-M's is neither) is written here.
"""

import functools
import math
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax
from jax.typing import DTypeLike
from optax.contrib import MuonDimensionNumbers

# optax.contrib exports muon() and scale_by_muon() but not the iteration
# they run; this is optax.contrib.muon's own.
from optax.contrib._muon import orthogonalize_via_newton_schulz

from spider_optax import _buffers
from spider_optax import _checks

# A tree (or prefix tree) of MuonDimensionNumbers, None where a leaf is not a
# matrix, or a callable returning one from the params; None: the 2-D leaves.
DimensionNumbers = Any | Callable[[optax.Params], Any] | None

_is_spec = lambda x: x is None or isinstance(x, MuonDimensionNumbers)


def map_with_dimension_numbers(
  fn: Callable[[jax.Array, MuonDimensionNumbers | None], Any],
  weight_dimension_numbers: DimensionNumbers,
  tree: Any,
) -> Any:
  """``fn(leaf, dims)`` for each array leaf of ``tree``.

  ``dims`` is the leaf's ``MuonDimensionNumbers`` or None (not a matrix).
  With ``weight_dimension_numbers=None`` exactly the 2-D leaves are matrices
  (reduction axis 0, output axis 1: a ``(fan_in, fan_out)`` kernel), as in
  ``optax.contrib.muon``. ``tree`` may hold ``optax.MaskedNode`` where
  ``optax.partition`` masked a leaf out; a spec's None then faces it.
  """
  spec = weight_dimension_numbers
  if callable(spec):
    spec = spec(tree)
  if spec is None:
    return jax.tree.map(
      lambda x: fn(x, MuonDimensionNumbers() if x.ndim == 2 else None), tree
    )
  try:
    return jax.tree.map(
      lambda dims, sub: jax.tree.map(lambda x: fn(x, dims), sub),
      spec,
      tree,
      is_leaf=_is_spec,
    )
  except ValueError as error:
    raise ValueError(
      'muon_weight_dimension_numbers must be a tree with the structure of '
      'the params (or a prefix of it) of optax.contrib.MuonDimensionNumbers, '
      'None for the leaves that are not matrices, or a callable that returns '
      f'one from the params: {error}'
    ) from None


class _NotAMatrix:
  """A leaf of fewer than 2 dimensions given dimension numbers."""

  def __init__(self, dims, shape):
    self.dims, self.shape = dims, shape


def is_matrix(weight_dimension_numbers: DimensionNumbers) -> Callable:
  """``tree -> tree of bools``: True for the leaves that are matrices.

  Raises ValueError, naming the leaf, where a leaf of fewer than 2
  dimensions is given dimension numbers.
  """

  def label(x, dims):
    if dims is None:
      return False
    return True if x.ndim >= 2 else _NotAMatrix(dims, x.shape)

  def labels(tree):
    out = map_with_dimension_numbers(label, weight_dimension_numbers, tree)
    for path, leaf in jax.tree_util.tree_flatten_with_path(out)[0]:
      if isinstance(leaf, _NotAMatrix):
        raise ValueError(
          f'muon_weight_dimension_numbers gives {leaf.dims} to the leaf '
          f'{jax.tree_util.keystr(path)} of shape {leaf.shape}: '
          'Newton-Schulz takes leaves of 2 or more dimensions. Give None '
          'for it, so that it goes to AdamW.'
        )
    return out

  return labels


def _hashable(dims: MuonDimensionNumbers) -> MuonDimensionNumbers:
  """``dims`` with tuples for lists, so that it can be a static argument."""
  axes = lambda a: a if isinstance(a, int) else tuple(a)
  return MuonDimensionNumbers(axes(dims.reduction_axis), axes(dims.output_axis))


# Jitted once per shape: optax's iteration builds a fresh loop body on every
# call, which eager updates would otherwise compile each time (0.3 s a step).
@functools.partial(jax.jit, static_argnums=(3, 4))
def _newton_schulz(x, coeffs, eps, ns_steps, dims):
  # On a mesh with Explicit axes, X X^T over a split axis is refused
  # (sharding in types): the matrix is gathered for the iteration and split
  # again after it, as XLA does by itself on Auto axes.
  # (Only axes of Explicit type show in the spec of a type; the NamedSharding
  # on its abstract mesh needs no jax.set_mesh context.)
  sharding = jax.typeof(x).sharding
  explicit = any(axis is not None for axis in sharding.spec)
  named = lambda spec: jax.sharding.NamedSharding(sharding.mesh, spec)
  if explicit:
    x = jax.sharding.reshard(x, named(jax.sharding.PartitionSpec()))
  # The Frobenius norm of entries from 1.8e19 on overflows float32 (the
  # iteration would divide by inf: a zero step): a power of two brings the
  # largest entry near 1 first, exactly, where eps is negligible anyway.
  largest = jnp.max(jnp.abs(x)).astype(jnp.float32) if x.size else 0.0
  # Two factors of at least 2**-64 (a denormal one would be flushed to 0).
  power = jnp.where(largest > 2.0**60, jnp.floor(jnp.log2(largest)), 0.0)
  half = jnp.floor(power / 2)
  x = (
    x * jnp.exp2(-half).astype(x.dtype) * jnp.exp2(half - power).astype(x.dtype)
  )
  out = orthogonalize_via_newton_schulz(
    x, coeffs, ns_steps, 'frobenius', eps, dims
  )
  # A zero matrix (a frozen layer, a zero gradient) orthogonalises to zero,
  # also where eps is 0 or rounds to 0 in x's dtype (0 / 0 otherwise).
  out = jnp.where(largest > 0, out, jnp.zeros_like(out))
  return jax.sharding.reshard(out, named(sharding.spec)) if explicit else out


def orthogonalize(
  ns_coeffs: tuple[float, float, float] = (3.4445, -4.7750, 2.0315),
  ns_steps: int = 5,
  eps: chex.Numeric = 1e-7,
  weight_dimension_numbers: DimensionNumbers = None,
) -> optax.GradientTransformation:
  r"""Orthogonalises each matrix leaf by the quintic Newton-Schulz iteration.

  For a matrix :math:`M` (transposed so that it has no more rows than
  columns):

  .. math::

    X_0 = \frac{M}{\|M\|_F + \epsilon}, \quad
    A_j = X_j X_j^\top, \quad
    X_{j+1} = a X_j + (b A_j + c A_j^2) X_j

  for ``ns_steps`` steps with ``ns_coeffs`` :math:`= (a, b, c)`, which takes
  every singular value of :math:`M` near 1 (Jordan's Muon). It is
  ``optax.contrib.muon``'s iteration without its momentum; leaves that are
  not matrices pass through unchanged.

  Examples:
    >>> import jax.numpy as jnp, spider_optax as so
    >>> tx = so.muon.orthogonalize()
    >>> out, _ = tx.update({'w': jnp.diag(jnp.array([4.0, 0.5]))}, None)
    >>> print(jnp.linalg.svd(out['w'], compute_uv=False).round(1))
    [0.7 0.7]

  Args:
    ns_coeffs: the coefficients :math:`(a, b, c)`.
    ns_steps: the number of iterations.
    eps: :math:`\epsilon`, added to the Frobenius norm.
    weight_dimension_numbers: which leaves are matrices and how to read them
      (see :func:`map_with_dimension_numbers`); None: the 2-D leaves.

  Returns:
    A stateless :class:`optax.GradientTransformation`.

  References:
    Jordan et al., `Muon: An optimizer for hidden layers in neural networks
    <https://kellerjordan.github.io/posts/muon/>`_, 2024.
  """
  eps = _checks.check_nonnegative('ns_eps', eps)
  _checks.check_count('ns_steps', ns_steps)
  coeffs = jnp.asarray(ns_coeffs)
  if coeffs.shape != (3,):
    raise ValueError(
      f'ns_coeffs must be three numbers (a, b, c), got {ns_coeffs!r}.'
    )

  def update_fn(updates, state, params=None):
    del params

    def one(x, dims):
      if dims is None:
        return x
      return _newton_schulz(x, coeffs, eps, ns_steps, _hashable(dims))

    return map_with_dimension_numbers(
      one, weight_dimension_numbers, updates
    ), state

  return optax.GradientTransformation(
    lambda params: optax.EmptyState(), update_fn
  )


def scale_by_matrix_shape(
  consistent_rms: chex.Numeric | None = 0.2,
  weight_dimension_numbers: DimensionNumbers = None,
) -> optax.GradientTransformation:
  r"""Scales each matrix leaf by a factor of its shape.

  For a matrix of ``fan_in`` by ``fan_out``: :math:`\rho
  \sqrt{\max(\mathrm{fan\_in}, \mathrm{fan\_out})}` with :math:`\rho` =
  ``consistent_rms`` (Moonlight's rule, which gives orthogonalised updates
  about AdamW's RMS for :math:`\rho = 0.2`), or with ``consistent_rms=None``
  :math:`\sqrt{\max(1, \mathrm{fan\_out}/\mathrm{fan\_in})}` (Jordan's
  width scaling; the official MARS-Shampoo's), with the fans the products
  of the reduction and output axes. It is ``optax.contrib.muon``'s scaling;
  leaves that are not matrices pass through.

  Examples:
    >>> import jax.numpy as jnp, spider_optax as so
    >>> tx = so.muon.scale_by_matrix_shape(0.2)
    >>> out, _ = tx.update({'w': jnp.ones((4, 25)), 'b': jnp.ones(3)}, None)
    >>> print(out['w'][0, 0], out['b'][0])  # 0.2 * sqrt(25); b as it was
    1.0 1.0

  Args:
    consistent_rms: :math:`\rho > 0`, or None for the width scaling.
    weight_dimension_numbers: as for :func:`orthogonalize`.

  Returns:
    A stateless :class:`optax.GradientTransformation`.

  References:
    Liu et al., `Muon is Scalable for LLM Training
    <https://arxiv.org/abs/2502.16982>`_, 2025.
  """
  consistent_rms = _checks.check_positive(
    'consistent_rms', consistent_rms, allow_none=True, finite=True
  )

  def one(x, dims):
    if dims is None or not x.size:  # an empty matrix: nothing to scale
      return x
    # optax.contrib.muon's scale_by_shape, which needs every leaf to be a
    # matrix; this passes the others through.
    axes = lambda a: (a,) if isinstance(a, int) else tuple(a)
    fan_in = math.prod(x.shape[a] for a in axes(dims.reduction_axis))
    fan_out = math.prod(x.shape[a] for a in axes(dims.output_axis))
    if consistent_rms is None:
      scale = math.sqrt(max(1.0, fan_out / fan_in))
    else:
      scale = math.sqrt(max(fan_in, fan_out)) * consistent_rms
    return (x * scale).astype(x.dtype)

  def update_fn(updates, state, params=None):
    del params
    return map_with_dimension_numbers(
      one, weight_dimension_numbers, updates
    ), state

  return optax.GradientTransformation(
    lambda params: optax.EmptyState(), update_fn
  )


# Jitted as optax's bias corrections are: eagerly, a concrete count would
# make decay**count an integer power compiled anew at every step.
@functools.partial(jax.jit, inline=True)
def _sqrt_bias_correction(decay: Any, count: Any) -> jax.Array:
  """sqrt(1 - decay**count), computed in float32 or wider."""
  return jnp.sqrt(1 - decay**count)


def adam_ratio(
  m: chex.Array, v: chex.Array, eps: Any, root: Any = None
) -> chex.Array:
  """``m / (sqrt(v) + eps)`` (times ``root``), in at least float32.

  In float16 an ``eps`` of 1e-8 rounds to 0; with ``eps`` 0 a zero gradient
  gives 0 / 0, and a tiny one, whose square underflowed to 0, m / 0. Where
  the denominator is 0 the ratio is its limit, ``sign(m)`` (0 for m = 0):
  never NaN. Elsewhere it is ``optax.scale_by_adam``'s ratio exactly.
  """
  out_dtype = jnp.result_type(m, v)
  dtype = jnp.promote_types(out_dtype, jnp.float32)
  m, v = m.astype(dtype), v.astype(dtype)
  denominator = jnp.sqrt(v) + eps
  ratio = m / denominator
  if root is not None:
    ratio = ratio * root.astype(dtype)
  return jnp.where(denominator > 0, ratio, jnp.sign(m)).astype(out_dtype)


def scale_by_adam(
  b1: chex.Numeric = 0.9,
  b2: chex.Numeric = 0.999,
  eps: chex.Numeric = 1e-8,
  mu_dtype: DTypeLike | None = None,
  *,
  input_norm_bound: chex.Numeric | None = None,
) -> optax.GradientTransformation:
  r"""``optax.scale_by_adam(b1, b2, eps, mu_dtype=mu_dtype)``, never NaN.

  The same moments, bias corrections and state (``optax.ScaleByAdamState``),
  with the ratio of :func:`adam_ratio`: in float16 (where ``eps`` = 1e-8
  rounds to 0) and with ``eps`` = 0 a zero gradient entry gives a zero
  update, not ``0 / 0``. Where a finite gradient entry's square overflows
  the second moment (from about 1.8e19 in float32; ``optax.scale_by_adam``
  gives a silent zero step there) the update raises a ``ValueError``.

  Args:
    b1: :math:`\beta_1 \in [0, 1)`.
    b2: :math:`\beta_2 \in [0, 1)`.
    eps: :math:`\epsilon \geq 0`, added to :math:`\sqrt{\hat v}`.
    mu_dtype: dtype of :math:`m`; None: the params'.
    input_norm_bound: a number known to bound the global norm of every
      input (a clip to it comes first). Where its square fits the second
      moment's dtype no square can overflow, and the check (a reduction over
      the moment per step) is left out.

  Returns:
    A :class:`optax.GradientTransformation`.
  """
  return _adam(
    b1, b2, eps, mu_dtype, eps_first=False, input_norm_bound=input_norm_bound
  )


def scale_by_adam_eps_first(
  b1: chex.Numeric = 0.9,
  b2: chex.Numeric = 0.95,
  eps: chex.Numeric = 1e-8,
  mu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformation:
  r"""Adam with :math:`\epsilon` added before the bias corrections.

  .. math::

    m_k = \beta_1 m_{k-1} + (1 - \beta_1) g_k, \quad
    v_k = \beta_2 v_{k-1} + (1 - \beta_2) g_k^2, \quad
    u_k = \frac{m_k}{\sqrt{v_k} + \epsilon}
      \cdot \frac{\sqrt{1 - \beta_2^{k}}}{1 - \beta_1^{k}}

  that is :math:`\hat m_k / (\sqrt{\hat v_k} + \epsilon / \sqrt{1 -
  \beta_2^k})`: the AdamW of Moonlight's Muon and of the official MARS-M code
  for the leaves that are not matrices. ``optax.scale_by_adam`` adds
  :math:`\epsilon` to :math:`\sqrt{\hat v_k}` (the two differ only while
  :math:`\sqrt{\hat v_k}` is near :math:`\epsilon`).

  Examples:
    >>> import jax.numpy as jnp, spider_optax as so
    >>> tx = so.muon.scale_by_adam_eps_first()
    >>> u, _ = tx.update({'b': jnp.array([2.0, -3.0])},
    ...                  tx.init({'b': jnp.zeros(2)}))
    >>> print(u['b'].round(4))  # the first step of Adam: about sign(g)
    [ 1. -1.]

  Args:
    b1: :math:`\beta_1 \in [0, 1)`.
    b2: :math:`\beta_2 \in [0, 1)`.
    eps: :math:`\epsilon \geq 0`.
    mu_dtype: dtype of :math:`m`; None: the params'.

  Returns:
    A :class:`optax.GradientTransformation` whose state is an
    ``optax.ScaleByAdamState``.

  References:
    Liu et al., `Muon is Scalable for LLM Training
    <https://arxiv.org/abs/2502.16982>`_, 2025.
  """
  return _adam(b1, b2, eps, mu_dtype, eps_first=True)


def _square_overflowed(grads: Any, nu: Any) -> jax.Array:
  """Whether a finite gradient entry made its second moment inf.

  The gradients are read only where some moment is inf: a valid step pays
  one reduction over the moment it writes and one scalar branch.
  """
  any_of = lambda xs: jnp.any(jnp.stack(xs)) if xs else jnp.array(False)
  pairs = list(zip(jax.tree.leaves(grads), jax.tree.leaves(nu)))
  return _buffers.cond(
    any_of([jnp.any(jnp.isinf(v)) for _, v in pairs]),
    lambda: any_of([jnp.any(jnp.isinf(v) & jnp.isfinite(g)) for g, v in pairs]),
    lambda: jnp.array(False),
  )


def _squares_fit(bound: Any, nu: Any) -> bool:
  """Whether inputs of global norm <= ``bound`` have squares that fit ``nu``.

  ``bound`` a concrete number; every leaf of the second moment ``nu`` with
  room for its rounding (a factor of 4).
  """
  if bound is None or not _checks.is_concrete(bound):
    return False
  return all(
    float(bound) ** 2 < float(jnp.finfo(v.dtype).max) / 4
    for v in jax.tree.leaves(nu)
  )


def _adam(
  b1: chex.Numeric,
  b2: chex.Numeric,
  eps: chex.Numeric,
  mu_dtype: DTypeLike | None,
  *,
  eps_first: bool,
  input_norm_bound: chex.Numeric | None = None,
) -> optax.GradientTransformation:
  """Adam, with ``eps`` before (``eps_first``) or after the corrections.

  ``input_norm_bound``: see :func:`scale_by_adam`.
  """
  b1 = _checks.check_decay('b1', b1)
  b2 = _checks.check_decay('b2', b2)
  eps = _checks.check_nonnegative('eps', eps)
  mu_dtype = _checks.as_dtype('mu_dtype', mu_dtype)

  def init_fn(params):
    # Sharded like the params also in a jitted init on an Auto mesh (where
    # optax.tree.zeros_like would be replicated).
    return optax.ScaleByAdamState(
      count=jnp.zeros([], jnp.int32),
      mu=jax.tree.map(lambda p: _buffers.zeros_like(p, mu_dtype), params),
      nu=jax.tree.map(_buffers.zeros_like, params),
    )

  def update_fn(updates, state, params=None):
    del params
    # The moments of this step in at least float32: in float16 the square
    # of a gradient entry below 2e-4 times (1 - b2) underflows to 0, and
    # m / eps would be a huge step. Kept in the state's own dtypes.
    out_dtypes = jax.tree.map(
      lambda g, m, v: jnp.result_type(g, m, v), updates, state.mu, state.nu
    )
    wide = lambda tree: jax.tree.map(
      lambda x: x.astype(jnp.promote_types(x.dtype, jnp.float32)), tree
    )
    grads = wide(updates)
    mu = optax.tree.update_moment(grads, wide(state.mu), b1, 1)
    nu = optax.tree.update_moment_per_elem_norm(grads, wide(state.nu), b2, 2)
    count = optax.safe_increment(state.count)
    mu_hat = optax.tree.bias_correction(mu, b1, count)
    if eps_first:
      root = _sqrt_bias_correction(b2, count)
      ratio = lambda m, v: adam_ratio(m, v, eps, root)
      nu_hat = nu
    else:
      ratio = lambda m, v: adam_ratio(m, v, eps)
      nu_hat = optax.tree.bias_correction(nu, b2, count)
    updates = jax.tree.map(
      lambda m, v, dtype: ratio(m, v).astype(dtype), mu_hat, nu_hat, out_dtypes
    )
    new_state = optax.ScaleByAdamState(
      count=count,
      mu=optax.tree.cast_like(mu, state.mu),
      nu=optax.tree.cast_like(nu, state.nu),
    )
    if _squares_fit(input_norm_bound, state.nu):  # no square can overflow
      return updates, new_state
    dtypes = ' and '.join(sorted({str(v.dtype) for v in jax.tree.leaves(nu)}))
    updates = _checks.overflow_error(
      _square_overflowed(grads, nu),
      f"Adam's second moment (1 - b2) g^2 overflowed {dtypes}: finite "
      'gradients whose squares exceed its range (from about 1.8e19 in '
      'float32), where the step would silently be 0. Clip the gradients '
      'before it (max_norm= of the MARS members, or '
      'optax.clip_by_global_norm), or scale the loss down.',
      result=updates,
    )
    return updates, new_state

  return optax.GradientTransformation(init_fn, update_fn)
