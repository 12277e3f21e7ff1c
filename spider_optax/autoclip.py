"""Automatic clipping: c0 and c1 from a running (L0, L1) fit of the estimator's
own smoothness measurements."""

from typing import NamedTuple, Optional

import chex
import jax
import jax.numpy as jnp
import optax

from spider_optax import _checks
from spider_optax import theory
from spider_optax.clipping import RelaxedClipState
from spider_optax.clipping import global_norm
from spider_optax.clipping import relaxed_clip_factor
from spider_optax.estimator import SpiderEstimatorState
from spider_optax.estimator import spider_estimator


class AutoClipState(NamedTuple):
  """State of ``so.spider(..., epsilon=...)``.

  Attributes:
    estimator: the :class:`SpiderEstimatorState`, with diagnostics.
    grad_norms: ring buffer of :math:`\\|g_k\\|` of the last ``window``
      recursive steps (NaN where not yet filled).
    smoothness: ring buffer of the matching :math:`\\hat L_k`.
    num_samples: samples pushed so far (int32); the next goes to
      ``num_samples % window``.
    fit: the current :class:`spider_optax.theory.SmoothnessFit` (NaN until
      ``num_bins`` samples are in).
    c0, c1: the thresholds of the last update (float32; inf drops a term).
    learning_rate: the learning rate of the last update (float32).
    clip: the factor applied by the last update, as :func:`relaxed_clip`
      keeps it.
  """
  estimator: SpiderEstimatorState
  grad_norms: chex.Array
  smoothness: chex.Array
  num_samples: chex.Array
  fit: theory.SmoothnessFit
  c0: chex.Array
  c1: chex.Array
  learning_rate: chex.Array
  clip: RelaxedClipState


def auto_clip_spider(
    learning_rate: optax.ScalarOrSchedule,
    epsilon: float,
    *,
    c0: Optional[float] = None,
    c1: Optional[float] = None,
    fit_learning_rate: bool = False,
    window: int = 256,
    quantile: float = 0.9,
    num_bins: int = 8,
    estimator_dtype: Optional[chex.ArrayDType] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""SPIDER whose clipping thresholds follow a running (L0, L1) fit.

  Use it as ``so.spider(learning_rate, epsilon=...)``; the arguments are
  documented there. Each recursive step measures the local smoothness
  :math:`\hat L_k` and :math:`\|g_k\|` (see :class:`SpiderDiagnostics`), keeps
  the last ``window`` pairs, and fits their upper envelope
  :math:`\hat L \le L_0 + L_1 \|g\|` with
  :func:`spider_optax.theory.fit_smoothness`. The thresholds then give the
  step-length caps of :func:`spider_optax.theory.online` for the fitted
  constants, at any learning rate :math:`\eta`:

  .. math::

    \eta c_0 = \frac{\epsilon}{4 L_0}, \qquad
    \eta \frac{c_1}{\|v\|} = \frac{\epsilon}{4 L_1 \|v\|},
    \quad\text{i.e.}\quad
    c_0 = \frac{\epsilon}{4 \eta L_0}, \quad c_1 = \frac{\epsilon}{4 \eta L_1}

  (a zero fitted constant drops its term). With ``fit_learning_rate`` the
  learning rate is :math:`1/(4 L_0)` as in the presets, which makes
  :math:`c_0 = \epsilon` and :math:`c_1 = \epsilon L_0 / L_1`. Until
  ``num_bins`` pairs are in, ``learning_rate``, ``c0`` and ``c1`` are used as
  given.
  """
  _checks.check_positive('learning_rate', learning_rate)
  _checks.check_positive('epsilon', epsilon, finite=True)
  _checks.check_positive('c0', c0, allow_none=True)
  _checks.check_positive('c1', c1, allow_none=True)
  if isinstance(window, bool) or not isinstance(window, int) or window < num_bins:
    raise ValueError(
        f'window must be an int >= num_bins ({num_bins}), got {window!r}.')
  estimator = spider_estimator(estimator_dtype, diagnostics=True)
  as_threshold = lambda c: jnp.asarray(jnp.inf if c is None else c, jnp.float32)

  def init_fn(params):
    nan = jnp.full([window], jnp.nan, jnp.float32)
    return AutoClipState(
        estimator=estimator.init(params),
        grad_norms=nan,
        smoothness=nan,
        num_samples=jnp.zeros([], jnp.int32),
        fit=theory.fit_smoothness(nan, nan, quantile=quantile,
                                  num_bins=num_bins),
        c0=as_threshold(c0),
        c1=as_threshold(c1),
        learning_rate=jnp.zeros([], jnp.float32),
        clip=RelaxedClipState(clip_factor=jnp.ones([], jnp.float32)),
    )

  def update_fn(updates, state, params=None, **extra_args):
    count = state.estimator.count
    estimate, est_state = estimator.update(
        updates, state.estimator, params, **extra_args)
    d = est_state.diagnostics
    # Push (||g||, L_hat) where a pair was measured (not on anchor steps).
    measured = jnp.isfinite(d.smoothness)
    slot = state.num_samples % window
    push = lambda buf, x: jnp.where(measured, buf.at[slot].set(x), buf)
    grad_norms = push(state.grad_norms, d.grad_norm)
    smoothness = push(state.smoothness, d.smoothness)
    fit = theory.fit_smoothness(grad_norms, smoothness, quantile=quantile,
                                num_bins=num_bins)
    ready = jnp.isfinite(fit.L0) & jnp.isfinite(fit.L1)

    lr = learning_rate(count) if callable(learning_rate) else learning_rate
    lr = jnp.asarray(lr, jnp.float32)
    if fit_learning_rate:
      lr = jnp.where(ready & (fit.L0 > 0), 1 / (4 * fit.L0), lr)
    # eta * c = epsilon / (4 L): a zero constant caps nothing (inf).
    fitted = lambda L: jnp.where(L > 0, epsilon / (4 * lr * L), jnp.inf)
    c0_k = jnp.where(ready, fitted(fit.L0), as_threshold(c0))
    c1_k = jnp.where(ready, fitted(fit.L1), as_threshold(c1))

    factor = relaxed_clip_factor(global_norm(estimate), c0_k, c1_k)
    updates = jax.tree.map(lambda v: (-lr * factor * v).astype(v.dtype),
                           estimate)
    return updates, AutoClipState(
        estimator=est_state,
        grad_norms=grad_norms,
        smoothness=smoothness,
        num_samples=state.num_samples + measured.astype(jnp.int32),
        fit=fit,
        c0=c0_k,
        c1=c1_k,
        learning_rate=lr,
        clip=RelaxedClipState(clip_factor=factor.astype(jnp.float32)),
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
