"""Masks as ``optax.masked`` reads them, checked leaf by leaf."""

from collections.abc import Callable
from typing import Any

import jax
import jax.core
import numpy as np
import optax

Mask = Any | Callable[[optax.Params], Any] | None


def is_callable_mask(mask: Any) -> bool:
  """Whether ``mask`` is a function of the params, as optax.masked tells.

  Every leaf of it callable: a function, or a tree of them.
  """
  leaves = jax.tree.leaves(jax.tree.map(callable, mask))
  return bool(leaves) and all(leaves)


def _bool_of(name: str, path: str, leaf: Any, *, returned: bool) -> bool:
  """``leaf`` as a Python bool, or a TypeError that names it.

  ``returned``: the leaf came from a callable mask, which runs inside the
  traced step, where a JAX array is a tracer; it must give Python or NumPy
  bools, eager too (one verdict either way).
  """
  where = f'{name}{path}'
  if isinstance(leaf, (bool, np.bool_)):
    return bool(leaf)
  if isinstance(leaf, jax.core.Tracer) or (
    returned and isinstance(leaf, jax.Array)
  ):
    raise TypeError(
      f'{where} is a JAX array, which is traced under jax.jit: a mask must '
      'be known when the step is traced. Return Python or NumPy bools, '
      'computed from shapes and names, e.g. lambda p: jax.tree.map(lambda '
      'x: x.ndim > 1, p).'
    )
  dtype = getattr(leaf, 'dtype', None)
  if dtype is not None and dtype == np.bool_ and np.ndim(leaf) == 0:
    return bool(leaf)
  if dtype is not None and dtype == np.bool_:
    raise TypeError(
      f'{where} is a bool array of shape {np.shape(leaf)}: a mask gives one '
      'bool per params leaf (True: transform the whole leaf). To freeze '
      'some entries of a leaf, split it in two leaves, or multiply its '
      'updates by a 0/1 array after the optimizer.'
    )
  if isinstance(leaf, str):
    raise TypeError(
      f'{where} is the string {leaf!r}: a mask takes bools (True: '
      'transform this leaf). String labels are what optax.partition takes: '
      'to give groups of leaves their own optimizers, use '
      'optax.partition({label: tx, ...}, labels).'
    )
  raise TypeError(
    f'{where} is {leaf!r} of type {type(leaf).__name__}: a mask takes bools '
    '(True: transform this leaf), as optax.masked does.'
  )


def resolve(mask: Mask, tree: Any, *, name: str = 'mask') -> Any:
  """The mask of ``tree``: one Python bool per leaf, ``tree``'s structure.

  ``mask`` means what it means to :func:`optax.masked`: None (every leaf), a
  tree of bools with the structure of ``tree`` or a prefix of it (a bool for
  a whole subtree), or a callable returning one. Anything else raises a
  ``TypeError`` (a leaf that is not a bool) or a ``ValueError`` (a structure
  that is not a prefix of ``tree``) naming the leaf, eager and under jit
  alike (masks are static).
  """
  if mask is None:
    return jax.tree.map(lambda _: True, tree)
  returned = is_callable_mask(mask)
  mask_tree = mask(tree) if returned else mask
  paths = jax.tree_util.tree_flatten_with_path(mask_tree)[0]
  checked = jax.tree.unflatten(
    jax.tree.structure(mask_tree),
    [
      _bool_of(name, jax.tree_util.keystr(p), x, returned=returned)
      for p, x in paths
    ],
  )
  try:
    return jax.tree.broadcast(checked, tree)
  except (ValueError, TypeError):
    pass
  mask_paths = [p for p, _ in paths]
  tree_paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
  for m in mask_paths:
    if not any(p[: len(m)] == m for p in tree_paths):
      raise ValueError(
        f'{name}{jax.tree_util.keystr(m)} has no params leaf under it: a mask '
        'is a tree of bools with the structure of the params (or a prefix '
        'of it).'
      ) from None
  for path in tree_paths:
    if not any(path[: len(m)] == m for m in mask_paths):
      raise ValueError(
        f'{name} has no entry for params{jax.tree_util.keystr(path)}: a mask '
        'is a tree of bools with the structure of the params (or a prefix '
        'of it, a bool for a whole subtree), e.g. jax.tree.map(lambda x: '
        'x.ndim > 1, params).'
      ) from None
  raise ValueError(
    f'{name} has tree structure {jax.tree.structure(mask_tree)}, which is '
    f"not a prefix of the params' {jax.tree.structure(tree)}: give one bool "
    'per leaf (or per subtree).'
  ) from None


def checked(mask: Mask, *, name: str = 'mask') -> Mask:
  """``mask``, checked by :func:`resolve` on the params it is applied to.

  For ``optax.masked`` or a transformation built on it (e.g.
  ``optax.add_decayed_weights``). None stays None.
  """
  if mask is None:
    return None
  return lambda tree: resolve(mask, tree, name=name)
