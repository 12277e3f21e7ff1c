"""benchmarks/stats.py against hand-computed references.

The references are written from the formulas (a tabulated t quantile, the
linear interpolation of log budget written out), not from the module."""

import math

import numpy as np
import pytest

from benchmark_scripts import load_benchmark

stats = load_benchmark('stats')

T_975_7 = 2.364624  # Student t, 7 degrees of freedom, 0.975 (tables)


def test_paired_interval_matches_the_t_formula():
  rng = np.random.default_rng(0)
  base = rng.normal(2.0, 0.1, 8)
  method = base - 0.03 + rng.normal(0, 0.01, 8)
  d = method - base
  half = T_975_7 * np.std(d, ddof=1) / math.sqrt(8)
  out = stats.paired(method, base)
  assert out['mean'] == pytest.approx(d.mean(), abs=1e-12)
  assert out['low'] == pytest.approx(d.mean() - half, rel=1e-5)
  assert out['high'] == pytest.approx(d.mean() + half, rel=1e-5)
  assert out['wins'] == int(np.sum(d < 0)) and out['n'] == 8
  assert out['verdict'] == 'better'


def test_paired_verdicts():
  base = np.array([1.0, 2.0, 3.0, 4.0])
  assert stats.paired(base + [0.1, -0.1, 0.05, -0.05], base)['verdict'] == (
    'no detectable difference'
  )
  assert stats.paired(base + [0.1, 0.12, 0.09, 0.11], base)['verdict'] == (
    'worse'
  )
  assert stats.paired(base + [0.1, math.inf, 0, 0], base)['verdict'] == (
    'a run diverged'
  )
  # Rounding-sized differences (a gamma = 0 arm against its base): the
  # interval excludes 0 but lies within 1e-4 of it.
  rounding = base + [1e-6, 0.0, 1.2e-6, 7e-7]
  assert stats.paired(rounding, base)['verdict'] == 'equal (within rounding)'
  assert stats.paired(base + [2e-4, 3e-4, 2.5e-4, 2e-4], base)['verdict'] == (
    'worse'
  )
  with pytest.raises(ValueError, match='equal-length'):
    stats.paired([1.0, 2.0], [1.0])


def test_budget_for_loss_interpolates_in_log_budget():
  budgets, losses = [100, 200, 400, 800], [3.0, 2.6, 2.3, 2.1]
  # 2.45 lies halfway (in loss) between 200 and 400: sqrt(200 * 400).
  b, extrapolated = stats.budget_for_loss(budgets, losses, 2.45)
  assert b == pytest.approx(math.sqrt(200 * 400)) and not extrapolated
  assert stats.budget_for_loss(budgets, losses, 2.6) == (
    pytest.approx(200),
    False,
  )
  # Below the last loss: along the last segment, 0.2 nats per doubling.
  b, extrapolated = stats.budget_for_loss(budgets, losses, 2.0)
  assert extrapolated and b == pytest.approx(800 * 2**0.5)
  # Above the first loss: along the first segment, 0.4 per doubling.
  b, extrapolated = stats.budget_for_loss(budgets, losses, 3.2)
  assert extrapolated and b == pytest.approx(100 * 2**-0.5)


def test_speedup_and_bootstrap():
  budgets = [1, 2, 4, 8]
  rng = np.random.default_rng(1)
  seed_effect = rng.normal(0, 0.05, (8, 1))
  # Loss 3 - 0.2 log2(budget): the method at budget 2 matching the
  # baseline at 4 is a 2x speedup.
  base = 3.0 - 0.2 * np.log2(budgets)[None] + seed_effect
  method = 3.0 - 0.2 * 2 + seed_effect[:, 0]
  s, extrapolated = stats.speedup_at_equal_loss(budgets, base, 2, method)
  assert s == pytest.approx(2.0) and not extrapolated
  out = stats.bootstrap_speedup(budgets, base, 2, method, resamples=200)
  # The shared seed effect cancels: every resample gives 2.
  assert out['low'] == pytest.approx(2.0) and out['high'] == pytest.approx(2.0)
  assert out['verdict'] == 'faster'
  noisy = method + rng.normal(0, 0.3, 8)
  wide = stats.bootstrap_speedup(budgets, base, 2, noisy, resamples=500)
  assert wide['low'] < wide['speedup'] < wide['high']
  assert wide['high'] / wide['low'] > 1.5


def test_detectable_speedup_arithmetic():
  out = stats.detectable_speedup(slope=-0.2, sd=0.02, n=8)
  half = T_975_7 * 0.02 / math.sqrt(8)
  assert out['half_width'] == pytest.approx(half, rel=1e-5)
  assert out['detectable_speedup'] == pytest.approx(math.exp(half / 0.2))
  gap = 0.2 * math.log(1.15)
  need = out['seeds_for_1_15x']
  t = lambda m: stats.t_quantile(m) * 0.02 / math.sqrt(m)
  assert t(need) < gap <= t(need - 1)
