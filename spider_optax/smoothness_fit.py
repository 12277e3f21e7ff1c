r"""Fitting (L0, L1) to the smoothness a run measured along its own steps.

:func:`fit_smoothness` is the robust upper-envelope fit that automatic
clipping (``so.spider(..., epsilon=...)``) runs on every step; it is also
reachable as ``so.theory.fit_smoothness``.
"""

import functools
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from spider_optax import _checks


class SmoothnessFit(NamedTuple):
  """(L0, L1) fitted by :func:`fit_smoothness`.

  Attributes:
    L0: float32 scalar, the constant part of the bound; NaN when too few
      samples were valid.
    L1: float32 scalar, the gradient-norm part; NaN when ``L0`` is.
    num_samples: int32 scalar, the valid (finite, non-negative) samples the fit
      used; fewer than ``num_bins`` gives NaN constants, for the caller to fall
      back on.
  """

  L0: jax.Array
  L1: jax.Array
  num_samples: jax.Array


_BISECTION_STEPS = 40
# The bisection searches slopes in [s_max * _SLOPE_RANGE, s_max], s_max the
# steepest line through the origin; smaller slopes count as 0 (also tried).
_SLOPE_RANGE = 1e-12


def _check_fit_args(quantile: Any, num_bins: Any) -> None:
  if _checks.is_concrete(quantile):
    q = _checks.as_number(quantile)
    if q is None or not 0 < q <= 1:  # also rejects NaN
      raise ValueError(
        f'quantile must be a number in (0, 1], got {quantile!r}: the '
        'fraction of L_hat samples per bin the line must lie above (1 for '
        'all of them, no outlier trimming).'
      )
  if (
    isinstance(num_bins, bool)
    or not isinstance(num_bins, numbers.Integral)
    or num_bins < 2
  ):
    raise ValueError(
      f'num_bins must be an int >= 2, got {num_bins!r}: it fixes the shape '
      'of the computation, so it cannot be a traced value.'
    )


def _bin_starts(n: jax.Array, num_bins: int) -> tuple[jax.Array, jax.Array]:
  """First rank and size of each of ``num_bins`` consecutive groups of ``n``.

  The sizes differ by at most one, larger first, as ``np.array_split``.
  """
  b = jnp.arange(num_bins + 1)
  size, extra = n // num_bins, n % num_bins
  edges = b * size + jnp.minimum(b, extra)
  return edges[:-1], edges[1:] - edges[:-1]


def _lowest_line(g, h, mean_g):
  """argmin of L0 + L1 mean_g over L0, L1 >= 0 with L0 + L1 g >= h.

  ``h = -inf`` marks a sample that imposes nothing. See fit_smoothness for the
  method.
  """
  # The origin as one more sample: a line above it has L0 >= 0.
  g = jnp.append(g, 0.0)
  h = jnp.append(h, 0.0)
  big = jnp.finfo(jnp.float32).max
  ratio = jnp.where(g > 0, h / jnp.where(g > 0, g, 1.0), 0.0)
  s_max = jnp.clip(jnp.max(ratio), 0.0, big)

  def touching(s):  # the sample that the lowest line of slope s touches
    return jnp.argmax(h - s * g)

  def bisect(_, bounds):
    lo, hi = bounds
    mid = jnp.sqrt(lo) * jnp.sqrt(hi)  # geometric: slopes span decades
    # F(s) = max_i(h_i - s g_i) + s mean_g has slope mean_g - g_touching.
    descending = g[touching(mid)] > mean_g
    return jnp.where(descending, mid, lo), jnp.where(descending, hi, mid)

  lo, hi = jax.lax.fori_loop(
    0, _BISECTION_STEPS, bisect, (s_max * _SLOPE_RANGE, s_max)
  )
  # Snap to the line through the samples touching either side of the optimum.
  right, left = touching(lo), touching(hi)
  dg = g[right] - g[left]
  snap = jnp.where(
    dg > 0, (h[right] - h[left]) / jnp.where(dg > 0, dg, 1.0), lo
  )
  slopes = jnp.clip(jnp.stack([0.0, snap, lo, hi]), 0.0, big)
  # Each slope with its lowest feasible intercept, so every candidate is a
  # valid envelope even where rounding misplaced the snap.
  intercepts = jnp.max(h[None, :] - slopes[:, None] * g[None, :], axis=1)
  best = jnp.argmin(intercepts + slopes * mean_g)  # first: prefers L1 = 0
  return intercepts[best], slopes[best]


