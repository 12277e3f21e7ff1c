"""Argument checks of the public API: clear errors that say what to do."""

import numbers
from typing import Any

import jax
import jax.core
import numpy as np


def is_concrete(value: Any) -> bool:
  """True when ``value`` has a value now (not a tracer inside jit/grad)."""
  return not isinstance(value, jax.core.Tracer)


def check_positive(
  name: str, value: Any, *, allow_none: bool = False, finite: bool = False
) -> None:
  """Raises ValueError unless ``value`` is > 0 (checked only when concrete).

  ``finite=True`` also rejects infinity.

  Traced values (``optax.inject_hyperparams`` under jit) cannot be checked
  without a device round trip, so they pass through.
  """
  if value is None:
    if allow_none:
      return
    raise ValueError(f'{name} must be a positive number, got None.')
  if callable(value) or not is_concrete(value):
    return
  number = as_number(value)
  if number is None:
    raise ValueError(f'{name} must be a positive scalar, got {value!r}.')
  if not number > 0:  # also rejects NaN
    hint = ' Pass None to drop this clipping term.' if allow_none else ''
    raise ValueError(f'{name} must be positive, got {value!r}.{hint}')
  if finite and number == float('inf'):
    raise ValueError(f'{name} must be a finite positive number, got {value!r}.')


def check_trees_match(
  reference_name: str,
  reference: Any,
  name: str,
  tree: Any,
  *,
  check_dtypes: bool = True,
  hint: str = '',
) -> None:
  """Raises if ``tree`` differs from ``reference`` in structure, shape or dtype.

  The error names the first offending leaf path, e.g.
  ``prev_grads['layer']['kernel'] has shape (3, 4) but grads['layer']['kernel']
  has shape (3, 5)``. Shapes and dtypes are static, so this also works under
  ``jax.jit`` (it runs once, at trace time).
  """
  ref_leaves, ref_def = jax.tree_util.tree_flatten_with_path(reference)
  leaves, tree_def = jax.tree_util.tree_flatten_with_path(tree)
  suffix = f' {hint}' if hint else ''
  if ref_def != tree_def:
    ref_paths = {jax.tree_util.keystr(p) for p, _ in ref_leaves}
    paths = {jax.tree_util.keystr(p) for p, _ in leaves}
    missing = sorted(ref_paths - paths)
    extra = sorted(paths - ref_paths)
    if missing:
      detail = (
        f'{name} has no leaf {name}{missing[0]} that {reference_name} has'
      )
    elif extra:
      detail = f'{name} has a leaf {name}{extra[0]} that {reference_name} lacks'
    else:
      detail = (
        f'{name} has tree structure {tree_def} but {reference_name} '
        f'has {ref_def}'
      )
    raise ValueError(f'{detail}.{suffix}')
  for (path, ref_leaf), (_, leaf) in zip(ref_leaves, leaves):
    key = jax.tree_util.keystr(path)
    ref_shape, shape = np.shape(ref_leaf), np.shape(leaf)
    if ref_shape != shape:
      raise ValueError(
        f'{name}{key} has shape {shape} but {reference_name}{key} has shape '
        f'{ref_shape}.{suffix}'
      )
    ref_dtype, dtype = (
      jax.numpy.result_type(ref_leaf),
      jax.numpy.result_type(leaf),
    )
    if check_dtypes and ref_dtype != dtype:
      raise TypeError(
        f'{name}{key} has dtype {dtype} but {reference_name}{key} has dtype '
        f'{ref_dtype}.{suffix}'
      )


def error_if(pred: Any, message: str) -> None:
  """Raises ``ValueError(message)`` where the boolean ``pred`` is True.

  A concrete ``pred`` is checked now. A traced one (inside ``jax.jit``) is
  checked when the computation runs, through ``jax.debug.callback``: the
  error then surfaces, with this message, when the result is read.
  """
  if is_concrete(pred):
    if np.any(pred):
      raise ValueError(message)
    return

  def raise_if(value):
    if np.any(value):
      raise ValueError(message)

  jax.debug.callback(raise_if, pred)


def as_number(value: Any) -> float | None:
  """``value`` as a float when it is a concrete real scalar, else None."""
  try:
    return float(value) if np.ndim(value) == 0 else None
  except (TypeError, ValueError):
    return None


def check_decay(name: str, value: Any) -> None:
  """Raises ValueError unless ``value`` is in [0, 1) (checked when concrete)."""
  if callable(value) or not is_concrete(value):
    return
  number = as_number(value)
  if number is None or not 0 <= number < 1:  # also rejects NaN
    raise ValueError(f'{name} must be a number in [0, 1), got {value!r}.')


def check_nonnegative(name: str, value: Any) -> None:
  """Raises ValueError unless ``value`` is finite and >= 0 (when concrete)."""
  if callable(value) or not is_concrete(value):
    return
  number = as_number(value)
  if number is None or not 0 <= number < float('inf'):  # also rejects NaN
    raise ValueError(f'{name} must be a finite number >= 0, got {value!r}.')


def as_dtype(name: str, value: Any) -> Any:
  """``value`` as a canonical dtype (None stays None).

  Takes a dtype, a dtype's name (``'float32'``) or a scalar type
  (``jnp.float32``). Under ``optax.inject_hyperparams``, which calls every
  callable argument as a schedule, ``jnp.float32`` arrives as
  ``jnp.float32(count)``: a scalar array (or tracer) whose dtype is the one
  meant, so a floating-point scalar array gives its dtype.
  """
  if value is None:
    return None
  dtype = getattr(value, 'dtype', None)
  if (
    dtype is not None
    and np.ndim(value) == 0
    and jax.numpy.issubdtype(dtype, jax.numpy.floating)
  ):
    return jax.dtypes.canonicalize_dtype(dtype)
  try:
    return jax.dtypes.canonicalize_dtype(value)
  except TypeError:
    raise TypeError(
      f'{name} must be a floating-point dtype such as jnp.float32 or '
      f"'float32', got {value!r}."
    ) from None


RESTORE_HINT = (
  'A state restored from a checkpoint without a target is plain dicts and '
  'lists: restore it onto a target built from tx.init, e.g. jax.tree.map('
  'orbax.checkpoint.utils.to_shape_dtype_struct, fresh_state).'
)


def check_state(state: Any, kind: type, what: str) -> None:
  """Raises TypeError unless ``state`` is a ``kind`` (a NamedTuple class).

  The usual cause is a checkpoint restored without a target, whose states are
  plain dicts and lists; the message says so.
  """
  if not isinstance(state, kind):
    raise TypeError(
      f'{what} got a state of type {type(state).__name__} where it needs '
      f'the {kind.__name__} that its init returned. {RESTORE_HINT}'
    )


def check_state_matches(
  state_name: str,
  state_tree: Any,
  params: Any,
  *,
  check_dtypes: bool,
) -> None:
  """Raises if a parameter-shaped part of a state differs from ``params``.

  A state built for other params (structure, shapes or dtypes) would otherwise
  fail with a raw ``lax`` error or, for larger shapes, broadcast silently.
  """
  check_trees_match(
    'params',
    params,
    state_name,
    state_tree,
    check_dtypes=check_dtypes,
    hint='The optimizer state was built for other params: rebuild the state '
    'with tx.init(params).',
  )


def check_count(name: str, value: Any) -> None:
  """Raises ValueError unless ``value`` is a positive int (NumPy ints too)."""
  if (
    isinstance(value, bool)
    or not isinstance(value, numbers.Integral)
    or value <= 0
  ):
    raise ValueError(f'{name} must be a positive int, got {value!r}.')
