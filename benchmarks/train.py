"""Training benchmark: SPIDER with a clipped lr vs SVRG, SARAH, clipped SGD, Adam.

Two finite-sum tasks on data that ships with a package or with Python (nothing
is downloaded):

- ``digits``: scikit-learn's digits (n = 1797 images), the MLP of
  ``benchmarks/quickstart.py`` (64 -> 32 tanh -> 10, cross-entropy + small L2).
- ``charlm``: a character-level LSTM language model (embedding 16, hidden 64)
  on English prose bundled with the standard library: the help texts of
  ``pydoc_data.topics`` (whitespace collapsed, non-ASCII mapped to ``?``), cut
  into n fixed, non-overlapping windows of ``seq_len + 1`` characters. One
  window is one sample f_i (mean next-character cross-entropy over the window).

Methods, each given the same budget of stochastic-gradient evaluations (oracle
calls, counted as in SPEC.md section 2):

- ``spider``: ``so.spider(lr, c0, c1)``; full-gradient anchor every
  q = ceil(sqrt(n)) steps (costs n), recursive steps on one minibatch of
  S2 = q samples at both points with ``so.paired_grad`` (costs 2 * S2).
- ``sarah``: the same schedule with ``so.spider(lr)`` (c0 = c1 = None): SARAH,
  a constant step, no clipping.
- ``svrg``: snapshot x_snap and mu = full gradient every m = ceil(n / b) steps
  (costs n; the snapshot step moves along mu), then
  v = g_B(x) - g_B(x_snap) + mu on a minibatch B of b = q samples evaluated
  with ``so.paired_grad`` on (x, x_snap) (costs 2 * b); x <- x - lr * v.
- ``clipped_sgd``: ``optax.chain(optax.clip_by_global_norm(c), optax.sgd(lr))``
  on minibatches of 32 (costs 32).
- ``clipped_adam``: ``optax.chain(optax.clip_by_global_norm(c),
  optax.adam(lr))`` on minibatches of 32 (costs 32).

Minibatches are drawn uniformly with replacement from a seeded NumPy
generator; all methods start from the same params.

Tuning, with the same budget of configurations for every method (9 in full
mode, 2 with ``--quick``): the clipped methods (spider, clipped_sgd,
clipped_adam) run a full grid of 3 learning rates x 3 threshold scales (the
scale multiplies the task's base thresholds: SPIDER's c0 and c1 together, or
the ``clip_by_global_norm`` threshold); sarah and svrg, which have no
threshold, run 9 learning rates from a finer ladder. Every lr grid is a
window of a shared ladder (``LADDER``, ``FINE_LADDER``, which contains it,
and ``ADAM_LADDER``, since Adam's lr has other units), placed per method so
that its best is interior. The run with the lowest final full training loss
is that method's result (diverged runs are never picked), and the output
flags (``edge``: true; ``edge_lr``, ``edge_clip``) every best that sits at
the smallest or largest value of its lr or scale grid, so a grid that is too
narrow cannot pass unnoticed. The learning rate is a traced argument of the
jitted step, so each method compiles once per threshold.

Every ``eval_every`` oracle calls the script evaluates, outside the budget and
the clock, the full training loss and the global norm of the full gradient.
Wall time counts the steps only (compilation and evaluation excluded).

Outputs: a summary table on stdout, saying where SPIDER loses and which bests
sit at a grid edge; a JSON file (``--out``) with the config, hardware and
versions, every run's curves, each method's chosen lr and thresholds with
their edge flags, and the summary; one PNG per task in ``--plot-dir`` (loss
vs oracle calls, gradient norm vs oracle calls, loss vs wall time, each
method at its best config).

Run (from the repository root)::

  python benchmarks/train.py --quick   # under a minute on 2 CPU cores
  python benchmarks/train.py           # full mode, ~7.5 min on 2 loaded cores
"""

import argparse
import datetime
import json
import math
import os
import pathlib
import platform
import re
import sys
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

import spider_optax as so

