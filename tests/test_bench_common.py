"""The benchmarks' shared machinery (benchmarks/common.py), on toy problems."""

import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import spider_optax as so
from benchmark_scripts import load_benchmark
from benchmark_scripts import ROOT
from benchmark_scripts import SCRIPTS

common = load_benchmark('common')


def test_median_counts_failures_as_inf():
  assert common.median([3.0, 1.0, 2.0]) == 2.0
  assert common.median([1.0, None, 2.0]) == 2.0  # one failure of three
  assert common.median([1.0, math.nan, math.inf]) == math.inf  # two of three
  assert common.median([1.0, 2.0, 3.0, 4.0]) == 2.5
  assert common.median([1.0, 2.0, 3.0, None]) == 2.5
  assert common.median([1.0, 2.0, None, None]) == math.inf
  assert common.finite_or_none(math.inf) is None
  assert common.finite_or_none(2.0) == 2.0


def test_loglog_slope():
  xs = [1.0, 10.0, 100.0]
  assert common.loglog_slope(xs, [2.0, 200.0, 2e4]) == pytest.approx(2.0)
  assert common.loglog_slope(xs, [2.0, math.inf, 2e4]) == pytest.approx(2.0)
  assert common.loglog_slope(xs, [2.0, None, 0.0]) is None


def test_default_outputs_are_next_to_the_scripts(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  args = common.parser('train', None).parse_args([])
  assert args.out == ROOT / 'benchmarks' / 'out' / 'train.json'
  assert args.plot_dir == ROOT / 'benchmarks' / 'out'
  assert not (args.quick or args.no_progress)


@pytest.mark.parametrize('name', SCRIPTS)
def test_every_script_runs_from_its_path_with_the_common_options(name):
  out = subprocess.run(
    [sys.executable, f'benchmarks/{name}.py', '--help'],
    cwd=ROOT,
    capture_output=True,
    text=True,
    check=True,
  ).stdout
  for option in ('--quick', '--no-progress', '--out', '--plot-dir'):
    assert option in out
  assert callable(load_benchmark(name).main)


def _quadratic_stepper(n, q, s2):
  """SPIDER on f(w) = mean_i |w - z_i|^2 / 2, z_i = i / n."""
  z = jnp.arange(n, dtype=jnp.float32)[:, None] / n
  loss = lambda w, idx: 0.5 * jnp.mean(jnp.sum((w - z[idx]) ** 2, -1))
  tx = so.spider(0.5)
  anchor, recursive = (
    jax.jit(f)
    for f in common.step_pair(
      lambda _: tx,
      lambda w: jax.grad(loss)(w, jnp.arange(n)),
      so.paired_grad(loss),
    )
  )
  stepper = common.Stepper(
    tx.init,
    lambda w, s, idx: recursive(None, w, s, idx),
    s2,
    2 * s2,
    lambda w, s: anchor(None, w, s),
    n,
    common.spider_schedule(q),
  )
  evaluate = lambda w: dict(loss=loss(w, jnp.arange(n)))
  return stepper, evaluate


def test_run_budgeted_accounting_and_checkpoints():
  n, q, s2 = 16, 4, 2
  stepper, evaluate = _quadratic_stepper(n, q, s2)
  run = common.run_budgeted(
    stepper,
    jnp.ones(1),
    rng=np.random.default_rng(0),
    n=n,
    budget=100,
    every=30,
    evaluate=evaluate,
  )
  # An anchor (16 calls) every 4 steps, 4 calls a recursive step: after each
  # step 16, 20, 24, 28, 44, ..., 84, 100; one more would pass 100.
  assert run.anchors == [0, 4, 8, 12]
  assert (run.steps, run.oracle_calls) == (13, 100)
  # Checkpoints where the count passes 30, 60 and 90 (no extra one at the end).
  assert run.curves['oracle_calls'] == [0, 44, 72, 100]
  assert run.curves['steps'] == [0, 5, 9, 13]
  assert run.curves['wall_time_s'][0] == 0.0
  assert run.curves['loss'][-1] < run.curves['loss'][0]
  assert not run.diverged and len(run.infos) == run.steps
  record = run.record()
  assert 'params' not in record and record['anchors'] == [0, 4, 8, 12]


def test_run_budgeted_stops_at_a_non_finite_checkpoint():
  stepper, _ = _quadratic_stepper(16, 4, 2)
  calls = []

  def evaluate(w):
    calls.append(w)
    return dict(loss=math.nan if len(calls) > 1 else 1.0)

  run = common.run_budgeted(
    stepper,
    jnp.ones(1),
    rng=np.random.default_rng(0),
    n=16,
    budget=1000,
    every=20,
    evaluate=evaluate,
  )
  assert run.diverged and run.curves['steps'] == [0]
  assert run.oracle_calls == 20  # the first checkpoint, at 20 calls


def test_plain_optimizer_step_has_no_anchor():
  loss = lambda w, x: jnp.sum((w - x) ** 2)
  step, _ = common.step_pair(lambda lr: optax.sgd(lr), jax.grad(loss))
  w, _, info = step(
    0.25, jnp.zeros(2), optax.sgd(0.25).init(jnp.zeros(2)), jnp.ones(2)
  )
  assert info is None
  np.testing.assert_allclose(w, [0.5, 0.5])


def test_environment_record():
  env = common.environment()
  assert env['date'] and env['cpu'] and env['cpu_count'] > 0
  assert env['memory_gib'] > 0 and env['jax_devices']
  assert env['versions']['jax'] == jax.__version__
