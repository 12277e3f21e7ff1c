"""Subprocess worker for tests/test_sharding.py: SPIDER on 8 CPU devices.

Not a test module: tests/test_sharding.py runs it in a fresh interpreter with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``, which must be set
before JAX starts its CPU backend and so cannot be set in the test process::

  python sharding_worker.py --out DIR

It trains a small MLP with SPIDER (full-batch anchors, recursive steps on one
minibatch at both points), the same steps in every run, and writes into OUT:

- ``trajectories.npz``: the params after every step, flattened, of the
  single-device float32 run (``single``), the same run in float64
  (``float64``: the scale of float32 rounding), global-``jax.jit`` runs on the
  layouts of :data:`LAYOUTS`, ``shard_map`` runs (``lax.pmean`` of both
  gradients with ``check_vma=False``, and ``lax.pmean`` of the loss with the
  default ``check_vma=True``), a ``pmap`` run, and a ``shard_map`` run that
  forgets to average ``prev_grads`` (a bug the comparison must catch).
- ``shardings.json``: per layout and leaf, the shardings of the params and of
  the estimator's ``estimate`` and ``prev_params`` after a jitted ``init`` and
  after the run, and the shapes of the shard each device holds.
- ``hlo_<layout>_<anchor|recursive>[_init].txt``: the compiled HLO of
  ``tx.update`` alone on that layout's shardings, with the state after the
  run (or, ``_init``, as the jitted ``init`` left it);
  ``hlo_fsdp_step.txt``: the whole recursive step (gradients included) on
  the FSDP layout.
- ``mars_muon.npz`` and ``mars_muon.json``: 10 steps of ``so.mars_muon`` on
  a 16-32-8 MLP (:func:`mars_muon_results`), on one device in float32 and
  float64 and with its leaves split over the 8 devices on a mesh of
  Explicit axes and one of Auto axes; the layout of its state after a
  jitted init and after the run, and the error where a run raised.

tests/multiprocess_worker.py reuses the problem and the runs from here.
Heavy imports live inside functions: pytest imports this file to collect
doctests, and that must not start JAX's backend.
"""

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

SEED = 0
NUM_SAMPLES = 64
D_IN, HIDDEN, D_OUT = 8, 16, 4
ANCHOR_PERIOD = 4
NUM_STEPS = 12  # Anchors at steps 0, 4, 8; nine recursive steps.
MINIBATCH = 16  # 2 samples per device on 8 devices.
LEARNING_RATE, C0, C1 = 0.5, 1.0, 0.5


def make_problem() -> tuple[dict[str, np.ndarray], tuple[np.ndarray, ...]]:
  """(params, (x, y)) as float32 NumPy: an 8-16-4 tanh MLP, a noisy teacher."""
  rng = np.random.default_rng(SEED)
  x = rng.normal(size=(NUM_SAMPLES, D_IN))
  y = np.sin(x @ rng.normal(size=(D_IN, D_OUT)))
  y += 0.1 * rng.normal(size=y.shape)
  params = {
    'w1': rng.normal(size=(D_IN, HIDDEN)) / np.sqrt(D_IN),
    'b1': np.zeros(HIDDEN),
    'w2': rng.normal(size=(HIDDEN, D_OUT)) / np.sqrt(HIDDEN),
    'b2': np.zeros(D_OUT),
  }
  to32 = lambda a: np.asarray(a, np.float32)
  return {k: to32(v) for k, v in params.items()}, (to32(x), to32(y))


def loss_fn(params, batch):
  import jax.numpy as jnp

  x, y = batch
  out = jnp.tanh(x @ params['w1'] + params['b1']) @ params['w2'] + params['b2']
  return jnp.mean((out - y) ** 2)


def batch_indices(k: int) -> np.ndarray | None:
  """The samples of step k, a function of k only; None (all) on anchors."""
  if k % ANCHOR_PERIOD == 0:
    return None
  return np.random.default_rng([SEED, k]).choice(
    NUM_SAMPLES, MINIBATCH, replace=False
  )


