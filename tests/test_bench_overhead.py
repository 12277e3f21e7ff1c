"""Smoke test of benchmarks/overhead.py --quick: output shape, not timings."""

import json
import math
import os

from benchmark_scripts import run_quick

METHODS = (
  'spider',
  'spider_lean',
  'clip_sgd',
  'adam',
  'adamw',
  'mars_adamw',
  'lion',
  'mars_lion',
)
MATRIX_METHODS = ('muon_rms', 'mars_muon', 'muon', 'mars_shampoo')


def _positive(x):
  return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_quick_overhead(tmp_path_factory):
  res, out, tmp_path = run_quick('overhead', tmp_path_factory)

  with open(out) as f:
    saved = json.load(f)
  assert saved['mode'] == 'quick'
  assert set(saved['updates']) == set(res['updates'])

  env = res['environment']
  for key in ('cpu', 'cpu_count', 'memory_gib', 'jax_devices', 'date'):
    assert env[key]
  for key in ('jax', 'jaxlib', 'optax', 'numpy'):
    assert env['versions'][key]
  assert _positive(res['bandwidth']['bytes_per_s'])

  assert set(res['updates']) == {'100000'}
  for size, row in res['updates'].items():
    assert set(row) == set(METHODS)
    for method, r in row.items():
      for key in (
        'median_s',
        'ratio_vs_clip_sgd',
        'achieved_bytes_per_s',
        'bandwidth_fraction',
        'time_over_bytes_bound',
        'model_bytes_two_pass',
        'model_bytes_ideal',
        'hlo_bytes',
        'hlo_bandwidth_fraction',
        'peak_bytes',
      ):
        assert _positive(r[key]), (size, method, key, r[key])
    assert row['clip_sgd']['ratio_vs_clip_sgd'] == 1.0
    # SPIDER holds v and x_{k-1}: two more parameter-sized arrays than clip.
    assert row['spider']['peak_bytes'] >= row['clip_sgd']['peak_bytes'] + (
      2 * 4 * int(size)
    )
    # lean=True holds one parameter-sized array less in its state (its
    # update may keep one leaf of v as a temporary: count half an array).
    assert row['spider_lean']['peak_bytes'] <= row['spider']['peak_bytes'] - (
      2 * int(size)
    )

    # MARS-Lion keeps g_{k-1} beside Lion's momentum: one more array.
    assert row['mars_lion']['peak_bytes'] >= row['lion']['peak_bytes'] + (
      4 * int(size)
    )
    # The bytes bound: Lion moves 5 arrays, MARS-Lion 9 (norm pass + 7).
    assert row['lion']['model_bytes_two_pass'] == 5 * 4 * int(size)
    assert row['mars_lion']['model_bytes_two_pass'] == 9 * 4 * int(size)

  assert set(res['hlo_by_size']) == set(res['updates'])
  assert set(res['hlo']) == set(METHODS)
  for a in res['hlo'].values():
    assert a['n_passes'] >= 1 and a['entry_fusions'] >= 1
    assert _positive(a['bytes_moved_per_param'])
  # The global norm must finish before scaling: at least 2 passes per leaf.
  assert res['hlo']['spider']['passes_per_leaf'] >= 2
  assert res['hlo']['mars_lion']['passes_per_leaf'] >= 2

  # One 64 x 64 matrix: Newton-Schulz is 5 iterations of 6 * 64^3 flops.
  assert set(res['matrix_updates']) == {'4096'}
  (block,) = res['matrix_updates'].values()
  assert (block['count'], block['n']) == (1, 64)
  assert _positive(block['matmul_flops_per_s'])
  assert set(block['methods']) == set(MATRIX_METHODS)
  for method, r in block['methods'].items():
    assert r['ns_flops'] == 5 * 6 * 64**3, method
    for key in ('median_s', 'bound_s', 'time_over_bound', 'flop_time_s'):
      assert _positive(r[key]), (method, key, r[key])
    assert r['bound_s'] == r['flop_time_s'] + r['bytes_time_s']
  for member, base in (('mars_muon', 'muon_rms'), ('mars_shampoo', 'muon')):
    r, rb = block['methods'][member], block['methods'][base]
    assert r['ratio_vs_base'] == r['median_s'] / rb['median_s']
    assert r['model_bytes_two_pass'] == 12 * 4 * 4096
    assert rb['model_bytes_two_pass'] == 8 * 4 * 4096

  member = res['member_train_step']
  assert member['members'] == ['mars_lion'] and member['params'] > 0
  assert set(member['results']) == {'4'}
  row = member['results']['4']
  assert set(row) == {'lion', 'mars_lion'}
  assert all(_positive(r['median_s']) for r in row.values())
  assert row['mars_lion']['ratio_vs_base'] == (
    row['mars_lion']['median_s'] / row['lion']['median_s']
  )

  models = res['train_step']['models']
  assert set(models) == {'mlp', 'lstm'}
  for name, model in models.items():
    assert model['params'] > 0
    assert set(model['results']) == {'32'}
    for batch, row in model['results'].items():
      assert set(row) == {
        'grad_clip_sgd',
        'spider_paired_vmap',
        'spider_paired_loop',
      }
      for method, r in row.items():
        assert _positive(r['median_s']), (name, batch, method)
        assert _positive(r['ratio_vs_grad_clip_sgd']), (name, batch, method)

  assert len(res['plots']) == 2
  for path in res['plots']:
    assert path.endswith('.png') and os.path.dirname(path) == str(tmp_path)
    assert os.path.getsize(path) > 0
    with open(path, 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'
