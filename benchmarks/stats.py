"""The study's statistics: paired differences, speedup at equal loss.

Every comparison of ``benchmarks/study.py`` is paired: method and baseline
ran on the same evaluation seeds (a seed fixes the init, the minibatch order
and the dropout keys), so the per-seed differences carry the comparison and
the seed-to-seed spread they share cancels.

- :func:`paired`: the mean difference with a 95% Student-t interval and the
  wins, k of n.
- :func:`speedup_at_equal_loss`: the gradient evaluations the baseline needs
  to reach the method's final loss (interpolated in log budget between the
  baseline's runs at several budgets), divided by the method's;
  :func:`bootstrap_speedup` gives its interval, resampling the seeds.
- :func:`detectable_speedup`: the smallest speedup a paired interval of this
  width can tell from 1, given the slope of the baseline's loss in log
  budget.
"""

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

Results = dict[str, Any]
LEVEL = 0.95


def t_quantile(n: int, level: float = LEVEL) -> float:
  """The two-sided Student-t quantile with n - 1 degrees of freedom."""
  return float(scipy_stats.t.ppf(0.5 + level / 2, n - 1))


# Differences of losses below this are float32 rounding, not a verdict.
ROUNDING = 1e-4


def paired(
  method: Sequence[float], baseline: Sequence[float], level: float = LEVEL
) -> Results:
  """The paired difference ``method - baseline`` over seeds (lower is better).

  Returns the mean, sd and n of the differences, the ``level`` t-interval,
  the wins (seeds where the method's loss is lower) and a verdict: 'better'
  or 'worse' where the interval excludes 0, else 'no detectable difference';
  'equal (within rounding)' where the whole interval lies within
  :data:`ROUNDING` of 0 (two runs that differ only by float32 rounding, e.g.
  a MARS arm at gamma = 0 against its base, give intervals of 1e-7 that
  exclude 0 and mean nothing).
  A seed where either run diverged (a loss that is not finite) makes the
  comparison fail: verdict 'a run diverged', no interval.
  """
  a, b = np.asarray(method, float), np.asarray(baseline, float)
  if a.shape != b.shape or a.ndim != 1 or a.size < 2:
    raise ValueError(
      f'paired needs two equal-length sequences of 2 or more losses, got '
      f'shapes {a.shape} and {b.shape}'
    )
  n = int(a.size)
  if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
    return dict(
      n=n,
      mean=None,
      sd=None,
      low=None,
      high=None,
      wins=None,
      verdict='a run diverged',
    )
  d = a - b
  mean, sd = float(d.mean()), float(d.std(ddof=1))
  half = t_quantile(n, level) * sd / math.sqrt(n)
  low, high = mean - half, mean + half
  verdict = (
    'equal (within rounding)'
    if max(abs(low), abs(high)) < ROUNDING
    else 'better'
    if high < 0
    else 'worse'
    if low > 0
    else 'no detectable difference'
  )
  return dict(
    n=n,
    mean=mean,
    sd=sd,
    low=low,
    high=high,
    wins=int(np.sum(d < 0)),
    verdict=verdict,
  )


def budget_for_loss(
  budgets: Sequence[float], losses: Sequence[float], target: float
) -> tuple[float, bool]:
  """The budget at which the baseline reaches ``target``, and whether it was
  extrapolated.

  ``losses[i]`` is the baseline's mean final loss at ``budgets[i]`` (each a
  run with its own full schedule). Log budget is interpolated linearly in
  the loss between the two budgets whose losses bracket the target (the
  first bracket from the smallest budget); beyond the ends it follows the
  line through the two nearest points (flagged: extrapolated). A loss that
  does not fall along the budgets' line gives inf or 0 there.
  """
  x = np.log(np.asarray(budgets, float))
  y = np.asarray(losses, float)
  order = np.argsort(x)
  x, y = x[order], y[order]
  for i in range(len(x) - 1):
    lo, hi = sorted((y[i], y[i + 1]))
    if lo <= target <= hi and y[i] != y[i + 1]:
      t = (target - y[i]) / (y[i + 1] - y[i])
      return float(np.exp(x[i] + t * (x[i + 1] - x[i]))), False
  i = len(x) - 2 if target < y[-1] else 0  # the end the target is beyond
  slope = (y[i + 1] - y[i]) / (x[i + 1] - x[i])
  if slope >= 0:  # the loss does not fall with the budget there
    return (math.inf if target < y.min() else 0.0), True
  return float(np.exp(x[i] + (target - y[i]) / slope)), True


