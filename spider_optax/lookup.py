"""Finding and reading sub-states inside any optimizer state.

A state is found by its NamedTuple's name with
:func:`optax.tree_utils.tree_get_all_with_path`, wherever it sits: in a chain,
under ``optax.inject_hyperparams``, ``optax.apply_if_finite`` or
:func:`spider_optax.apply_if_finite`, or in a Flax optimizer's state.
:func:`prev_params` and :func:`diagnostics` are the public readers.
"""

from typing import Any, TypeVar

import chex
import jax
import optax

from spider_optax import _checks
from spider_optax.clipping import RelaxedClipState
from spider_optax.estimator import SpiderEstimatorState
from spider_optax.lean import LeanSpiderState
from spider_optax.lean import rebuild_prev_params

State = TypeVar('State')


def find_all(state: Any, kind: type[State]) -> list[State]:
  """Every sub-state of ``state`` that is a ``kind`` (a NamedTuple class)."""
  found = optax.tree_utils.tree_get_all_with_path(state, kind.__name__)
  return [value for _, value in found if isinstance(value, kind)]


def find_one(state: Any, kind: type[State], *, what: str, build: str) -> State:
  """The one ``kind`` inside ``state``, or a ValueError that says what to do.

  Args:
    state: an optimizer state.
    kind: the NamedTuple class of the state to find.
    what: the transformation's name, for the messages.
    build: how to build an optimizer that has one, for the messages.
  """
  found = find_all(state, kind)
  if not found:
    raise ValueError(
      f'This optimizer state holds no {what} state. {build}, then pass the '
      f'state that tx.init returned. {_checks.RESTORE_HINT}'
    )
  if len(found) > 1:
    raise ValueError(
      f'This optimizer state holds {len(found)} {what} states; exactly one '
      'is needed here. Pass the sub-state of the one you mean.'
    )
  return found[0]


def estimator_state(state: Any) -> SpiderEstimatorState | LeanSpiderState:
  """The one SPIDER estimator state inside ``state`` (lean or not).

  Both have the counters (``count``, ``steps_since_anchor``) that anchoring
  reads; a lean state has no ``diagnostics``.
  """
  lean = find_all(state, LeanSpiderState)
  if lean and not find_all(state, SpiderEstimatorState):
    return find_one(state, LeanSpiderState, what='lean spider', build='')
  return find_one(
    state,
    SpiderEstimatorState,
    what='spider_estimator',
    build='Build the optimizer with so.spider(...) or put '
    'so.spider_estimator() first in your optax.chain',
  )


class _NoPrevParamsError(ValueError):
  """A state without previous parameters (no paired-gradient estimator)."""


def prev_params(state: Any, params: optax.Params | None = None) -> optax.Params:
  """The previous parameters :math:`x_{k-1}` kept by a paired-gradient state.

  Finds the sub-states with a ``prev_params`` field wherever they sit (see
  the module docstring): :func:`spider_optax.spider_estimator`'s, an
  exact-mode recursive correction's (:func:`spider_optax.mars_adamw` with
  ``approx=False``, :func:`spider_optax.storm`), or
  :func:`spider_optax.keep_prev_params`'s. Inside ``optax.partition`` an
  estimator keeps only its group's leaves; the copies are merged, leaf by
  leaf. Pass the result to :func:`spider_optax.paired_grad` as the second
  parameter set.

  Examples:
    >>> import jax.numpy as jnp, spider_optax as so
    >>> params = {'w': jnp.array([1.0, 2.0])}
    >>> state = so.spider(0.1).init(params)
    >>> print(so.prev_params(state)['w'])
    [1. 2.]

  A lean state (``so.spider(..., lean=True)``) keeps no copy: it rebuilds
  :math:`x_{k-1}` from the current ``params`` (see
  :func:`spider_optax.lean.lean_spider`).

  Args:
    state: an optimizer state that holds such sub-states for one model.
    params: the current params :math:`x_k`, those passed to this step's
      update; needed by a lean state, ignored otherwise.

  Returns:
    The params passed to the last update (the initial params before the
    first update).

  Raises:
    ValueError: if the state holds none, or sets for different params, or
      leaves no set covers (groups of a partition without an estimator: add
      :func:`keep_prev_params`).
  """
  in_a_state = lambda path, value: (
    value is not None and isinstance(path[-1], optax.tree_utils.NamedTupleKey)
  )
  found_with_path = optax.tree_utils.tree_get_all_with_path(
    state, 'prev_params', filtering=in_a_state
  )
  if any(
    getattr(key, 'tuple_name', None) == 'MultiStepsState'
    for path, _ in found_with_path
    for key in path
  ):
    raise ValueError(
      'optax.MultiSteps averages the grads of its micro-batches but passes '
      "on only the last micro-batch's prev_grads, so a paired-gradient "
      'step inside it would be silently wrong. Accumulate both together '
      'instead, in one jitted step: so.paired_grad(loss_fn, '
      'microbatches=k)(params, so.prev_params(state), batch).'
    )
  found = [value for _, value in found_with_path]
  lean = find_all(state, LeanSpiderState)
  if lean and not found:  # (a kept copy, e.g. keep_prev_params, comes first)
    if len(lean) > 1 or any(
      _is_masked(x)
      for x in jax.tree.leaves(lean[0].estimate, is_leaf=_is_masked)
    ):
      raise ValueError(
        'so.spider(..., lean=True) sits inside optax.masked, '
        'optax.partition or multi_transform here: it holds only its '
        "group's leaves, so it cannot rebuild the whole model's previous "
        'params for the paired gradient. Put so.keep_prev_params() first '
        'in the chain, outside the partition (so.prev_params then reads its '
        'copy), or use lean=False.'
      )
    if params is None:
      raise ValueError(
        'This optimizer state is lean (so.spider(..., lean=True)): it keeps '
        'no copy of the previous params and rebuilds them from the current '
        'ones. Call so.prev_params(state, params) with the params of this '
        'step.'
      )
    return rebuild_prev_params(lean[0], params)
  if not found:
    raise _NoPrevParamsError(
      'This optimizer state keeps no previous parameters. Build the '
      'optimizer with so.spider(...), so.storm(...) or '
      'so.mars_adamw(..., approx=False), then pass the state that tx.init '
      f'returned. {_checks.RESTORE_HINT}'
    )
  kept = [
    any(getattr(k, 'tuple_name', None) == 'KeepPrevParamsState' for k in path)
    for path, _ in found_with_path
  ]
  return _merged(found, kept)


