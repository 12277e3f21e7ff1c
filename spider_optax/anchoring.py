"""When to anchor: the one anchoring policy of every SPIDER training loop.

:func:`anchor_due` is the adaptive criterion (jit-friendly);
:func:`is_anchor_step` is the whole policy a host-side loop applies before each
step: the first update, a fixed period (or a cap on adaptive periods), and the
criterion. Both read the estimator's own counters from the optimizer state, so
a resumed run continues the schedule where the state left off.
"""

from typing import Any

import chex
import jax
import jax.numpy as jnp

from spider_optax import _checks
from spider_optax import lookup

_MISSING_VARIANCE = (
  'Adaptive anchoring without batch_size sums the grad_diff_variance '
  'estimates of the recursive steps since the last anchor, but one of them '
  'brought none: pass grad_diff_variance= to every recursive tx.update (from '
  'so.paired_grad(loss_fn, split_batch=True)), or pass batch_size= for the '
  'minibatch-mean heuristic.'
)


def anchor_due(
  state: Any,
  error_budget: chex.Numeric,
  batch_size: int | None = None,
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
    since the last anchor brought none, the sum is unknown (NaN) and this
    raises an error (a ``ValueError`` when the state is concrete, a runtime
    error naming the fix under ``jax.jit``) rather than guess: anchoring on
    every step would silently pay a large batch per step, never anchoring
    would let the error grow.
  - ``batch_size=S2``: :math:`\frac{1}{S_2} \sum_j \hat L_j^2
    \|x_j - x_{j-1}\|^2 = \frac{1}{S_2} \sum_j \|g_j - g'_j\|^2`
    (``accumulated_error``), which needs nothing from the gradient call: Fang
    et al.'s Lemma 1 term with minibatch means in place of samples. It mixes
    the gradient's mean change along the steps (no error) with the sampling
    noise averaged over :math:`S_2`, and measured 10 times too high on a
    character LSTM and 10 to 20 times too low on an MLP: a heuristic whose
    budget must be tuned.

  Returns a boolean scalar (jit-friendly). The whole anchoring policy of a
  training loop (the first step, a cap on the period, and this criterion) is
  :func:`is_anchor_step`, which :func:`spider_optax.spider_loop` uses.

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
  error_budget = _checks.check_positive('error_budget', error_budget)
  d = lookup.diagnostics(state)
  if batch_size is None:
    variance = d['accumulated_variance']
    variance = _checks.error_if(
      jnp.isnan(variance), _MISSING_VARIANCE, result=variance
    )
    return variance > error_budget
  batch_size = _checks.check_positive('batch_size', batch_size)
  return d['accumulated_error'] / batch_size > error_budget


def is_anchor_step(
  state: Any,
  anchor_period: int,
  *,
  error_budget: chex.Numeric | None = None,
  batch_size: int | None = None,
) -> bool:
  r"""Whether the next update should be an anchor step (host-side policy).

  Reads the estimator's counters from ``state`` (one device read):

  - the first update (``count == 0``) is an anchor;
  - an anchor is due once ``anchor_period`` updates have been taken since the
    last one (``steps_since_anchor + 1 >= anchor_period``): the fixed period
    :math:`q`, or, with ``error_budget``, a cap on the adaptive period;
  - with ``error_budget``, also when :func:`anchor_due` says the recursion's
    accumulated variance exceeds the budget.

  Because the decision comes from the state, not from a loop index, a run
  restored from a checkpoint continues the schedule exactly.

  Examples:
    >>> import jax.numpy as jnp, spider_optax as so
    >>> tx = so.spider(0.1)
    >>> x = {'w': jnp.zeros(2)}
    >>> state = tx.init(x)
    >>> so.is_anchor_step(state, anchor_period=3)
    True
    >>> _, state = tx.update({'w': jnp.ones(2)}, state, x)
    >>> so.is_anchor_step(state, anchor_period=3)
    False

  Args:
    state: an optimizer state with one
      :class:`~spider_optax.SpiderEstimatorState`.
    anchor_period: :math:`q`, a positive int.
    error_budget: turns on adaptive anchoring (see :func:`anchor_due`); the
      estimator must keep diagnostics.
    batch_size: with ``error_budget``, see :func:`anchor_due`.

  Returns:
    A Python bool.

  Raises:
    ValueError: for a bad ``anchor_period``, or when adaptive anchoring
      without ``batch_size`` finds a recursive step that brought no
      ``grad_diff_variance``.
  """
  check_anchor_period(anchor_period)
  estimator = lookup.estimator_state(state)
  due = (
    False
    if error_budget is None
    else anchor_due(state, error_budget, batch_size)
  )
  count, since, due = jax.device_get(
    (estimator.count, estimator.steps_since_anchor, due)
  )
  return period_rule(count, since, anchor_period) or bool(due)


def period_rule(
  count: int, steps_since_anchor: int, anchor_period: int
) -> bool:
  """The first update, or ``anchor_period`` updates since the last anchor."""
  return bool(count == 0 or steps_since_anchor + 1 >= anchor_period)


def check_anchor_period(anchor_period: Any) -> None:
  """Raises ValueError unless ``anchor_period`` is a positive int."""
  _checks.check_count('anchor_period', anchor_period)
