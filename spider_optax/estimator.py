"""The SPIDER recursive gradient estimator as an optax transformation."""

from typing import Any, NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp
import optax
from jax.experimental import shard_alike

from spider_optax import _checks
from spider_optax.clipping import global_norm
from spider_optax.clipping import RelaxedClipState

_PREV_GRADS_HINT = (
    'prev_grads must be the gradients of the same loss on the same minibatch '
    'at so.prev_params(state), e.g. from so.paired_grad(loss_fn).')


class SpiderDiagnostics(NamedTuple):
  r"""What one update saw, kept by ``spider_estimator(diagnostics=True)``.

  All float32 scalars; see :func:`diagnostics` for a dict of them.

  Attributes:
    grad_norm: :math:`\|g_k\|`, the gradient passed to the update (the
      anchor gradient on anchor steps).
    grad_diff_norm: :math:`\|g_k - g'_k\|` on the shared minibatch; 0 on
      anchor steps.
    step_norm: :math:`\|x_k - x_{k-1}\|`, the last step taken.
    smoothness: :math:`\hat L_k = \|g_k - g'_k\| / \|x_k - x_{k-1}\|`, the
      local smoothness along the step; NaN on anchor steps and after a zero
      step, where there is no pair to measure.
    estimate_norm: :math:`\|v_k\|`.
    accumulated_error: :math:`\sum_j \|g_j - g'_j\|^2 = \sum_j \hat L_j^2
      \|x_j - x_{j-1}\|^2` over the recursive steps since the last anchor.
      Divided by the minibatch size it is the term of Fang et al. (2018,
      Lemma 1) with minibatch means in place of samples; see
      :func:`anchor_due`.
    accumulated_variance: the sum of the ``grad_diff_variance`` estimates
      passed to the recursive steps since the last anchor (from
      ``so.paired_grad(loss_fn, split_batch=True)``): the variance the
      recursion has added to :math:`v_k`. 0 right after an anchor; NaN once a
      recursive step since the last anchor came without one.
  """
  grad_norm: chex.Array
  grad_diff_norm: chex.Array
  step_norm: chex.Array
  smoothness: chex.Array
  estimate_norm: chex.Array
  accumulated_error: chex.Array
  accumulated_variance: chex.Array


def _no_diagnostics() -> SpiderDiagnostics:
  zero = jnp.zeros([], jnp.float32)
  return SpiderDiagnostics(zero, zero, zero, jnp.full([], jnp.nan), zero, zero,
                           zero)


class SpiderEstimatorState(NamedTuple):
  """State of :func:`spider_estimator`.

  Attributes:
    count: number of updates taken so far (int32), anchors included.
    steps_since_anchor: updates since the last anchor step (int32); 0 right
      after an anchor step.
    estimate: the estimator v_k emitted by the last update, in the estimator
      dtype; zeros before the first update.
    prev_params: the params x_k passed to the last update, i.e. the previous
      parameters x_{k-1} of the next step; read them with
      :func:`prev_params`. Equal to the initial params before the first update.
    diagnostics: a :class:`SpiderDiagnostics` of the last update with
      ``diagnostics=True``, else None.
  """
  count: chex.Array
  steps_since_anchor: chex.Array
  estimate: optax.Updates
  prev_params: optax.Params
  diagnostics: Optional[SpiderDiagnostics] = None


