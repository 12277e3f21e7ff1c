"""benchmarks/check_cost.py --quick: its unchecked builds really lack the
checks (so that the ratio it reports measures them), and its output."""

import jax.numpy as jnp
import numpy as np

import spider_optax as so
from benchmark_scripts import load_benchmark
from benchmark_scripts import run_quick
from verdicts import verdict


def test_unchecked_builds_step_silently_where_checked_ones_raise():
  check_cost = load_benchmark('check_cost')
  params = {'w': jnp.ones(3)}
  grads = {'w': jnp.array([1e21, 1.0, 0.0])}
  tx = so.mars_adamw(0.1, max_norm=None)
  assert 'second moment' in verdict(tx.update, grads, tx.init(params), params)
  with check_cost.unchecked():
    updates, _ = tx.update(grads, tx.init(params), params)
  assert float(updates['w'][0]) == 0.0  # the silent zero step

  huge = {'w': jnp.array([3e38, 1.0, 0.0])}
  minus = {'w': jnp.array([-3e38, 1.0, 0.0])}
  tx = so.spider(1.0, 1.0)
  _, state = tx.update(huge, tx.init(params), params)
  error = verdict(tx.update, huge, state, params, prev_grads=minus)
  assert error is not None and 'estimator' in error
  with check_cost.unchecked():  # (the checks are looked up when traced)
    updates, _ = tx.update(huge, state, params, prev_grads=minus)
  assert np.isnan(float(updates['w'][0]))


def test_quick_check_cost(tmp_path_factory):
  res, _, _ = run_quick('check_cost', tmp_path_factory)
  methods = {r['method'] for r in res['rows']}
  assert methods == {m[0] for m in load_benchmark('check_cost').METHODS}
  for row in res['rows']:
    assert row['checked_ms'] > 0 and row['unchecked_ms'] > 0
    assert abs(row['ratio'] - row['checked_ms'] / row['unchecked_ms']) < 1e-9
