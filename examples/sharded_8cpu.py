"""Sharded training on 8 CPU devices: data parallel batch, FSDP params.

XLA can split the host CPU into 8 devices, so this runs on any machine.
The batch is split along a 'data' mesh axis, and so is the first axis of
every param whose size allows it (FSDP: each device holds 1/8 of each
matrix). The optimizer, MARS-M (``so.mars_muon``), needs nothing of its own:
``jax.jit(tx.init)`` builds its state sharded like the params, and XLA
inserts the collectives. The script prints where a param and its momentum
live, then the loss. On GPUs or TPUs drop the XLA flag and the ``devices=``
argument, and the same code spreads over the accelerators.

Data: scikit-learn's bundled 8x8 digits. Run (from the repository root)::

  python examples/sharded_8cpu.py [--steps 300] [--batch 128]
"""

import os

# Before jax is imported: 8 host CPU devices (unless the flags choose).
flags = os.environ.get('XLA_FLAGS', '')
if '--xla_force_host_platform_device_count' not in flags:
  os.environ['XLA_FLAGS'] = f'{flags} --xla_force_host_platform_device_count=8'

import argparse  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import spider_optax as so  # noqa: E402


def loss_fn(params, x, y):
  """Mean cross-entropy of a two-hidden-layer MLP."""
  h = jax.nn.relu(x @ params['w1'] + params['b1'])
  h = jax.nn.relu(h @ params['w2'] + params['b2'])
  logits = h @ params['w3'] + params['b3']
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def main(argv=None):
  """Trains; returns the losses and the shardings of a param and its state."""
  parser = argparse.ArgumentParser(
    description='MARS-M on 8 CPU devices: sharded batch, FSDP params.'
  )
  parser.add_argument('--steps', type=int, default=300)
  parser.add_argument('--batch', type=int, default=128, help='a multiple of 8')
  parser.add_argument('--width', type=int, default=256)
  args = parser.parse_args(argv)

  devices = jax.devices('cpu')
  mesh = jax.make_mesh(
    (len(devices),), ('data',), axis_types=(AxisType.Auto,), devices=devices
  )

  def fsdp(a):
    """Split the first axis over the devices; replicate what cannot split."""
    split = a.ndim > 0 and a.shape[0] % mesh.size == 0
    return NamedSharding(mesh, P('data') if split else P())

  rng = np.random.default_rng(0)
  d = args.width
  sizes = {'1': (64, d), '2': (d, d), '3': (d, 10)}
  params = {}
  for i, (m, k) in sizes.items():
    params['w' + i] = rng.normal(size=(m, k)).astype(np.float32) / np.sqrt(m)
    params['b' + i] = np.zeros(k, np.float32)
  params = jax.device_put(params, jax.tree.map(fsdp, params))

  schedule = optax.warmup_cosine_decay_schedule(
    0.0, 0.02, max(1, args.steps // 20), args.steps
  )  # a peak of 0.02, not tuned here
  tx = so.mars_muon(schedule)  # Muon on the 2-D w's, AdamW on the b's
  state = jax.jit(tx.init)(params)  # sharded like the params

  @jax.jit
  def train_step(params, state, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  pixels, labels = load_digits(return_X_y=True)
  x_all, y_all = (pixels / 16.0).astype(np.float32), labels.astype(np.int32)
  keep = len(y_all) // mesh.size * mesh.size  # the whole set, split in 8
  batch_sharding = NamedSharding(mesh, P('data'))
  x_eval, y_eval = jax.device_put((x_all[:keep], y_all[:keep]), batch_sharding)
  evaluate = jax.jit(loss_fn)
  initial = float(evaluate(params, x_eval, y_eval))
  for step in range(args.steps):
    idx = rng.choice(len(y_all), args.batch, replace=False)
    x, y = jax.device_put((x_all[idx], y_all[idx]), batch_sharding)
    params, state, loss = train_step(params, state, x, y)
    if (step + 1) % max(1, args.steps // 4) == 0:
      print(f'step {step + 1:4d}: minibatch loss {float(loss):.4f}')

  # MARS-M's momentum of w2 (optax.ema's trace): sharded as w2 is.
  w2, momentum = params['w2'], optax.tree.get(state, 'ema')['w2']
  print(f'mesh {dict(mesh.shape)} over {len(devices)} CPU devices')
  for name, a in (("params['w2']", w2), ('its momentum', momentum)):
    shard = a.addressable_shards[0].data.shape
    print(f'{name}: {a.sharding.spec}, a {shard} shard on each device')
  final = float(evaluate(params, x_eval, y_eval))
  print(
    f'training loss on all {keep} digits: {initial:.4f} at init -> {final:.4f}'
  )
  return {
    'initial_loss': initial,
    'loss': final,
    'param_spec': str(w2.sharding.spec),
    'param_devices': len(w2.devices()),
    'param_shard_shape': w2.addressable_shards[0].data.shape,
    'state_spec': str(momentum.sharding.spec),
    'state_devices': len(momentum.devices()),
    'state_shard_shape': momentum.addressable_shards[0].data.shape,
  }


if __name__ == '__main__':
  main()
