"""Training benchmark: SPIDER, clipped, against SVRG, SARAH, clipped SGD, Adam.

Two finite-sum tasks of ``benchmarks/tasks.py`` (nothing is downloaded):
``digits`` (the MLP 64 -> 32 tanh -> 10 of the quickstart on sklearn's digits,
n = 1797) and ``charlm`` (a character LSTM, embedding 16, hidden 64, on n
windows of 32 + 1 characters of the ``pydoc_data`` help texts).

Methods, each given the same budget of stochastic-gradient evaluations (oracle
calls, counted as in ``benchmarks/common.py``):

- ``spider``: ``so.spider(lr, c0, c1)``; a full-gradient anchor (cost n)
  every q = ceil(sqrt(n)) steps (``so.is_anchor_step``), recursive steps on
  one minibatch of S2 = q samples at both points with ``so.paired_grad``
  (cost 2 * S2).
- ``sarah``: the same with ``so.spider(lr)`` (c0 = c1 = None): SARAH, a
  constant step, no clipping.
- ``svrg``: a snapshot x_snap and mu = the full gradient every
  m = ceil(n / b) steps (cost n; the snapshot step moves along mu), then
  v = g_B(x) - g_B(x_snap) + mu on a minibatch B of b = q samples at
  (x, x_snap) (cost 2 * b); x <- x - lr * v.
- ``clipped_sgd``: ``optax.chain(optax.clip_by_global_norm(c), optax.sgd(lr))``
  on minibatches of 32 (cost 32).
- ``clipped_adam``: ``optax.chain(optax.clip_by_global_norm(c),
  optax.adam(lr))`` on minibatches of 32 (cost 32).

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
that its best is interior, and widened by the study harness's grid search
(``benchmarks/study.py``'s ``search``: up to 3 more ladder values in full
mode, each beyond the edge where the best sits). The run with the lowest
final full training loss is that method's result (diverged runs are never
picked), and the output
flags (``edge``: true; ``edge_lr``, ``edge_clip``) every best that sits at
the smallest or largest value of its lr or scale grid, so a grid that is too
narrow cannot pass unnoticed. The gradients are jitted once per task and the
updates once per method and threshold (the learning rate is a traced
argument).

Every ``eval_every`` oracle calls the script evaluates, outside the budget and
the clock, the full training loss and the global norm of the full gradient.
Wall time counts the steps only (compilation, evaluation and the anchor
schedule's host-side work excluded).

Outputs: a summary table on stdout, saying where SPIDER loses and which bests
sit at a grid edge; a JSON file (``--out``) with every run's curves, each
method's chosen lr and thresholds with their edge flags, and the summary; one
PNG per task in ``--plot-dir`` (loss and gradient norm against oracle calls,
loss against wall time, each method at its best config).

Run (from the repository root)::

  python -m benchmarks.train --quick   # under a minute on 2 CPU cores
  python -m benchmarks.train           # full mode, ~7.5 min on 2 loaded cores
"""

import argparse
import math
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

import spider_optax as so

if __package__ in (None, ''):  # python benchmarks/train.py
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402
from benchmarks import study  # noqa: E402
from benchmarks import tasks  # noqa: E402

METHODS = ('spider', 'sarah', 'svrg', 'clipped_sgd', 'clipped_adam')
CLIPPED = ('spider', 'clipped_sgd', 'clipped_adam')  # tuned thresholds
# A method's fields that its best run sets (None while no run is finite).
BEST_FIELDS = (
  'best_lr',
  'best_clip',
  'best_clip_scale',
  'edge',
  'edge_lr',
  'edge_clip',
  'final_loss',
  'final_grad_norm',
)
SGD_BATCH = 32

