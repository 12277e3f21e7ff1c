"""Smoke test of benchmarks/device.py --quick: output shape, not timings."""

import math

from benchmark_scripts import load_benchmark
from benchmark_scripts import run_quick


def _positive(x):
  return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_quick_device(tmp_path_factory):
  res, _, _ = run_quick('device', tmp_path_factory)
  assert res['backend'] == 'cpu'
  assert set(res['targets']) >= {'spider_lean / clip_sgd', 'mars_adamw / adamw'}
  for size, row in res['updates'].items():
    for method, r in row.items():
      assert _positive(r['median_s']), (size, method)
      assert _positive(r['time_over_bytes_bound']), (size, method)
    ratios = res['ratios'][size]
    assert ratios['spider / clip_sgd'] == (
      row['spider']['median_s'] / row['clip_sgd']['median_s']
    )
    assert ratios['mars_lion / lion'] == (
      row['mars_lion']['median_s'] / row['lion']['median_s']
    )
    assert (
      ratios['mars_lion / its bound']
      == (row['mars_lion']['time_over_bytes_bound'])
    )
  (block,) = res['matrix'].values()
  assert set(block['methods']) == {'muon', 'mars_shampoo'}
  shampoo = block['methods']['mars_shampoo']
  assert res['ratios']['matrix 4096'] == {
    'mars_shampoo / muon': shampoo['ratio_vs_base'],
    'mars_shampoo / its bound': shampoo['time_over_bound'],
  }
  assert _positive(shampoo['ratio_vs_base'])
  assert _positive(shampoo['time_over_bound'])
  (step,) = res['ratios']['transformer B=4'].items()
  assert step[0] == 'mars_adamw step / adamw step' and _positive(step[1])
  device = load_benchmark('device')
  assert device.target(step[0]) == 1.1
  assert device.target('mars_lion / its bound') == 1.5
  assert device.target('mars_lion / lion') is None
  for row in res['autoclip'].values():
    assert row['fixed_clip']['ratio_vs_fixed_clip'] == 1.0
    assert all(_positive(r['median_s']) for r in row.values())
  for refit in ('refit_1', 'refit_16'):
    norms = res['autoclip_trajectory'][refit]['final_grad_norms']
    assert norms and all(math.isfinite(g) for g in norms)
  (case,) = res['paired'].values()
  assert set(case['steps']) == {
    'grad_clip_sgd',
    'spider_paired_vmap',
    'spider_paired_loop',
  }
  assert case['steps']['grad_clip_sgd']['ratio_vs_grad_clip_sgd'] == 1.0
  for step in case['steps'].values():
    assert _positive(step['median_s']) and _positive(step['temp_bytes'])
  checks = res['checks']
  assert checks['size'] == 1_000
  assert all(_positive(checks[m]) for m in checks if m != 'size')
  for row in res['copy'].values():
    assert _positive(row['copy']) and _positive(row['clip_sgd'])
