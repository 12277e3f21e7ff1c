"""SPIDER with a memory-lean state: x_{k-1} rebuilt from the last step."""

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
from jax.typing import DTypeLike

from spider_optax import _buffers
from spider_optax import _checks
from spider_optax import previous
from spider_optax.clipping import divide
from spider_optax.clipping import norm_parts
from spider_optax.clipping import relaxed_clip_factor
from spider_optax.clipping import step_length
from spider_optax.estimator import OVERFLOW
from spider_optax.estimator import recursive_estimate

_CHANGED = (
  'The params differ from those the last update of so.spider(..., '
  'lean=True) produced (their first entries do not match): the lean state '
  'rebuilds x_{{k-1}} = x_k - u_{{k-1}} and needs params changed only by its '
  'own updates, applied with optax.apply_updates (no weight decay or other '
  'updates applied outside it, the params passed to this step). Use '
  'lean=False otherwise.'
)


class LeanSpiderState(NamedTuple):
  r"""State of :func:`lean_spider` (``so.spider(..., lean=True)``).

  Attributes:
    count: number of updates taken so far (int32), anchors included.
    steps_since_anchor: updates since the last anchor step (int32).
    estimate: the estimator :math:`v_k` of the last update, in the estimator
      dtype; zeros before the first update. The only parameter-sized array.
    step_scale: :math:`s_k` with the last update
      :math:`u_k = -s_k v_k / m_k` (float32, float64 for a float64
      estimate; 0 before the first update):
      :math:`\eta_k` where the clip does not bind, else
      :math:`\eta_k \min(\|v_k\|, c_0, c_1/\|v_k\|) m_k / \|v_k\|`.
    estimate_scale: :math:`m_k` (the same dtype): 1, except where the sum
      of squares of :math:`v_k` over- or underflows (a float32 norm from
      about 1e19, or below 1e-15), the largest :math:`|v_k|` entry; so that
      :math:`s_k` stays in the normal range where
      :math:`\eta_k c_0 / \|v_k\|` would be flushed to 0 (a float32 norm
      from about 8.5e37).
    first_entries: each params leaf's first entry after the last update,
      :math:`(x_k + u_k)[0]`, computed as ``optax.apply_updates`` does (the
      initial params' before the first update): a check that the params
      changed only by this optimizer's updates. (0 for a leaf sharded along
      an Explicit mesh axis, where one entry cannot be read without
      gathering the leaf: those leaves go unchecked.)
  """

  count: chex.Array
  steps_since_anchor: chex.Array
  estimate: optax.Updates
  step_scale: chex.Array
  estimate_scale: chex.Array
  first_entries: Any


def _first_entry(x: Any) -> jax.Array:
  """``x``'s first entry; 0 for an empty leaf or one split on Explicit axes.

  On such a leaf one entry cannot be read without gathering the leaf (JAX
  refuses the slice), so the check skips it: its first entry is always 0.
  """
  spec = getattr(getattr(jax.typeof(x), 'sharding', None), 'spec', ())
  if x.size == 0 or any(axis is not None for axis in spec):
    return jnp.zeros((), x.dtype)  # (an empty leaf has no first entry)
  return jnp.ravel(x)[0]


def _differ(kept: jax.Array, now: jax.Array) -> jax.Array:
  """Whether two first entries differ by more than 2 roundings of theirs.

  XLA may fuse ``x + u`` of ``optax.apply_updates`` into the step that made
  ``u`` (one rounding, an FMA) on one path and not on the other (sharded
  steps differ from one-device ones here), so an exact comparison would
  refuse valid steps; any other change of the params (a weight decay, a
  second optimizer) moves them by far more.
  """
  now = now.astype(kept.dtype)
  scale = jnp.maximum(jnp.abs(kept), jnp.abs(now))
  info = jnp.finfo(kept.dtype)  # params are floating point (init checks)
  return ~(jnp.abs(kept - now) <= 2 * info.eps * scale + info.tiny)


def _first(tree: Any) -> Any:
  return jax.tree.map(_first_entry, tree)


