"""Smoke test of benchmarks/quickstart.py in --quick mode, run in-process."""

import contextlib
import io
import json
import math
import subprocess
import sys

import pytest

from benchmark_scripts import load_benchmark
from benchmark_scripts import ROOT
from benchmark_scripts import run_quick

METHODS = ('spider', 'clipped_sgd')
CURVES = (
  'steps',
  'oracle_calls',
  'wall_time_s',
  'loss',
  'grad_norm',
  'accuracy',
)


@pytest.fixture(scope='module')
def printed_run(tmp_path_factory):
  """The quick run and what it printed."""
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    run = run_quick('quickstart', tmp_path_factory, '--seed', '0')
  return run, printed.getvalue()


@pytest.fixture(scope='module')
def quick_run(printed_run):
  return printed_run[0]


@pytest.fixture(scope='module')
def capsys_output(printed_run):
  return printed_run[1]


@pytest.fixture(scope='module')
def finite_sum(quick_run):
  """Part 1's results, as the finite-sum tests read them."""
  return quick_run[0]['finite_sum']


def test_writes_the_returned_results_as_json(quick_run):
  results, out, _ = quick_run
  assert json.loads(out.read_text()) == json.loads(json.dumps(results))
  assert results['mode'] == 'quick'
  assert results['environment']['versions']['jax']


def test_both_methods_present(finite_sum):
  results = finite_sum
  assert set(results['methods']) == set(METHODS)
  for name in METHODS:
    curves = results['methods'][name]['curves']
    assert set(curves) == set(CURVES)
    assert len({len(v) for v in curves.values()}) == 1
    assert len(curves['steps']) >= 3
    assert not results['methods'][name]['diverged']


@pytest.mark.parametrize('name', METHODS)
def test_oracle_calls_increase_and_end_at_the_budget(finite_sum, name):
  results = finite_sum
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
  costliest = {
    'spider': config['n'],
    'clipped_sgd': config['clipped_sgd']['batch_size'],
  }[name]
  assert config['budget'] - costliest < calls[-1] <= config['budget']


def test_spider_oracle_accounting(finite_sum):
  """n per anchor (every q steps), 2 * S2 per recursive step."""
  results = finite_sum
  cfg = results['config']['spider']
  spider = results['methods']['spider']
  steps = spider['steps']
  assert spider['anchors'] == list(range(0, steps, cfg['anchor_period']))
  anchors = len(spider['anchors'])
  expected = (
    anchors * cfg['anchor_batch_size']
    + (steps - anchors) * 2 * cfg['minibatch_size']
  )
  assert spider['oracle_calls'] == expected
  assert cfg['anchor_batch_size'] == results['config']['n'] == 1797
  assert cfg['anchor_period'] == cfg['minibatch_size'] == 43
  assert results['methods']['clipped_sgd']['anchors'] == []


@pytest.mark.parametrize('name', METHODS)
def test_metrics_are_finite(finite_sum, name):
  curves = finite_sum['methods'][name]['curves']
  for loss, g, acc in zip(
    curves['loss'], curves['grad_norm'], curves['accuracy']
  ):
    assert math.isfinite(loss) and loss > 0, loss
    assert math.isfinite(g) and g >= 0, g
    assert 0.0 <= acc <= 1.0, acc
  times = curves['wall_time_s']
  assert times[0] == 0 and all(a <= b for a, b in zip(times, times[1:]))


def test_same_start_for_both_methods(finite_sum):
  results = finite_sum
  first = [results['methods'][name]['curves'] for name in METHODS]
  assert first[0]['loss'][0] == first[1]['loss'][0]
  assert first[0]['grad_norm'][0] == first[1]['grad_norm'][0]


def test_spider_decreases_the_training_loss(finite_sum):
  loss = finite_sum['methods']['spider']['curves']['loss']
  assert loss[-1] < 0.5 * loss[0], loss


def test_plot(quick_run):
  results, _, tmp = quick_run
  [path] = results['plots']
  assert path == str(tmp / 'quickstart.png')
  with open(path, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'


@pytest.mark.parametrize(
  'command', (['benchmarks/quickstart.py'], ['-m', 'benchmarks.quickstart'])
)
def test_runs_as_a_script_and_as_a_module_from_the_root(command):
  out = subprocess.run(
    [sys.executable, *command, '--help'],
    cwd=ROOT,
    capture_output=True,
    text=True,
    check=True,
  ).stdout
  for option in (
    '--quick',
    '--no-progress',
    '--out',
    '--plot-dir',
    '--seed',
  ):
    assert option in out


def test_deep_net_methods_get_equal_gradient_evaluations(quick_run):
  """The study's member and its reference, at equal gradient evaluations,
  each at the configuration the study's committed results chose."""
  deep = quick_run[0]['deep_net']
  qs = load_benchmark('quickstart')
  calls = {name: r['grad_evals'] for name, r in deep['methods'].items()}
  assert set(calls) == {'mars_muon', 'adamw'}
  assert set(calls.values()) == {deep['config']['budget']}
  tuned = qs.study_task()['arms']
  for name, r in deep['methods'].items():
    assert r['lr'] == tuned[name]['tuning']['lr']
    assert r['knob'] == tuned[name]['tuning']['knob']
    c = r['curve']
    assert len(c['val_loss']) >= 2
    assert all(math.isfinite(v) and v > 0 for v in c['val_loss'])
    assert c['val_loss'][-1] < c['val_loss'][0]  # it learns
    assert math.isfinite(r['train_loss_tail'])


def test_summary_states_the_json_figures(quick_run, capsys_output):
  """Each figure the summary prints is the one in the JSON, as rounded."""
  results, _, _ = quick_run
  s = results['summary']
  fs = results['finite_sum']['methods']
  dn = results['deep_net']['methods']
  assert s['spider_grad_norm'] == fs['spider']['curves']['grad_norm'][-1]
  assert s['grad_norm_ratio'] == pytest.approx(
    fs['clipped_sgd']['curves']['grad_norm'][-1]
    / fs['spider']['curves']['grad_norm'][-1]
  )
  assert s['member_val_loss'] == dn['mars_muon']['curve']['val_loss'][-1]
  assert s['adamw_val_loss'] == dn['adamw']['curve']['val_loss'][-1]
  text = capsys_output
  assert f'{s["grad_norm_ratio"]:.1f}x closer to a stationary point' in text
  assert (
    f'MARS-M ends with a validation loss of {s["member_val_loss"]:.3f} '
    f'against {s["adamw_val_loss"]:.3f} for clip + AdamW' in text
  )
  for term in ('gradient evaluations', 'passes', '|grad f|', 'val loss'):
    assert f'  {term} ' in text


def test_prints_the_path_of_each_file(quick_run, capsys_output):
  results, out, _ = quick_run
  for path in (str(out), *results['plots']):
    assert f'  {path}\n' in capsys_output


def test_summary_quotes_the_study(quick_run, capsys_output):
  """The deep-net panel's summary states the paired-seed study's verdicts,
  as they are in its committed results."""
  qs = load_benchmark('quickstart')
  results = json.loads(qs.STUDY.read_text())
  comparisons = results['tasks']['transformer']['comparisons']
  against = [c for c in comparisons if c['comparison'].endswith('vs adamw')]
  assert against
  for c in against:
    d = c['paired']
    assert (
      f'  {c["comparison"]}: {d["mean"]:+.4f} nats [{d["low"]:+.4f}, '
      f'{d["high"]:+.4f}], {d["verdict"]}' in capsys_output
    )