def spider_estimator(
    estimator_dtype: Optional[chex.ArrayDType] = None,
    *,
    diagnostics: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""SPIDER's recursive gradient estimator (Fang et al., 2018).

  Keeps the estimator :math:`v` and the previous parameters in its state and
  replaces the incoming gradients by the estimator:

  .. math::

    v_k = \begin{cases}
      g_k & \text{anchor step (no ``prev\_grads``)} \\
      v_{k-1} + g_k - g'_{k} & \text{recursive step}
    \end{cases}

  where :math:`g_k = \nabla f_{S_2}(x_k)` and
  :math:`g'_k = \nabla f_{S_2}(x_{k-1})` are gradients on the *same* minibatch
  :math:`S_2` at the current and previous params. On an anchor step ``grads``
  should be a large-batch (:math:`S_1`) or full gradient.

  ``update(grads, state, params)`` without ``prev_grads`` is an anchor step;
  ``update(grads, state, params, prev_grads=prev_grads)`` is a recursive step.
  A recursive step may also pass ``grad_diff_variance=``, the estimate of the
  variance it adds to :math:`v` that ``so.paired_grad(loss_fn,
  split_batch=True)`` returns; the diagnostics sum it for
  :func:`anchor_due`.
  Because the two calls differ in their arguments, a jitted training loop
  compiles one anchor step and one recursive step, and the host decides which
  to call (every ``q`` steps an anchor). A recursive step before any anchor has
  no estimate to correct, so it acts as an anchor step (``v_0 = g_0``).

  It must come first in a chain, so that it sees raw gradients. It emits
  :math:`v_k`; chain :func:`relaxed_clip` and a learning rate after it, or
  use :func:`spider`.

  Examples:
    >>> import jax.numpy as jnp, optax, spider_optax as so
    >>> tx = optax.chain(so.spider_estimator(), optax.sgd(0.1))
    >>> params = {'w': jnp.array([1.0, 2.0])}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({'w': jnp.array([1.0, 1.0])}, state, params)
    >>> updates, state = tx.update(
    ...     {'w': jnp.array([3.0, 1.0])}, state, params,
    ...     prev_grads={'w': jnp.array([2.0, 1.0])})
    >>> print(state[0].estimate['w'])
    [2. 1.]

  Args:
    estimator_dtype: dtype of the estimator :math:`v` kept in the state (like
      ``mu_dtype`` in :func:`optax.adam`), e.g. ``jnp.float32`` for bfloat16
      params, so that the running sum does not lose precision. ``None`` uses
      the dtype of the params. The previous params are always kept in the
      params' own dtype.
    diagnostics: also keep a :class:`SpiderDiagnostics` of each update in the
      state (the local smoothness :math:`\hat L_k`, norms, and the error the
      recursion has accumulated), read with :func:`diagnostics`. It costs no
      gradient evaluation, only four global norms per update.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs`.

  References:
    Fang, Li, Lin, Zhang, `SPIDER: Near-Optimal Non-Convex Optimization via
    Stochastic Path Integrated Differential Estimator
    <https://arxiv.org/abs/1807.01695>`_, NeurIPS 2018.

    Reisizadeh, Li, Das, Jadbabaie, `Variance-reduced Clipping for Non-convex
    Optimization <https://arxiv.org/abs/2303.00883>`_, 2023.
  """
  if estimator_dtype is not None:
    estimator_dtype = jax.dtypes.canonicalize_dtype(estimator_dtype)

  def init_fn(params):
    return SpiderEstimatorState(
        count=jnp.zeros([], jnp.int32),
        steps_since_anchor=jnp.zeros([], jnp.int32),
        estimate=jax.tree.map(lambda p: _zeros_like(p, estimator_dtype),
                              params),
        # A buffer of its own: loops that donate params and state together
        # must not donate one buffer twice.
        prev_params=jax.tree.map(jnp.copy, params),
        diagnostics=_no_diagnostics() if diagnostics else None,
    )

  def update_fn(updates, state, params=None, *, prev_grads=None,
                grad_diff_variance=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError(
          'spider_estimator needs params: call tx.update(grads, state, params)'
          ' so that it can keep the previous parameters.')
    _checks.check_trees_match('params', params, 'grads', updates)
    if grad_diff_variance is not None and (
        prev_grads is None or jnp.ndim(grad_diff_variance) != 0):
      raise ValueError(
          'grad_diff_variance must be a scalar, passed with prev_grads on a '
          'recursive step (so.paired_grad(loss_fn, split_batch=True) returns '
          'it).')
    if prev_grads is None:  # Anchor step: reset the estimator.
      estimate = jax.tree.map(
          lambda v, g: _overwrite(v, g.astype(v.dtype)), state.estimate,
          updates)
      steps_since_anchor = jnp.zeros([], jnp.int32)
    else:
      _checks.check_trees_match(
          'grads', updates, 'prev_grads', prev_grads, hint=_PREV_GRADS_HINT)
      anchored = state.count > 0  # A first recursive step acts as an anchor.
      estimate = jax.tree.map(
          lambda v, g, pg: jnp.where(
              anchored, v + (g.astype(v.dtype) - pg.astype(v.dtype)),
              g.astype(v.dtype)),
          state.estimate, updates, prev_grads)
      steps_since_anchor = jnp.where(
          anchored, optax.safe_increment(state.steps_since_anchor), 0)
    new_state = SpiderEstimatorState(
        count=optax.safe_increment(state.count),
        steps_since_anchor=steps_since_anchor.astype(jnp.int32),
        estimate=estimate,
        prev_params=jax.tree.map(_overwrite, state.prev_params, params),
        diagnostics=_measure(state, updates, prev_grads, grad_diff_variance,
                             params, estimate, steps_since_anchor)
        if diagnostics else None,
    )
    return estimate, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _measure(state: SpiderEstimatorState, grads, prev_grads, grad_diff_variance,
             params, estimate, steps_since_anchor) -> SpiderDiagnostics:
  """The :class:`SpiderDiagnostics` of an update (see there)."""
  sub = lambda a, b: jax.tree.map(
      lambda x, y: x.astype(jnp.float32) - y.astype(jnp.float32), a, b)
  step_norm = global_norm(sub(params, state.prev_params))
  recursive = steps_since_anchor > 0  # False on anchors, also first recursive
  if prev_grads is None:
    grad_diff_norm = jnp.zeros([], jnp.float32)
  else:
    grad_diff_norm = jnp.where(recursive, global_norm(sub(grads, prev_grads)),
                               0.0)
  smoothness = jnp.where(recursive & (step_norm > 0),
                         grad_diff_norm / jnp.where(step_norm > 0, step_norm, 1),
                         jnp.nan)
  previous = jnp.where(recursive, state.diagnostics.accumulated_error, 0.0)
  # Unknown (NaN) from the first recursive step that brings no variance.
  variance = jnp.nan if grad_diff_variance is None else grad_diff_variance
  accumulated_variance = jnp.where(
      recursive, state.diagnostics.accumulated_variance + variance, 0.0)
  return SpiderDiagnostics(
      grad_norm=global_norm(grads),
      grad_diff_norm=grad_diff_norm,
      step_norm=step_norm,
      smoothness=smoothness,
      estimate_norm=global_norm(estimate),
      accumulated_error=previous + jnp.square(grad_diff_norm),
      accumulated_variance=accumulated_variance.astype(jnp.float32),
  )


def _zeros_like(x: jax.Array, dtype: Optional[chex.ArrayDType]) -> jax.Array:
  """Zeros shaped and sharded like ``x``, also when traced under ``jax.jit``.

  Under jit on a mesh with Auto axes, ``jnp.zeros_like`` is a constant with no
  link to ``x``, which XLA replicates on every device; ``shard_alike`` gives
  it the sharding of ``x`` (FSDP or tensor-parallel layouts included).
  """
  return shard_alike.shard_alike(jnp.zeros_like(x, dtype=dtype), x)[0]


def _overwrite(old: jax.Array, new: jax.Array) -> jax.Array:
  """``new``, written over ``old`` so that a donated ``old`` buffer is reused.

  XLA compiles this to a plain copy of ``new``, but because ``old`` is used,
  ``jax.jit`` keeps it as an input, and a step that donates the state writes
  the result into ``old``'s buffer. Returning ``new`` alone leaves ``old``
  unused: jit drops it and allocates a fresh output buffer every step, which on
  CPU (fresh pages for every array over glibc's 32 MB mmap threshold) made the
  update 2x slower at 1e7 params.
  """
  return jax.lax.dynamic_update_slice(old, new, (0,) * old.ndim)


def prev_params(state: Any) -> optax.Params:
  """The previous parameters x_{k-1} held by a :func:`spider_estimator` state.

  Finds the estimator's state wherever it sits: in a chain, under
  ``optax.inject_hyperparams``, ``optax.apply_if_finite`` or
  :func:`spider_optax.apply_if_finite`, or in a Flax optimizer's state.

  Examples:
    >>> import jax.numpy as jnp, spider_optax as so
    >>> params = {'w': jnp.array([1.0, 2.0])}
    >>> state = so.spider(0.1).init(params)
    >>> print(so.prev_params(state)['w'])
    [1. 2.]

  Args:
    state: an optimizer state that contains exactly one
      :class:`SpiderEstimatorState`.

  Returns:
    The params passed to the estimator's last update (the initial params
    before the first update).

  Raises:
    ValueError: if the state holds no estimator state, or more than one.
  """
  return estimator_state(state).prev_params


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
    state: an optimizer state that contains one :class:`SpiderEstimatorState`
      with diagnostics.

  Returns:
    A dict of scalars: the fields of :class:`SpiderDiagnostics`
    (``smoothness`` is :math:`\hat L_k`), ``steps_since_anchor``, and, if the
    state holds one :func:`relaxed_clip` state, its ``clip_factor``.

  Raises:
    ValueError: if the estimator keeps no diagnostics.
  """
  estimator = estimator_state(state)
  if estimator.diagnostics is None:
    raise ValueError(
        'This estimator keeps no diagnostics: build it with '
        'so.spider(..., diagnostics=True) or '
        'so.spider_estimator(diagnostics=True).')
  out = dict(estimator.diagnostics._asdict())
  out['steps_since_anchor'] = estimator.steps_since_anchor
  clips = _find(state, RelaxedClipState)
  if len(clips) == 1:
    out['clip_factor'] = clips[0].clip_factor
  return out


def anchor_due(
    state: Any, error_budget: chex.Numeric, batch_size: Optional[int] = None,
) -> chex.Array:
  r"""Whether the next step should be an anchor (adaptive anchoring).

  Instead of a fixed period q, anchor once the variance the recursion has
  added to the estimator since the last anchor exceeds ``error_budget``:
  where the loss curves more, or steps are longer, anchors come sooner. A
  budget of :math:`\epsilon^2/8` for a target :math:`\epsilon` is the variance
  of the anchor batch :math:`S_1 = 8\sigma^2/\epsilon^2` of
  :func:`spider_optax.theory.online`, so that the estimator's error stays
  near :math:`\epsilon^2/4`. The variance added is estimated in one of two
  ways:

  - ``batch_size=None`` (recommended): the sum of the ``grad_diff_variance``
    estimates that the recursive steps since the last anchor passed to the
    update (``accumulated_variance``), from
    ``so.paired_grad(loss_fn, split_batch=True)``. They are unbiased
    estimates of :math:`\mathrm{Var}(g_j - g'_j)` from the two halves of each
    minibatch, at no extra gradient cost; on the benchmarks' tasks their sum
    tracked the true error :math:`\|v_k - \nabla f(x_k)\|^2` within a factor
    of 0.7 to 1.3 (``benchmarks/RESULTS.md``, section 4). If a recursive step
    since the last anchor brought none, the sum is NaN and this returns True,
    so that such a loop anchors at every step rather than never.
  - ``batch_size=S2``: :math:`\frac{1}{S_2} \sum_j \hat L_j^2
    \|x_j - x_{j-1}\|^2 = \frac{1}{S_2} \sum_j \|g_j - g'_j\|^2`
    (``accumulated_error``), which needs nothing from the gradient call: Fang
    et al.'s Lemma 1 term with minibatch means in place of samples. It mixes
    the gradient's mean change along the steps (no error) with the sampling
    noise averaged over :math:`S_2`, and measured 10 times too high on a
    character LSTM and 10 to 20 times too low on an MLP: a heuristic whose
    budget must be tuned.

  Returns a boolean scalar (jit-friendly); a host-side loop reads it once per
  step, e.g. ``so.flax.spider_loop(..., error_budget=...)``.

  Examples:
    >>> import jax, jax.numpy as jnp, spider_optax as so
    >>> loss_fn = lambda p, z: 0.5 * jnp.mean(jnp.sum((p['w'] - z) ** 2, -1))
    >>> tx = so.spider(0.1, diagnostics=True)
    >>> x = {'w': jnp.zeros(2)}
    >>> state = tx.init(x)
    >>> batch = jax.random.normal(jax.random.key(0), (8, 2))
    >>> _, state = tx.update(jax.grad(loss_fn)(x, batch), state, x)  # anchor
    >>> x = {'w': jnp.array([0.1, 0.0])}
    >>> grads, prev_grads, variance = so.paired_grad(loss_fn, split_batch=True)(
    ...     x, so.prev_params(state), batch)
    >>> _, state = tx.update(grads, state, x, prev_grads=prev_grads,
    ...                      grad_diff_variance=variance)
    >>> bool(so.anchor_due(state, error_budget=0.1))
    False

  Args:
    state: an optimizer state with a :class:`SpiderEstimatorState` that keeps
      diagnostics.
    error_budget: the variance the recursion may add (> 0).
    batch_size: None to use the split-half estimates; else the minibatch size
      :math:`S_2` of the recursive steps, for the estimate from the
      minibatch-mean differences.

  Returns:
    A bool scalar, True when the estimated variance exceeds the budget.
  """
  _checks.check_positive('error_budget', error_budget)
  d = diagnostics(state)
  if batch_size is None:
    return ~(d['accumulated_variance'] <= error_budget)  # NaN: anchor
  _checks.check_positive('batch_size', batch_size)
  return d['accumulated_error'] / batch_size > error_budget


def _find(state: Any, kind: type) -> list[Any]:
  is_kind = lambda x: isinstance(x, kind)
  return [x for x in jax.tree_util.tree_leaves(state, is_leaf=is_kind)
          if is_kind(x)]


def estimator_state(state: Any) -> SpiderEstimatorState:
  """The one :class:`SpiderEstimatorState` inside an optimizer state."""
  found = _find(state, SpiderEstimatorState)
  if not found:
    raise ValueError(
        'This optimizer state holds no spider_estimator state. Build the '
        'optimizer with so.spider(...) or put so.spider_estimator() first in '
        'your optax.chain, then pass the state that tx.init returned. A state '
        'restored from a checkpoint without a target is plain dicts and lists: '
        'restore it onto a target built from tx.init, e.g. jax.tree.map('
        'orbax.checkpoint.utils.to_shape_dtype_struct, fresh_state).')
  if len(found) > 1:
    raise ValueError(
        f'This optimizer state holds {len(found)} spider_estimator states; '
        'so.prev_params and so.diagnostics need exactly one. Pass the '
        'sub-state of the one you mean.')
  return found[0]
