"""Smoke test of benchmarks/family.py (the study), --quick, in-process."""

import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import spider_optax as so
from benchmark_scripts import load_benchmark
from benchmark_scripts import run_quick

family = load_benchmark('family')
study = load_benchmark('study')
TASKS = ('transformer', 'cnn')


@pytest.fixture(scope='module')
def quick_run(tmp_path_factory):
  return run_quick('family', tmp_path_factory)


def test_json_is_strict_and_matches_the_results(quick_run):
  results, out, _ = quick_run
  loaded = json.loads(
    out.read_text(),
    parse_constant=lambda c: math.inf if c == 'Infinity' else pytest.fail(c),
  )
  assert loaded == json.loads(json.dumps(results))
  assert results['mode'] == 'quick'


def test_tuning_picks_the_best_mean_over_tuning_seeds(quick_run):
  results, _, _ = quick_run
  for task in results['tasks'].values():
    p = task['protocol']
    for name, arm in task['arms'].items():
      tuning = arm['tuning']
      n_knobs = len(family.ARMS[name].knobs)
      assert (
        tuning['n_configs']
        == len(tuning['runs'])
        == ((p['lrs'] + tuning['widened']) * n_knobs)
      )
      means = {k: np.mean(v) for k, v in tuning['runs'].items()}
      assert all(
        len(v) == len(p['tuning_seeds']) for v in tuning['runs'].values()
      )
      assert tuning['config'] == min(means, key=means.get)
      lr = tuning['lr']
      assert tuning['edge'] == (
        lr in (min(tuning['lr_grid']), max(tuning['lr_grid']))
      )
      # The ladder: consecutive grid values differ by sqrt(2).
      grid = np.asarray(tuning['lr_grid'])
      np.testing.assert_allclose(grid[1:] / grid[:-1], math.sqrt(2))


def test_evaluation_seeds_are_apart_and_every_arm_has_them(quick_run):
  results, _, _ = quick_run
  for task in results['tasks'].values():
    p = task['protocol']
    assert not set(p['tuning_seeds']) & set(p['eval_seeds'])
    for arm in task['arms'].values():
      assert [r['seed'] for r in arm['runs']] == list(p['eval_seeds'])
      assert arm['finals'] == [r['final_val_loss'] for r in arm['runs']]
      assert arm['mean'] == pytest.approx(np.mean(arm['finals']))


def test_equal_budgets_paired_arms_take_half_the_steps(quick_run):
  results, _, _ = quick_run
  for task in results['tasks'].values():
    p = task['protocol']
    for name, arm in task['arms'].items():
      cost = p['batch'] * (2 if family.ARMS[name].paired else 1)
      for run in arm['runs']:
        assert run['steps'] == p['budget'] // cost
        assert run['grad_evals'] == run['steps'] * cost <= p['budget']
        assert run['curve']['grad_evals'][-1] == run['grad_evals']


def test_comparisons_are_the_paired_differences(quick_run):
  results, _, _ = quick_run
  for task in results['tasks'].values():
    arms = task['arms']
    assert task['comparisons']
    for c in task['comparisons']:
      method, _, baseline = c['comparison'].split(' at ')[0].split(' ')
      long = ' at ' in c['comparison']
      a = (task['long'] if long else arms)[method]
      b = task['long'].get(baseline) if long else arms[baseline]
      d = np.asarray(a['finals']) - np.asarray(b['finals'])
      assert c['paired']['mean'] == pytest.approx(d.mean())
      assert c['paired']['wins'] == int(np.sum(d < 0))
      s = c.get('speedup')
      if s is not None and s['speedup'] is not None:
        assert s['low'] <= s['speedup'] * (1 + 1e-9)
        assert s['speedup'] <= s['high'] * (1 + 1e-9)
    # Every arm but the reference is compared with it; MARS-M also with its
    # base and its gamma = 0 control.
    names = {c['comparison'] for c in task['comparisons']}
    for name in arms:
      if name != 'adamw':
        assert f'{name} vs adamw' in names
    if 'muon' in arms:
      assert {'mars_muon vs muon', 'mars_muon vs mars_muon_g0'} <= names
  # At the long budget, each long arm against its long control.
  names = {
    c['comparison'] for c in results['tasks']['transformer']['comparisons']
  }
  assert 'mars_muon vs mars_muon_g0 at 2x budget' in names


def test_the_reference_curve_and_power(quick_run):
  results, _, _ = quick_run
  task = results['tasks']['transformer']
  curve = task['curves']['adamw']
  assert sorted(curve, key=float) == ['0.5', '1', '2', '4']
  assert curve['1'] == {
    k: v for k, v in task['arms']['adamw'].items() if k in curve['1']
  }
  budgets = [curve[b]['budget'] for b in ('0.5', '1', '2', '4')]
  assert budgets == [task['protocol']['budget'] * m for m in (0.5, 1, 2, 4)]
  power = task['power']
  assert power['half_width'] > 0 and power['detectable_speedup'] > 1


def test_same_seed_same_run():
  """A seed fixes the init, the minibatches and the dropout keys."""
  task = load_benchmark('tasks').cnn_task(flat=False)
  p = study.Protocol(batch=8, budget=48, tuning_seeds=(9,), eval_seeds=(0,))
  trainer = study.Trainer(task, p)
  arm = family.ARMS['mars_muon']
  run = lambda seed: trainer.run(
    'm', arm, 4, {'b1': 0.9}, seed, 48, checkpoints=2
  )
  a, b, c = run(0), run(0), run(1)
  assert a['curve'] == b['curve'] and a['steps'] == 6
  assert a['curve'] != c['curve']


def test_markdown_and_plots(quick_run):
  results, _, tmp = quick_run
  text = results['summary']
  for task in results['tasks'].values():
    for c in task['comparisons']:
      assert f'| {c["comparison"]} |' in text
  assert set(results['plots']) == set(TASKS)
  for path in results['plots'].values():
    path = pathlib.Path(path)
    assert path.parent == tmp and path.stat().st_size > 1000


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


def test_search_widens_until_interior_within_bounds():
  """The grid grows by one index beyond the edge where the best sits, until
  the best is interior, ``max_widen`` is spent or the ladder ends."""
  calls = []

  def score(k, j):
    calls.append((k, j))
    return (k - 5) ** 2 + 0.5 * j

  best = study.search(score, [0, 1, 2], 2, max_widen=10)
  assert (best['k'], best['j'], best['edge']) == (5, 0, False)
  assert best['ks'] == list(range(7)) and best['widened'] == 4
  assert len(calls) == len(set(calls)) == len(best['scores']) == 14
  short = study.search(score, [0, 1, 2], 1, max_widen=1)
  assert (short['k'], short['edge'], short['ks']) == (3, True, [0, 1, 2, 3])
  ends = study.search(score, [0, 1, 2], 1, max_widen=10, bounds=(0, 3))
  assert (ends['k'], ends['edge'], ends['widened']) == (3, True, 1)
  low = study.search(score, [8, 9, 10], 1, max_widen=10)
  assert (low['k'], low['ks'][0], low['edge']) == (5, 4, False)
  diverged = study.search(lambda k, j: math.inf, [0, 1], 1, max_widen=5)
  assert diverged['widened'] == 0 and diverged['edge']
