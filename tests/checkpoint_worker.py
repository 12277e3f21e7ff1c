"""Subprocess worker for tests/test_checkpoint.py: SPIDER runs with orbax.

Not a test module: tests/test_checkpoint.py runs it in fresh interpreters, so
that a restored run shares nothing with the run that saved the checkpoint but
the checkpoint on disk. It trains a small MLP on scikit-learn's digits with
SPIDER, through the Linen and the NNX API of :mod:`spider_optax.flax`::

  python checkpoint_worker.py save --out DIR --ckpt DIR --q Q --k0 K0 --steps N
  python checkpoint_worker.py resume --out DIR --ckpt DIR --q Q --k0 K0 \
      --steps N

(``--data FILE.npz`` reads the digits from a file, ``--apis`` picks APIs.)

``save`` (one process) runs steps 0..N-1 uninterrupted (run A) and, from a
fresh start, steps 0..K0-1 (run B), saving B's state with orbax into
``CKPT/<api>``. ``resume`` (another process) restores that checkpoint into
freshly built objects (initialised from a different seed, so that a restore
that did nothing would show) and runs steps K0..N-1 (run C); it also runs C',
which restores only the params and re-initialises the optimizer. Every run
writes its final params, per-step losses and estimator state as ``.npz`` files
into ``OUT`` for the test to compare bit for bit.

Minibatch indices are a function of (seed, step k) only, so that a resumed run
sees the batches the uninterrupted one saw.

Heavy imports live inside functions: pytest imports this file to collect
doctests (``--doctest-modules``), and that must not need flax or orbax.
"""

import argparse
import functools
import os
import sys

import numpy as np

SEED = 0
BATCH_SIZE = 32
HIDDEN = 32
LEARNING_RATE = 0.5
C0 = 2.0
C1 = 2.0
APIS = ('linen', 'nnx')


def load_digits(path=None):
  """scikit-learn's 8x8 digits (bundled, no download): float32 x, int32 y.

  From ``path`` (an ``.npz`` with ``x`` and ``y``, as :func:`save_digits`
  writes it) when given, which spares each worker importing scikit-learn.
  """
  if path is not None:
    with np.load(path) as data:
      return data['x'], data['y']
  from sklearn import datasets

  x, y = datasets.load_digits(return_X_y=True)
  return (x / 16.0).astype(np.float32), y.astype(np.int32)


def save_digits(path):
  x, y = load_digits()
  np.savez(path, x=x, y=y)


def minibatch_indices(seed, k, n, batch_size=BATCH_SIZE):
  """The minibatch of step k: a function of (seed, k) only."""
  return np.random.default_rng([seed, k]).choice(n, batch_size, replace=False)


def batches(x, y, start, stop, q):
  """(anchor_batches, minibatches) for spider_loop over steps start..stop-1.

  ``spider_loop`` draws from ``minibatches`` on recursive steps only, so the
  iterator skips the anchor steps to keep the batch of step k at step k.
  """
  import itertools

  anchors = itertools.repeat((x, y))  # The full gradient.
  minis = (
    (x[i], y[i])
    for i in (
      minibatch_indices(SEED, k, len(x))
      for k in range(start, stop)
      if k % q != 0
    )
  )
  return anchors, minis


def cross_entropy(logits, labels):
  import optax

  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def flat(tree):
  """{path: numpy array} of a pytree's leaves (NNX Variables unwrapped)."""
  import jax

  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def save_npz(out, name, tree):
  np.savez(os.path.join(out, name + '.npz'), **flat(tree))


def estimator_fields(est):
  """The four fields of a SpiderEstimatorState, as a dict (for ``flat``)."""
  return {
    'count': est.count,
    'steps_since_anchor': est.steps_since_anchor,
    'estimate': est.estimate,
    'prev_params': est.prev_params,
  }


# --------------------------------------------------------------------------
# Linen
# --------------------------------------------------------------------------


@functools.cache
def linen_program():
  """(model, tx, anchor_step, recursive_step), built once per process.

  One set of jitted steps serves every run of the process, so each compiles
  once.
  """
  from flax import linen as nn

  import spider_optax as so

  class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(10)(nn.tanh(nn.Dense(HIDDEN)(x)))

  model = MLP()

  def loss_fn(params, x, y):
    return cross_entropy(model.apply({'params': params}, x), y)

  # One tx too: it is a static field of the TrainState, and a new one is a
  # new jit cache key.
  tx = so.spider(LEARNING_RATE, C0, C1)
  return (model, tx, *so.flax.linen_steps(loss_fn))


def linen_setup(init_seed):
  """A fresh (TrainState, anchor_step, recursive_step)."""
  import jax
  import jax.numpy as jnp

  import spider_optax as so

  model, tx, anchor_step, recursive_step = linen_program()
  params = model.init(jax.random.key(init_seed), jnp.zeros((1, 64)))['params']
  state = so.flax.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
  return state, anchor_step, recursive_step


def linen_estimator(state):
  import spider_optax as so

  est = state.opt_state[0]
  assert isinstance(est, so.SpiderEstimatorState), type(est)
  return est