def _checked_step_scale(
  state: LeanSpiderState, params: optax.Params
) -> tuple[chex.Array, chex.Array]:
  """``(state.step_scale, state.estimate_scale)``, checked against the params.

  An error (at run time under jit) if the params moved other than by the
  last update.
  """
  moved = [
    _differ(a, b)
    for a, b in zip(
      jax.tree.leaves(state.first_entries), jax.tree.leaves(_first(params))
    )
  ]
  moved = jnp.any(jnp.stack(moved)) if moved else jnp.array(False)
  return _checks.error_if(
    moved, _CHANGED, result=(state.step_scale, state.estimate_scale)
  )


def _scalar_dtype(estimate: Any) -> Any:
  """float32, or float64 where a leaf of the estimate is (its norm's)."""
  reals = [jnp.finfo(x.dtype).dtype for x in jax.tree.leaves(estimate)]
  return jnp.result_type(jnp.float32, *reals)


def _step(
  v: jax.Array, step_scale: chex.Array, scale: chex.Array
) -> chex.Array:
  """:math:`s v / m` in ``v``'s dtype (:func:`divide`: exact where m = 1)."""
  dtype = jnp.promote_types(v.dtype, jnp.float32)
  return (divide(v.astype(dtype), scale) * step_scale).astype(v.dtype)


def rebuild_prev_params(
  state: LeanSpiderState, params: optax.Params
) -> optax.Params:
  """:math:`x_{k-1} = x_k + s_{k-1} v_{k-1} / m_{k-1}` from a lean state.

  Equal to the params of the last update up to one rounding of the params'
  dtype (:math:`x_k` was rounded when the update was applied).
  """
  _checks.check_state_matches(
    'state.estimate', state.estimate, params, check_dtypes=False
  )
  step_scale, scale = _checked_step_scale(state, params)
  return jax.tree.map(
    lambda p, v: (p + _step(v, step_scale, scale)).astype(p.dtype),
    params,
    state.estimate,
  )


