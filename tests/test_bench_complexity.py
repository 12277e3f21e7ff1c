"""Smoke test of benchmarks/complexity.py --quick: output shape, not values."""

import json
import math
import os

import pytest

import spider_optax as so
from benchmark_scripts import load_benchmark
from benchmark_scripts import run_quick


@pytest.fixture(scope='module')
def quick(tmp_path_factory):
  res, out, tmp = run_quick('complexity', tmp_path_factory)
  return load_benchmark('complexity'), res, str(out), tmp


def is_count_or_failure(v):
  if isinstance(v, float) and math.isinf(v) and v > 0:
    return True
  return isinstance(v, int) and not isinstance(v, bool) and v > 0


def is_slope(v):
  return isinstance(v, float) and math.isfinite(v)


def test_eps_grid_is_geometric_and_decreasing(quick):
  module, _, _, _ = quick
  for mode in ('quick', 'full'):
    eps = module.MODES[mode]['eps']
    assert len(eps) >= 3 and all(a > b > 0 for a, b in zip(eps, eps[1:]))
    ratios = [a / b for a, b in zip(eps, eps[1:])]
    assert max(ratios) / min(ratios) < 1.01, (mode, ratios)
    assert module.MODES[mode]['seeds'] >= 3
    assert module.MODES[mode]['seeds'] % 2 == 1  # a median, not a mean


def test_online_shape_and_counts(quick):
  module, res, _, _ = quick
  cfg = module.MODES['quick']
  assert set(res['online']) == {p.name for p in module.PROBLEMS}
  for name, on in res['online'].items():
    assert on['eps'] == cfg['eps']
    assert set(on['results']) == set(module.METHODS)
    for method, rows in on['results'].items():
      assert [r['eps'] for r in rows] == cfg['eps']
      for r in rows:
        assert len(r['calls']) == cfg['seeds']
        assert all(is_count_or_failure(c) for c in r['calls']), (name, r)
        assert r['median'] > 0
        assert r['failed'] == sum(math.isinf(c) for c in r['calls'])
        assert r['median'] == module.common.median(r['calls'])
        assert isinstance(r['hyper'], dict) and isinstance(
          r['at_grid_edge'], list
        )
      finite = [r for r in rows if math.isfinite(r['median'])]
      for slopes in (on['slopes'], on['tail_slopes']):
        if len(finite) == len(rows):
          assert is_slope(slopes[method]), (name, method)
        elif len(finite) < 2:
          assert slopes[method] is None
    # Every method reaches every eps of the quick grid on both problems.
    assert all(
      math.isfinite(r['median'])
      for rows in on['results'].values()
      for r in rows
    ), name


def test_oracle_accounting(quick):
  _, res, _, _ = quick
  for on in res['online'].values():
    for method in ('clipped_sgd', 'sgd'):  # a step costs its batch
      for r in on['results'][method]:
        b = r['hyper']['batch']
        assert all(c % b == 0 for c in r['calls'] if math.isfinite(c))
    for r in on['results']['spider']:  # k steps cost theory.oracle_calls
      h = r['hyper']
      for c in r['calls']:
        if math.isfinite(c):
          assert any(
            so.theory.oracle_calls(k, h['q'], h['s1'], h['s2']) == c
            for k in range(1, c + 1)
          ), (r, c)


def test_presets(quick):
  _, res, _, _ = quick
  n = len(res['config']['eps'])
  for on in res['online'].values():
    assert set(on['preset']) == {'spider', 'spider_sfo'}
    for row in on['preset'].values():
      assert len(row['median']) == len(row['predicted']) == n
      assert all(len(c) == res['config']['seeds'] for c in row['calls'])
      assert all(v > 0 for v in row['median'])  # a count, or inf
      assert all(isinstance(v, int) and v > 0 for v in row['predicted'])
      assert row['slope'] is None or is_slope(row['slope'])


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
      assert is_slope(fs['slopes'][method])
  for r in fs['results']['clipped_gd']:  # every step a full gradient
    assert all(c % r['n'] == 0 for c in r['calls'] if math.isfinite(c))


def test_json_and_plots(quick):
  _, res, out, tmp = quick
  with open(out) as f:
    data = json.load(f)
  assert data['mode'] == 'quick'
  assert data['environment']['versions']['jax']
  assert 'last half' in data['stop']
  for on in data['online'].values():
    assert set(on['problem']) >= {'L0', 'L1', 'sigma', 'tau', 'd'}
  assert len(res['plots']) == 2
  for path in res['plots']:
    assert os.path.dirname(path) == str(tmp)
    assert os.path.getsize(path) > 0
