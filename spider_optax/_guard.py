"""What every public optimizer does around its chain.

Takes scalar leaves (:mod:`spider_optax._arrays`), makes every
parameter-shaped state leaf sharded like its param, and checks that update
gets a state its own init makes.
"""

import functools
from collections.abc import Callable
from typing import Any, ParamSpec

import jax
import numpy as np
import optax
from jax.experimental import shard_alike

from spider_optax import _arrays
from spider_optax import _checks

Args = ParamSpec('Args')


def _paths(tree: Any) -> tuple[str, ...]:
  return tuple(
    jax.tree_util.keystr(path)
    for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
  )


def _signature(tree: Any) -> Any:
  """A hashable key of ``tree``'s structure, shapes and dtypes."""
  leaves, treedef = jax.tree.flatten(tree)
  return treedef, tuple(
    (np.shape(x), str(jax.numpy.result_type(x))) for x in leaves
  )


def state_checked(
  tx: optax.GradientTransformation, what: str
) -> optax.GradientTransformationExtraArgs:
  """``tx`` whose update first checks that ``tx.init`` makes such a state.

  The same leaves at the same paths as ``tx.init`` makes for these params.

  A state made by another optimizer, by another configuration of this one
  (``adamw_1d``, ``approx``, ``lean``, a ``mask``) or for params of another
  structure would otherwise fail deep inside a chain (an ``AttributeError``,
  optax's "number of updates and states" error) or, where two states happen
  to fit, run silently wrong. The leaves' paths are compared (not the
  container types, so a Flax ``nnx.Optimizer``'s pure state passes); shapes
  and dtypes are left to the transformations' own checks, which name the
  leaf. The expected paths come from ``jax.eval_shape(tx.init, params)``,
  once per params structure, shapes and dtypes (at trace time under jit).
  """
  tx = optax.with_extra_args_support(tx)
  expected: dict[Any, tuple[str, ...]] = {}

  def update_fn(updates, state, params=None, **extra_args):
    tree = updates if params is None else params
    key = _signature(tree)
    if key not in expected:
      expected[key] = _paths(jax.eval_shape(tx.init, tree))
    want, got = expected[key], _paths(state)
    if want != got:
      lacking = [p for p in want if p not in set(got)]
      extra = [p for p in got if p not in set(want)]
      detail = (
        f'tx.init makes state{lacking[0]}, which this state lacks'
        if lacking
        else f'this state has state{extra[0]}, which tx.init does not make'
        if extra
        else 'its leaves are in another order than tx.init makes them'
      )
      raise TypeError(
        f'{what} got a state that its init does not make for these params '
        f'({detail}). The state was made by another optimizer, by another '
        'configuration of this one (e.g. adamw_1d, approx, lean or mask), or '
        'for params of another structure: rebuild the state with '
        f'tx.init(params). {_checks.RESTORE_HINT}'
      )
    return tx.update(updates, state, params, **extra_args)

  return optax.GradientTransformationExtraArgs(tx.init, update_fn)


def _is_masked(x: Any) -> bool:
  return isinstance(x, optax.MaskedNode)


def sharded_init(
  tx: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
  """``tx`` whose init shards each parameter-shaped state leaf as its param.

  optax's moments (``optax.ema``, ``optax.scale_by_adam``) start as
  ``jnp.zeros_like(params)``, which under ``jax.jit`` on a mesh with Auto
  axes is a constant XLA replicates on every device: a state as large as
  the model on each device. The leaves that correspond to params
  (:func:`optax.tree_utils.tree_map_params`) are tied to them with
  ``shard_alike``; the others (counts, scalars) are left as they are.
  """
  tx = optax.with_extra_args_support(tx)

  def like(leaf, param):
    if (
      _is_masked(leaf)
      or not hasattr(leaf, 'shape')
      or not hasattr(param, 'shape')
      or leaf.shape != param.shape
    ):
      return leaf
    return shard_alike.shard_alike(leaf, param)[0]

  def init_fn(params):
    state = tx.init(params)
    try:
      return optax.tree_utils.tree_map_params(
        tx, like, state, params, is_leaf=_is_masked
      )
    except (ValueError, TypeError):
      # tree_map_params inits on placeholders, which an init that reads its
      # params' tree (a Muon spec given as a tree) refuses: the state is then
      # returned as XLA lays it out.
      return state

  return optax.GradientTransformationExtraArgs(init_fn, tx.update)


def public(
  factory: Callable[Args, optax.GradientTransformation],
) -> Callable[Args, optax.GradientTransformationExtraArgs]:
  """The wrappers of a public optimizer's factory (see the module doc)."""

  @functools.wraps(factory)
  def wrapped(*args: Args.args, **kwargs: Args.kwargs):
    tx = sharded_init(factory(*args, **kwargs))
    return state_checked(tx, f'so.{factory.__name__}')

  return _arrays.scalar_leaves(wrapped)