def fit_smoothness(
  grad_norms: Any,
  smoothness: Any,
  *,
  quantile: float = 0.9,
  num_bins: int = 8,
) -> SmoothnessFit:
  r"""Fits :math:`(L_0, L_1)` to a trace of gradient norms and local smoothness.

  SPIDER evaluates one minibatch's gradient at :math:`x_k` and
  :math:`x_{k-1}`, so each recursive step measures, at no extra gradient cost,

  .. math::

    \hat L_k = \frac{\|g(x_k) - g(x_{k-1})\|}{\|x_k - x_{k-1}\|}
    \quad\text{against}\quad \|g(x_k)\|,

  the curvature along the step, which :math:`(L_0, L_1)`-smoothness bounds by
  :math:`L_0 + L_1\|g(x_k)\|` (Zhang et al. plot exactly these pairs along
  training runs). The assumption bounds the worst case, so the fit is an upper
  envelope of the samples :math:`(g_i, h_i) = (\|g(x_k)\|, \hat L_k)`:

  1. A sample is valid when both values are finite and non-negative (anchor
     steps and zero steps record NaN; a ring buffer's empty slots are NaN).
     With fewer than ``num_bins`` valid samples the constants are NaN.
  2. Robustness: sort the valid samples by :math:`g` and split them into
     ``num_bins`` consecutive groups of (almost) equal count, sizes as
     ``np.array_split``. In each, keep the samples whose :math:`h` is at most
     the group's ``quantile`` of :math:`h` (linear interpolation, as
     ``np.quantile``): at least :math:`\lfloor q(c-1)\rfloor + 1` of its
     :math:`c`. Per group rather than overall, because :math:`h` grows with
     :math:`g`: a global quantile would trim the large-gradient samples that
     determine :math:`L_1`, a per-group one trims only outliers of
     :math:`\hat L` at similar gradient norm. ``quantile=1`` keeps all.
  3. Envelope: the line above every kept sample whose mean over the trace is
     smallest,

     .. math::

       \min_{L_0, L_1 \ge 0}\; L_0 + L_1 \bar g \quad\text{s.t.}\quad
       L_0 + L_1 g_i \ge h_i \;\;\text{(kept } i),

     :math:`\bar g` the mean of the valid :math:`g_i`. Of the many valid
     bounds (a steeper line needs a smaller :math:`L_0`) it is the tightest
     where the trajectory spends its time; on data that follow a line exactly
     it is that line. For a slope :math:`s` the smallest intercept is
     :math:`a(s) = \max(0, \max_i h_i - s g_i)`, so the problem is to minimise
     :math:`F(s) = a(s) + s\bar g`, convex and piecewise linear, with slope
     :math:`\bar g - g_{i(s)}` where :math:`i(s)` is the sample (or the origin)
     that the line touches. We bisect on the sign of that slope (geometrically,
     over :math:`s \in [0, \max_i h_i/g_i]`), then snap :math:`s` to the line
     through the samples touching either side of the optimum: the LP's exact
     solution up to float32 rounding, with the intercept recomputed so the line
     always lies above the kept samples. The cost is two sorts and
     :math:`O(40 T)` for :math:`T` samples.

  Everything is ``jnp`` with shapes fixed by the inputs and ``num_bins``, so it
  runs under ``jax.jit`` (e.g. on a ring buffer of recent steps) as well as
  on NumPy arrays.

  :math:`\hat L_k` is the curvature along one direction on one minibatch: it
  bounds :math:`\|\nabla^2 f\|` from below, and is what the analysis's
  mean-squared smoothness (assumption A2 of the module doc) controls. Read the
  fit as the smoothness the run met, not as a bound off its path.

  Examples:
    :math:`f(x) = 2e^{x/2} - 4x` has :math:`f'' = 2 + f'/2`: on the side
    where :math:`f' \ge 0` the samples lie on the line :math:`(L_0, L_1) =
    (2, 1/2)`, and below it elsewhere.

    >>> import jax
    >>> import numpy as np
    >>> import spider_optax as so
    >>> grad = lambda x: np.exp(x / 2) - 4
    >>> x = np.linspace(-4.0, 10.0, 200)
    >>> x_prev = x - 1e-4
    >>> g = np.abs(grad(x))
    >>> h = np.abs(grad(x) - grad(x_prev)) / np.abs(x - x_prev)
    >>> h[::10] = np.nan  # anchor steps have no pair
    >>> fit = so.smoothness_fit.fit_smoothness(g, h)
    >>> print(f'L0={fit.L0:.2f} L1={fit.L1:.2f} from {fit.num_samples}')
    L0=2.00 L1=0.50 from 180
    >>> buffer = np.full(64, np.nan, np.float32)  # few steps recorded yet
    >>> buffer[:5] = 1.0
    >>> jax.jit(so.smoothness_fit.fit_smoothness)(buffer, buffer).L0
    Array(nan, dtype=float32)

  Args:
    grad_norms: :math:`\|g(x_k)\|` per step, any shape.
    smoothness: :math:`\hat L_k` per step, the same shape; NaN where a step has
      no pair.
    quantile: in (0, 1]: the fraction of each group's samples the line must lie
      above; below 1 it trims outliers.
    num_bins: groups (>= 2) along the gradient norm; also the fewest valid
      samples that give a fit.

  Returns:
    A :class:`SmoothnessFit` of float32 ``L0``, ``L1`` and int32
    ``num_samples``.

  References:
    Zhang, He, Sra, Jadbabaie, `Why gradient clipping accelerates training: A
    theoretical justification for adaptivity
    <https://arxiv.org/abs/1905.11881>`_, ICLR 2020.
  """
  _check_fit_args(quantile, num_bins)
  if np.shape(grad_norms) != np.shape(smoothness):
    raise ValueError(
      f'grad_norms has shape {np.shape(grad_norms)} but smoothness has shape '
      f'{np.shape(smoothness)}: pass one value of each per step.'
    )
  g = jnp.ravel(jnp.asarray(grad_norms, jnp.float32))
  h = jnp.ravel(jnp.asarray(smoothness, jnp.float32))
  if g.size == 0:  # static: nothing to fit
    nan = jnp.full([], jnp.nan, jnp.float32)
    return SmoothnessFit(nan, nan, jnp.zeros([], jnp.int32))
  return _fit(g, h, jnp.asarray(quantile, jnp.float32), num_bins=int(num_bins))


