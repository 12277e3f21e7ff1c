"""Python and NumPy scalar leaves, taken as optax takes them."""

import functools
import numbers
from collections.abc import Callable
from typing import Any, ParamSpec

import jax
import jax.numpy as jnp
import numpy as np
import optax

Args = ParamSpec('Args')


def as_arrays(tree: Any) -> Any:
  """``tree`` with each Python or NumPy number leaf as a JAX scalar array.

  optax takes params such as ``{'w': 1.0}``; the transformations here read
  ``.dtype`` and ``.shape`` of every leaf. Other leaves (arrays, tracers,
  ``optax.MaskedNode``, optax's params placeholders) are left as they are.
  """
  if tree is None:
    return None
  scalar = lambda x: (
    isinstance(x, (numbers.Number, np.generic))
    and not (isinstance(x, (bool, np.bool_)))
  )
  return jax.tree.map(lambda x: jnp.asarray(x) if scalar(x) else x, tree)


def scalar_leaves(
  factory: Callable[Args, optax.GradientTransformation],
) -> Callable[Args, optax.GradientTransformationExtraArgs]:
  """``factory`` whose transformations take Python and NumPy scalar leaves.

  ``init``'s params, and ``update``'s updates, params and tree-valued extra
  arguments (``prev_grads``), pass through :func:`as_arrays` first.
  """

  @functools.wraps(factory)
  def wrapped(*args: Args.args, **kwargs: Args.kwargs):
    tx = optax.with_extra_args_support(factory(*args, **kwargs))

    def init_fn(params):
      return tx.init(as_arrays(params))

    def update_fn(updates, state, params=None, **extra_args):
      extra_args = {k: as_arrays(v) for k, v in extra_args.items()}
      return tx.update(
        as_arrays(updates), state, as_arrays(params), **extra_args
      )

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)

  return wrapped
