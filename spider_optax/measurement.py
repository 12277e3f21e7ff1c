"""Measuring what each SPIDER update sees: norms, local smoothness, error.

:func:`spider_optax.spider_estimator` with ``diagnostics=True`` keeps a
:class:`SpiderDiagnostics` in its state, computed by :func:`measure` at no
gradient cost; :func:`spider_optax.diagnostics` reads it for logging.
"""

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from spider_optax.clipping import global_norm


class SpiderDiagnostics(NamedTuple):
  r"""What one update saw, kept by ``spider_estimator(diagnostics=True)``.

  All float32 scalars; see :func:`spider_optax.diagnostics` for a dict of
  them.

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
      :func:`spider_optax.anchor_due`.
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


def empty() -> SpiderDiagnostics:
  """The diagnostics before the first update.

  A buffer per field: a state whose fields shared one array could not be
  donated to a jitted step (XLA refuses to donate a buffer twice).
  """
  zero = lambda: jnp.zeros([], jnp.float32)
  return SpiderDiagnostics(
    zero(),
    zero(),
    zero(),
    jnp.full([], jnp.nan, jnp.float32),
    zero(),
    zero(),
    zero(),
  )


def measure(
  last: SpiderDiagnostics,
  prev_params: optax.Params,
  grads: optax.Updates,
  prev_grads: optax.Updates | None,
  grad_diff_variance: chex.Array | None,
  params: optax.Params,
  estimate: optax.Updates,
  steps_since_anchor: chex.Array,
) -> SpiderDiagnostics:
  """The :class:`SpiderDiagnostics` of an update (see there).

  Args:
    last: the diagnostics of the previous update.
    prev_params: :math:`x_{k-1}`.
    grads: :math:`g_k`.
    prev_grads: :math:`g'_k`, or None on an anchor step.
    grad_diff_variance: the split-half variance estimate, or None.
    params: :math:`x_k`.
    estimate: :math:`v_k`.
    steps_since_anchor: after this update (0 on anchors).
  """
  sub = lambda a, b: jax.tree.map(
    lambda x, y: x.astype(jnp.float32) - y.astype(jnp.float32), a, b
  )
  step_norm = global_norm(sub(params, prev_params))
  recursive = steps_since_anchor > 0  # False on anchors, also first recursive
  if prev_grads is None:
    grad_diff_norm = jnp.zeros([], jnp.float32)
  else:
    grad_diff_norm = jnp.where(
      recursive, global_norm(sub(grads, prev_grads)), 0.0
    )
  smoothness = jnp.where(
    recursive & (step_norm > 0),
    grad_diff_norm / jnp.where(step_norm > 0, step_norm, 1),
    jnp.nan,
  )
  previous = jnp.where(recursive, last.accumulated_error, 0.0)
  # Unknown (NaN) from the first recursive step that brings no variance.
  variance = jnp.nan if grad_diff_variance is None else grad_diff_variance
  accumulated_variance = jnp.where(
    recursive, last.accumulated_variance + variance, 0.0
  )
  # float32 whatever the params' dtype, so that the state keeps its types
  # (a jitted step compiles once; lax.scan and lax.cond carries match).
  return jax.tree.map(
    lambda x: jnp.asarray(x).astype(jnp.float32),
    SpiderDiagnostics(
      grad_norm=global_norm(grads),
      grad_diff_norm=grad_diff_norm,
      step_norm=step_norm,
      smoothness=smoothness,
      estimate_norm=global_norm(estimate),
      accumulated_error=previous + jnp.square(grad_diff_norm),
      accumulated_variance=accumulated_variance,
    ),
  )
