r"""Theory presets: SPIDER's hyperparameters from (L0, L1), epsilon and sigma.

Both presets return a :class:`SpiderSettings` whose ``learning_rate``, ``c0``
and ``c1`` go to :func:`spider_optax.spider`, and whose ``anchor_period``,
``anchor_batch_size`` and ``minibatch_size`` drive the training loop. They also
predict the number of steps and of stochastic-gradient evaluations (the oracle
count) after which an iterate is epsilon-stationary. Where (L0, L1) are
unknown, :func:`spider_optax.smoothness_fit.fit_smoothness` (also
``so.theory.fit_smoothness``) estimates them from a training trace.

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
  The clipped learning rate and its rates: Reisizadeh, Li, Das, Jadbabaie,
  arXiv 2303.00883, 2023 (see :func:`spider_optax.spider`). The estimator:
  Fang, Li, Lin, Zhang, NeurIPS 2018. (L0, L1)-smoothness: Zhang, He, Sra,
  Jadbabaie, `Why gradient clipping accelerates training
  <https://arxiv.org/abs/1905.11881>`_, ICLR 2020.
"""

import math
import numbers
from typing import NamedTuple

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
  c1: float | None
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


def _finite(value: float, what: str, *, positive: bool = False) -> float:
  """``value``, or a ValueError naming what made it infinite (or 0)."""
  if not math.isfinite(value) or (positive and not value > 0):
    kind = 'finite and positive' if positive else 'finite'
    raise ValueError(
      f'{what} is not {kind} for these arguments: they are outside the '
      "range where the preset's formulas are finite."
    )
  return value


def _ceil(value: float, what: str) -> int:
  return math.ceil(_finite(value, what))


def _settings(L0, L1, epsilon, initial_gap, q, s1, s2) -> SpiderSettings:
  learning_rate = _finite(
    1.0 / (4.0 * L0),
    'The learning rate 1/(4 L0) (L0 too small or too large)',
    positive=True,
  )
  steps = _ceil(
    8.0 * initial_gap * (L0 / epsilon / epsilon + L1 / epsilon),
    'The step count 8 initial_gap (L0/epsilon^2 + L1/epsilon) (epsilon too '
    'small, or L0, L1 or initial_gap too large)',
  )
  return SpiderSettings(
    learning_rate=learning_rate,
    c0=epsilon,
    c1=_finite(
      epsilon * L0 / L1, 'c1 = epsilon L0/L1 (L1 too small)', positive=True
    )
    if L1 > 0
    else None,
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
  for name, value in (
    ('L0', L0),
    ('epsilon', epsilon),
    ('initial_gap', initial_gap),
  ):
    _checks.check_positive(name, value, finite=True)
  _check_non_negative('L1', L1, ' (0 for an L0-smooth problem)')
  if L1 > 0 and epsilon > L0 / L1:
    raise ValueError(
      f'epsilon={epsilon!r} exceeds L0/L1={L0 / L1!r}, outside the regime the '
      'analysis covers: ask for a smaller epsilon (at most L0/L1).'
    )


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
  q = max(
    1,
    _ceil(
      sigma / epsilon, 'q = sigma/epsilon (sigma too large for this epsilon)'
    ),
  )
  s1 = max(
    1,
    _ceil(
      8.0 * (sigma / epsilon) * (sigma / epsilon),
      'S1 = 8 sigma^2/epsilon^2 (sigma too large for this epsilon)',
    ),
  )
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


# The fit lives in its own module; kept here under its old name.
from spider_optax.smoothness_fit import fit_smoothness  # noqa: E402,F401
from spider_optax.smoothness_fit import SmoothnessFit  # noqa: E402,F401
