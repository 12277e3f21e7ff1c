"""Smoke test of benchmarks/train.py in --quick mode, run in-process."""

import json
import math
import pathlib

import pytest
from benchmark_scripts import load_benchmark

TASKS = ('digits', 'charlm')
METHODS = ('spider', 'sarah', 'svrg', 'clipped_sgd', 'clipped_adam')
CURVE_KEYS = ('oracle_calls', 'steps', 'wall_time_s', 'loss', 'grad_norm')


@pytest.fixture(scope='module')
def quick_run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('train')
  out = tmp / 'train.json'
  results = load_benchmark('train').main(
      ['--quick', '--no-progress', '--out', str(out), '--plot-dir', str(tmp)])
  return results, out, tmp


def test_json_matches_returned_results(quick_run):
  results, out, _ = quick_run
  assert json.loads(out.read_text()) == json.loads(json.dumps(results))


def test_shape(quick_run):
  results, _, _ = quick_run
  assert set(results['tasks']) == set(TASKS)
  for task in results['tasks'].values():
    assert set(task['methods']) == set(METHODS)
    for method in task['methods'].values():
      assert len(method['lr_grid']) == 2
      assert len(method['runs']) == 2
      assert method['best_lr'] in method['lr_grid']
      curves = method['curves']
      assert set(CURVE_KEYS) <= set(curves)
      lengths = {len(curves[k]) for k in CURVE_KEYS}
      assert len(lengths) == 1 and lengths.pop() >= 3
  assert isinstance(results['spider_loses'], list)
  assert 'SPIDER' in results['summary']
  env = results['environment']
  for key in ('jax', 'optax', 'numpy'):
    assert env['versions'][key]
  assert env['cpu_count'] and env['python']


def test_losses_finite_and_best_is_lowest(quick_run):
  results, _, _ = quick_run
  for task in results['tasks'].values():
    for method in task['methods'].values():
      curves = method['curves']
      assert all(math.isfinite(v) for v in curves['loss'])
      assert all(math.isfinite(v) and v >= 0 for v in curves['grad_norm'])
      finite = [r['final_loss'] for r in method['runs'].values()
                if not r['diverged']]
      assert method['final_loss'] == min(finite)


def test_oracle_calls_increasing_within_budget(quick_run):
  results, _, _ = quick_run
  for task in results['tasks'].values():
    budget = task['budget']
    for method in task['methods'].values():
      for run in method['runs'].values():
        calls = run['curves']['oracle_calls']
        assert calls[0] == 0
        assert all(b > a for a, b in zip(calls, calls[1:]))
        assert calls[-1] == run['oracle_calls'] <= budget
        # Every method spends most of its budget (the same for all).
        if not run['diverged']:
          assert run['oracle_calls'] > 0.5 * budget
        times = run['curves']['wall_time_s']
        assert all(b >= a for a, b in zip(times, times[1:]))


def test_digits_every_method_decreases_loss(quick_run):
  results, _, _ = quick_run
  for name, method in results['tasks']['digits']['methods'].items():
    loss = method['curves']['loss']
    assert loss[-1] < loss[0], name


def test_plots_exist(quick_run):
  results, _, tmp = quick_run
  for name in TASKS:
    path = pathlib.Path(results['plots'][name])
    assert path.parent == tmp
    assert path.suffix == '.png'
    assert path.stat().st_size > 1000
