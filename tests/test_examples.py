"""The scripts in examples/ run, with a few steps each, and learn.

Each script's ``main(argv)`` returns its final metrics. The sharded one runs
in a subprocess: it sets XLA_FLAGS (8 CPU devices) before importing jax.
"""

import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / 'examples'


def load(name):
  """The example ``examples/<name>.py`` as a module."""
  spec = importlib.util.spec_from_file_location(
    f'example_{name}', EXAMPLES / f'{name}.py'
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_nnx_transformer_mars_m():
  out = load('nnx_transformer_mars_m').main(
    ['--steps', '8', '--batch', '8', '--d', '32', '--layers', '1']
  )
  assert math.isfinite(out['val_loss'])
  # At init the loss is about log(102 symbols) = 4.6 or more; eight steps
  # of MARS-M reach the unigram level, about 3.3.
  assert out['val_loss'] < out['initial_val_loss'] - 0.8, out
  assert out['val_loss'] < 3.8, out


def test_linen_cnn_batchnorm_mars():
  # Exact mode (paired gradients), the default; --approx is tx's flag only.
  out = load('linen_cnn_batchnorm_mars').main(['--steps', '30'])
  assert math.isfinite(out['test_loss'])
  assert out['test_loss'] < 0.5 * out['initial_test_loss'], out
  assert out['test_accuracy'] > 0.7, out  # chance: 0.1


def test_spider_finite_sum():
  # Two anchors (steps 0 and 43) and the recursive steps between.
  out = load('spider_finite_sum').main(['--steps', '87'])
  assert math.isfinite(out['grad_norm'])
  assert out['grad_norm'] < 0.2 * out['initial_grad_norm'], out
  assert out['loss'] < 0.5, out


def test_sharded_8cpu():
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  code = (
    'import json, runpy, sys; '
    f'module = runpy.run_path({str(EXAMPLES / "sharded_8cpu.py")!r}); '
    "out = module['main'](['--steps', '20']); "
    "print('RESULT', json.dumps(out))"
  )
  run = subprocess.run(
    [sys.executable, '-c', code],
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )
  assert run.returncode == 0, run.stderr[-3000:]
  line = next(x for x in run.stdout.splitlines() if x.startswith('RESULT '))
  out = json.loads(line.removeprefix('RESULT '))
  assert out['param_devices'] == out['state_devices'] == 8, out
  assert out['param_spec'] == out['state_spec'] == "P('data',)", out
  assert out['param_shard_shape'] == out['state_shard_shape'] == [32, 256]
  assert math.isfinite(out['loss'])
  assert out['loss'] < 0.5 * out['initial_loss'], out
