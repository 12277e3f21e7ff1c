"""Smoke test of benchmarks/quickstart.py in --quick mode, run in-process."""

import json
import math

import pytest
from benchmark_scripts import load_benchmark

METHODS = ('spider', 'clipped_sgd')


@pytest.fixture(scope='module')
def quick_run(tmp_path_factory):
  out = tmp_path_factory.mktemp('quickstart') / 'quickstart.json'
  results = load_benchmark('quickstart').main(
      ['--quick', '--seed', '0', '--out', str(out)])
  return results, out


def test_writes_the_returned_results_as_json(quick_run):
  results, out = quick_run
  assert json.loads(out.read_text()) == json.loads(json.dumps(results))


def test_both_methods_present(quick_run):
  results, _ = quick_run
  assert set(results['methods']) == set(METHODS)
  for name in METHODS:
    assert len(results['methods'][name]['checkpoints']) >= 3


@pytest.mark.parametrize('name', METHODS)
def test_oracle_calls_increase_and_end_at_the_budget(quick_run, name):
  results, _ = quick_run
  config, method = results['config'], results['methods'][name]
  calls = [c['oracle_calls'] for c in method['checkpoints']]
  steps = [c['steps'] for c in method['checkpoints']]
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
  results, _ = quick_run
  cfg = results['config']['spider']
  steps = results['methods']['spider']['steps']
  anchors = -(-steps // cfg['anchor_period'])
  expected = (anchors * cfg['anchor_batch_size']
              + (steps - anchors) * 2 * cfg['minibatch_size'])
  assert results['methods']['spider']['oracle_calls'] == expected
  assert cfg['anchor_batch_size'] == results['config']['n'] == 1797
  assert cfg['anchor_period'] == cfg['minibatch_size'] == 43


@pytest.mark.parametrize('name', METHODS)
def test_metrics_are_finite(quick_run, name):
  results, _ = quick_run
  for c in results['methods'][name]['checkpoints']:
    assert math.isfinite(c['loss']) and c['loss'] > 0, c
    assert math.isfinite(c['grad_norm']) and c['grad_norm'] >= 0, c
    assert 0.0 <= c['accuracy'] <= 1.0, c


def test_same_start_for_both_methods(quick_run):
  results, _ = quick_run
  first = [results['methods'][name]['checkpoints'][0] for name in METHODS]
  assert first[0]['loss'] == first[1]['loss']
  assert first[0]['grad_norm'] == first[1]['grad_norm']


def test_spider_decreases_the_training_loss(quick_run):
  checkpoints = quick_run[0]['methods']['spider']['checkpoints']
  initial, final = checkpoints[0]['loss'], checkpoints[-1]['loss']
  assert final < 0.5 * initial, (initial, final)
