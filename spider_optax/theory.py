r"""Theory presets: SPIDER's hyperparameters from (L0, L1), epsilon and sigma.

Both presets return a :class:`SpiderSettings` whose ``learning_rate``, ``c0``
and ``c1`` go to :func:`spider_optax.spider`, and whose ``anchor_period``,
``anchor_batch_size`` and ``minibatch_size`` drive the training loop. They also
predict the number of steps and of stochastic-gradient evaluations (the oracle
count) after which an iterate is epsilon-stationary. Where (L0, L1) are
unknown, :func:`fit_smoothness` estimates them from a training trace.

Derivation
----------
Notation: :math:`\Delta = f(x_0) - \inf f` (``initial_gap``),
:math:`e_k = v_k - \nabla f(x_k)` the estimator's error,
:math:`\delta_k = \|x_{k+1} - x_k\| = \mathrm{lr} \min(\|v_k\|, c_0,
c_1/\|v_k\|)` the step length, :math:`L(x) = L_0 + L_1\|\nabla f(x)\|` the local
smoothness.

Assumptions (Reisizadeh et al., 2023, with the constants of Zhang et al.'s
local-smoothness lemma absorbed into :math:`L_0, L_1`): for
:math:`\|x - y\| \le 1/L_1`,

- (A1) :math:`f(y) \le f(x) + \langle\nabla f(x), y - x\rangle
  + \tfrac{L(x)}{2}\|y - x\|^2`;
- (A2) :math:`\mathbb{E}_\xi\|\nabla F(x;\xi) - \nabla F(y;\xi)\|^2 \le
  L(x)^2 \|x - y\|^2` (mean-squared smoothness of the samples);
- (A3) online only: :math:`\mathbb{E}\|\nabla F(x;\xi) - \nabla f(x)\|^2
  \le \sigma^2`.

Choice: :math:`\mathrm{lr} = 1/(4L_0)`, :math:`c_0 = \epsilon`,
:math:`c_1 = \epsilon L_0/L_1`, i.e. :math:`\mathrm{lr}\,c_0 = \epsilon/(4L_0)`
and :math:`\mathrm{lr}\,c_1 = \epsilon/(4L_1)`, for
:math:`\epsilon \le L_0/L_1`. Then :math:`\delta_k \le \epsilon/(4L_0) \le
1/L_1`, so (A1) and (A2) hold along the path.

1. Each step moves the gradient little: with :math:`\|\nabla f(x_k)\|
   \approx \|v_k\|` (the error is shown to be :math:`O(\epsilon)` next),
   :math:`L(x_k)\delta_k \le L_0 \frac{\epsilon}{4L_0} + L_1\|v_k\|
   \frac{\epsilon}{4L_1\|v_k\|} = \epsilon/2`. The :math:`c_1` term is what
   makes the second product bounded however large the gradient.
2. Estimator error. SPIDER's error is a martingale within an epoch of
   :math:`q` steps (Fang et al., 2018, Prop. 1), so by (A2) and step 1
   :math:`\mathbb{E}\|e_k\|^2 \le \mathbb{E}\|e_{\mathrm{anchor}}\|^2
   + q\,(\epsilon/2)^2/S_2`.

   - Online: :math:`\mathbb{E}\|e_{\mathrm{anchor}}\|^2 \le \sigma^2/S_1`.
     With :math:`S_1 = \lceil 8\sigma^2/\epsilon^2\rceil`,
     :math:`q = \lceil\sigma/\epsilon\rceil`, :math:`S_2 = 2q`:
     :math:`\mathbb{E}\|e_k\|^2 \le \epsilon^2/8 + \epsilon^2/8 =
     \epsilon^2/4`.
   - Finite sum (:math:`n` components, :math:`S_1 = n`, the exact gradient,
     minibatches drawn with replacement): :math:`e_{\mathrm{anchor}} = 0`;
     with :math:`S_2 = q = \lceil\sqrt n\rceil`,
     :math:`\mathbb{E}\|e_k\|^2 \le \epsilon^2/4`.
3. Descent. By (A1) and :math:`\eta_k\langle\nabla f, v_k\rangle \ge
   \delta_k(\|v_k\| - \|e_k\|)`, :math:`f(x_{k+1}) \le f(x_k) - \delta_k
   (\|v_k\| - \|e_k\| - \epsilon/4)`. While :math:`\|v_k\| \ge 2\epsilon`
   (the error being at most :math:`\epsilon/2`) each step decreases
   :math:`f` by at least :math:`\delta_k\|v_k\|/2 = \tfrac{\mathrm{lr}}{2}
   \min(c_0\|v_k\|, c_1) \ge \min(\epsilon^2/(4L_0), \epsilon/(8L_1))`.
   So after :math:`K = \lceil 8\Delta(L_0/\epsilon^2 + L_1/\epsilon)\rceil`
   steps some iterate has :math:`\|v_k\| < 2\epsilon`, hence
   :math:`\|\nabla f(x_k)\| \le \|v_k\| + \|e_k\| = O(\epsilon)`.
4. Oracle count (an anchor costs :math:`S_1`, a recursive step
   :math:`2S_2`): :math:`N = \lceil K/q\rceil S_1 + (K - \lceil
   K/q\rceil)\,2S_2`. Online: :math:`N \approx K(8\sigma/\epsilon +
   4\sigma/\epsilon) = O(\Delta L_0 \sigma\epsilon^{-3})`. Finite sum:
   :math:`N \approx n + 3K\sqrt n = O(n + \Delta L_0\sqrt n\,\epsilon^{-2})`.
   Clipped SGD needs :math:`O(\epsilon^{-4})` and full-gradient methods
   :math:`O(n\epsilon^{-2})`.

The orders are the paper's theorems; the constant factors are those of this
sketch (it treats :math:`\|\nabla f\| \approx \|v\|` in step 1), chosen to be
safe rather than tight. Where a problem's constants are unknown, use the
presets for their scalings and tune the overall factor.

References:
  Reisizadeh, Li, Das, Jadbabaie, `Variance-reduced Clipping for Non-convex
  Optimization <https://arxiv.org/abs/2303.00883>`_, 2023.

  Fang, Li, Lin, Zhang, `SPIDER: Near-Optimal Non-Convex Optimization via
  Stochastic Path Integrated Differential Estimator
  <https://arxiv.org/abs/1807.01695>`_, NeurIPS 2018.

  Zhang, He, Sra, Jadbabaie, `Why gradient clipping accelerates training
  <https://arxiv.org/abs/1905.11881>`_, ICLR 2020.
"""

