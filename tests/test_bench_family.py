"""Smoke test of benchmarks/family.py in --quick mode, run in-process."""

import json
import math
import pathlib
import statistics

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spider_optax as so
from benchmark_scripts import load_benchmark
from benchmark_scripts import run_quick

TASKS = ('transformer', 'cnn')
METHODS = (
  'adamw',
  'sgd',
  'spider',
  'spider_adam',
  'storm',
  'mars_exact',
  'mars',
)
SEEDS = ('0', '1', '2')
CURVES = (
  'oracle_calls',
  'steps',
  'anchors',
  'wall_time_s',
  'train_loss',
  'val_loss',
)


@pytest.fixture(scope='module')
def quick_run(tmp_path_factory):
  return run_quick('family', tmp_path_factory)


def _runs(task):
  """Every run of a task: the tuning runs and the other seeds'."""
  for name, method in task['methods'].items():
    for run in method['tuning']['runs'].values():
      yield name, run
    for seed, run in method['seeds'].items():
      if seed != '0':
        yield name, run


def test_json_is_strict_and_matches_the_results(quick_run):
  results, out, _ = quick_run
  loaded = json.loads(out.read_text(), parse_constant=pytest.fail)
  assert loaded == json.loads(json.dumps(results))
  assert results['mode'] == 'quick'
  assert results['environment']['versions']['jax']


def test_shape(quick_run):
  results, _, _ = quick_run
  assert set(results['tasks']) == set(TASKS)
  for task in results['tasks'].values():
    assert set(task['methods']) == set(METHODS)
    assert [row['method'] for row in task['table']] == list(METHODS)
    for method in task['methods'].values():
      tuning = method['tuning']
      # --quick: 2 learning rates x 1 value of the second knob, no widening.
      assert len(tuning['lr_grid']) == 2 and len(tuning['knob_grid']) == 1
      assert tuning['n_configs'] == len(tuning['runs']) == 2
      assert tuning['widened'] == 0
      best = tuning['runs'][tuning['best']]
      assert best['final_val_loss'] == min(
        r['final_val_loss'] for r in tuning['runs'].values()
      )
      assert set(method['seeds']) == set(SEEDS)
      assert method['seeds']['0'] == best  # the tuning run is seed 0
      for seed, run in method['seeds'].items():
        assert run['seed'] == int(seed)
        assert (run['learning_rate'], run['knob']) == (
          best['learning_rate'],
          best['knob'],
        )
  assert set(results['mars_goal']) == set(TASKS)
  assert 'MARS approx vs clip + AdamW' in results['summary']


def test_edge_flags(quick_run):
  """A grid of 2 learning rates has no interior: every best is an edge."""
  results, _, _ = quick_run
  for task in results['tasks'].values():
    for row in task['table']:
      assert row['edge'] is True
    assert 'grid edge' in results['summary']


def test_losses_finite(quick_run):
  results, _, _ = quick_run
  for task in results['tasks'].values():
    for name, run in _runs(task):
      assert not run['diverged'], name
      curves = run['curves']
      assert len({len(curves[k]) for k in CURVES}) == 1
      assert len(curves['val_loss']) >= 3
      for key in ('train_loss', 'val_loss'):
        assert all(math.isfinite(v) and v > 0 for v in curves[key])
        assert run[f'final_{key}'] == curves[key][-1]
    for row in task['table']:
      for key in ('train_median', 'val_median', 'train_min', 'val_max'):
        assert math.isfinite(row[key]), key


def test_equal_gradient_budgets(quick_run):
  """Every method spends the same budget, counted per sample: B a plain
  step, 2B a paired step, S1 an anchor; it stops when the next step would
  pass the budget."""
  results, _, _ = quick_run
  for task in results['tasks'].values():
    plan = task['plan']
    b, s1, budget = plan['batch'], plan['anchor_batch'], plan['budget']
    for name, run in _runs(task):
      steps, anchors = run['steps'], len(run['anchors'])
      if name in ('spider', 'spider_adam'):
        q = run['knob']
        assert run['anchors'] == list(range(0, steps, q))
        cost = anchors * s1 + (steps - anchors) * 2 * b
      elif name in ('storm', 'mars_exact'):
        cost = steps * 2 * b
      else:
        cost = steps * b
      if name not in ('spider', 'spider_adam'):
        # The budget is a multiple of 2B: these spend all of it.
        assert anchors == 0 and cost == budget
      assert run['oracle_calls'] == cost <= budget
      assert cost > budget - max(s1, 2 * b)
      calls = run['curves']['oracle_calls']
      assert calls[0] == 0 and calls[-1] == cost
      assert all(y > x for x, y in zip(calls, calls[1:]))
      counted = run['curves']['anchors']
      assert counted[-1] == anchors and counted == sorted(counted)