# Learning-rate ladders: every lr grid below is a window of consecutive values
# of LADDER (Adam: of ADAM_LADDER, its lr being a per-coordinate step length);
# sarah and svrg, which have no threshold to tune, take their window from the
# finer FINE_LADDER (which contains LADDER), so that every method gets the
# same number of configurations in full mode (9: 3 lrs x 3 clip scales, or 9
# lrs).
LADDER = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
FINE_LADDER = (
  0.1,
  0.15,
  0.2,
  0.3,
  0.5,
  0.7,
  1.0,
  1.5,
  2.0,
  3.0,
  5.0,
  7.0,
  10.0,
  15.0,
  20.0,
  30.0,
  50.0,
  70.0,
  100.0,
)
ADAM_LADDER = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
LADDERS = dict(
  spider=LADDER,
  sarah=FINE_LADDER,
  svrg=FINE_LADDER,
  clipped_sgd=LADDER,
  clipped_adam=ADAM_LADDER,
)
QUICK: dict[str, Any] = dict(  # the quick mode of every task
  lr_grid=dict(
    spider=(0.3, 1.0),
    sarah=(0.3, 1.0),
    svrg=(0.3, 1.0),
    clipped_sgd=(0.3, 1.0),
    clipped_adam=(3e-3, 1e-2),
  ),
  clip_scale_grid=(1.0,),
  eval_every_passes=1,
  max_widen=0,
)

# Per-task settings. ``budget`` and ``eval_every`` are in passes (units of n).
# Per mode, ``lr_grid`` maps each method to its learning rates and
# ``clip_scale_grid`` multiplies the base thresholds of the clipped methods
# (``spider`` c0 and c1, ``clip_norm``, ``adam_clip_norm``), tuned jointly
# with the lr (a full lr x scale grid). Scaling c0 and c1 together keeps
# c1 / c0 (~ L0 / L1: the norm of v above which the c1 term binds) and varies
# the target accuracy (lr * c0 ~ eps / L0). The windows were placed so that
# every method's best config is interior in full mode (``edge`` in the output
# says when it is not).
TASKS: dict[str, dict[str, Any]] = dict(
  digits=dict(
    full=dict(
      budget_passes=60,
      eval_every_passes=2,
      lr_grid=dict(
        spider=(0.3, 1.0, 3.0),
        sarah=FINE_LADDER[:9],
        svrg=FINE_LADDER[:9],
        clipped_sgd=(1.0, 3.0, 10.0),
        clipped_adam=(1e-3, 3e-3, 1e-2),
      ),
      clip_scale_grid=(0.3, 1.0, 3.0),
      max_widen=3,
    ),
    quick=dict(QUICK, budget_passes=8),
    # Base thresholds: quickstart.py's tuned values for this model (Adam:
    # a lower one, which a wider sweep found slightly better).
    spider=dict(c0=0.1, c1=0.05),
    clip_norm=0.25,
    adam_clip_norm=0.3,
  ),
  charlm=dict(
    full=dict(
      n=1024,
      budget_passes=24,
      eval_every_passes=2,
      lr_grid=dict(
        spider=(1.0, 3.0, 10.0),
        sarah=FINE_LADDER[5:14],
        svrg=FINE_LADDER[5:14],
        clipped_sgd=(10.0, 30.0, 100.0),
        clipped_adam=(1e-2, 3e-2, 1e-1),
      ),
      clip_scale_grid=(0.3, 1.0, 3.0),
      max_widen=3,
    ),
    quick=dict(QUICK, n=256, budget_passes=6),
    # Base thresholds: the centres of the grids, placed by a coarse sweep
    # (lr x threshold) with seed 0. Clipped SGD's best lies on a ridge
    # lr * c ~ 3 (the step length of nearly normalised SGD), hence its
    # high lrs and low threshold.
    spider=dict(c0=0.9, c1=0.9),
    clip_norm=0.1,
    adam_clip_norm=1.0,
  ),
)


def build_task(name: str, mode: str, seed: int) -> tasks.Task:
  if name == 'digits':
    return tasks.digits_task(seed)
  return tasks.charlm_task(seed, TASKS[name][mode]['n'])


# ------------------------------------------------------------------ steps ---


class SvrgState(NamedTuple):
  """The snapshot x_snap and mu, the full gradient there."""

  snapshot: optax.Params
  mu: optax.Updates