DEFAULT_OUT = 'benchmarks/out/train.json'
DEFAULT_PLOT_DIR = 'benchmarks/out/'
METHODS = ('spider', 'sarah', 'svrg', 'clipped_sgd', 'clipped_adam')
SGD_BATCH = 32

# Methods with a clipping threshold (tuned on a grid of threshold scales).
CLIPPED = ('spider', 'clipped_sgd', 'clipped_adam')

# Learning-rate ladders: every lr grid below is a window of consecutive values
# of LADDER (Adam: of ADAM_LADDER, its lr being a per-coordinate step length);
# sarah and svrg, which have no threshold to tune, take their window from the
# finer FINE_LADDER (which contains LADDER), so that every method gets the
# same number of configurations in full mode (9: 3 lrs x 3 clip scales, or 9
# lrs).
LADDER = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
FINE_LADDER = (0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0, 7.0,
               10.0, 15.0, 20.0, 30.0, 50.0, 70.0, 100.0)
ADAM_LADDER = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)

# Per-task settings. ``budget`` and ``eval_every`` are in passes (units of n).
# Per mode, ``lr_grid`` maps each method to its learning rates and
# ``clip_scale_grid`` multiplies the base thresholds of the clipped methods
# (``spider`` c0 and c1, ``clip_norm``, ``adam_clip_norm``), tuned jointly
# with the lr (a full lr x scale grid). Scaling c0 and c1 together keeps
# c1 / c0 (~ L0 / L1: the norm of v above which the c1 term binds) and varies
# the target accuracy (lr * c0 ~ eps / L0). The windows were placed so that
# every method's best config is interior in full mode (``edge`` in the output
# says when it is not).
TASKS = dict(
    digits=dict(
        full=dict(budget_passes=60, eval_every_passes=2,
                  lr_grid=dict(spider=(0.3, 1.0, 3.0),
                               sarah=FINE_LADDER[:9], svrg=FINE_LADDER[:9],
                               clipped_sgd=(1.0, 3.0, 10.0),
                               clipped_adam=(1e-3, 3e-3, 1e-2)),
                  clip_scale_grid=(0.3, 1.0, 3.0)),
        quick=dict(budget_passes=8, eval_every_passes=1,
                   lr_grid=dict(spider=(0.3, 1.0), sarah=(0.3, 1.0),
                                svrg=(0.3, 1.0), clipped_sgd=(0.3, 1.0),
                                clipped_adam=(3e-3, 1e-2)),
                   clip_scale_grid=(1.0,)),
        # Base thresholds: quickstart.py's tuned values for this model (Adam:
        # a lower one, which a wider sweep found slightly better).
        spider=dict(c0=0.1, c1=0.05), clip_norm=0.25, adam_clip_norm=0.3,
    ),
    charlm=dict(
        full=dict(n=1024, budget_passes=24, eval_every_passes=2,
                  lr_grid=dict(spider=(1.0, 3.0, 10.0),
                               sarah=FINE_LADDER[5:14], svrg=FINE_LADDER[5:14],
                               clipped_sgd=(10.0, 30.0, 100.0),
                               clipped_adam=(1e-2, 3e-2, 1e-1)),
                  clip_scale_grid=(0.3, 1.0, 3.0)),
        quick=dict(n=256, budget_passes=6, eval_every_passes=1,
                   lr_grid=dict(spider=(0.3, 1.0), sarah=(0.3, 1.0),
                                svrg=(0.3, 1.0), clipped_sgd=(0.3, 1.0),
                                clipped_adam=(3e-3, 1e-2)),
                   clip_scale_grid=(1.0,)),
        seq_len=32, embed=16, hidden=64,
        # Base thresholds: the centres of the grids, placed by a coarse sweep
        # (lr x threshold) with seed 0. Clipped SGD's best lies on a ridge
        # lr * c ~ 3 (the step length of nearly normalised SGD), hence its
        # high lrs and low threshold.
        spider=dict(c0=0.9, c1=0.9), clip_norm=0.1, adam_clip_norm=1.0,
    ),
)