def test_table_medians_are_those_of_the_seeds(quick_run):
  results, _, _ = quick_run
  for task in results['tasks'].values():
    for row in task['table']:
      seeds = task['methods'][row['method']]['seeds'].values()
      for key in ('train', 'val'):
        finals = [run[f'final_{key}_loss'] for run in seeds]
        assert len(finals) == 3
        assert row[f'{key}_median'] == pytest.approx(statistics.median(finals))
        assert row[f'{key}_min'] == min(finals)
        assert row[f'{key}_max'] == max(finals)


def test_step_times_and_wall_estimates(quick_run):
  results, _, _ = quick_run
  for task in results['tasks'].values():
    for name, method in task['methods'].items():
      times = method['step_time_s']
      kinds = {
        'spider': {'anchor', 'paired'},
        'spider_adam': {'anchor', 'paired'},
        'storm': {'paired'},
        'mars_exact': {'paired'},
      }
      assert set(times) == kinds.get(name, {'plain'})
      assert all(math.isfinite(t) and t > 0 for t in times.values())
      for run in method['seeds'].values():
        wall = run['curves']['wall_estimate_s']
        assert len(wall) == len(run['curves']['steps']) and wall[0] == 0
        assert all(y > x for x, y in zip(wall, wall[1:]))
        step = times.get('paired', times.get('plain'))
        anchors = len(run['anchors'])
        assert wall[-1] == pytest.approx(
          anchors * times.get('anchor', 0.0) + (run['steps'] - anchors) * step
        )


def test_vmap_matches_single_runs(quick_run):
  results, _, _ = quick_run
  for task in results['tasks'].values():
    check = task['vmap_check']
    assert check['lanes'] == 2 and check['steps'] >= 1
    assert check['max_abs_param_change'] > 0
    assert check['max_abs_param_diff'] <= 1e-2 * check['max_abs_param_change']
    assert check['single_step_s'] > 0 and check['vmapped_step_per_lane_s'] > 0


def test_mars_goal_is_computed_from_the_table(quick_run):
  results, _, _ = quick_run
  for name, goal in results['mars_goal'].items():
    rows = {r['method']: r for r in results['tasks'][name]['table']}
    mars, adamw = rows['mars'], rows['adamw']
    assert goal['gap'] == pytest.approx(
      adamw['val_median'] - mars['val_median']
    )
    assert goal['spread'] == pytest.approx(
      max(
        mars['val_max'] - mars['val_min'], adamw['val_max'] - adamw['val_min']
      )
    )
    assert goal['met'] is (goal['gap'] > goal['spread'])


def test_plots_exist(quick_run):
  results, _, tmp = quick_run
  assert set(results['plots']) == set(TASKS)
  for path in results['plots'].values():
    path = pathlib.Path(path)
    assert path.parent == tmp and path.suffix == '.png'
    assert path.stat().st_size > 1000


def test_paired_cnn_step_shares_batch_and_dropout_key():
  """At x_k = x_{k-1} a paired evaluation gives equal gradients only if both
  points see the same batch statistics and dropout mask; the aux kept is
  x_k's running statistics, as one jax.grad at x_k gives."""
  task = load_benchmark('tasks').cnn_task()
  params, stats = task.init(0)
  batch = task.take(task.data, jnp.arange(16))
  key = jax.random.key(3)
  (g, aux), (g_prev, _) = so.paired_grad(task.loss, has_aux=True)(
    params, params, stats, batch, key=key
  )
  np.testing.assert_allclose(g, g_prev, rtol=1e-6, atol=1e-7)
  g_one, aux_one = jax.grad(task.loss, has_aux=True)(
    params, stats, batch, key=key
  )
  np.testing.assert_allclose(g, g_one, rtol=1e-5, atol=1e-6)
  jax.tree.map(np.testing.assert_allclose, aux, aux_one)
  # Another key draws another mask: the gradient changes.
  g_other, _ = jax.grad(task.loss, has_aux=True)(
    params, stats, batch, key=jax.random.key(4)
  )
  assert not np.allclose(g_other, g_one)
  # Evaluation mode (no key) uses the running statistics, unchanged.
  _, same = task.loss(params, stats, batch)
  jax.tree.map(np.testing.assert_array_equal, same, stats)