def svrg() -> optax.GradientTransformationExtraArgs:
  """SVRG's estimate (Johnson and Zhang, 2013), called as SPIDER's.

  An update without ``prev_grads`` (an anchor, on the full gradient) takes a
  snapshot, x_snap = params and mu = grads, and emits mu; one with
  ``prev_grads``, the minibatch's gradient at x_snap, emits
  grads - prev_grads + mu.
  """

  def init(params):
    return SvrgState(params, jax.tree.map(jnp.zeros_like, params))

  def update(
    updates: Any,
    state: Any,
    params: Any = None,
    *,
    prev_grads: Any = None,
    **extra: Any,
  ) -> tuple[Any, SvrgState]:
    del extra
    if prev_grads is None:
      return updates, SvrgState(params, updates)
    return jax.tree.map(
      lambda g, p, m: g - p + m, updates, prev_grads, state.mu
    ), state

  return optax.GradientTransformationExtraArgs(init, update)


def snapshot(state: Any, params: optax.Params) -> optax.Params:
  del params
  return optax.tree_utils.tree_get(state, 'snapshot')


def unit_tx(
  method: str, clip: dict[str, float] | None
) -> optax.GradientTransformation:
  """``method`` at learning rate 1 (its step then scales by the lr)."""
  if method in ('spider', 'sarah'):
    clip = clip or {}
    return so.spider(1.0, clip.get('c0'), clip.get('c1'))
  if method == 'svrg':
    return optax.chain(svrg(), optax.scale(-1.0))
  assert clip is not None
  clip_tx = optax.clip_by_global_norm(clip['clip_norm'])
  if method == 'clipped_sgd':
    return optax.chain(clip_tx, optax.sgd(1.0))
  return optax.chain(clip_tx, optax.scale_by_adam(), optax.scale(-1.0))


def shared_grads(task: tasks.Task) -> dict[str, Callable[..., Any]]:
  """The gradients, jitted once per task and shared by the methods.

  ``full(params)``: the full loss and gradient (anchors, snapshots and the
  untimed evaluation); ``paired(params, state, idx)``, ``svrg_paired``: the
  gradients at params and at the state's other point (the previous params, or
  SVRG's snapshot) on the minibatch ``idx``; ``batch(params, idx)``: the
  minibatch gradient.
  """
  x, y = task.data
  paired = lambda other: jax.jit(
    lambda p, state, idx: so.paired_grad(task.loss_fn)(
      p, other(state, p), x[idx], y[idx]
    )
  )
  return dict(
    full=jax.jit(lambda p: jax.value_and_grad(task.loss_fn)(p, x, y)),
    paired=paired(so.prev_params),
    svrg_paired=paired(snapshot),
    batch=jax.jit(lambda p, idx: jax.grad(task.loss_fn)(p, x[idx], y[idx])),
  )