def speedup_at_equal_loss(
  baseline_budgets: Sequence[float],
  baseline_losses: np.ndarray,
  method_budget: float,
  method_losses: Sequence[float],
) -> tuple[float, bool]:
  """(baseline budget to reach the method's mean final loss) / method budget.

  Args:
    baseline_budgets: the baseline's budgets (gradient evaluations).
    baseline_losses: (seeds, budgets), its final losses.
    method_budget: the method's budget.
    method_losses: (seeds,), its final losses on the same seeds.

  Returns:
    The speedup and whether it was extrapolated beyond the budgets.
  """
  means = np.asarray(baseline_losses, float).mean(0)
  needed, extrapolated = budget_for_loss(
    baseline_budgets, means, float(np.mean(method_losses))
  )
  return needed / method_budget, extrapolated


def bootstrap_speedup(
  baseline_budgets: Sequence[float],
  baseline_losses: np.ndarray,
  method_budget: float,
  method_losses: Sequence[float],
  *,
  resamples: int = 2000,
  seed: int = 0,
  level: float = LEVEL,
) -> Results:
  """:func:`speedup_at_equal_loss` with a percentile bootstrap interval.

  Each resample draws the seeds with replacement, the same seeds for the
  method and for every baseline budget (the runs are paired by seed).
  """
  base = np.asarray(baseline_losses, float)
  mine = np.asarray(method_losses, float)
  if not (np.all(np.isfinite(base)) and np.all(np.isfinite(mine))):
    return dict(
      speedup=None,
      low=None,
      high=None,
      extrapolated=None,
      verdict='a run diverged',
    )
  point, extrapolated = speedup_at_equal_loss(
    baseline_budgets, base, method_budget, mine
  )
  rng = np.random.default_rng(seed)
  draws = rng.integers(0, mine.size, (resamples, mine.size))
  samples = np.array(
    [
      speedup_at_equal_loss(baseline_budgets, base[i], method_budget, mine[i])[
        0
      ]
      for i in draws
    ]
  )
  low, high = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2])
  verdict = (
    'faster'
    if low > 1
    else 'slower'
    if high < 1
    else 'no detectable difference'
  )
  return dict(
    speedup=point,
    low=float(low),
    high=float(high),
    extrapolated=extrapolated,
    verdict=verdict,
  )


def loss_slope(budgets: Sequence[float], losses: Sequence[float]) -> float:
  """Least-squares slope of the loss against the natural log of the budget."""
  return float(
    np.polyfit(
      np.log(np.asarray(budgets, float)), np.asarray(losses, float), 1
    )[0]
  )


def detectable_speedup(slope: float, sd: float, n: int) -> Results:
  """What a paired comparison of n seeds can resolve.

  A speedup s at equal loss moves the final loss by about
  ``|slope| * ln(s)``; the paired interval's half-width is
  ``t(n-1) * sd / sqrt(n)``. So the smallest speedup outside the interval is
  ``exp(half-width / |slope|)``, and the seeds needed for 1.15x are the
  smallest n with ``t(n-1) sd / sqrt(n) < |slope| ln 1.15``.
  """
  half = t_quantile(n) * sd / math.sqrt(n)
  gap = abs(slope) * math.log(1.15)
  need = next(
    (m for m in range(2, 1000) if t_quantile(m) * sd / math.sqrt(m) < gap),
    None,
  )
  return dict(
    slope=slope,
    sd=sd,
    n=n,
    half_width=half,
    loss_gap_of_1_15x=gap,
    detectable_speedup=math.exp(half / abs(slope)) if slope else math.inf,
    seeds_for_1_15x=need,
  )
