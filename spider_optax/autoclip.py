r"""Automatic clipping: ``so.spider`` with thresholds from an (L0, L1) fit.

The thresholds follow a running fit of the smoothness the estimator measures
along its own steps.
"""

import typing
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
from jax.typing import DTypeLike

from spider_optax import _buffers
from spider_optax import _checks
from spider_optax.clipping import apply_relaxed_clip
from spider_optax.clipping import relaxed_clip
from spider_optax.estimator import spider_estimator
from spider_optax.estimator import SpiderEstimatorState
from spider_optax.smoothness_fit import fit_smoothness
from spider_optax.smoothness_fit import SmoothnessFit


class AutoClipState(NamedTuple):
  r"""State of ``so.spider(..., epsilon=...)``.

  Attributes:
    inner_state: the state of ``so.spider``'s chain, exactly as without
      ``epsilon``: ``(SpiderEstimatorState, RelaxedClipState, learning-rate
      state)``, the estimator with diagnostics.
    grad_norms: ring buffer of :math:`\|g_k\|` of the last ``window``
      recursive steps (NaN where not yet filled).
    smoothness: ring buffer of the matching :math:`\hat L_k`.
    num_samples: samples pushed so far (int32); the next goes to
      ``num_samples % window``.
    fit: the current :class:`~spider_optax.smoothness_fit.SmoothnessFit` (NaN
      until ``num_bins`` samples are in).
    c0: the norm threshold of the last update (float32; inf drops the term).
    c1: the squared-norm threshold of the last update (likewise).
    learning_rate: the learning rate of the last update (float32).
  """

  inner_state: optax.OptState
  grad_norms: chex.Array
  smoothness: chex.Array
  num_samples: chex.Array
  fit: SmoothnessFit
  c0: chex.Array
  c1: chex.Array
  learning_rate: chex.Array


