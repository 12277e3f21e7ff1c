"""Smoke test of benchmarks/smoothness.py in --quick mode, run in-process."""

import json
import math
import pathlib

import pytest

from benchmark_scripts import run_quick

TASKS = ('digits', 'charlm')
METHODS = (
  'fixed',
  'auto_clip',
  'adaptive_anchor',
  'adaptive_minibatch',
  'auto_both',
)
PLOTS = ('fit', 'loss', 'anchors')


@pytest.fixture(scope='module')
def quick_run(tmp_path_factory):
  return run_quick('smoothness', tmp_path_factory)


def _finite(x) -> bool:
  return isinstance(x, (int, float)) and math.isfinite(x)


def test_json_matches_returned_results(quick_run):
  results, out, _ = quick_run
  # Strict JSON: no NaN or inf anywhere.
  text = out.read_text()
  loaded = json.loads(text, parse_constant=pytest.fail)
  assert loaded == json.loads(json.dumps(results))


def test_shape(quick_run):
  results, _, _ = quick_run
  assert set(results['tasks']) == set(TASKS)
  for task in results['tasks'].values():
    assert set(task['methods']) == set(METHODS)
    assert task['budget'] > 0 and task['n'] > 0
    for method in task['methods'].values():
      assert method['grid_size'] == len(method['grid']) >= 1
      assert len(method['seeds']) == len(task['seeds']) >= 2
      assert method['best'] in [g['setting'] for g in method['grid']]
  assert isinstance(results['verdicts'], list) and results['verdicts']
  assert 'fixed' in results['summary']
  assert results['mode'] == 'quick'
  assert results['environment']['versions']['jax']


def test_smoothness_fit_finite_and_non_negative(quick_run):
  results, _, _ = quick_run
  for task in results['tasks'].values():
    s = task['smoothness']
    for key in ('L0', 'L1', 'L0_quantile_1', 'L1_quantile_1'):
      assert _finite(s[key]) and s[key] >= 0, key
    assert s['num_samples'] >= 8
    assert len(s['grad_norm']) == len(s['smoothness']) == len(s['step'])
    assert all(_finite(v) and v >= 0 for v in s['smoothness'])


def test_runs_finite_with_positive_oracle_counts(quick_run):
  results, _, _ = quick_run
  for task in results['tasks'].values():
    n, s2, budget = task['n'], task['minibatch'], task['budget']
    assert _finite(task['targets']['a']) and _finite(task['targets']['b'])
    for method in task['methods'].values():
      assert _finite(method['final_loss'])
      assert _finite(method['final_grad_norm'])
      for run in method['seeds']:
        assert not run['diverged']
        assert 0 < run['oracle_calls'] <= budget
        assert run['anchors'][0] == 0
        # The accounting: anchors cost n, recursive steps 2 S2.
        recursive = run['steps'] - len(run['anchors'])
        assert run['oracle_calls'] == (
          len(run['anchors']) * n + recursive * 2 * s2
        )
        calls = run['curves']['oracle_calls']
        assert calls[0] == 0 and calls[-1] == run['oracle_calls']
        assert all(b > a for a, b in zip(calls, calls[1:]))
        assert all(_finite(v) and v > 0 for v in run['curves']['loss'])
      for key in ('calls_to_target_a', 'calls_to_target_b'):
        value = method[key]
        assert value is None or (_finite(value) and 0 <= value <= budget)


def test_fixed_periods(quick_run):
  results, _, _ = quick_run
  for task in results['tasks'].values():
    for name in ('fixed', 'auto_clip'):
      method = task['methods'][name]
      q = method['best']['q']
      assert method['best']['anchor'] == 'every_q'
      for run in method['seeds']:
        assert run['anchors'] == list(range(0, run['steps'], q))


def test_adaptive_anchoring_respects_cap(quick_run):
  results, _, _ = quick_run
  for task in results['tasks'].values():
    for name in ('adaptive_anchor', 'adaptive_minibatch', 'auto_both'):
      method = task['methods'][name]
      cap = method['best']['q']
      for run in method['seeds']:
        anchors = run['anchors'] + [run['steps']]
        assert all(0 < b - a <= cap for a, b in zip(anchors, anchors[1:]))


def test_error_check(quick_run):
  results, _, _ = quick_run
  keys = (
    'true_error',
    'minibatch_estimate',
    'per_sample_estimate',
    'centred_estimate',
    'estimate_norm_sq',
    'split_half_estimate',
  )
  for task in results['tasks'].values():
    check = task['error_check']
    assert len(check['step']) >= 3
    for key in keys:
      assert len(check[key]) == len(check['step'])
      assert all(_finite(v) and v >= 0 for v in check[key])
    assert check['by_third']


def test_plots_exist(quick_run):
  results, _, tmp = quick_run
  assert set(results['plots']) == set(PLOTS)
  for name in PLOTS:
    path = pathlib.Path(results['plots'][name])
    assert path.parent == tmp
    assert path.suffix == '.png'
    assert path.stat().st_size > 1000