def linen_save(args, x, y):
  import orbax.checkpoint as ocp

  import spider_optax as so

  # A: uninterrupted.
  state, anchor_step, recursive_step = linen_setup(SEED)
  state, losses = so.spider_loop(
    anchor_step,
    recursive_step,
    state,
    *batches(x, y, 0, args.steps, args.q),
    anchor_period=args.q,
    num_steps=args.steps,
  )
  save_npz(args.out, 'linen_A_params', state.params)
  np.save(os.path.join(args.out, 'linen_A_losses.npy'), np.stack(losses))

  # B: steps 0..k0-1 from a fresh start, then an orbax checkpoint.
  state, anchor_step, recursive_step = linen_setup(SEED)
  state, _ = so.spider_loop(
    anchor_step,
    recursive_step,
    state,
    *batches(x, y, 0, args.k0, args.q),
    anchor_period=args.q,
    num_steps=args.k0,
  )
  save_npz(
    args.out, 'linen_B_estimator', estimator_fields(linen_estimator(state))
  )
  save_npz(args.out, 'linen_B_params', state.params)
  # The whole TrainState: step, params and opt_state (apply_fn and tx are
  # static fields, not saved). Closing the checkpointer waits for the save.
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(os.path.join(args.ckpt, 'linen'), state)


def linen_restore(path, init_seed):
  """A TrainState restored from ``path`` into a freshly created one."""
  import jax
  import orbax.checkpoint as ocp

  fresh, anchor_step, recursive_step = linen_setup(init_seed)
  # The target gives the restored tree its types (TrainState, the chain's
  # tuple, SpiderEstimatorState): without one orbax returns plain dicts.
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, fresh)
  with ocp.StandardCheckpointer() as ckpt:
    state = ckpt.restore(path, abstract)
  return state, anchor_step, recursive_step


def linen_resume(args, x, y):
  import jax

  import spider_optax as so

  path = os.path.join(args.ckpt, 'linen')

  # C: the whole TrainState from the checkpoint.
  state, anchor_step, recursive_step = linen_restore(path, SEED + 1)
  assert type(state) is so.flax.TrainState, type(state)
  assert int(state.step) == args.k0, state.step
  est = linen_estimator(state)
  # so.prev_params and the TrainState property find the restored estimator.
  assert jax.tree.structure(so.prev_params(state.opt_state)) == (
    jax.tree.structure(state.params)
  )
  assert state.prev_params is est.prev_params
  save_npz(args.out, 'linen_C_estimator', estimator_fields(est))
  save_npz(args.out, 'linen_C_restored_params', state.params)
  state, losses = so.spider_loop(
    anchor_step,
    recursive_step,
    state,
    *batches(x, y, args.k0, args.steps, args.q),
    anchor_period=args.q,
    num_steps=args.steps,
  )
  save_npz(args.out, 'linen_C_params', state.params)
  np.save(os.path.join(args.out, 'linen_C_losses.npy'), np.stack(losses))

  # C': the params from the checkpoint, a fresh optimizer state.
  restored, anchor_step, recursive_step = linen_restore(path, SEED + 1)
  state = so.flax.TrainState.create(
    apply_fn=restored.apply_fn, params=restored.params, tx=restored.tx
  )
  state = state.replace(step=restored.step)
  # A fresh optimizer state starts its schedule over (an anchor first).
  state, _ = so.spider_loop(
    anchor_step,
    recursive_step,
    state,
    *batches(x, y, 0, args.steps - args.k0, args.q),
    anchor_period=args.q,
    num_steps=args.steps - args.k0,
  )
  save_npz(args.out, 'linen_Cprime_params', state.params)


# --------------------------------------------------------------------------
# NNX
# --------------------------------------------------------------------------


@functools.cache
def nnx_program():
  """(model class, tx, anchor_step, recursive_step), built once per process."""
  from flax import nnx

  import spider_optax as so

  class MLP(nnx.Module):
    def __init__(self, rngs):
      self.hidden = nnx.Linear(64, HIDDEN, rngs=rngs)
      self.out = nnx.Linear(HIDDEN, 10, rngs=rngs)

    def __call__(self, x):
      return self.out(nnx.tanh(self.hidden(x)))

  def loss_fn(model, x, y):
    return cross_entropy(model(x), y)

  # One tx too: it is static in the optimizer's graphdef.
  tx = so.spider(LEARNING_RATE, C0, C1)
  return (MLP, tx, *so.flax.nnx_steps(loss_fn))


def nnx_setup(init_seed):
  """A fresh (model, optimizer, anchor_step, recursive_step)."""
  from flax import nnx

  mlp, tx, anchor_step, recursive_step = nnx_program()
  model = mlp(nnx.Rngs(init_seed))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  return model, optimizer, anchor_step, recursive_step


def nnx_params(model):
  from flax import nnx

  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def nnx_estimator(optimizer):
  from flax import nnx

  import spider_optax as so

  est = optimizer.opt_state[0]
  assert isinstance(est, so.SpiderEstimatorState), type(est)
  return nnx.as_pure(est)


