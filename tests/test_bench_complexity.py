"""Smoke test of benchmarks/complexity.py --quick: output shape, not values."""

import json
import math
import os

import pytest
from benchmark_scripts import load_benchmark

@pytest.fixture(scope='module')
def quick(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('complexity')
  module = load_benchmark('complexity')
  out = str(tmp / 'complexity.json')
  res = module.main(['--quick', '--out', out, '--plot-dir', str(tmp)])
  return module, res, out, tmp


def is_count_or_failure(v):
  if isinstance(v, float) and math.isinf(v) and v > 0:
    return True
  return (isinstance(v, int) and not isinstance(v, bool) and v > 0)


def test_online_shape_and_counts(quick):
  module, res, _, _ = quick
  cfg = module.MODES['quick']
  on = res['online']
  assert set(on['results']) == set(module.METHODS)
  for method in module.METHODS:
    rows = on['results'][method]
    assert [r['eps'] for r in rows] == cfg['eps']
    for r in rows:
      assert len(r['calls']) == cfg['seeds']
      assert all(is_count_or_failure(c) for c in r['calls']), (method, r)
      assert r['median'] > 0
    finite = [r for r in rows if math.isfinite(r['median'])]
    slope = on['slopes'][method]
    if len(finite) >= 2:
      assert isinstance(slope, float) and math.isfinite(slope), method
    else:
      assert slope is None


def test_finite_sum_shape_and_counts(quick):
  module, res, _, _ = quick
  cfg = module.MODES['quick']
  fs = res['finite_sum']
  assert set(fs['results']) == {'spider', 'clipped_gd'}
  for method, rows in fs['results'].items():
    assert [r['n'] for r in rows] == cfg['n_grid']
    for r in rows:
      assert all(is_count_or_failure(c) for c in r['calls']), (method, r)
    finite = [r for r in rows if math.isfinite(r['median'])]
    if len(finite) >= 2:
      assert math.isfinite(fs['slopes'][method])
  # Oracle accounting: SPIDER's counts are those of theory.oracle_calls with
  # its (q, S1 = n, S2) for some number of steps; GD's are multiples of n.
  for r in fs['results']['clipped_gd']:
    assert all(c % r['n'] == 0 for c in r['calls'] if math.isfinite(c))


def test_json_and_plots(quick):
  _, res, out, tmp = quick
  with open(out) as f:
    data = json.load(f)
  assert data['mode'] == 'quick'
  assert data['environment']['jax']
  assert set(data['problem']) >= {'L0', 'L1', 'sigma'}
  assert len(res['plots']) == 2
  for path in res['plots']:
    assert os.path.dirname(path) == str(tmp)
    assert os.path.getsize(path) > 0


def test_untuned_preset_rows(quick):
  _, res, _, _ = quick
  assert set(res['online']['lr_scale_1']) == {'spider', 'spider_sfo', 'sarah'}
  for method, row in res['online']['lr_scale_1'].items():
    assert len(row['median']) == len(res['config']['eps']), method
    assert all(v > 0 for v in row['median'])  # a count, or inf
    assert row['slope'] is None or math.isfinite(row['slope'])
