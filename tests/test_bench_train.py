"""Smoke test of benchmarks/train.py in --quick mode, run in-process."""

import json
import math
import pathlib

import pytest

from benchmark_scripts import load_benchmark
from benchmark_scripts import run_quick

TASKS = ('digits', 'charlm')
METHODS = ('spider', 'sarah', 'svrg', 'clipped_sgd', 'clipped_adam')
CLIPPED = ('spider', 'clipped_sgd', 'clipped_adam')
CURVE_KEYS = ('oracle_calls', 'steps', 'wall_time_s', 'loss', 'grad_norm')


@pytest.fixture(scope='module')
def quick_run(tmp_path_factory):
  return run_quick('train', tmp_path_factory)


def test_json_matches_returned_results(quick_run):
  results, out, _ = quick_run
  assert json.loads(out.read_text()) == json.loads(json.dumps(results))


def test_shape(quick_run):
  results, _, _ = quick_run
  assert set(results['tasks']) == set(TASKS)
  for task in results['tasks'].values():
    assert set(task['methods']) == set(METHODS)
    for name, method in task['methods'].items():
      # --quick: 2 lrs, one clip scale; the same number of configs each.
      assert len(method['lr_grid']) == 2
      assert method['n_configs'] == len(method['runs']) == 2
      assert method['best_lr'] in method['lr_grid']
      run = method['runs'][
        min(method['runs'], key=lambda k: method['runs'][k]['final_loss'])
      ]
      assert run['learning_rate'] == method['best_lr']
      assert run['clip'] == method['best_clip']
      if name in CLIPPED:
        assert method['clip_scale_grid'] == [1.0]
        assert method['best_clip_scale'] == 1.0
        assert len(method['clip_grid']) == 1
        assert method['best_clip'] == method['clip_grid'][0]
        assert all(v > 0 for v in method['best_clip'].values())
        assert set(method['best_clip']) <= set(method['config'])
      else:
        assert method['best_clip'] is None
        assert method['clip_scale_grid'] is None
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


def test_edge_flags(quick_run):
  """Grids of 2 lrs (and 1 clip scale) have no interior: every best is an
  edge, and the flag, the summary and the JSON's list all say so."""
  results, _, _ = quick_run
  for task in results['tasks'].values():
    for name, method in task['methods'].items():
      for key in ('edge', 'edge_lr', 'edge_clip'):
        assert isinstance(method[key], bool), (name, key)
      assert method['edge_lr'] is True
      assert method['edge_clip'] is (name in CLIPPED)
      assert method['edge'] is True
  assert len(results['edges']) == len(TASKS) * len(METHODS)
  assert 'grid edge' in results['summary']


def test_at_edge():
  train = load_benchmark('train')
  assert train.at_edge(1.0, (0.3, 1.0, 3.0)) is False
  assert train.at_edge(3.0, (0.3, 1.0, 3.0)) is True
  assert train.at_edge(0.3, (0.3, 1.0, 3.0)) is True
  assert train.at_edge(1.0, (1.0,)) is True


def test_full_grids_equal_budget_and_from_ladders():
  """Full mode gives every method the same number of configurations, each lr
  grid a window of a shared ladder, and sarah/svrg's finer ladder contains
  the coarse one."""
  train = load_benchmark('train')
  assert set(train.LADDER) <= set(train.FINE_LADDER)
  for settings in train.TASKS.values():
    counts = set()
    for name in METHODS:
      lrs, scales = train.method_grid(name, settings['full'])
      counts.add(len(lrs) * len(scales))
      ladder = (
        train.ADAM_LADDER
        if name == 'clipped_adam'
        else train.LADDER
        if name in CLIPPED
        else train.FINE_LADDER
      )
      start = ladder.index(lrs[0])  # a window of consecutive values
      assert tuple(ladder[start : start + len(lrs)]) == tuple(lrs), name
      assert len(lrs) >= 3 and (name not in CLIPPED or len(scales) >= 3)
    assert len(counts) == 1


def test_losses_finite_and_best_is_lowest(quick_run):
  results, _, _ = quick_run
  for task in results['tasks'].values():
    for method in task['methods'].values():
      curves = method['curves']
      assert all(math.isfinite(v) for v in curves['loss'])
      assert all(math.isfinite(v) and v >= 0 for v in curves['grad_norm'])
      finite = [
        r['final_loss'] for r in method['runs'].values() if not r['diverged']
      ]
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


def test_oracle_accounting_and_anchor_schedule(quick_run):
  """Anchors (n calls) every q steps for SPIDER and SARAH, snapshots every m
  steps for SVRG, 2 * S2 per other step; none for SGD and Adam, 32 a step."""
  results, _, _ = quick_run
  for task in results['tasks'].values():
    n = task['n']
    for name, method in task['methods'].items():
      config = method['config']
      period = config.get('anchor_period', config.get('epoch_length'))
      for run in method['runs'].values():
        steps, anchors = run['steps'], run['anchors']
        if period is None:
          assert anchors == []
          assert run['oracle_calls'] == steps * config['batch'] == steps * 32
        else:
          assert anchors == list(range(0, steps, period)), name
          assert run['oracle_calls'] == (
            len(anchors) * n + (steps - len(anchors)) * 2 * config['minibatch']
          )


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