def _is_masked(x: Any) -> bool:
  return isinstance(x, optax.MaskedNode)


def _merged(found: list[Any], kept: list[bool]) -> optax.Params:
  """One x_{k-1} from every kept copy: each leaf from a copy that has it.

  Inside ``optax.partition``, ``multi_transform`` or ``masked`` an estimator
  keeps only its group's leaves (``optax.MaskedNode`` elsewhere). Two
  estimators may not both keep a leaf (which of them is the paired gradient
  for?); :func:`keep_prev_params` (``kept``) may overlap any of them, as it
  holds the same params of the last update.
  """
  flat = [jax.tree_util.tree_flatten(f, is_leaf=_is_masked) for f in found]
  if any(treedef != flat[0][1] for _, treedef in flat):
    raise ValueError(
      f'This optimizer state holds {len(found)} sets of previous parameters '
      'for different params; so.prev_params needs one model. Pass the '
      'sub-state of the one you mean.'
    )
  paths = [
    jax.tree_util.keystr(path)
    for path, _ in jax.tree_util.tree_flatten_with_path(
      found[0], is_leaf=_is_masked
    )[0]
  ]
  for i, column in enumerate(zip(*(leaves for leaves, _ in flat))):
    holders = [
      x for x, keep in zip(column, kept) if not keep and not _is_masked(x)
    ]
    if len(holders) > 1:
      raise ValueError(
        f'This optimizer state holds {len(holders)} paired-gradient '
        f'estimators that each keep the previous params of params{paths[i]}: '
        'so.prev_params cannot tell which one the paired gradient is for. '
        'Give each leaf one estimator (optax.partition, or optax.masked), '
        'or pass the sub-state of the one you mean.'
      )
  leaves = [
    next((x for x in column if not _is_masked(x)), column[0])
    for column in zip(*(leaves for leaves, _ in flat))
  ]
  # One complete copy is returned as it is (the same object).
  merged = (
    found[0] if len(found) == 1 else jax.tree.unflatten(flat[0][1], leaves)
  )
  missing = [
    jax.tree_util.keystr(path)
    for path, x in jax.tree_util.tree_flatten_with_path(
      merged, is_leaf=_is_masked
    )[0]
    if _is_masked(x)
  ]
  if missing:
    raise ValueError(
      f'No transformation keeps the previous parameters of '
      f'{", ".join(missing[:5])}{" ..." if len(missing) > 5 else ""}: they '
      'sit in groups of optax.partition, multi_transform or masked without '
      'a paired-gradient estimator, and the paired gradient needs the whole '
      "model's previous point. Put so.keep_prev_params() first in the "
      'chain, outside the partition: optax.chain(so.keep_prev_params(), '
      'optax.partition(...)).'
    )
  return merged


def diagnostics(state: Any) -> dict[str, chex.Array]:
  r"""What the last update saw, for logging; no gradient is evaluated.

  Needs an estimator built with ``diagnostics=True`` (e.g.
  ``so.spider(lr, c0, c1, diagnostics=True)``). Works inside ``jax.jit``.

  Examples:
    >>> import jax.numpy as jnp, spider_optax as so
    >>> tx = so.spider(0.5, c0=1.0, diagnostics=True)
    >>> x0 = {'w': jnp.array([1.0, 1.0])}
    >>> state = tx.init(x0)
    >>> _, state = tx.update({'w': jnp.array([4.0, 0.0])}, state, x0)
    >>> x1 = {'w': jnp.array([0.5, 1.0])}  # step of length 0.5
    >>> _, state = tx.update({'w': jnp.array([3.0, 0.0])}, state, x1,
    ...                      prev_grads={'w': jnp.array([4.0, 0.0])})
    >>> d = so.diagnostics(state)
    >>> print(d['smoothness'], d['estimate_norm'], d['clip_factor'])
    2.0 3.0 0.33333334

  Args:
    state: an optimizer state that contains one
      :class:`~spider_optax.SpiderEstimatorState` with diagnostics.

  Returns:
    A dict of scalars: the fields of :class:`~spider_optax.SpiderDiagnostics`
    (``smoothness`` is :math:`\hat L_k`), ``steps_since_anchor``, and, if the
    state holds one :func:`~spider_optax.relaxed_clip` state, its
    ``clip_factor``.

  Raises:
    ValueError: if the estimator keeps no diagnostics.
  """
  estimator = estimator_state(state)
  if isinstance(estimator, LeanSpiderState) or estimator.diagnostics is None:
    raise ValueError(
      'This estimator keeps no diagnostics: build it with '
      'so.spider(..., diagnostics=True) or '
      'so.spider_estimator(diagnostics=True).'
    )
  out = dict(estimator.diagnostics._asdict())
  out['steps_since_anchor'] = estimator.steps_since_anchor
  clips = find_all(state, RelaxedClipState)
  if len(clips) == 1:
    out['clip_factor'] = clips[0].clip_factor
  return out
