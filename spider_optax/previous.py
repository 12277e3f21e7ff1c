"""The whole model's previous parameters, for partitioned and masked chains."""

from typing import Any, NamedTuple

import jax
import optax

from spider_optax import _arrays
from spider_optax import _buffers
from spider_optax import _checks


def masked_like(tree: Any, updates: optax.Updates) -> Any:
  """``tree`` with ``optax.MaskedNode`` wherever ``updates`` has one.

  ``optax.partition``, ``multi_transform`` and ``masked`` mask the updates
  and params of each group, but pass extra arguments such as ``prev_grads``
  whole unless built with ``mask_compatible_extra_args=True``: this masks
  them the same way, so that an estimator inside works as written.
  """
  is_masked = lambda x: isinstance(x, optax.MaskedNode)
  if tree is None or not any(
    is_masked(x) for x in jax.tree.leaves(updates, is_leaf=is_masked)
  ):
    return tree
  mask_def = jax.tree.structure(updates, is_leaf=is_masked)
  if mask_def.num_leaves != len(jax.tree.leaves(tree)):
    return tree  # Not the whole params' shape: the checks will say so.
  try:
    whole = mask_def.flatten_up_to(tree)
  except (ValueError, TypeError):
    return tree
  leaves = [
    u if is_masked(u) else x
    for u, x in zip(jax.tree.leaves(updates, is_leaf=is_masked), whole)
  ]
  return jax.tree.unflatten(mask_def, leaves)


class KeepPrevParamsState(NamedTuple):
  """State of :func:`keep_prev_params`.

  Attributes:
    prev_params: the params :math:`x_k` passed to the last update, i.e. the
      previous parameters :math:`x_{k-1}` of the next step, for every leaf
      of the model; equal to the initial params before the first update.
  """

  prev_params: optax.Params


@_arrays.scalar_leaves
def keep_prev_params() -> optax.GradientTransformationExtraArgs:
  r"""Keeps the whole model's previous parameters :math:`x_{k-1}`.

  Passes the updates through unchanged and keeps the params of the last
  update. Put it first in a chain whose paired-gradient estimator sits inside
  ``optax.partition``, ``optax.multi_transform`` or ``optax.masked``: there
  the estimator sees, and keeps, only its own group's params, while the
  paired gradient :math:`\nabla f(x_{k-1})` needs the previous point of the
  whole model (every group moved at the last step). With it,
  :func:`spider_optax.prev_params` returns the whole :math:`x_{k-1}`.

  It also lets one global clipping norm span the groups: estimators inside
  the partition, :func:`relaxed_clip` after it, learning rates last (see the
  example).

  Examples:
    SPIDER on the weights, Adam on the bias:

    >>> import jax, jax.numpy as jnp, optax, spider_optax as so
    >>> labels = {'w': 'spider', 'b': 'adam'}
    >>> tx = optax.chain(
    ...   so.keep_prev_params(),
    ...   optax.partition(
    ...     {'spider': so.spider(0.1, 1.0), 'adam': optax.adam(0.1)}, labels),
    ... )
    >>> loss_fn = lambda p, x: jnp.sum((x * p['w'] + p['b'] - 1.0) ** 2)
    >>> params = {'w': jnp.zeros(2), 'b': jnp.zeros(2)}
    >>> state = tx.init(params)
    >>> grads = jax.grad(loss_fn)(params, 2.0)  # the anchor step
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> grads, prev_grads = so.paired_grad(loss_fn)(
    ...   params, so.prev_params(state), 2.0)
    >>> updates, state = tx.update(
    ...   grads, state, params, prev_grads=prev_grads)

    One clipping norm across both groups, with a learning rate for each:

    >>> tx = optax.chain(
    ...   so.keep_prev_params(),
    ...   optax.partition({'spider': so.spider_estimator(),
    ...                    'adam': optax.identity()}, labels),
    ...   so.relaxed_clip(c0=1.0),
    ...   optax.partition({'spider': optax.scale_by_learning_rate(0.1),
    ...                    'adam': optax.adam(0.01)}, labels),
    ... )

  Returns:
    A :class:`optax.GradientTransformationExtraArgs` with a
    :class:`KeepPrevParamsState`; ``update`` needs ``params``.
  """

  def init_fn(params):
    _checks.check_float_params('keep_prev_params', params)
    # A buffer of its own, so that params and state can be donated together.
    return KeepPrevParamsState(prev_params=jax.tree.map(_buffers.copy, params))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _checks.check_state(state, KeepPrevParamsState, 'keep_prev_params')
    if params is None:
      raise ValueError(
        'keep_prev_params needs params: call tx.update(grads, state, '
        'params, ...), so that it can keep them.'
      )
    _checks.check_state_matches(
      'state.prev_params', state.prev_params, params, check_dtypes=True
    )
    kept = jax.tree.map(_buffers.overwrite, state.prev_params, params)
    return updates, KeepPrevParamsState(prev_params=kept)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)  # pyright: ignore[reportArgumentType]