def auto_clip_spider(
  learning_rate: optax.ScalarOrSchedule,
  epsilon: float,
  *,
  c0: chex.Numeric | None = None,
  c1: chex.Numeric | None = None,
  fit_learning_rate: bool = False,
  window: int = 256,
  quantile: float = 0.9,
  num_bins: int = 8,
  refit_every: int = 16,
  estimator_dtype: DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""SPIDER whose clipping thresholds follow a running (L0, L1) fit.

  Use it as ``so.spider(learning_rate, epsilon=...)``; the arguments are
  documented there. It runs the members of ``so.spider``'s chain
  (:func:`~spider_optax.spider_estimator` with diagnostics,
  :func:`~spider_optax.relaxed_clip`, the learning rate) on the same states,
  and between the estimator and the clip refits the thresholds: each
  recursive step measures the local smoothness :math:`\hat L_k` and
  :math:`\|g_k\|` (see :class:`~spider_optax.SpiderDiagnostics`), keeps the
  last ``window`` pairs, and fits their upper envelope
  :math:`\hat L \le L_0 + L_1 \|g\|` with
  :func:`~spider_optax.smoothness_fit.fit_smoothness`. (A wrapper rather than
  a chain member, because step :math:`k`'s clip uses step :math:`k`'s
  measurement, which only the estimator sees.) The thresholds then give the
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

  Args:
    learning_rate: a float >= 0 or an optax schedule (0 is allowed, e.g.
      where a warmup starts or a decay ends).
    epsilon: the target gradient norm (> 0, finite).
    c0: the norm threshold until the fit is ready, or None.
    c1: the squared-norm threshold until the fit is ready, or None.
    fit_learning_rate: also set the learning rate from the fit.
    window: how many recent recursive steps the fit uses (>= ``num_bins``).
    quantile: see :func:`~spider_optax.smoothness_fit.fit_smoothness`.
    num_bins: likewise.
    refit_every: refit once every this many new samples (and on every
      sample until the fit is ready); the thresholds of the last fit are
      used between refits. The fit (sorts and a bisection) costs several
      times a small model's update; refitting every 16th sample makes its
      cost an average of a few percent (``benchmarks/RESULTS.md``, section
      4). 1 refits on every recursive step.
    estimator_dtype: see :func:`~spider_optax.spider_estimator`.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs` whose state is an
    :class:`AutoClipState`.
  """
  learning_rate = _checks.nonnegative_schedule('learning_rate', learning_rate)
  epsilon = _checks.check_positive('epsilon', epsilon, finite=True)
  c0 = _checks.check_positive('c0', c0, allow_none=True)
  c1 = _checks.check_positive('c1', c1, allow_none=True)
  _checks.check_count('refit_every', refit_every)
  if (
    isinstance(window, bool) or not isinstance(window, int) or window < num_bins
  ):
    raise ValueError(
      f'window must be an int >= num_bins ({num_bins}), got {window!r}.'
    )
  estimator = spider_estimator(estimator_dtype, diagnostics=True)
  scale = optax.scale_by_learning_rate(learning_rate)
  inner = optax.chain(estimator, relaxed_clip(c0, c1), scale)
  as_threshold = lambda c: jnp.asarray(jnp.inf if c is None else c, jnp.float32)
  fit_of = lambda g, h: fit_smoothness(
    g, h, quantile=quantile, num_bins=num_bins
  )

  def init_fn(params):
    nan = jnp.full([window], jnp.nan, jnp.float32)
    return AutoClipState(
      inner_state=inner.init(params),
      grad_norms=nan,
      smoothness=nan,
      num_samples=jnp.zeros([], jnp.int32),
      fit=fit_of(nan, nan),
      c0=as_threshold(c0),
      c1=as_threshold(c1),
      learning_rate=jnp.zeros([], jnp.float32),
    )

  def update_fn(updates, state, params=None, **extra_args):
    _checks.check_state(state, AutoClipState, 'so.spider(..., epsilon=...)')
    est_state, clip_state, scale_state = typing.cast(
      tuple[Any, Any, Any], state.inner_state
    )
    estimate, est_state = estimator.update(
      updates, est_state, params, **extra_args
    )
    d = typing.cast(SpiderEstimatorState, est_state).diagnostics
    assert d is not None  # built with diagnostics=True
    # Push (||g||, L_hat) where a pair was measured (not on anchor steps).
    measured = jnp.isfinite(d.smoothness)
    slot = state.num_samples % window
    push = lambda buf, x: jnp.where(measured, buf.at[slot].set(x), buf)
    grad_norms = push(state.grad_norms, d.grad_norm)
    smoothness = push(state.smoothness, d.smoothness)
    num_samples = state.num_samples + measured.astype(jnp.int32)
    is_ready = lambda f: jnp.isfinite(f.L0) & jnp.isfinite(f.L1)
    refit = measured & ((num_samples % refit_every == 0) | ~is_ready(state.fit))
    fit = _buffers.cond(
      refit, lambda: fit_of(grad_norms, smoothness), lambda: state.fit
    )
    ready = is_ready(fit)

    count = state.inner_state[0].count
    lr = learning_rate(count) if callable(learning_rate) else learning_rate
    lr = jnp.asarray(lr, jnp.float32)
    if fit_learning_rate:
      lr = jnp.where(ready & (fit.L0 > 0), 1 / (4 * fit.L0), lr)
    # eta * c = epsilon / (4 L): a zero constant caps nothing (inf).
    fitted = lambda L: jnp.where(L > 0, epsilon / (4 * lr * L), jnp.inf)
    c0_k = jnp.where(ready, fitted(fit.L0), as_threshold(c0))
    c1_k = jnp.where(ready, fitted(fit.L1), as_threshold(c1))

    # The thresholds are valid by construction: no per-step checks.
    del clip_state
    clipped, clip_state = apply_relaxed_clip(estimate, c0_k, c1_k)
    # The chain's own learning-rate member keeps its state (a schedule's
    # count); with a fitted rate its output is replaced.
    updates, scale_state = scale.update(clipped, scale_state)
    if fit_learning_rate:
      updates = jax.tree.map(lambda u: (-lr * u).astype(u.dtype), clipped)
    return updates, AutoClipState(
      inner_state=(est_state, clip_state, scale_state),
      grad_norms=grad_norms,
      smoothness=smoothness,
      num_samples=num_samples,
      fit=fit,
      c0=c0_k,
      c1=c1_k,
      learning_rate=lr,
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