# ----------------------------------------------------------------------------
# Tasks: (loss_fn, params0, data) with loss_fn(params, x, y) a batch mean.
# ----------------------------------------------------------------------------

def _quickstart():
  """benchmarks/quickstart.py as a module (imported by path)."""
  import importlib.util
  path = pathlib.Path(__file__).resolve().parent / 'quickstart.py'
  spec = importlib.util.spec_from_file_location('_quickstart_for_train', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def digits_task(seed: int) -> dict[str, Any]:
  qs = _quickstart()
  x, y = qs.load_data()
  return dict(loss_fn=qs.loss_fn, params=qs.init_params(seed, x.shape[1], 10),
              data=(x, y), n=int(x.shape[0]),
              description=f'sklearn digits, MLP 64-{qs.HIDDEN}-10 tanh, '
              f'L2={qs.L2}')


def load_text() -> str:
  """English prose bundled with Python: the pydoc help topics."""
  from pydoc_data import topics
  text = ' '.join(topics.topics[k] for k in sorted(topics.topics))
  text = re.sub(r'\s+', ' ', text)
  return ''.join(c if ord(c) < 128 else '?' for c in text)


def lstm_init(seed: int, vocab: int, embed: int, hidden: int):
  rng = np.random.default_rng(seed)
  normal = lambda shape, scale: jnp.asarray(
      rng.standard_normal(shape, np.float32) * np.float32(scale))
  b = np.zeros(4 * hidden, np.float32)
  b[hidden:2 * hidden] = 1.0  # forget-gate bias 1
  return dict(
      embed=normal((vocab, embed), 1.0 / math.sqrt(embed)),
      lstm=dict(w=normal((embed + hidden, 4 * hidden),
                         1.0 / math.sqrt(embed + hidden)), b=jnp.asarray(b)),
      out=dict(w=normal((hidden, vocab), 1.0 / math.sqrt(hidden)),
               b=jnp.zeros(vocab)))


def lstm_loss(params, x, y):
  """Mean next-character cross-entropy; x, y are (batch, seq_len) ints."""
  hidden = params['lstm']['w'].shape[1] // 4
  emb = params['embed'][x]  # (B, T, E)

  def cell(carry, e_t):
    h, c = carry
    z = jnp.concatenate([e_t, h], -1) @ params['lstm']['w'] + params['lstm']['b']
    i, f, g, o = jnp.split(z, 4, -1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (h, c), h

  zeros = jnp.zeros((x.shape[0], hidden), emb.dtype)
  _, hs = jax.lax.scan(cell, (zeros, zeros), jnp.swapaxes(emb, 0, 1))
  logits = hs @ params['out']['w'] + params['out']['b']  # (T, B, V)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, y.T)
  return jnp.mean(ce)


def charlm_task(seed: int, n: int, seq_len: int, embed: int,
                hidden: int) -> dict[str, Any]:
  text = load_text()
  vocab = sorted(set(text))
  need = n * (seq_len + 1)
  if len(text) < need:
    raise ValueError(f'only {len(text)} characters of text, need {need}')
  ids = np.array([vocab.index(c) for c in text[:need]], np.int32)
  windows = ids.reshape(n, seq_len + 1)
  data = (jnp.asarray(windows[:, :-1]), jnp.asarray(windows[:, 1:]))
  return dict(loss_fn=lstm_loss,
              params=lstm_init(seed, len(vocab), embed, hidden),
              data=data, n=n,
              description=f'char LSTM (vocab {len(vocab)}, embed {embed}, '
              f'hidden {hidden}, seq_len {seq_len}) on pydoc_data.topics, '
              f'{n} windows ({need} characters)')


# ----------------------------------------------------------------------------
# Methods: make(lr) -> (step(k), cost(k)); the jitted steps take lr as an arg.
# ----------------------------------------------------------------------------

def _scale(updates, lr):
  return jax.tree.map(lambda u: lr * u, updates)


def shared_grads(loss_fn, data) -> dict[str, Callable[..., Any]]:
  """The gradient computations, jitted once per task and shared by methods.

  ``full(params)`` is the full loss and gradient (anchors, snapshots and the
  untimed evaluation), ``paired(params, other, idx)`` the gradients at two
  points on the minibatch ``idx`` (``so.paired_grad``), ``batch(params, idx)``
  the minibatch gradient. The optimizer updates are jitted separately (cheap
  to compile), so each model is compiled three times, not once per method.
  """
  x, y = data
  return dict(
      full=jax.jit(lambda p: jax.value_and_grad(loss_fn)(p, x, y)),
      paired=jax.jit(lambda p, other, idx: so.paired_grad(loss_fn)(
          p, other, x[idx], y[idx])),
      batch=jax.jit(lambda p, idx: jax.grad(loss_fn)(p, x[idx], y[idx])))


def vr_method(grads_fns, n, q, s2, c0=None, c1=None, kind='spider'):
  """SPIDER/SARAH (``kind='spider'``) or SVRG (``kind='svrg'``) factory.

  Anchor/snapshot every q steps on the full gradient (cost n), recursive or
  variance-reduced steps on s2 samples at two points (cost 2 * s2).
  """
  full, paired = grads_fns['full'], grads_fns['paired']
  # lr = 1 inside the transformation; the step scales by the traced lr, which
  # is the same thing since the clip factor depends on v only.
  tx = so.spider(1.0, c0, c1)

  if kind == 'spider':
    @jax.jit
    def anchor_update(grads, state, params, lr):
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, _scale(updates, lr)), state

    @jax.jit
    def inner_update(grads, prev, state, params, lr):
      updates, state = tx.update(grads, state, params, prev_grads=prev)
      return optax.apply_updates(params, _scale(updates, lr)), state

    def anchor(params, state, lr):
      return anchor_update(full(params)[1], state, params, lr)

    def inner(params, state, lr, idx):
      grads, prev = paired(params, so.prev_params(state), idx)
      return inner_update(grads, prev, state, params, lr)

    init = lambda params: tx.init(params)
  else:  # SVRG: state = (x_snap, mu)
    @jax.jit
    def anchor_update(mu, params, lr):
      return optax.apply_updates(params, _scale(mu, -lr)), (params, mu)

    @jax.jit
    def inner_update(g, g_snap, state, params, lr):
      v = jax.tree.map(lambda a, b, m: a - b + m, g, g_snap, state[1])
      return optax.apply_updates(params, _scale(v, -lr)), state

    def anchor(params, state, lr):
      del state
      return anchor_update(full(params)[1], params, lr)

    def inner(params, state, lr, idx):
      g, g_snap = paired(params, state[0], idx)
      return inner_update(g, g_snap, state, params, lr)

    init = lambda params: (params, jax.tree.map(jnp.zeros_like, params))

  def make(params, lr, rng):
    carry = dict(params=params, state=init(params))
    lr = jnp.float32(lr)

    def step(k):
      if k % q == 0:
        carry['params'], carry['state'] = anchor(
            carry['params'], carry['state'], lr)
      else:
        carry['params'], carry['state'] = inner(
            carry['params'], carry['state'], lr,
            jnp.asarray(rng.integers(0, n, s2), jnp.int32))
      return carry['params']

    return step, lambda k: n if k % q == 0 else 2 * s2

  def warmup(params):
    p, s = anchor(params, init(params), jnp.float32(0.0))
    jax.block_until_ready(inner(p, s, jnp.float32(0.0),
                                jnp.zeros(s2, jnp.int32)))

  return make, warmup


def minibatch_method(grads_fns, n, tx, batch_size):
  """Clipped SGD / Adam on minibatches; tx has unit lr, scaled by lr."""
  batch = grads_fns['batch']

  @jax.jit
  def update(grads, state, params, lr):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, _scale(updates, lr)), state

  def sgd_step(params, state, lr, idx):
    return update(batch(params, idx), state, params, lr)

  def make(params, lr, rng):
    carry = dict(params=params, state=tx.init(params))
    lr = jnp.float32(lr)

    def step(k):
      del k
      carry['params'], carry['state'] = sgd_step(
          carry['params'], carry['state'], lr,
          jnp.asarray(rng.integers(0, n, batch_size), jnp.int32))
      return carry['params']

    return step, lambda k: batch_size

  def warmup(params):
    jax.block_until_ready(sgd_step(params, tx.init(params), jnp.float32(0.0),
                                   jnp.zeros(batch_size, jnp.int32)))

  return make, warmup