def make_tx():
  import spider_optax as so

  return so.spider(LEARNING_RATE, C0, C1)


def jit_steps(tx) -> tuple[Callable, Callable]:
  """The README's two jitted steps. Given sharded inputs, this is the
  global-jit data-parallel style: XLA inserts the gradient all-reduces."""
  import jax
  import optax

  import spider_optax as so

  @jax.jit
  def anchor_step(params, state, batch):
    grads = jax.grad(loss_fn)(params, batch)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  @jax.jit
  def recursive_step(params, state, batch):
    grads, prev_grads = so.paired_grad(loss_fn)(
      params, so.prev_params(state), batch
    )
    updates, state = tx.update(grads, state, params, prev_grads=prev_grads)
    return optax.apply_updates(params, updates), state

  return anchor_step, recursive_step


def flatten(params) -> np.ndarray:
  """All leaves of params in one float64 vector, in a fixed leaf order."""
  return np.concatenate(
    [np.asarray(params[k], np.float64).ravel() for k in sorted(params)]
  )


def run(
  steps: tuple[Callable, Callable],
  params,
  state,
  data,
  put_batch: Callable = lambda b: b,
  get_params: Callable = lambda p: p,
) -> tuple[np.ndarray, Any, Any]:
  """NUM_STEPS SPIDER steps: (params after each step flattened, params, state).

  ``put_batch`` places a batch (e.g. shards it); ``get_params`` brings the
  params back to the host from whatever layout the steps keep them in.
  """
  anchor_step, recursive_step = steps
  x, y = data
  trajectory = []
  for k in range(NUM_STEPS):
    idx = batch_indices(k)
    if idx is None:  # Decided on the host: every process takes the same branch.
      params, state = anchor_step(params, state, put_batch((x, y)))
    else:
      params, state = recursive_step(params, state, put_batch((x[idx], y[idx])))
    trajectory.append(flatten(get_params(params)))
  return np.stack(trajectory), params, state


def run_single(params_np, data, dtype=np.float32) -> np.ndarray:
  """The single-device run, in float32 or (for the rounding scale) float64."""
  import jax
  import jax.numpy as jnp

  with jax.enable_x64(dtype == np.float64):
    cast = lambda t: jax.tree.map(lambda a: jnp.asarray(a, dtype), t)
    tx = make_tx()
    params = cast(params_np)
    return run(jit_steps(tx), params, tx.init(params), data, cast)[0]


# --------------------------------------------------------------------------
# Layouts: a mesh and a PartitionSpec per leaf. The batch is split along
# 'data' in all of them.
# --------------------------------------------------------------------------

LAYOUTS = {
  # Data parallel: params replicated.
  'dp': {'w1': (), 'b1': (), 'w2': (), 'b2': ()},
  # FSDP: each weight split along one axis over all devices; b2 (4 entries)
  # is too small to split and stays replicated, as FSDP implementations
  # leave small leaves.
  'fsdp': {
    'w1': (None, 'data'),
    'b1': ('data',),
    'w2': ('data', None),
    'b2': (),
  },
  # 2D: FSDP over 'data' times tensor parallelism over 'model' (2): hidden
  # units split over 'model' (a column split of w1, a row split of w2).
  '2d': {
    'w1': ('data', 'model'),
    'b1': ('model',),
    'w2': ('model', 'data'),
    'b2': (),
  },
}