import functools
import math
import numbers
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from spider_optax import _checks


class SpiderSettings(NamedTuple):
  """Hyperparameters of a preset and what they predict.

  Attributes:
    learning_rate: ``lr`` for :func:`spider_optax.spider`.
    c0: norm threshold ``c0``.
    c1: squared-norm threshold ``c1`` (None when ``L1 == 0``).
    anchor_period: ``q``: an anchor step every ``q`` steps (k mod q == 0).
    anchor_batch_size: ``S1``: samples per anchor gradient (``n`` for the full
      gradient of a finite sum).
    minibatch_size: ``S2``: samples per recursive step, evaluated at both
      points.
    steps: predicted number of steps ``K`` to an epsilon-stationary iterate.
    oracle_calls: stochastic-gradient evaluations those steps take.
  """
  learning_rate: float
  c0: float
  c1: Optional[float]
  anchor_period: int
  anchor_batch_size: int
  minibatch_size: int
  steps: int
  oracle_calls: int


def oracle_calls(
    steps: int, anchor_period: int, anchor_batch_size: int, minibatch_size: int
) -> int:
  """Stochastic-gradient evaluations of ``steps`` SPIDER steps.

  Steps 0, q, 2q, ... are anchors of ``anchor_batch_size`` evaluations each;
  the others are recursive steps of ``2 * minibatch_size`` (one minibatch at two
  points).

  Examples:
    >>> from spider_optax import theory
    >>> theory.oracle_calls(10, anchor_period=5, anchor_batch_size=100,
    ...                     minibatch_size=4)  # 2 anchors, 8 recursive steps
    264
  """
  anchors = -(-steps // anchor_period)
  return anchors * anchor_batch_size + (steps - anchors) * 2 * minibatch_size


def _settings(L0, L1, epsilon, initial_gap, q, s1, s2) -> SpiderSettings:
  learning_rate = 1.0 / (4.0 * L0)
  steps = math.ceil(8.0 * initial_gap * (L0 / epsilon**2 + L1 / epsilon))
  return SpiderSettings(
      learning_rate=learning_rate,
      c0=epsilon,
      c1=epsilon * L0 / L1 if L1 > 0 else None,
      anchor_period=q,
      anchor_batch_size=s1,
      minibatch_size=s2,
      steps=steps,
      oracle_calls=oracle_calls(steps, q, s1, s2),
  )


def _check_non_negative(name, value, hint='') -> None:
  if not 0 <= value < math.inf:  # also rejects NaN
    raise ValueError(f'{name} must be >= 0 and finite{hint}, got {value!r}.')


def _check_smoothness(L0, L1, epsilon, initial_gap) -> None:
  for name, value in (('L0', L0), ('epsilon', epsilon),
                      ('initial_gap', initial_gap)):
    _checks.check_positive(name, value, finite=True)
  _check_non_negative('L1', L1, ' (0 for an L0-smooth problem)')
  if L1 > 0 and epsilon > L0 / L1:
    raise ValueError(
        f'epsilon={epsilon!r} exceeds L0/L1={L0 / L1!r}, outside the regime the '
        'analysis covers: ask for a smaller epsilon (at most L0/L1).')


def online(
    L0: float,
    L1: float,
    epsilon: float,
    sigma: float,
    *,
    initial_gap: float = 1.0,
) -> SpiderSettings:
  r"""Preset for :math:`f(x) = \mathbb{E}_\xi F(x;\xi)` (see the module doc).

  ``lr = 1/(4 L0)``, ``c0 = epsilon``, ``c1 = epsilon L0/L1``,
  ``q = ceil(sigma/epsilon)``, ``S1 = ceil(8 sigma^2/epsilon^2)``,
  ``S2 = 2q``; the oracle count is :math:`O(\epsilon^{-3})`.

  Examples:
    >>> import spider_optax as so
    >>> p = so.theory.online(L0=1.0, L1=1.0, epsilon=0.1, sigma=1.0)
    >>> p.anchor_period, p.anchor_batch_size, p.minibatch_size
    (10, 800, 20)
    >>> tx = so.spider(p.learning_rate, p.c0, p.c1)

  Args:
    L0: the constant part of the smoothness bound (> 0).
    L1: the gradient-norm part (>= 0; 0 for an L0-smooth problem).
    epsilon: target gradient norm (> 0, at most ``L0/L1``).
    sigma: standard deviation bound of a single stochastic gradient (>= 0).
    initial_gap: :math:`f(x_0) - \inf f`, used only for ``steps`` and
      ``oracle_calls``.
  """
  _check_smoothness(L0, L1, epsilon, initial_gap)
  _check_non_negative('sigma', sigma)
  q = max(1, math.ceil(sigma / epsilon))
  s1 = max(1, math.ceil(8.0 * sigma**2 / epsilon**2))
  return _settings(L0, L1, epsilon, initial_gap, q, s1, 2 * q)


def finite_sum(
    n: int,
    L0: float,
    L1: float,
    epsilon: float,
    *,
    initial_gap: float = 1.0,
) -> SpiderSettings:
  r"""Preset for :math:`f(x) = \frac1n\sum_i f_i(x)` (see the module doc).

  ``lr = 1/(4 L0)``, ``c0 = epsilon``, ``c1 = epsilon L0/L1``, anchors take
  the full gradient (``S1 = n``), ``S2 = q = ceil(sqrt(n))``; the oracle count
  is :math:`O(n + \sqrt n\,\epsilon^{-2})`.

  Examples:
    >>> import spider_optax as so
    >>> p = so.theory.finite_sum(n=1797, L0=1.0, L1=1.0, epsilon=0.1)
    >>> p.anchor_period, p.anchor_batch_size, p.minibatch_size
    (43, 1797, 43)

  Args:
    n: number of components (> 0).
    L0: the constant part of the smoothness bound (> 0).
    L1: the gradient-norm part (>= 0; 0 for an L0-smooth problem).
    epsilon: target gradient norm (> 0, at most ``L0/L1``).
    initial_gap: :math:`f(x_0) - \inf f`, used only for ``steps`` and
      ``oracle_calls``.
  """
  _check_smoothness(L0, L1, epsilon, initial_gap)
  if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n <= 0:
    raise ValueError(f'n must be a positive int, got {n!r}.')
  n = int(n)
  q = math.isqrt(n - 1) + 1  # ceil(sqrt(n)), exact for large n
  return _settings(L0, L1, epsilon, initial_gap, q, n, q)


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
    try:
      q = float(quantile) if np.ndim(quantile) == 0 else None
    except (TypeError, ValueError):
      q = None
    if q is None or not 0 < q <= 1:  # also rejects NaN
      raise ValueError(
          f'quantile must be a number in (0, 1], got {quantile!r}: the '
          'fraction of L_hat samples per bin the line must lie above (1 for '
          'all of them, no outlier trimming).')
  if (isinstance(num_bins, bool) or not isinstance(num_bins, numbers.Integral)
      or num_bins < 2):
    raise ValueError(
        f'num_bins must be an int >= 2, got {num_bins!r}: it fixes the shape '
        'of the computation, so it cannot be a traced value.')


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

  lo, hi = jax.lax.fori_loop(0, _BISECTION_STEPS, bisect,
                             (s_max * _SLOPE_RANGE, s_max))
  # Snap to the line through the samples touching either side of the optimum.
  right, left = touching(lo), touching(hi)
  dg = g[right] - g[left]
  snap = jnp.where(dg > 0, (h[right] - h[left]) / jnp.where(dg > 0, dg, 1.0),
                   lo)
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
    >>> fit = so.theory.fit_smoothness(g, h)
    >>> print(f'L0={fit.L0:.2f} L1={fit.L1:.2f} from {fit.num_samples}')
    L0=2.00 L1=0.50 from 180
    >>> buffer = np.full(64, np.nan, np.float32)  # few steps recorded yet
    >>> buffer[:5] = 1.0
    >>> jax.jit(so.theory.fit_smoothness)(buffer, buffer).L0
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
        f'{np.shape(smoothness)}: pass one value of each per step.')
  g = jnp.ravel(jnp.asarray(grad_norms, jnp.float32))
  h = jnp.ravel(jnp.asarray(smoothness, jnp.float32))
  if g.size == 0:  # static: nothing to fit
    nan = jnp.full([], jnp.nan, jnp.float32)
    return SmoothnessFit(nan, nan, jnp.zeros([], jnp.int32))
  return _fit(g, h, jnp.asarray(quantile, jnp.float32),
              num_bins=int(num_bins))


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
  bin_of = jnp.where(ranks < n,
                     jnp.searchsorted(starts, ranks, side='right') - 1,
                     num_bins)
  # Each group's h ascending, to read its quantile by position.
  h_by_bin = h[jnp.lexsort((jnp.where(ranks < n, h, jnp.inf), bin_of))]
  last = jnp.maximum(counts, 1) - 1
  position = quantile * last
  below = jnp.floor(position).astype(jnp.int32)
  lower = h_by_bin[jnp.clip(starts + below, 0, size - 1)]
  upper = h_by_bin[jnp.clip(starts + jnp.minimum(below + 1, last), 0,
                            size - 1)]
  threshold = lower + (position - below) * (upper - lower)
  keep = (ranks < n) & (h <= threshold[jnp.minimum(bin_of, num_bins - 1)])

  mean_g = jnp.sum(jnp.where(ranks < n, g, 0.0)) / jnp.maximum(n, 1)
  L0, L1 = _lowest_line(jnp.where(keep, g, 0.0), jnp.where(keep, h, -jnp.inf),
                        mean_g)
  enough = n >= num_bins
  nan = jnp.full([], jnp.nan, jnp.float32)
  return SmoothnessFit(jnp.where(enough, L0, nan), jnp.where(enough, L1, nan),
                       n)
