"""Wrappers that make SPIDER robust in real training loops."""

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from spider_optax import _arrays
from spider_optax import _checks


def _count_limit(value: Any) -> Any:
  """``max_consecutive_errors`` checked: an int >= 0.

  A Python or NumPy int is checked now. An integer scalar array (what
  ``optax.inject_hyperparams`` passes, traced under jit) is checked when the
  step runs (``_checks.error_if``), as optax's own ``apply_if_finite``
  takes it.
  """
  message = 'max_consecutive_errors must be an int >= 0, got {}.'
  dtype = getattr(value, 'dtype', None)
  if isinstance(value, (bool, np.bool_)) or (
    dtype is not None and dtype == np.bool_
  ):
    raise TypeError(message.format(repr(value)))
  if isinstance(value, numbers.Integral):
    if value < 0:
      raise ValueError(message.format(repr(value)))
    return int(value)
  if (
    dtype is None
    or np.ndim(value) != 0
    or not jnp.issubdtype(dtype, jnp.integer)
  ):
    raise TypeError(
      message.format(repr(value)) + ' (An integer scalar array, as '
      'optax.inject_hyperparams passes, is taken too.)'
    )
  return _checks.error_if(value < 0, message, value, result=value)


@_arrays.scalar_leaves
def apply_if_finite(
  inner: optax.GradientTransformation,
  max_consecutive_errors: int,
) -> optax.GradientTransformationExtraArgs:
  """Skips a step whose input or output holds a NaN or Inf.

  The input: ``grads``, the ``params`` and every floating-point extra
  argument (``prev_grads``, ``grad_diff_variance`` for adaptive anchoring,
  ...). The output: the updates of the inner transformation, which can
  overflow from finite input (a float16 estimator, a huge learning rate).

  :func:`optax.apply_if_finite` inspects only the first argument of ``update``.
  In a SPIDER recursive step a non-finite ``prev_grads`` would pass that check
  and poison the estimator for every step until the next anchor. This guard,
  with the signature and state (:class:`optax.ApplyIfFiniteState`) of
  optax's, also inspects ``prev_grads``. A rejected step returns zero updates
  and leaves the inner state (the estimator and the previous params) as it
  was, so the next step continues from the last good estimate. After more
  than ``max_consecutive_errors`` rejected steps in a row it gives up and
  applies the update, as optax's does.

  Examples:
    >>> import jax.numpy as jnp, spider_optax as so
    >>> tx = so.apply_if_finite(so.spider(0.1), max_consecutive_errors=3)
    >>> params = {'w': jnp.array([1.0])}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({'w': jnp.array([1.0])}, state, params)
    >>> updates, state = tx.update({'w': jnp.array([1.0])}, state, params,
    ...                            prev_grads={'w': jnp.array([jnp.nan])})
    >>> print(updates['w'], int(state.total_notfinite))
    [0.] 1

  Args:
    inner: the transformation to guard, e.g. :func:`spider_optax.spider`.
    max_consecutive_errors: how many non-finite steps in a row to skip before
      giving up and applying them: an int >= 0, or an integer scalar array
      (under ``optax.inject_hyperparams``, checked when the step runs).

  Returns:
    A :class:`optax.GradientTransformationExtraArgs`.
  """
  max_consecutive_errors = _count_limit(max_consecutive_errors)
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    return optax.ApplyIfFiniteState(
      notfinite_count=jnp.zeros([], jnp.int32),
      last_finite=jnp.array(True, jnp.bool_),
      total_notfinite=jnp.zeros([], jnp.int32),
      inner_state=inner.init(params),
    )

  def update_fn(updates, state, params=None, **extra_args):
    _checks.check_state(state, optax.ApplyIfFiniteState, 'so.apply_if_finite')
    with _checks.overflow_counted():  # an overflow is a step to skip
      new_updates, new_state = inner.update(
        updates, state.inner_state, params, **extra_args
      )
    # Every array the update receives but the params (grads and every extra
    # argument: prev_grads, grad_diff_variance, ...), and what it returns: an
    # estimator that overflows its dtype makes inf from finite input.
    # The params too: NaN params would be kept as x_{k-1} (a paired
    # estimator's previous point) and never counted.
    isfinite = _checks.all_finite((updates, extra_args, new_updates, params))
    notfinite_count = jnp.where(
      isfinite, 0, optax.safe_increment(state.notfinite_count)
    )
    # One trace of the inner update, its result selected: zeros and the old
    # inner state (the estimator, the previous params) for a skipped step.
    apply = isfinite | (notfinite_count > max_consecutive_errors)
    updates = jax.tree.map(
      lambda u: jnp.where(apply, u, jnp.zeros_like(u)), new_updates
    )
    inner_state = jax.tree.map(
      lambda new, old: jnp.where(apply, new, old), new_state, state.inner_state
    )
    return updates, optax.ApplyIfFiniteState(
      notfinite_count=notfinite_count.astype(jnp.int32),
      last_finite=isfinite,
      total_notfinite=jnp.where(
        isfinite,
        state.total_notfinite,
        optax.safe_increment(state.total_notfinite),
      ).astype(jnp.int32),
      inner_state=inner_state,
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