def nnx_save(args, x, y):
  import orbax.checkpoint as ocp
  from flax import nnx

  import spider_optax as so

  # A: uninterrupted.
  model, optimizer, anchor_step, recursive_step = nnx_setup(SEED)
  _, losses = so.spider_loop(
    anchor_step,
    recursive_step,
    (model, optimizer),
    *batches(x, y, 0, args.steps, args.q),
    anchor_period=args.q,
    num_steps=args.steps,
  )
  save_npz(args.out, 'nnx_A_params', nnx_params(model))
  np.save(os.path.join(args.out, 'nnx_A_losses.npy'), np.stack(losses))

  # B: steps 0..k0-1 from a fresh start, then an orbax checkpoint.
  model, optimizer, anchor_step, recursive_step = nnx_setup(SEED)
  so.spider_loop(
    anchor_step,
    recursive_step,
    (model, optimizer),
    *batches(x, y, 0, args.k0, args.q),
    anchor_period=args.q,
    num_steps=args.k0,
  )
  save_npz(
    args.out, 'nnx_B_estimator', estimator_fields(nnx_estimator(optimizer))
  )
  save_npz(args.out, 'nnx_B_params', nnx_params(model))
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(
      os.path.join(args.ckpt, 'nnx'),
      {'model': nnx.state(model), 'optimizer': nnx.state(optimizer)},
    )


def nnx_restore(path, init_seed, what=('model', 'optimizer')):
  """Fresh (model, optimizer, steps), updated in place from the checkpoint."""
  import jax
  import orbax.checkpoint as ocp
  from flax import nnx

  model, optimizer, anchor_step, recursive_step = nnx_setup(init_seed)
  abstract = jax.tree.map(
    ocp.utils.to_shape_dtype_struct,
    {'model': nnx.state(model), 'optimizer': nnx.state(optimizer)},
  )
  with ocp.StandardCheckpointer() as ckpt:
    restored = ckpt.restore(path, abstract)
  if 'model' in what:
    nnx.update(model, restored['model'])
  if 'optimizer' in what:
    nnx.update(optimizer, restored['optimizer'])
  return model, optimizer, anchor_step, recursive_step


def nnx_resume(args, x, y):
  import jax
  from flax import nnx

  import spider_optax as so

  path = os.path.join(args.ckpt, 'nnx')

  # C: model and optimizer state from the checkpoint.
  model, optimizer, anchor_step, recursive_step = nnx_restore(path, SEED + 1)
  assert int(optimizer.step[...]) == args.k0, optimizer.step
  est = nnx_estimator(optimizer)
  # so.flax.prev_params finds the restored estimator.
  assert jax.tree.structure(so.flax.prev_params(optimizer)) == (
    jax.tree.structure(est.prev_params)
  )
  save_npz(args.out, 'nnx_C_estimator', estimator_fields(est))
  save_npz(args.out, 'nnx_C_restored_params', nnx_params(model))
  _, losses = so.spider_loop(
    anchor_step,
    recursive_step,
    (model, optimizer),
    *batches(x, y, args.k0, args.steps, args.q),
    anchor_period=args.q,
    num_steps=args.steps,
  )
  save_npz(args.out, 'nnx_C_params', nnx_params(model))
  np.save(os.path.join(args.out, 'nnx_C_losses.npy'), np.stack(losses))

  # C': the model from the checkpoint, a fresh optimizer state.
  model, optimizer, anchor_step, recursive_step = nnx_restore(
    path, SEED + 1, what=('model',)
  )
  # Built after the restore, so that its prev_params are the restored params.
  optimizer = nnx.Optimizer(model, nnx_program()[1], wrt=nnx.Param)
  so.spider_loop(  # A fresh optimizer state starts its schedule over.
    anchor_step,
    recursive_step,
    (model, optimizer),
    *batches(x, y, 0, args.steps - args.k0, args.q),
    anchor_period=args.q,
    num_steps=args.steps - args.k0,
  )
  save_npz(args.out, 'nnx_Cprime_params', nnx_params(model))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('phase', choices=('save', 'resume'))
  parser.add_argument('--out', required=True)
  parser.add_argument('--ckpt', required=True)
  parser.add_argument('--q', type=int, required=True)
  parser.add_argument('--k0', type=int, required=True)
  parser.add_argument('--steps', type=int, required=True)
  parser.add_argument('--apis', nargs='+', choices=APIS, default=list(APIS))
  parser.add_argument('--data', help='digits as .npz (see save_digits)')
  args = parser.parse_args(argv)
  args.ckpt = os.path.abspath(args.ckpt)  # orbax wants absolute paths.
  os.makedirs(args.out, exist_ok=True)
  x, y = load_digits(args.data)
  run = {
    ('save', 'linen'): linen_save,
    ('resume', 'linen'): linen_resume,
    ('save', 'nnx'): nnx_save,
    ('resume', 'nnx'): nnx_resume,
  }
  for api in args.apis:
    run[args.phase, api](args, x, y)
  return 0


if __name__ == '__main__':
  sys.exit(main())