def lean_spider(
  learning_rate: optax.ScalarOrSchedule,
  c0: chex.Numeric | None = None,
  c1: chex.Numeric | None = None,
  *,
  estimator_dtype: DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
  r""":func:`spider_optax.spider` keeping one parameter-sized array of state.

  The same algorithm and update as ``so.spider(learning_rate, c0, c1)``:

  .. math::

    v_k = v_{k-1} + g_k - g'_k, \quad
    u_k = -\eta_k \min\left(1, \frac{c_0}{\|v_k\|},
      \frac{c_1}{\|v_k\|^2}\right) v_k = -s_k v_k,

  but the state keeps :math:`v_k` and the scalar :math:`s_k` instead of a
  copy of the params, and rebuilds the previous point when it is needed:
  :math:`x_{k-1} = x_k + s_{k-1} v_{k-1}` (in float32 as
  :math:`s_{k-1} v_{k-1} / m_{k-1}`, so that :math:`s` is not flushed to 0
  for norms near float32's top). Half of Adam's state.

  The contract: the params change only by this optimizer's updates, applied
  with ``optax.apply_updates`` (no weight decay or other updates added
  outside it; ``so.apply_if_finite`` around it is fine: a skipped step keeps
  both params and state), and they are float32 or wider (the rebuilt point
  is exact up to one rounding of the params' dtype; bfloat16 params are
  refused). :func:`spider_optax.prev_params`, where the rebuilt point is
  used, checks the params' first entries against those the last update
  produced, an error (at run time under jit) when they differ; a change
  that keeps every leaf's first entry cannot be seen. The update itself
  does not read the params, which XLA then overwrites in place without a
  copy. There are no diagnostics, hence no adaptive anchoring: use
  ``lean=False`` for those.

  Read the previous point with ``so.prev_params(state, params)``; without
  ``params`` it raises, since the state alone cannot give it.

  Args:
    learning_rate: a float >= 0 or an optax schedule.
    c0: threshold of the norm term of the clip, or None.
    c1: threshold of the squared-norm term of the clip, or None.
    estimator_dtype: dtype of :math:`v` (None: the params').

  Returns:
    A :class:`optax.GradientTransformationExtraArgs` with a
    :class:`LeanSpiderState`.
  """
  learning_rate = _checks.nonnegative_schedule('learning_rate', learning_rate)
  c0 = _checks.check_positive('c0', c0, allow_none=True)
  c1 = _checks.check_positive('c1', c1, allow_none=True)
  estimator_dtype = _checks.as_dtype('estimator_dtype', estimator_dtype)

  def init_fn(params):
    _checks.check_float_params('so.spider(..., lean=True)', params)
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
      if jnp.finfo(leaf.dtype).bits < 32:
        raise TypeError(
          f'so.spider(..., lean=True) got params{jax.tree_util.keystr(path)} '
          f'of dtype {leaf.dtype}: the lean state rebuilds the previous '
          'params in their own dtype, which rounds too coarsely below '
          'float32. Use lean=False (a float32 copy is kept), or float32 '
          'params.'
        )
    estimate = jax.tree.map(
      lambda p: _buffers.zeros_like(p, estimator_dtype), params
    )
    return LeanSpiderState(
      count=jnp.zeros([], jnp.int32),
      steps_since_anchor=jnp.zeros([], jnp.int32),
      estimate=estimate,
      step_scale=jnp.zeros([], _scalar_dtype(estimate)),
      estimate_scale=jnp.ones([], _scalar_dtype(estimate)),
      first_entries=_first(params),
    )

  def _step_scale(estimate, lr):
    """``(s, m, bad)`` of the step :math:`-s v / m`, as relaxed_clip's.

    ``bad``: :math:`v` is not finite (read off its norm, at no cost).
    """
    scale, root = norm_parts(estimate)
    norm = scale * root
    clipped = relaxed_clip_factor(norm, c0, c1) < 1
    length = step_length(norm, c0, c1)
    step_scale = lr * divide(length, jnp.where(root > 0, root, 1.0))
    return (
      jnp.where(clipped, step_scale, lr).astype(_scalar_dtype(estimate)),
      jnp.where(clipped, scale, 1.0).astype(_scalar_dtype(estimate)),
      ~(jnp.isfinite(scale) & jnp.isfinite(root)),
    )

  def update_fn(updates, state, params=None, *, prev_grads=None, **extra_args):
    if extra_args.get('grad_diff_variance') is not None:
      raise ValueError(
        'so.spider(..., lean=True) keeps no diagnostics, so it takes no '
        'grad_diff_variance (adaptive anchoring): use lean=False.'
      )
    if params is None:
      raise ValueError(
        'so.spider(..., lean=True) needs params: call tx.update(grads, '
        'state, params, ...).'
      )
    _checks.check_state(state, LeanSpiderState, 'so.spider(..., lean=True)')
    _checks.check_trees_match('params', params, 'grads', updates)
    _checks.check_state_matches(
      'state.estimate', state.estimate, params, check_dtypes=False
    )
    prev_grads = previous.masked_like(prev_grads, updates)
    if prev_grads is None:  # An anchor step: v_k = g_k.
      anchored, g_prime = jnp.array(False), updates
    else:
      _checks.check_trees_match(
        'grads', updates, 'prev_grads', prev_grads, hint=_checks.PREV_GRADS_HINT
      )
      anchored = state.count > 0  # A first recursive step acts as an anchor.
      g_prime = prev_grads
    estimate = recursive_estimate(state.estimate, updates, g_prime, anchored)
    lr = (
      learning_rate(state.count)  # pyright: ignore[reportCallIssue]
      if _checks.is_function(learning_rate)
      else learning_rate
    )
    step_scale, scale, bad = _step_scale(estimate, jnp.asarray(lr, jnp.float32))
    new_updates = jax.tree.map(lambda v: _step(v, -step_scale, scale), estimate)
    new_updates = _checks.overflow_check(
      bad,
      (updates, prev_grads),
      new_updates,
      *OVERFLOW,
      wider='estimator_dtype',
      made=estimate,
    )
    # Under the contract the params' first entries are state.first_entries
    # (so.prev_params checks it): reading them from the state leaves the
    # params unread here, and XLA overwrites them in place without a copy.
    applied = optax.apply_updates(state.first_entries, _first(new_updates))
    return new_updates, LeanSpiderState(
      count=jnp.asarray(optax.safe_increment(state.count)),
      steps_since_anchor=jnp.where(
        anchored, optax.safe_increment(state.steps_since_anchor), 0
      ).astype(jnp.int32),
      estimate=estimate,
      step_scale=step_scale,
      estimate_scale=scale,
      first_entries=applied,
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)  # pyright: ignore[reportArgumentType]