# Jitted so that eager calls on NumPy traces compile once per shape (a traced
# quantile adds no recompilation); under an outer jit it is inlined.
@functools.partial(jax.jit, static_argnames='num_bins')
def _fit(g, h, quantile, *, num_bins: int) -> SmoothnessFit:
  valid = jnp.isfinite(g) & jnp.isfinite(h) & (g >= 0) & (h >= 0)
  n = jnp.sum(valid, dtype=jnp.int32)
  size = g.shape[0]

  # Valid samples first, by gradient norm; rank r lies in group bin_of[r].
  order = jnp.argsort(jnp.where(valid, g, jnp.inf))
  g, h = g[order], h[order]
  ranks = jnp.arange(size)
  starts, counts = _bin_starts(n, num_bins)
  bin_of = jnp.where(
    ranks < n, jnp.searchsorted(starts, ranks, side='right') - 1, num_bins
  )
  # Each group's h ascending, to read its quantile by position.
  h_by_bin = h[jnp.lexsort((jnp.where(ranks < n, h, jnp.inf), bin_of))]
  last = jnp.maximum(counts, 1) - 1
  position = quantile * last
  below = jnp.floor(position).astype(jnp.int32)
  lower = h_by_bin[jnp.clip(starts + below, 0, size - 1)]
  upper = h_by_bin[jnp.clip(starts + jnp.minimum(below + 1, last), 0, size - 1)]
  threshold = lower + (position - below) * (upper - lower)
  keep = (ranks < n) & (h <= threshold[jnp.minimum(bin_of, num_bins - 1)])

  mean_g = jnp.sum(jnp.where(ranks < n, g, 0.0)) / jnp.maximum(n, 1)
  L0, L1 = _lowest_line(
    jnp.where(keep, g, 0.0), jnp.where(keep, h, -jnp.inf), mean_g
  )
  enough = n >= num_bins
  nan = jnp.full([], jnp.nan, jnp.float32)
  return SmoothnessFit(
    jnp.where(enough, L0, nan), jnp.where(enough, L1, nan), n
  )
