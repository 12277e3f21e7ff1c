"""The SPIDER recursive gradient estimator as an optax transformation."""

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
from jax.typing import DTypeLike

from spider_optax import _arrays
from spider_optax import _buffers
from spider_optax import _checks
from spider_optax import measurement
from spider_optax import previous

# What overflows, for the message of so.spider (lean=True too).
OVERFLOW = (
  'so.spider',
  "estimator v_k = v_{k-1} + g_k - g'_k (or the step made from it)",
)


def recursive_estimate(
  estimate: optax.Updates,
  grads: optax.Updates,
  prev_grads: optax.Updates,
  anchored: chex.Array,
) -> optax.Updates:
  """v_k = v_{k-1} + g_k - g'_k in v's dtype; g_k where not ``anchored``.

  SPIDER's recursion, shared by the estimator and ``so.spider(lean=True)``;
  ``anchored`` is False where there is no estimate to correct yet.
  """
  return jax.tree.map(
    lambda v, g, pg: jnp.where(
      anchored,
      v + (g.astype(v.dtype) - pg.astype(v.dtype)),
      g.astype(v.dtype),
    ),
    estimate,
    grads,
    prev_grads,
  )


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
      :func:`prev_params`. Equal to the initial params before the first
      update.
    diagnostics: a :class:`~spider_optax.SpiderDiagnostics` of the last
      update with ``diagnostics=True``, else None.
  """

  count: chex.Array
  steps_since_anchor: chex.Array
  estimate: optax.Updates
  prev_params: optax.Params
  diagnostics: measurement.SpiderDiagnostics | None = None


@_arrays.scalar_leaves
def spider_estimator(
  estimator_dtype: DTypeLike | None = None,
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

  Where finite gradients give an estimator that overflows its dtype (float32
  entries near 3e38 whose sum is inf), the update raises a ``ValueError``
  that says so (at run time under ``jax.jit``; a skipped step under
  :func:`apply_if_finite`) instead of returning inf.

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
  estimator_dtype = _checks.as_dtype('estimator_dtype', estimator_dtype)

  def init_fn(params):
    _checks.check_float_params('spider_estimator', params)
    return SpiderEstimatorState(
      count=jnp.zeros([], jnp.int32),
      steps_since_anchor=jnp.zeros([], jnp.int32),
      estimate=jax.tree.map(
        lambda p: _buffers.zeros_like(p, estimator_dtype), params
      ),
      # A buffer of its own: loops that donate params and state together
      # must not donate one buffer twice.
      prev_params=jax.tree.map(_buffers.copy, params),
      diagnostics=measurement.empty() if diagnostics else None,
    )

  def update_fn(
    updates,
    state,
    params=None,
    *,
    prev_grads=None,
    grad_diff_variance=None,
    **extra_args,
  ):
    del extra_args
    if params is None:
      raise ValueError(
        'spider_estimator needs params: call tx.update(grads, state, params)'
        ' so that it can keep the previous parameters.'
      )
    _checks.check_state(state, SpiderEstimatorState, 'spider_estimator')
    _checks.check_trees_match('params', params, 'grads', updates)
    _checks.check_state_matches(
      'state.prev_params', state.prev_params, params, check_dtypes=True
    )
    _checks.check_state_matches(
      'state.estimate', state.estimate, params, check_dtypes=False
    )
    prev_grads = previous.masked_like(prev_grads, updates)
    if grad_diff_variance is not None and (
      prev_grads is None or jnp.ndim(grad_diff_variance) != 0
    ):
      raise ValueError(
        'grad_diff_variance must be a scalar, passed with prev_grads on a '
        'recursive step (so.paired_grad(loss_fn, split_batch=True) returns '
        'it).'
      )
    if prev_grads is None:  # Anchor step: reset the estimator.
      estimate = jax.tree.map(_buffers.overwrite, state.estimate, updates)
      steps_since_anchor = jnp.zeros([], jnp.int32)
    else:
      _checks.check_trees_match(
        'grads', updates, 'prev_grads', prev_grads, hint=_checks.PREV_GRADS_HINT
      )
      anchored = state.count > 0  # A first recursive step acts as an anchor.
      estimate = recursive_estimate(
        state.estimate, updates, prev_grads, anchored
      )
      steps_since_anchor = jnp.where(
        anchored, optax.safe_increment(state.steps_since_anchor), 0
      )
    new_state = SpiderEstimatorState(
      count=jnp.asarray(optax.safe_increment(state.count)),
      steps_since_anchor=steps_since_anchor.astype(jnp.int32),
      estimate=estimate,
      prev_params=jax.tree.map(_buffers.overwrite, state.prev_params, params),
      diagnostics=measurement.measure(
        state.diagnostics,
        state.prev_params,
        updates,
        prev_grads,
        grad_diff_variance,
        params,
        estimate,
        steps_since_anchor,
      )
      if diagnostics
      else None,
    )
    return estimate, new_state

  # Finite float32 entries near 3e38 can sum to inf (and a clip after it
  # turns inf into NaN): an error that says so. (The check reads v_k, which
  # the state keeps: no temporary copy.)
  return _checks.overflow_checked(
    optax.GradientTransformationExtraArgs(init_fn, update_fn),  # pyright: ignore[reportArgumentType]
    *OVERFLOW,
    wider='estimator_dtype',
  )
