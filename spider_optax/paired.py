"""Gradients at the current and previous parameters on the same minibatch."""

from typing import Any, Callable

import jax
import jax.numpy as jnp

from spider_optax import _checks


def paired_value_and_grad(
    loss_fn: Callable[..., Any],
    has_aux: bool = False,
    *,
    vectorized: bool = True,
) -> Callable[..., tuple[Any, Any]]:
  r"""``jax.value_and_grad(loss_fn)`` at two parameter sets on one batch.

  SPIDER's recursive step needs :math:`\nabla f_{S_2}(x_k)` and
  :math:`\nabla f_{S_2}(x_{k-1})` on the *same* minibatch :math:`S_2` (same
  data, same dropout key). The returned function evaluates both in one traced
  computation:

  .. code-block:: python

    (value, grads), (prev_value, prev_grads) = so.paired_value_and_grad(
        loss_fn)(params, prev_params, *args, **kwargs)

  Each half is exactly what ``jax.value_and_grad(loss_fn, has_aux)`` returns
  at that point; with ``has_aux=True`` the value is ``(loss, aux)``. Only the
  first argument of ``loss_fn`` is differentiated; ``args`` and ``kwargs``
  (the batch, an RNG key) are shared by both points.

  Examples:
    >>> import jax.numpy as jnp, spider_optax as so
    >>> loss_fn = lambda p, x: jnp.sum((p['w'] * x) ** 2)
    >>> (value, grads), (prev_value, prev_grads) = so.paired_value_and_grad(
    ...     loss_fn)({'w': jnp.array(2.0)}, {'w': jnp.array(1.0)}, 3.0)
    >>> print(value, grads['w'], prev_value, prev_grads['w'])
    36.0 36.0 9.0 18.0

  Args:
    loss_fn: a function ``(params, *args, **kwargs) -> loss`` (or
      ``(loss, aux)`` with ``has_aux=True``), as for ``jax.value_and_grad``.
    has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
    vectorized: evaluate both points with one ``jax.vmap`` over the stacked
      parameter sets (one batched forward/backward, which uses the hardware
      better at small batch sizes, at the cost of stacking the two parameter
      copies), or, when False, as two gradient calls in the same trace.

  Returns:
    A function ``(params, prev_params, *args, **kwargs)`` returning the pair
    ``(value_and_grad at params, value_and_grad at prev_params)``.
  """
  value_and_grad = jax.value_and_grad(loss_fn, has_aux=has_aux)

  def paired(params, prev_params, *args, **kwargs):
    _checks.check_trees_match(
        'params', params, 'prev_params', prev_params,
        hint='Pass so.prev_params(opt_state) of the optimizer that updates '
        'these params.')
    at = lambda p: value_and_grad(p, *args, **kwargs)
    if not vectorized:
      return at(params), at(prev_params)
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), params, prev_params)
    both = jax.vmap(at)(stacked)  # args/kwargs are closed over: not mapped.
    return jax.tree.map(lambda x: x[0], both), jax.tree.map(lambda x: x[1], both)

  return paired


def paired_grad(
    loss_fn: Callable[..., Any],
    has_aux: bool = False,
    *,
    vectorized: bool = True,
) -> Callable[..., tuple[Any, Any]]:
  r"""``jax.grad(loss_fn)`` at two parameter sets on one batch.

  .. code-block:: python

    grads, prev_grads = so.paired_grad(loss_fn)(
        params, so.prev_params(opt_state), batch)
    updates, opt_state = tx.update(
        grads, opt_state, params, prev_grads=prev_grads)

  With ``has_aux=True`` each half is ``(grads, aux)``, as ``jax.grad``
  returns. See :func:`paired_value_and_grad` for the arguments.

  Examples:
    >>> import jax.numpy as jnp, spider_optax as so
    >>> loss_fn = lambda p, x: jnp.sum((p['w'] * x) ** 2)
    >>> grads, prev_grads = so.paired_grad(loss_fn)(
    ...     {'w': jnp.array(2.0)}, {'w': jnp.array(1.0)}, 3.0)
    >>> print(grads['w'], prev_grads['w'])
    36.0 18.0
  """
  paired = paired_value_and_grad(loss_fn, has_aux, vectorized=vectorized)

  def paired_grads(params, prev_params, *args, **kwargs):
    (value, grads), (prev_value, prev_grads) = paired(
        params, prev_params, *args, **kwargs)
    if has_aux:
      return (grads, value[1]), (prev_grads, prev_value[1])
    return grads, prev_grads

  return paired_grads