def method_steppers(
  method: str,
  n: int,
  clip: dict[str, float] | None,
  fns: dict[str, Callable[..., Any]],
) -> tuple[Callable[[float], common.Stepper], dict]:
  """(lr -> the Stepper of ``method`` at thresholds ``clip``, its config).

  The updates are jitted here, once; the learning rate is traced.
  """
  tx = unit_tx(method, clip)
  make_tx = lambda lr: optax.chain(tx, optax.scale(lr))
  other = snapshot if method == 'svrg' else so.prev_params
  anchor, recursive = (
    jax.jit(f)
    for f in common.step_pair(make_tx, *common.GIVEN, other_point=other)
  )
  init = make_tx(1.0).init
  if method in ('clipped_sgd', 'clipped_adam'):

    def minibatch_stepper(lr):
      return common.Stepper(
        init=init,
        batch_size=SGD_BATCH,
        cost=SGD_BATCH,
        step=lambda p, s, idx: anchor(lr, p, s, fns['batch'](p, idx)),
      )

    return minibatch_stepper, dict(clip or {}, batch=SGD_BATCH)
  s2 = common.ceil_sqrt(n)  # q = S2 (SVRG's b), as theory.finite_sum
  m = -(-n // s2)  # SVRG's epoch length ceil(n / b)
  paired = fns['svrg_paired' if method == 'svrg' else 'paired']

  def stepper(lr):
    return common.Stepper(
      init=init,
      batch_size=s2,
      cost=2 * s2,
      anchor_cost=n,
      step=lambda p, s, idx: recursive(lr, p, s, *paired(p, s, idx)),
      anchor=lambda p, s: anchor(lr, p, s, fns['full'](p)[1]),
      is_anchor=(lambda s, k: k % m == 0)
      if method == 'svrg'
      else common.spider_schedule(s2),
    )

  if method == 'svrg':
    return stepper, dict(epoch_length=m, snapshot_batch=n, minibatch=s2)
  return stepper, dict(
    clip or dict(c0=None, c1=None),
    anchor_period=s2,
    anchor_batch=n,
    minibatch=s2,
  )


# ----------------------------------------------------------------- grids ---


def clip_thresholds(
  method: str, settings: dict[str, Any], scale: float | None
) -> dict[str, float] | None:
  """The thresholds of ``method`` at ``scale`` times its base (None: none)."""
  if method not in CLIPPED or scale is None:
    return None
  r = lambda v: float(f'{scale * v:.6g}')
  if method == 'spider':
    return {k: r(v) for k, v in settings['spider'].items()}
  key = 'adam_clip_norm' if method == 'clipped_adam' else 'clip_norm'
  return dict(clip_norm=r(settings[key]))


def method_grid(
  method: str, mode_settings: dict[str, Any]
) -> tuple[tuple[float, ...], tuple[float | None, ...]]:
  """(lr grid, clip-scale grid) of ``method``; the scale grid is (None,)."""
  scales = mode_settings['clip_scale_grid'] if method in CLIPPED else (None,)
  return tuple(mode_settings['lr_grid'][method]), tuple(scales)


def run_key(lr: float, clip: dict[str, float] | None) -> str:
  """'lr=1' or 'lr=1,c0=0.1,c1=0.05': the key of a run in the JSON."""
  parts = [f'lr={lr:g}'] + [
    f'{k}={v:g}' for k, v in (clip or {}).items() if v is not None
  ]
  return ','.join(parts)


def at_edge(value: Any, grid: Sequence[Any]) -> bool:
  """Whether ``value`` is the smallest or the largest of ``grid``.

  A grid of one or two values has no interior: its best is always an edge.
  """
  return value in (min(grid), max(grid))


# ------------------------------------------------------------------- runs ---


def run_task(name: str, mode: str, seed: int, bar: tqdm.tqdm) -> dict[str, Any]:
  settings, task = TASKS[name], build_task(name, mode, seed)
  n, mode_settings = task.n, settings[mode]
  budget = mode_settings['budget_passes'] * n
  every = mode_settings['eval_every_passes'] * n
  fns = shared_grads(task)
  norm = jax.jit(so.global_norm)

  def evaluate(params):
    loss, grads = fns['full'](params)
    return dict(loss=loss, grad_norm=norm(grads))

  result = dict(
    description=task.description,
    n=n,
    budget=budget,
    budget_passes=budget / n,
    eval_every=every,
    methods={},
  )

  def searched(method: str) -> dict[str, Any]:
    """The method's lr x threshold grid (``study.search``) and its best."""
    lrs, scales = method_grid(method, mode_settings)
    ladder = LADDERS[method]
    runs, steppers = {}, {}

    def score(k: int, j: int) -> float:
      lr, scale = ladder[k], scales[j]
      clip = clip_thresholds(method, settings, scale)
      if j not in steppers:  # one compilation per threshold
        steppers[j] = method_steppers(method, n, clip, fns)
      stepper, _ = steppers[j]
      key = run_key(lr, clip)
      bar.set_postfix_str(f'{name}/{method} {key}')
      run = common.run_budgeted(
        stepper(jnp.float32(lr)),
        task.params,
        rng=np.random.default_rng(seed),
        n=n,
        budget=budget,
        every=every,
        evaluate=evaluate,
      ).record()
      final = {
        f'final_{c}': None if run['diverged'] else run['curves'][c][-1]
        for c in ('loss', 'grad_norm')
      }
      runs[key] = dict(
        learning_rate=lr, clip_scale=scale, clip=clip, **run, **final
      )
      bar.update(1)
      return math.inf if run['diverged'] else final['final_loss']

    best = study.search(
      score,
      [ladder.index(lr) for lr in lrs],
      len(scales),
      max_widen=mode_settings['max_widen'],
      bounds=(0, len(ladder) - 1),
    )
    lrs = tuple(ladder[k] for k in best['ks'])
    return best_of(method, runs, lrs, scales, steppers[0][1], settings)

  for method in METHODS:
    result['methods'][method] = searched(method)
  return result


def best_of(
  method: str,
  runs: dict[str, Any],
  lrs: Sequence[float],
  scales: Sequence[float | None],
  config: dict[str, Any],
  settings: dict[str, Any],
) -> dict[str, Any]:
  """The method's entry: its grid, every run, and the best run's results."""
  clipped = method in CLIPPED
  entry = dict(
    config=config,
    lr_grid=list(lrs),
    clip_scale_grid=list(scales) if clipped else None,
    clip_grid=[clip_thresholds(method, settings, s) for s in scales]
    if clipped
    else None,
    n_configs=len(runs),
    **dict.fromkeys(BEST_FIELDS),  # set below if a run is finite
    runs=runs,
    best_picked_by='lowest final full training loss',
  )
  finite = [r for r in runs.values() if not r['diverged']]
  if not finite:
    return entry
  best = min(finite, key=lambda r: r['final_loss'])
  edge_lr = at_edge(best['learning_rate'], lrs)
  edge_clip = clipped and at_edge(best['clip_scale'], scales)
  # The config of the best run: its thresholds, not the last built.
  entry.update(
    config=dict(config, **(best['clip'] or {})),
    best_lr=best['learning_rate'],
    best_clip=best['clip'],
    best_clip_scale=best['clip_scale'],
    edge=edge_lr or edge_clip,
    edge_lr=edge_lr,
    edge_clip=edge_clip,
    **{
      k: best[k]
      for k in (
        'final_loss',
        'final_grad_norm',
        'wall_time_s',
        'steps',
        'oracle_calls',
        'curves',
      )
    },
  )
  return entry


def experiment(args: argparse.Namespace, bar: tqdm.tqdm) -> dict[str, Any]:
  mode = 'quick' if args.quick else 'full'
  bar.reset(
    total=sum(
      math.prod(len(g) for g in method_grid(m, TASKS[t][mode]))
      for t in args.tasks
      for m in METHODS
    )
  )
  results = {name: run_task(name, mode, args.seed, bar) for name in args.tasks}
  losses = spider_losses(results)
  return dict(
    config=dict(
      seed=args.seed,
      tasks={k: TASKS[k] for k in args.tasks},
      oracle_accounting='anchor/snapshot n; spider/sarah/svrg '
      'inner step 2*S2; sgd/adam batch size',
    ),
    tasks=results,
    spider_loses=losses,
    edges=edge_warnings(results),
    summary=format_summary(results, losses),
  )


# ---------------------------------------------------------------- reports ---


def spider_losses(results: dict[str, Any]) -> list[str]:
  """Plain statements of every metric where SPIDER is beaten.

  Each other method at its best lr against SPIDER at its best lr, on final
  training loss, final full-gradient norm and wall time (the last only when
  more than 10% faster).
  """
  out = []
  for name, task in results.items():
    sp = task['methods']['spider']
    if sp['final_loss'] is None:
      out.append(f'{name}: SPIDER diverged at every learning rate.')
      continue
    for method, r in task['methods'].items():
      if method == 'spider' or r['final_loss'] is None:
        continue
      for key, label in (
        ('final_loss', 'final training loss'),
        ('final_grad_norm', 'final full-gradient norm'),
        ('wall_time_s', 'wall time'),
      ):
        # Wall times within 10% are noise on a shared CPU: not listed.
        margin = 0.9 if key == 'wall_time_s' else 1.0
        if r[key] < margin * sp[key]:
          out.append(
            f'{name}: {method} beats SPIDER on {label} '
            f'({r[key]:.4g} vs {sp[key]:.4g}).'
          )
  return out


def format_clip(clip: dict[str, float] | None) -> str:
  """'c0=0.1,c1=0.05', 'c=0.25' or '-' (no threshold)."""
  if not clip:
    return '-'
  return ','.join(
    f'{"c" if k == "clip_norm" else k}={v:g}'
    for k, v in clip.items()
    if v is not None
  )


def edge_warnings(results: dict[str, Any]) -> list[str]:
  """One line per method whose best config sits at an edge of its grid."""
  out = []
  for name, task in results.items():
    for method, r in task['methods'].items():
      if not r['edge']:
        continue
      where = []
      for flag, label, best, grid in (
        ('edge_lr', 'lr', 'best_lr', 'lr_grid'),
        ('edge_clip', 'clip scale', 'best_clip_scale', 'clip_scale_grid'),
      ):
        if r[flag]:
          values = ', '.join(f'{v:g}' for v in r[grid])
          where.append(f'{label} {r[best]:g} of {{{values}}}')
      out.append(f'{name}/{method}: best at a grid edge ({"; ".join(where)})')
  return out


def format_summary(results: dict[str, Any], losses: list[str]) -> str:
  header = (
    f'{"task":<7} {"method":<13} {"best lr":>8} {"clip":<16} '
    f'{"edge":<4} {"cfgs":>4} {"steps":>6} {"oracle calls":>12} '
    f'{"final loss":>11} {"|grad f|":>10} {"wall s":>7}'
  )
  lines, diverged = [header, '-' * len(header)], []
  for name, task in results.items():
    for method, r in task['methods'].items():
      bad = [k for k, run in r['runs'].items() if run['diverged']]
      if bad:
        diverged.append(f'{name}/{method}: diverged at {"; ".join(bad)}')
      if r['final_loss'] is None:
        lines.append(f'{name:<7} {method:<13} diverged at every config')
        continue
      lines.append(
        f'{name:<7} {method:<13} {r["best_lr"]:>8g} '
        f'{format_clip(r["best_clip"]):<16} '
        f'{"yes" if r["edge"] else "no":<4} {r["n_configs"]:>4} '
        f'{r["steps"]:>6} {r["oracle_calls"]:>12} {r["final_loss"]:>11.5f} '
        f'{r["final_grad_norm"]:>10.5f} {r["wall_time_s"]:>7.2f}'
      )
  edges = edge_warnings(results)
  lines += [
    '',
    'Each method at its best config of its grid (lowest final '
    'full training loss); wall time excludes compilation and '
    'evaluation. clip: c0,c1 of SPIDER, c of clip_by_global_norm. '
    'edge: the best lr or clip scale is the smallest or largest of '
    'its grid.',
    *diverged,
    '',
    'WARNING, best at a grid edge (extend the grid):'
    if edges
    else 'Every best config is interior to its grid.',
    *(f'  - {s}' for s in edges),
    '',
    'Where SPIDER loses:' if losses else 'SPIDER loses nowhere in this run.',
    *(f'  - {s}' for s in losses),
  ]
  return '\n'.join(lines)


def plots(results: dict[str, Any], plot_dir: pathlib.Path) -> dict[str, str]:
  out = {}
  for name, task in results['tasks'].items():
    runs = {}
    for method, r in task['methods'].items():
      if r['final_loss'] is not None:
        clip = format_clip(r['best_clip'])
        runs[
          f'{method} (lr={r["best_lr"]:g}{"" if clip == "-" else ", " + clip})'
        ] = r['curves']
    out[name] = common.curves_plot(
      runs,
      task['n'],
      f'{name}: {task["description"]}',
      plot_dir,
      f'train_{name}.png',
    )
  return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs every task and method, prints the summary, writes JSON and PNGs."""
  cli = common.parser('train', __doc__, tasks=list(TASKS))
  cli.add_argument(
    '--seed',
    type=int,
    default=0,
    help='seed of the init and the minibatches (default 0)',
  )
  return common.main(
    cli, argv, experiment, report=lambda r: r['summary'], plots=plots
  )


if __name__ == '__main__':
  main()