def layout(name: str, explicit: bool = False, devices=None):
  """(mesh, {leaf: NamedSharding}, batch NamedSharding) of a layout.

  Over ``devices`` (default: all, across processes). Auto axes by default:
  the GSPMD mode, in which FSDP needs no change to the model. ``explicit``
  gives Explicit axes (sharding in types), what ``jax.make_mesh`` builds by
  default in recent JAX.
  """
  import jax
  from jax.sharding import AxisType
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  devices = jax.devices() if devices is None else devices
  n = len(devices)
  shape, axes = (
    ((n // 2, 2), ('data', 'model')) if name == '2d' else ((n,), ('data',))
  )
  kind = AxisType.Explicit if explicit else AxisType.Auto
  mesh = jax.make_mesh(
    shape, axes, axis_types=(kind,) * len(axes), devices=devices
  )
  shardings = {k: NamedSharding(mesh, P(*s)) for k, s in LAYOUTS[name].items()}
  return mesh, shardings, NamedSharding(mesh, P('data'))


def estimator_state(state):
  import spider_optax as so

  est = state[0]
  assert isinstance(est, so.SpiderEstimatorState), type(est)
  return est


def sharding_report(params, state) -> dict[str, dict[str, Any]]:
  """Per leaf: specs, equivalence to the params' sharding, shard shapes."""
  est = estimator_state(state)
  report = {}
  for k, p in params.items():
    entry = {
      'params_spec': str(p.sharding.spec),
      'global_shape': list(p.shape),
      'params_shard_shape': list(p.addressable_shards[0].data.shape),
    }
    for field in ('estimate', 'prev_params'):
      a = getattr(est, field)[k]
      entry[field + '_spec'] = str(getattr(a.sharding, 'spec', a.sharding))
      entry[field + '_equivalent'] = bool(
        a.sharding.is_equivalent_to(p.sharding, p.ndim)
      )
      entry[field + '_shard_shape'] = list(a.addressable_shards[0].data.shape)
    report[k] = entry
  return report


def update_hlo(tx, params, state, recursive: bool) -> str:
  """Compiled HLO of ``tx.update`` alone, the grads sharded like the params."""
  import jax

  grads = params  # Same shapes, dtypes and shardings as the real gradients.
  if recursive:
    fn = lambda g, s, p, pg: tx.update(g, s, p, prev_grads=pg)
    lowered = jax.jit(fn).lower(grads, state, params, grads)
  else:
    lowered = jax.jit(tx.update).lower(grads, state, params)
  return lowered.compile().as_text()


def write(out: str, name: str, text: str) -> None:
  with open(os.path.join(out, name), 'w') as f:
    f.write(text)


def run_layout(
  name: str,
  params_np,
  data,
  out: str | None = None,
  explicit: bool = False,
  put: Callable | None = None,
  get_params: Callable = lambda p: p,
):
  """Global-jit run on one layout: (trajectory, sharding report).

  ``put(array, sharding)`` builds a global array (default ``jax.device_put``,
  which suffices in one process), ``get_params`` brings params to the host;
  with ``out``, also writes the update's HLO there.
  """
  import jax

  put = put or jax.device_put
  _, shardings, batch_sharding = layout(name, explicit)
  tx = make_tx()
  params = {k: put(v, shardings[k]) for k, v in params_np.items()}
  # init under jit, the way a sharded training script builds its state.
  state = jax.jit(tx.init)(params)
  report = {'after_init': sharding_report(params, state)}
  tag = name + ('_explicit' if explicit else '')
  if out is not None:  # The state as init leaves it, as the first step sees it.
    for kind in ('anchor', 'recursive'):
      write(
        out,
        f'hlo_{tag}_{kind}_init.txt',
        update_hlo(tx, params, state, kind == 'recursive'),
      )
  if explicit:
    # The MLP itself would need explicit reshards under Explicit axes; the
    # optimizer's init and update are what this checks.
    return None, report
  steps = jit_steps(tx)
  put_batch = lambda b: tuple(put(a, batch_sharding) for a in b)
  trajectory, final_params, state = run(
    steps, params, state, data, put_batch, get_params
  )
  report['after_run'] = sharding_report(final_params, state)
  report['final_params_equivalent'] = {
    k: bool(p.sharding.is_equivalent_to(shardings[k], p.ndim))
    for k, p in final_params.items()
  }
  if out is not None:
    # The steady state, as every step after the first sees it.
    for kind in ('anchor', 'recursive'):
      write(
        out,
        f'hlo_{tag}_{kind}.txt',
        update_hlo(tx, final_params, state, kind == 'recursive'),
      )
    if name == 'fsdp':  # The whole step: the gradient collectives show here.
      x, y = data
      write(
        out,
        'hlo_fsdp_step.txt',
        steps[1]
        .lower(final_params, state, put_batch((x[:MINIBATCH], y[:MINIBATCH])))
        .compile()
        .as_text(),
      )
  return trajectory, report


def pmean_steps(tx, wrap: Callable, style: str = 'pmean_grads'):
  """Per-device steps that average the gradients over the 'data' axis.

  ``wrap`` turns a per-device step into a global one (``shard_map`` or
  ``pmap``). ``style``:

  - ``'pmean_grads'``: ``lax.pmean`` of both gradients (``pmap``, or
    ``shard_map`` with ``check_vma=False``).
  - ``'pmean_loss'``: ``lax.pmean`` of the loss; for ``shard_map`` with its
    default ``check_vma=True``, under which ``jax.grad`` already sums the
    gradient of the replicated params over the devices.
  - ``'local_prev_grads'``: the bug of averaging only ``grads``.
  """
  import jax
  import optax

  import spider_optax as so

  if style == 'pmean_loss':
    loss = lambda p, b: jax.lax.pmean(loss_fn(p, b), 'data')
    average = lambda g: g
  else:
    loss, average = loss_fn, lambda g: jax.lax.pmean(g, 'data')

  def anchor(params, state, batch):
    grads = average(jax.grad(loss)(params, batch))
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  def recursive(params, state, batch):
    grads, prev_grads = so.paired_grad(loss)(
      params, so.prev_params(state), batch
    )
    grads = average(grads)
    if style != 'local_prev_grads':
      prev_grads = average(prev_grads)
    updates, state = tx.update(grads, state, params, prev_grads=prev_grads)
    return optax.apply_updates(params, updates), state

  return wrap(anchor), wrap(recursive)


def run_shard_map(params_np, data, style: str = 'pmean_grads') -> np.ndarray:
  import jax
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  mesh, _, batch_sharding = layout('dp')
  tx = make_tx()
  wrap = lambda f: jax.jit(
    jax.shard_map(
      f,
      mesh=mesh,
      in_specs=(P(), P(), P('data')),
      out_specs=(P(), P()),
      check_vma=style == 'pmean_loss',
    )
  )
  params = jax.device_put(params_np, NamedSharding(mesh, P()))
  state = jax.jit(tx.init)(params)
  put = lambda b: jax.device_put(b, batch_sharding)
  return run(pmean_steps(tx, wrap, style), params, state, data, put)[0]


def run_pmap(params_np, data) -> np.ndarray:
  import jax

  tx = make_tx()
  n = jax.device_count()
  replicate = lambda t: jax.tree.map(
    lambda a: np.broadcast_to(a, (n,) + np.shape(a)), t
  )
  steps = pmean_steps(tx, lambda f: jax.pmap(f, axis_name='data'))
  state = replicate(jax.device_get(tx.init(params_np)))
  split = lambda b: tuple(a.reshape(n, -1, *a.shape[1:]) for a in b)
  return run(
    steps,
    replicate(params_np),
    state,
    data,
    split,
    get_params=lambda p: jax.tree.map(lambda a: a[0], p),
  )[0]


# --------------------------------------------------------------------------
# MARS-M (so.mars_muon) on a mesh: its state's layout, and its trajectory.
# --------------------------------------------------------------------------

# A 16-32-8 tanh MLP: two matrices (Muon) and a bias (AdamW), each matrix
# split over the 8 devices along one axis (w1 by columns, w2 by rows), the
# bias split too.
MARS_SHAPES = {'w1': (16, 32), 'b1': (32,), 'w2': (32, 8)}
MARS_SPECS = {'w1': (None, 'data'), 'b1': ('data',), 'w2': ('data', None)}
MARS_SAMPLES, MARS_MINIBATCH = 64, 16
MARS_STEPS = 10
MARS_LEARNING_RATE = 0.02


def make_mars_problem():
  """(params, (x, y)) as float32 NumPy for the MARS-M runs."""
  rng = np.random.default_rng([SEED, 1])
  x = rng.normal(size=(MARS_SAMPLES, 16))
  y = np.sin(x @ rng.normal(size=(16, 8)))
  params = {
    'w1': rng.normal(size=MARS_SHAPES['w1']) / 4.0,
    'b1': 0.1 * rng.normal(size=MARS_SHAPES['b1']),
    'w2': rng.normal(size=MARS_SHAPES['w2']) / np.sqrt(32),
  }
  to32 = lambda a: np.asarray(a, np.float32)
  return {k: to32(v) for k, v in params.items()}, (to32(x), to32(y))


def mars_batch(k: int) -> np.ndarray:
  return np.random.default_rng([SEED, 1, k]).choice(
    MARS_SAMPLES, MARS_MINIBATCH, replace=False
  )


def make_mars_tx():
  import spider_optax as so

  # Weight decay and the global-norm clip (a reduction over all shards)
  # included; one gradient per step (approx mode, the default).
  return so.mars_muon(MARS_LEARNING_RATE, weight_decay=0.1)


def mars_step(tx, gather: Callable = lambda p: p):
  """The jitted step. ``gather`` brings each param whole to every device
  before the forward pass (as FSDP does), where Explicit axes need it: the
  batch is split over 'data', and a split weight would put 'data' on two
  axes of a product. Its transpose splits the gradient like the param."""
  import jax
  import jax.numpy as jnp
  import optax

  def loss(params, batch):
    x, y = batch
    p = jax.tree.map(gather, params)
    out = jnp.tanh(x @ p['w1'] + p['b1']) @ p['w2']
    return jnp.mean((out - y) ** 2)

  @jax.jit
  def step(params, state, batch):
    grads = jax.grad(loss)(params, batch)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return step


def mars_run(step, params, state, data, put_batch=lambda b: b):
  """MARS_STEPS steps: (params after each, flattened; params; state)."""
  x, y = data
  trajectory = []
  for k in range(MARS_STEPS):
    idx = mars_batch(k)
    params, state = step(params, state, put_batch((x[idx], y[idx])))
    trajectory.append(flatten(params))
  return np.stack(trajectory), params, state


def mars_single(params_np, data, dtype=np.float32) -> np.ndarray:
  """The one-device run, in float32 or (the rounding scale) float64.

  The transformation is built outside x64 for both: its float32 constants
  (the Newton-Schulz coefficients) are then the same numbers in both runs,
  so that the float64 run is the float32 run's computation done exactly.
  """
  import jax
  import jax.numpy as jnp

  tx = make_mars_tx()
  with jax.enable_x64(dtype == np.float64):
    cast = lambda t: jax.tree.map(lambda a: jnp.asarray(a, dtype), t)
    params = cast(params_np)
    state = jax.jit(tx.init)(params)
    return mars_run(mars_step(tx), params, state, data, cast)[0]


def mars_state_shardings(params, state) -> dict[str, dict[str, Any]]:
  """Per param-shaped leaf of the state: its field, its param, whether it
  is sharded like that param, and the shapes of the shard a device holds."""
  import jax
  from jax.tree_util import DictKey
  from jax.tree_util import GetAttrKey

  report = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    last = path[-1] if path else None
    if not (isinstance(last, DictKey) and last.key in params):
      continue  # counts and scalars
    p = params[last.key]
    field = next(k.name for k in reversed(path) if isinstance(k, GetAttrKey))
    report[jax.tree_util.keystr(path)] = {
      'param': last.key,
      'field': field,
      'spec': str(leaf.sharding.spec),
      'params_spec': str(p.sharding.spec),
      'type': str(jax.typeof(leaf)),
      'params_type': str(jax.typeof(p)),
      'equivalent': bool(leaf.sharding.is_equivalent_to(p.sharding, p.ndim)),
      'global_shape': list(leaf.shape),
      'shard_shape': list(leaf.addressable_shards[0].data.shape),
      'params_shard_shape': list(p.addressable_shards[0].data.shape),
    }
  return report


def mars_sharded(params_np, data, explicit: bool) -> dict[str, Any]:
  """The run with params split as MARS_SPECS and the batch over 'data'.

  Returns the state's layout after a jitted init and after the run, the
  trajectory, and where a phase raised, its error (the phases after it are
  then missing).
  """
  import traceback

  import jax
  from jax.sharding import AxisType
  from jax.sharding import NamedSharding
  from jax.sharding import PartitionSpec as P

  kind = AxisType.Explicit if explicit else AxisType.Auto
  mesh = jax.make_mesh((jax.device_count(),), ('data',), axis_types=(kind,))
  shardings = {k: NamedSharding(mesh, P(*s)) for k, s in MARS_SPECS.items()}
  whole = NamedSharding(mesh, P())
  gather = (lambda p: jax.sharding.reshard(p, whole)) if explicit else None
  tx = make_mars_tx()
  out: dict[str, Any] = {}
  with jax.set_mesh(mesh):
    params = {k: jax.device_put(v, shardings[k]) for k, v in params_np.items()}
    try:
      state = jax.jit(tx.init)(params)
      out['after_init'] = mars_state_shardings(params, state)
      step = mars_step(tx, gather) if gather else mars_step(tx)
      put_batch = lambda b: jax.device_put(b, NamedSharding(mesh, P('data')))
      trajectory, final, state = mars_run(step, params, state, data, put_batch)
      out['after_run'] = mars_state_shardings(final, state)
      out['final_params_equivalent'] = {
        k: bool(p.sharding.is_equivalent_to(shardings[k], p.ndim))
        for k, p in final.items()
      }
      out['trajectory'] = trajectory
    except Exception as error:  # reported by the tests that need the phase
      out['error'] = f'{type(error).__name__}: {error}\n' + ''.join(
        traceback.format_exception(error)[-12:]
      )
  return out


def mars_muon_results(out: str) -> None:
  """Writes mars_muon.json (layouts, errors) and mars_muon.npz (runs)."""
  params, data = make_mars_problem()
  trajectories = {
    'single': mars_single(params, data),
    'float64': mars_single(params, data, np.float64),
  }
  report = {}
  for name, explicit in (('explicit', True), ('auto', False)):
    run = mars_sharded(params, data, explicit)
    if 'trajectory' in run:
      trajectories[name] = run.pop('trajectory')
    report[name] = run
  np.savez(os.path.join(out, 'mars_muon.npz'), **trajectories)
  write(out, 'mars_muon.json', json.dumps(report, indent=1))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', required=True)
  args = parser.parse_args(argv)
  import jax

  if jax.device_count() != 8:
    sys.exit(
      f'needs 8 devices, got {jax.devices()}: set XLA_FLAGS='
      '--xla_force_host_platform_device_count=8 before JAX starts'
    )
  os.makedirs(args.out, exist_ok=True)
  params, data = make_problem()
  trajectories = {
    'single': run_single(params, data),
    'float64': run_single(params, data, np.float64),
  }
  shardings = {}
  for name in LAYOUTS:
    trajectories[name], shardings[name] = run_layout(
      name, params, data, args.out
    )
  _, shardings['fsdp_explicit'] = run_layout(
    'fsdp', params, data, args.out, explicit=True
  )
  for style in ('pmean_grads', 'pmean_loss', 'local_prev_grads'):
    trajectories['shard_map_' + style] = run_shard_map(params, data, style)
  trajectories['pmap'] = run_pmap(params, data)
  np.savez(os.path.join(args.out, 'trajectories.npz'), **trajectories)
  write(args.out, 'shardings.json', json.dumps(shardings, indent=1))
  mars_muon_results(args.out)
  return 0


if __name__ == '__main__':
  sys.exit(main())
