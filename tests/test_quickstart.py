"""Smoke test of benchmarks/quickstart.py in --quick mode, run in-process."""

import json
import math
import subprocess
import sys

import pytest

from benchmark_scripts import ROOT
from benchmark_scripts import run_quick

METHODS = ('spider', 'clipped_sgd')
CURVES = ('steps', 'oracle_calls', 'wall_time_s', 'loss', 'grad_norm',
          'accuracy')


@pytest.fixture(scope='module')
def quick_run(tmp_path_factory):
  return run_quick('quickstart', tmp_path_factory, '--seed', '0')


def test_writes_the_returned_results_as_json(quick_run):
  results, out, _ = quick_run
  assert json.loads(out.read_text()) == json.loads(json.dumps(results))
  assert results['mode'] == 'quick'
  assert results['environment']['versions']['jax']


def test_both_methods_present(quick_run):
  results, _, _ = quick_run
  assert set(results['methods']) == set(METHODS)
  for name in METHODS:
    curves = results['methods'][name]['curves']
    assert set(curves) == set(CURVES)
    assert len({len(v) for v in curves.values()}) == 1
    assert len(curves['steps']) >= 3
    assert not results['methods'][name]['diverged']


@pytest.mark.parametrize('name', METHODS)
def test_oracle_calls_increase_and_end_at_the_budget(quick_run, name):
  results, _, _ = quick_run
  config, method = results['config'], results['methods'][name]
  calls = method['curves']['oracle_calls']
  steps = method['curves']['steps']
  assert calls[0] == 0 and steps[0] == 0
  assert all(a < b for a, b in zip(calls, calls[1:])), calls
  assert all(a < b for a, b in zip(steps, steps[1:])), steps
  assert calls[-1] == method['oracle_calls']
  assert steps[-1] == method['steps']
  # A method stops at the first step that would overrun the budget, so it
  # ends below the budget by less than its costliest step (a full-gradient
  # anchor for SPIDER, one batch for SGD).
  costliest = {'spider': config['n'],
               'clipped_sgd': config['clipped_sgd']['batch_size']}[name]
  assert config['budget'] - costliest < calls[-1] <= config['budget']


def test_spider_oracle_accounting(quick_run):
  """n per anchor (every q steps), 2 * S2 per recursive step."""
  results, _, _ = quick_run
  cfg = results['config']['spider']
  spider = results['methods']['spider']
  steps = spider['steps']
  assert spider['anchors'] == list(range(0, steps, cfg['anchor_period']))
  anchors = len(spider['anchors'])
  expected = (anchors * cfg['anchor_batch_size']
              + (steps - anchors) * 2 * cfg['minibatch_size'])
  assert spider['oracle_calls'] == expected
  assert cfg['anchor_batch_size'] == results['config']['n'] == 1797
  assert cfg['anchor_period'] == cfg['minibatch_size'] == 43
  assert results['methods']['clipped_sgd']['anchors'] == []


@pytest.mark.parametrize('name', METHODS)
def test_metrics_are_finite(quick_run, name):
  curves = quick_run[0]['methods'][name]['curves']
  for loss, g, acc in zip(curves['loss'], curves['grad_norm'],
                          curves['accuracy']):
    assert math.isfinite(loss) and loss > 0, loss
    assert math.isfinite(g) and g >= 0, g
    assert 0.0 <= acc <= 1.0, acc
  times = curves['wall_time_s']
  assert times[0] == 0 and all(a <= b for a, b in zip(times, times[1:]))


def test_same_start_for_both_methods(quick_run):
  results, _, _ = quick_run
  first = [results['methods'][name]['curves'] for name in METHODS]
  assert first[0]['loss'][0] == first[1]['loss'][0]
  assert first[0]['grad_norm'][0] == first[1]['grad_norm'][0]


def test_spider_decreases_the_training_loss(quick_run):
  loss = quick_run[0]['methods']['spider']['curves']['loss']
  assert loss[-1] < 0.5 * loss[0], loss


def test_plot(quick_run):
  results, _, tmp = quick_run
  [path] = results['plots']
  assert path == str(tmp / 'quickstart.png')
  with open(path, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'


@pytest.mark.parametrize('command', (['benchmarks/quickstart.py'],
                                     ['-m', 'benchmarks.quickstart']))
def test_runs_as_a_script_and_as_a_module_from_the_root(command):
  out = subprocess.run([sys.executable, *command, '--help'], cwd=ROOT,
                       capture_output=True, text=True, check=True).stdout
  for option in ('--quick', '--no-progress', '--out', '--plot-dir',
                 '--budget', '--seed'):
    assert option in out