def clip_thresholds(method: str, settings: dict[str, Any],
                    scale: Optional[float]) -> Optional[dict[str, float]]:
  """The thresholds of ``method`` at ``scale`` times its base (None: none)."""
  if method not in CLIPPED:
    return None
  r = lambda v: None if v is None else float(f'{scale * v:.6g}')
  if method == 'spider':
    return {k: r(v) for k, v in settings['spider'].items()}
  key = 'adam_clip_norm' if method == 'clipped_adam' else 'clip_norm'
  return dict(clip_norm=r(settings[key]))


def method_grid(method: str, mode_settings: dict[str, Any]):
  """(lr grid, clip-scale grid) of ``method``; the scale grid is (None,)."""
  scales = mode_settings['clip_scale_grid'] if method in CLIPPED else (None,)
  return tuple(mode_settings['lr_grid'][method]), tuple(scales)


def build_method(method: str, task: dict[str, Any], clip, fns):
  """(make, warmup, config) of ``method`` with thresholds ``clip``."""
  n = task['n']
  q = s2 = math.isqrt(n - 1) + 1  # ceil(sqrt(n)), as theory.finite_sum
  m = -(-n // s2)  # SVRG epoch length ceil(n / b), b = s2
  if method == 'spider':
    return (*vr_method(fns, n, q, s2, **clip),
            dict(clip, anchor_period=q, anchor_batch=n, minibatch=s2))
  if method == 'sarah':
    return (*vr_method(fns, n, q, s2),
            dict(c0=None, c1=None, anchor_period=q, anchor_batch=n,
                 minibatch=s2))
  if method == 'svrg':
    return (*vr_method(fns, n, m, s2, kind='svrg'),
            dict(epoch_length=m, snapshot_batch=n, minibatch=s2))
  if method == 'clipped_sgd':
    tx = optax.chain(optax.clip_by_global_norm(clip['clip_norm']),
                     optax.sgd(1.0))
  elif method == 'clipped_adam':
    tx = optax.chain(optax.clip_by_global_norm(clip['clip_norm']),
                     optax.scale_by_adam(), optax.scale(-1.0))
  else:
    raise ValueError(f'unknown method {method!r}; one of {METHODS}')
  return (*minibatch_method(fns, n, tx, SGD_BATCH),
          dict(clip, batch=SGD_BATCH))


def run_key(lr: float, clip: Optional[dict[str, float]]) -> str:
  """'lr=1' or 'lr=1,c0=0.1,c1=0.05': the key of a run in the JSON."""
  parts = [f'lr={lr:g}'] + [f'{k}={v:g}' for k, v in (clip or {}).items()
                            if v is not None]
  return ','.join(parts)


def at_edge(value, grid) -> bool:
  """Whether ``value`` is the smallest or the largest of ``grid``.

  A grid of one or two values has no interior: its best is always an edge.
  """
  return value in (min(grid), max(grid))


# ----------------------------------------------------------------------------
# Running, summarising, plotting.
# ----------------------------------------------------------------------------

def run(step_fn, cost_fn, params, evaluate, budget, every) -> dict[str, Any]:
  """Steps while the next step's cost fits the budget; untimed checkpoints."""
  curves = dict(oracle_calls=[], steps=[], wall_time_s=[], loss=[],
                grad_norm=[])
  seconds = 0.0
  diverged = False

  def checkpoint(k, calls, params, start):
    nonlocal seconds, diverged
    jax.block_until_ready(params)
    seconds += time.perf_counter() - start
    loss, grad_norm = (float(v) for v in evaluate(params))
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
      diverged = True
      return time.perf_counter()
    for key, value in zip(curves, (calls, k, seconds, loss, grad_norm)):
      curves[key].append(value)
    return time.perf_counter()

  start = checkpoint(0, 0, params, time.perf_counter())
  k = calls = 0
  while not diverged and calls + (cost := cost_fn(k)) <= budget:
    params = step_fn(k)
    k, calls = k + 1, calls + cost
    if calls // every > (calls - cost) // every:
      start = checkpoint(k, calls, params, start)
  if not diverged and curves['steps'][-1] != k:
    checkpoint(k, calls, params, start)
  return dict(steps=k, oracle_calls=calls, wall_time_s=seconds,
              diverged=diverged,
              final_loss=None if diverged else curves['loss'][-1],
              final_grad_norm=None if diverged else curves['grad_norm'][-1],
              curves=curves)


def run_task(name, task, settings, mode, seed, bar) -> dict[str, Any]:
  n = task['n']
  mode_settings = settings[mode]
  budget = mode_settings['budget_passes'] * n
  every = mode_settings['eval_every_passes'] * n
  fns = shared_grads(task['loss_fn'], task['data'])
  norm = jax.jit(so.global_norm)

  def evaluate(params):
    loss, grads = fns['full'](params)
    return loss, norm(grads)

  jax.block_until_ready(evaluate(task['params']))
  result = dict(description=task['description'], n=n, budget=budget,
                budget_passes=budget / n, eval_every=every, methods={})
  for method in METHODS:
    lrs, scales = method_grid(method, mode_settings)
    runs = {}
    for scale in scales:
      clip = clip_thresholds(method, settings, scale)
      make, warmup, config = build_method(method, task, clip, fns)
      warmup(task['params'])  # compile once; lr is a traced argument
      for lr in lrs:
        key = run_key(lr, clip)
        bar.set_postfix_str(f'{name}/{method} {key}')
        step_fn, cost_fn = make(task['params'], lr,
                                np.random.default_rng(seed))
        runs[key] = dict(learning_rate=lr, clip_scale=scale, clip=clip, **run(
            step_fn, cost_fn, task['params'], evaluate, budget, every))
        bar.update(1)
    finite = [r for r in runs.values() if not r['diverged']]
    best = min(finite, key=lambda r: r['final_loss']) if finite else None
    entry = dict(
        config=config, lr_grid=list(lrs),
        clip_scale_grid=None if method not in CLIPPED else list(scales),
        clip_grid=None if method not in CLIPPED else [
            clip_thresholds(method, settings, s) for s in scales],
        n_configs=len(runs),
        best_lr=None, best_clip=None, best_clip_scale=None,
        edge=None, edge_lr=None, edge_clip=None,
        best_picked_by='lowest final full training loss', runs=runs)
    if best is not None:
      edge_lr = at_edge(best['learning_rate'], lrs)
      edge_clip = (method in CLIPPED
                   and at_edge(best['clip_scale'], scales))
      # The config of the best run: its thresholds, not the last built.
      entry['config'] = dict(config, **(best['clip'] or {}))
      entry.update(
          best_lr=best['learning_rate'], best_clip=best['clip'],
          best_clip_scale=best['clip_scale'], edge=edge_lr or edge_clip,
          edge_lr=edge_lr, edge_clip=edge_clip,
          **{k: best[k] for k in ('final_loss', 'final_grad_norm',
                                  'wall_time_s', 'steps', 'oracle_calls',
                                  'curves')})
    result['methods'][method] = entry
  return result


def spider_losses(tasks: dict[str, Any]) -> list[str]:
  """Plain statements of every metric where SPIDER is beaten.

  Each other method at its best lr against SPIDER at its best lr, on final
  training loss, final full-gradient norm and wall time (the last only when
  more than 10% faster).
  """
  out = []
  for name, task in tasks.items():
    sp = task['methods']['spider']
    if sp.get('final_loss') is None:
      out.append(f'{name}: SPIDER diverged at every learning rate.')
      continue
    for method, r in task['methods'].items():
      if method == 'spider' or r.get('final_loss') is None:
        continue
      for key, label in (('final_loss', 'final training loss'),
                         ('final_grad_norm', 'final full-gradient norm'),
                         ('wall_time_s', 'wall time')):
        # Wall times within 10% are noise on a shared CPU: not listed.
        margin = 0.9 if key == 'wall_time_s' else 1.0
        if r[key] < margin * sp[key]:
          out.append(f'{name}: {method} beats SPIDER on {label} '
                     f'({r[key]:.4g} vs {sp[key]:.4g}).')
  return out


def format_clip(clip: Optional[dict[str, float]]) -> str:
  """'c0=0.1,c1=0.05', 'c=0.25' or '-' (no threshold)."""
  if not clip:
    return '-'
  return ','.join(f'{"c" if k == "clip_norm" else k}={v:g}'
                  for k, v in clip.items() if v is not None)


def edge_warnings(tasks: dict[str, Any]) -> list[str]:
  """One line per method whose best config sits at an edge of its grid."""
  out = []
  for name, task in tasks.items():
    for method, r in task['methods'].items():
      if not r.get('edge'):
        continue
      where = []
      if r['edge_lr']:
        grid = ', '.join(f'{v:g}' for v in r['lr_grid'])
        where.append(f'lr {r["best_lr"]:g} of {{{grid}}}')
      if r['edge_clip']:
        grid = ', '.join(f'{v:g}' for v in r['clip_scale_grid'])
        where.append(f'clip scale {r["best_clip_scale"]:g} of {{{grid}}}')
      out.append(f'{name}/{method}: best at a grid edge ({"; ".join(where)})')
  return out


def format_summary(tasks: dict[str, Any], losses: list[str]) -> str:
  header = (f'{"task":<7} {"method":<13} {"best lr":>8} {"clip":<16} '
            f'{"edge":<4} {"cfgs":>4} {"steps":>6} {"oracle calls":>12} '
            f'{"final loss":>11} {"|grad f|":>10} {"wall s":>7}')
  lines = [header, '-' * len(header)]
  for name, task in tasks.items():
    for method, r in task['methods'].items():
      if r.get('final_loss') is None:
        lines.append(f'{name:<7} {method:<13} diverged at every config')
        continue
      lines.append(
          f'{name:<7} {method:<13} {r["best_lr"]:>8g} '
          f'{format_clip(r["best_clip"]):<16} '
          f'{"yes" if r["edge"] else "no":<4} {r["n_configs"]:>4} '
          f'{r["steps"]:>6} {r["oracle_calls"]:>12} {r["final_loss"]:>11.5f} '
          f'{r["final_grad_norm"]:>10.5f} {r["wall_time_s"]:>7.2f}')
  lines.append('')
  lines.append('Each method at its best config of its grid (lowest final full '
               'training loss); wall time excludes compilation and '
               'evaluation. clip: c0,c1 of SPIDER, c of clip_by_global_norm. '
               'edge: the best lr or clip scale is the smallest or largest '
               'of its grid.')
  for name, task in tasks.items():
    for method, r in task['methods'].items():
      bad = [k for k, run_ in r['runs'].items() if run_['diverged']]
      if bad:
        lines.append(f'{name}/{method}: diverged at {"; ".join(bad)}')
  edges = edge_warnings(tasks)
  lines.append('')
  lines.append('WARNING, best at a grid edge (extend the grid):' if edges else
               'Every best config is interior to its grid.')
  lines.extend(f'  - {s}' for s in edges)
  lines.append('')
  lines.append('Where SPIDER loses:' if losses else
               'SPIDER loses nowhere in this run.')
  lines.extend(f'  - {s}' for s in losses)
  return '\n'.join(lines)


def plot(name: str, task: dict[str, Any], plot_dir: pathlib.Path) -> str:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
  n = task['n']
  for method, r in task['methods'].items():
    if 'curves' not in r:
      continue
    c = r['curves']
    clip = format_clip(r['best_clip'])
    label = (f'{method} (lr={r["best_lr"]:g}'
             f'{"" if clip == "-" else ", " + clip})')
    passes = np.asarray(c['oracle_calls']) / n
    axes[0].plot(passes, c['loss'], label=label)
    axes[1].plot(passes, c['grad_norm'], label=label)
    axes[2].plot(c['wall_time_s'], c['loss'], label=label)
  for ax, (xl, yl) in zip(axes, (
      ('stochastic gradients / n', 'full training loss'),
      ('stochastic gradients / n', 'full-gradient norm'),
      ('wall time [s] (steps only)', 'full training loss'))):
    ax.set_xlabel(xl)
    ax.set_ylabel(yl)
    ax.set_yscale('log')
    ax.grid(True, alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.suptitle(f'{name}: {task["description"]}', fontsize=10)
  fig.tight_layout()
  path = plot_dir / f'train_{name}.png'
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return str(path)


def environment() -> dict[str, Any]:
  import sklearn
  cpu = platform.processor()
  try:
    with open('/proc/cpuinfo') as f:
      names = [l.split(':', 1)[1].strip() for l in f if l.startswith('model name')]
    cpu = names[0] if names else cpu
  except OSError:
    pass
  return dict(
      python=sys.version.split()[0], platform=platform.platform(),
      machine=platform.machine(), cpu=cpu, cpu_count=os.cpu_count(),
      jax_backend=jax.default_backend(),
      jax_devices=[str(d) for d in jax.devices()],
      versions=dict(jax=jax.__version__, jaxlib=jax.lib.__version__
                    if hasattr(jax.lib, '__version__') else None,
                    optax=optax.__version__, numpy=np.__version__,
                    sklearn=sklearn.__version__,
                    spider_optax=so.__version__),
      date=datetime.datetime.now(datetime.timezone.utc).isoformat())


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
  """Runs every task and method, prints the summary, writes JSON and PNGs."""
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true',
                      help='small budgets and 2-config grids (< ~60 s)')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--tasks', nargs='+', default=list(TASKS),
                      choices=list(TASKS))
  parser.add_argument('--out', default=DEFAULT_OUT)
  parser.add_argument('--plot-dir', default=DEFAULT_PLOT_DIR)
  parser.add_argument('--no-progress', action='store_true')
  args = parser.parse_args(argv)
  mode = 'quick' if args.quick else 'full'
  total_start = time.perf_counter()

  builders = dict(
      digits=lambda s: digits_task(args.seed),
      charlm=lambda s: charlm_task(args.seed, s[mode]['n'], s['seq_len'],
                                   s['embed'], s['hidden']))
  n_runs = sum(math.prod(len(g) for g in method_grid(m, TASKS[t][mode]))
               for t in args.tasks for m in METHODS)
  tasks = {}
  with tqdm.tqdm(total=n_runs, desc=f'train ({mode})', unit='run',
                 disable=args.no_progress, file=sys.stderr) as bar:
    for name in args.tasks:
      settings = TASKS[name]
      tasks[name] = run_task(name, builders[name](settings), settings, mode,
                             args.seed, bar)

  losses = spider_losses(tasks)
  summary = format_summary(tasks, losses)
  print(summary)
  plot_dir = pathlib.Path(args.plot_dir)
  plot_dir.mkdir(parents=True, exist_ok=True)
  plots = {name: plot(name, task, plot_dir) for name, task in tasks.items()}
  total = time.perf_counter() - total_start
  output = dict(
      config=dict(mode=mode, seed=args.seed,
                  tasks={k: TASKS[k] for k in args.tasks},
                  oracle_accounting='anchor/snapshot n; spider/sarah/svrg '
                  'inner step 2*S2; sgd/adam batch size'),
      environment=environment(), tasks=tasks, spider_loses=losses,
      edges=edge_warnings(tasks),
      summary=summary, plots=plots, total_wall_time_s=total)
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(output, indent=1) + '\n')
  print(f'\ntotal {total:.1f} s; wrote {out} and {", ".join(plots.values())}')
  return output


if __name__ == '__main__':
  main()
