"""Recursive correction (STORM, MARS) against AdamW, SGD and SPIDER, deep nets.

Does the recursive-correction family pay off in deep-learning training? Two
tasks of ``benchmarks/tasks.py`` (nothing is downloaded):

- ``transformer``: a character transformer in pure JAX (2 pre-LayerNorm
  layers, d = 64, 4 heads, GELU MLP, context 64) on the help texts of
  ``pydoc_data.topics`` (433k characters, 102 symbols), split 90/10 by
  position into train and validation text. A sample is a window of 65
  characters at a uniformly random position of the train text; its loss is
  the mean next-character cross-entropy. The losses reported are on 256
  fixed, evenly spaced windows of each split.
- ``cnn``: a CNN with BatchNorm and Dropout on scikit-learn's digits (8x8),
  80/20 stratified train/test split (seed 0). In training mode BatchNorm uses
  the batch's statistics (at both points of a paired evaluation: the same
  batch), the loss returns the updated running statistics as aux and the step
  keeps those of x_k's forward pass; dropout draws from a key per step, the
  same key at both points (a keyword argument: ``so.paired_grad`` shares
  it). The losses reported are in evaluation mode (running statistics, no
  dropout) on the whole train and test splits.

Methods (each clips at global norm 1 where it has a clip):

- ``adamw``: ``optax.chain(optax.clip_by_global_norm(1.0),
  optax.adamw(lr, b1, b2))`` (optax's weight decay, 1e-4); second knob:
  (b1, b2).
- ``sgd``: ``optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(lr,
  momentum))``; second knob: the momentum.
- ``spider``: ``so.spider(lr, c0=1.0)``: an anchor on a batch of S1 samples
  when ``so.is_anchor_step(state, q)`` says so, else a recursive step (one
  minibatch at x_k and x_{k-1}); second knob: q.
- ``spider_adam``: ``optax.chain(so.spider_estimator(),
  optax.clip_by_global_norm(1.0), optax.adam(lr))``, the same anchors;
  second knob: q.
- ``storm``: ``so.storm(lr, beta, c0=1.0)``, exact (paired gradients every
  step); second knob: beta.
- ``mars_exact``: ``so.mars_adamw(lr, b1=, b2=, approx=False)`` (paired);
  second knob: (b1, b2).
- ``mars``: ``so.mars_adamw(lr, b1=, b2=)``, the default approximate MARS
  (one gradient per step; its weight decay, 0 by default, is left at 0);
  second knob: (b1, b2).

Fairness. Every method gets the same budget of gradient evaluations (oracle
calls), counted per sample (per window for the transformer): a plain step
costs its batch size B, a paired step 2B (so exact methods take half as many
steps), a SPIDER anchor S1, a recursive step 2B. Runs go through
``common.run_budgeted``: at a given seed every method draws the same sequence
of minibatches (uniformly, with replacement, from a generator seeded by the
seed; SPIDER's anchor batches come from a second one). Every method is tuned
with the same budget: 3 learning rates (a window of :data:`LADDER`) x 2
values of its second knob, all on seed 0, by the final validation loss; the
chosen configuration then runs on seeds 1 and 2 (seed 0 is the tuning run; a
seed sets the init, the minibatches and the dropout keys). A best learning
rate at an edge of its grid widens the grid by the next ladder value beyond
it (at both knob values), up to ``max_widen`` times; the output flags a best
still at an edge.

Speed (2 CPU cores). The gradients are jitted once per task (plain, anchor
and paired) and shared by every method; each method's update is jitted once
per task (``common.step_pair`` on given gradients), with its numeric
hyperparameters in its state (``optax.inject_hyperparams``), so that all its
configurations share one compilation. The models' params are one flat vector
(``tasks.flattened``), which compiles each update 10-20x faster. ``jax.vmap``
over configurations in one step is checked on each task (``vmap_check`` in
the output: the same params as single runs up to float rounding, and the
time per configuration against a single step); on this CPU it was 1.2x
slower for the transformer and 1.4x faster for the CNN, whose runs take
seconds, so the runs are single. Paired gradients use
``so.paired_grad(..., vectorized=False)`` (see ``PAIRED_VECTORIZED``).

Wall clock. One step of each method (its jitted gradient call and its jitted
update; and each SPIDER anchor) is timed on each task in one interleaved
loop (medians); each run's curve is also given against its estimated wall
time, the steps it took times those medians.

Outputs: a table per task (median and min-max over the seeds of the final
train and validation loss, the chosen configuration, edge flags, steps and
step times), whether MARS (approx) beats the best tuned clip + AdamW by more
than the seed spread, a JSON file (``--out``) and one PNG per task in
``--plot-dir`` (median validation and train loss with the seed range as a
band, against gradient evaluations and against estimated wall time).
``--quick`` (the smoke test) halves the batches, gives a 24-step budget and 2
learning rates x 1 knob value (q = 4 for SPIDER), and uses a 1-layer
transformer.

Run (from the repository root)::

  python -m benchmarks.family --quick   # smoke test, under 2 minutes
  python -m benchmarks.family           # full: 28.5 min on 2 loaded cores
"""

import argparse
import dataclasses
import pathlib
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

import spider_optax as so

if __package__ in (None, ''):  # python benchmarks/family.py
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402
from benchmarks import tasks  # noqa: E402

Model = tuple[Any, Any, jax.Array]  # params, model state, dropout key
Steps = dict[str, Callable[..., Any]]
Results = dict[str, Any]


# --------------------------------------------------------------- methods ---

CLIP = 1.0  # every method's global-norm clip (c0 for SPIDER and STORM)
# Paired gradients as two gradient calls: on this CPU the vmapped pair ran
# 1.05-1.5x slower for both models (measured while writing this script).
PAIRED_VECTORIZED = False
# Learning rates, 1-2-5 per decade: every grid is a window of consecutive
# values.
LADDER = tuple(round(m * 10.0**e, 12) for e in range(-4, 2) for m in (1, 2, 5))


class Method(NamedTuple):
  """An optimizer and how it steps.

  Attributes:
    label: its name in tables and plots.
    factory: its hyperparameters (keywords) -> the optax transformation;
      wrapped in ``optax.inject_hyperparams``.
    knob: the second tuned knob, a key of :data:`KNOBS`.
    paired: every step evaluates its batch at x_k and x_{k-1} (cost 2B).
    anchored: SPIDER: anchors of S1 samples when ``so.is_anchor_step``
      says so, recursive (paired) steps otherwise.
  """

  label: str
  factory: Callable[..., optax.GradientTransformation]
  knob: str
  paired: bool = False
  anchored: bool = False


def _clipped(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  return optax.chain(optax.clip_by_global_norm(CLIP), tx)


METHODS: dict[str, Method] = {
  'adamw': Method(
    'clip + AdamW',
    lambda learning_rate, b1, b2: _clipped(optax.adamw(learning_rate, b1, b2)),
    'betas',
  ),
  'sgd': Method(
    'clip + SGD momentum',
    lambda learning_rate, momentum: _clipped(
      optax.sgd(learning_rate, momentum)
    ),
    'momentum',
  ),
  'spider': Method(
    'SPIDER',
    lambda learning_rate: so.spider(learning_rate, c0=CLIP),
    'q',
    anchored=True,
  ),
  'spider_adam': Method(
    'SPIDER -> Adam',
    lambda learning_rate: optax.chain(
      so.spider_estimator(),
      optax.clip_by_global_norm(CLIP),
      optax.adam(learning_rate),
    ),
    'q',
    anchored=True,
  ),
  'storm': Method(
    'STORM',
    lambda learning_rate, beta: so.storm(learning_rate, beta, c0=CLIP),
    'beta',
    paired=True,
  ),
  'mars_exact': Method(
    'MARS exact',
    lambda learning_rate, b1, b2: so.mars_adamw(
      learning_rate, b1=b1, b2=b2, max_norm=CLIP, approx=False
    ),
    'betas',
    paired=True,
  ),
  'mars': Method(
    'MARS approx',
    lambda learning_rate, b1, b2: so.mars_adamw(
      learning_rate, b1=b1, b2=b2, max_norm=CLIP
    ),
    'betas',
  ),
}

# The second knob's two values (the same on both tasks).
KNOBS: dict[str, tuple[Any, ...]] = {
  'betas': ((0.9, 0.999), (0.95, 0.99)),
  'momentum': (0.9, 0.95),
  'beta': (0.9, 0.99),
  'q': (8, 16),
}


def injected(method: Method, knob_value: Any) -> dict[str, float]:
  """The hyperparameters in the state other than the learning rate."""
  if method.knob == 'betas':
    return {'b1': float(knob_value[0]), 'b2': float(knob_value[1])}
  if method.knob == 'q':  # the host-side anchor schedule's
    return {}
  return {method.knob: float(knob_value)}


def optimizer(
  method: Method, lr: float, knob_value: Any
) -> optax.GradientTransformation:
  """``method`` at this configuration, its hyperparameters in its state."""
  return optax.inject_hyperparams(method.factory)(
    learning_rate=float(lr), **injected(method, knob_value)
  )


# ----------------------------------------------------------------- steps ---


def gradients(task: tasks.DeepTask) -> Steps:
  """The task's gradients, unjitted, shared by every method.

  ``plain(params, model_state, data, ids, key) -> (grads, model_state)``:
  the batch's gradient at x_k (a plain step, or SPIDER's anchor on S1
  samples); ``paired(params, prev_params, model_state, data, ids, key) ->
  ((grads, prev_grads), model_state)``: at x_k and x_{k-1} on the same batch
  and dropout key, with the model state of x_k's forward pass.
  """
  grad = jax.grad(task.loss, has_aux=True)
  paired_grad = so.paired_grad(
    task.loss, has_aux=True, vectorized=PAIRED_VECTORIZED
  )

  def plain(params, model_state, data, ids, key):
    return grad(params, model_state, task.take(data, ids), key=key)

  def paired(params, prev_params, model_state, data, ids, key):
    (grads, new_state), (prev_grads, _) = paired_grad(
      params, prev_params, model_state, task.take(data, ids), key=key
    )
    return (grads, prev_grads), new_state

  return {'plain': plain, 'paired': paired}


def updates(method: Method) -> tuple[common.Step, common.Step]:
  """The method's updates on given gradients, unjitted.

  ``common.step_pair`` with ``common.GIVEN``: ``(None, params, state,
  grads[, prev_grads]) -> (params, state, None)``. The update reads the
  hyperparameters from the state, so one compilation serves every
  configuration.
  """
  tx = optimizer(method, LADDER[0], KNOBS[method.knob][0])
  return common.step_pair(lambda _: tx, *common.GIVEN)


def compose_steps(
  grads: Steps, update_pair: tuple[common.Step, common.Step]
) -> Steps:
  """The method's steps, ``step(model, opt_state, data, ids) -> (model,
  opt_state, None)``: a gradient call and an update, jitted or not as they
  are given. ``plain`` is also SPIDER's anchor; both draw the step's dropout
  key from the model's."""
  plain_update, paired_update = update_pair

  def plain(model, opt_state, data, ids):
    params, model_state, key = model
    key, step_key = jax.random.split(key)
    g, model_state = grads['plain'](params, model_state, data, ids, step_key)
    params, opt_state, _ = plain_update(None, params, opt_state, g)
    return (params, model_state, key), opt_state, None

  def paired(model, opt_state, data, ids):
    params, model_state, key = model
    key, step_key = jax.random.split(key)
    g, model_state = grads['paired'](
      params, so.prev_params(opt_state), model_state, data, ids, step_key
    )
    params, opt_state, _ = paired_update(None, params, opt_state, *g)
    return (params, model_state, key), opt_state, None

  return {'plain': plain, 'paired': paired}


# ----------------------------------------------------------------- plans ---


@dataclasses.dataclass(frozen=True)
class Plan:
  """A task's budgets in one mode.

  Attributes:
    batch: B, the minibatch of every step but SPIDER's anchors.
    anchor_batch: S1, SPIDER's anchor batch.
    budget: gradient evaluations per run (samples).
    checkpoints: evaluations along a run (besides the start).
    lrs: each method's learning-rate grid (a window of LADDER).
    knob_values: how many of the second knob's values are tuned (1 or 2).
    seeds: the seeds of the chosen configuration (the first tunes).
    max_widen: how many times a best at a grid edge may widen the grid.
    timing_rounds: rounds of the interleaved step timing.
  """

  batch: int
  anchor_batch: int
  budget: int
  checkpoints: int
  lrs: dict[str, tuple[float, ...]]
  knob_values: int = 2
  seeds: tuple[int, ...] = (0, 1, 2)
  max_widen: int = 2
  timing_rounds: int = 15

  def cost(self, kind: str) -> int:
    """Gradient evaluations of a step of this kind."""
    return {
      'plain': self.batch,
      'paired': 2 * self.batch,
      'anchor': self.anchor_batch,
    }[kind]

  def size(self, kind: str) -> int:
    """Samples a step of this kind takes."""
    return self.anchor_batch if kind == 'anchor' else self.batch


def window(center: float, width: int = 3) -> tuple[float, ...]:
  """``width`` consecutive LADDER values around ``center``."""
  i = LADDER.index(center) - (width - 1) // 2
  return LADDER[i : i + width]


# Each method's learning rates: the 3 LADDER values around its centre on
# (transformer, cnn), placed by a coarse sweep on seed 0 so that every best
# is interior (``edge`` in the output says where it is not).
LR_CENTRES: dict[str, tuple[float, float]] = {
  'adamw': (2e-3, 2e-3),
  'sgd': (5e-2, 5e-2),
  'spider': (0.2, 5e-2),
  'spider_adam': (1e-3, 2e-3),
  'storm': (0.1, 0.2),
  'mars_exact': (5e-3, 5e-3),
  'mars': (5e-3, 5e-3),
}


def lr_grids(task: int) -> dict[str, tuple[float, ...]]:
  """Each method's grid on task 0 (transformer) or 1 (cnn)."""
  return {m: window(centres[task]) for m, centres in LR_CENTRES.items()}


PLANS: dict[str, dict[str, Plan]] = {
  'full': {  # B, S1, budget (oracle calls), checkpoints, lr grids
    'transformer': Plan(16, 64, 320 * 16, 8, lr_grids(0)),
    'cnn': Plan(32, 128, 225 * 32, 8, lr_grids(1)),  # 5 epochs of 1437
  },
}
PLANS['quick'] = {
  name: dataclasses.replace(
    plan,
    batch=plan.batch // 2,
    anchor_batch=plan.anchor_batch // 2,
    budget=24 * plan.batch // 2,
    checkpoints=3,
    knob_values=1,
    max_widen=0,
    timing_rounds=3,
    lrs={k: v[:2] for k, v in plan.lrs.items()},
  )
  for name, plan in PLANS['full'].items()
}
QUICK_Q = 4  # SPIDER's anchor period in quick mode (the budget is 24 steps)


def knob_grid(method: Method, mode: str, plan: Plan) -> tuple[Any, ...]:
  """The second knob's values tuned in this mode."""
  if mode == 'quick' and method.knob == 'q':
    return (QUICK_Q,)
  return KNOBS[method.knob][: plan.knob_values]


# ------------------------------------------------------------------ runs ---


class Runner:
  """One task's runs, with its jitted gradients (shared by every method)."""

  def __init__(self, task: tasks.DeepTask, plan: Plan):
    self.task, self.plan = task, plan
    self.grads = {k: jax.jit(f) for k, f in gradients(task).items()}

  def model(self, seed: int) -> Model:
    """The initial params, model state and dropout key at ``seed``."""
    params, model_state = self.task.init(seed)
    return params, model_state, jax.random.key(seed)

  def stepper(
    self, method: Method, steps: Steps, lr: float, knob_value: Any, seed: int
  ) -> common.Stepper:
    """The method at one configuration, for ``common.run_budgeted``."""
    plan, data, n = self.plan, self.task.data, self.task.n_train
    kind = 'paired' if method.paired or method.anchored else 'plain'
    anchors = {}
    if method.anchored:
      rng = np.random.default_rng([seed, 1])  # the anchor batches
      anchors = dict(
        anchor=lambda m, s: steps['plain'](
          m, s, data, rng.integers(0, n, plan.anchor_batch).astype(np.int32)
        ),
        anchor_cost=plan.anchor_batch,
        is_anchor=common.spider_schedule(knob_value),
      )
    return common.Stepper(
      init=lambda m: optimizer(method, lr, knob_value).init(m[0]),
      step=lambda m, s, idx: steps[kind](m, s, data, idx),
      batch_size=plan.batch,
      cost=plan.cost(kind),
      **anchors,
    )

  def run(
    self, method: Method, steps: Steps, lr: float, knob_value: Any, seed: int
  ) -> Results:
    """One run at one configuration and seed, within the budget."""
    plan = self.plan
    run = common.run_budgeted(
      self.stepper(method, steps, lr, knob_value, seed),
      self.model(seed),
      rng=np.random.default_rng(seed),
      n=self.task.n_train,
      budget=plan.budget,
      every=plan.budget // plan.checkpoints,
      evaluate=lambda m: self.task.evaluate(m[0], m[1]),
      compile_first=False,  # the steps donate their inputs
    ).record()
    curves = run['curves']
    curves['anchors'] = [
      sum(a < k for a in run['anchors']) for k in curves['steps']
    ]
    final = {
      f'final_{key}': None if run['diverged'] else curves[key][-1]
      for key in ('train_loss', 'val_loss')
    }
    return dict(learning_rate=lr, knob=knob_value, seed=seed, **run, **final)


def config_key(method: Method, lr: float, knob_value: Any) -> str:
  """'lr=0.005,b1=0.9,b2=0.999' or 'lr=0.2,q=8': a run's key in the JSON."""
  knob = (
    injected(method, knob_value) if method.knob != 'q' else {'q': knob_value}
  )
  return ','.join([f'lr={lr:g}'] + [f'{k}={v:g}' for k, v in knob.items()])


def at_edge(value: float, grid: Sequence[float]) -> bool:
  """Whether ``value`` is the smallest or largest of ``grid`` (always, for a
  grid of fewer than 3 values)."""
  return len(grid) < 3 or value in (min(grid), max(grid))


def best_run(runs: dict[str, Results]) -> Results | None:
  """The run with the lowest final validation loss (diverged ones never)."""
  finite = [r for r in runs.values() if not r['diverged']]
  return min(finite, key=lambda r: r['final_val_loss']) if finite else None


def widen(lrs: list[float], best: float) -> float | None:
  """The next ladder value beyond the edge ``best`` of ``lrs`` (None at the
  end of the ladder)."""
  i = LADDER.index(best) + (1 if best == max(lrs) else -1)
  return LADDER[i] if 0 <= i < len(LADDER) else None


def tune(
  runner: Runner,
  name: str,
  steps: Steps,
  mode: str,
  bar: tqdm.tqdm,
) -> Results:
  """Every configuration on the first seed, the grid widened at an edge."""
  method, plan = METHODS[name], runner.plan
  lrs, knobs = list(plan.lrs[name]), knob_grid(method, mode, plan)
  runs: dict[str, Results] = {}

  def run_lr(lr):
    for value in knobs:
      key = config_key(method, lr, value)
      bar.set_postfix_str(f'{runner.task.name}/{name} {key}')
      runs[key] = runner.run(method, steps, lr, value, plan.seeds[0])
      bar.update(1)

  for lr in lrs:
    run_lr(lr)
  widened = 0
  while (best := best_run(runs)) is not None and widened < plan.max_widen:
    new = widen(lrs, best['learning_rate'])
    if not at_edge(best['learning_rate'], lrs) or new is None:
      break
    bar.total += len(knobs)
    lrs.append(new)
    run_lr(new)
    widened += 1
  return dict(
    lr_grid=sorted(lrs),
    knob=method.knob,
    knob_grid=list(knobs),
    n_configs=len(runs),
    widened=widened,
    runs=runs,
    best=None
    if best is None
    else config_key(method, best['learning_rate'], best['knob']),
    edge=best is None or at_edge(best['learning_rate'], lrs),
  )


def seed_summary(seeds: dict[str, Results]) -> Results:
  """Median and min-max over the seeds of the final losses (a diverged seed
  counts as +inf, as in ``common.median``)."""
  out = {}
  for metric in ('train_loss', 'val_loss'):
    values = [r[f'final_{metric}'] for r in seeds.values()]
    finite = [v for v in values if v is not None]
    out[metric] = dict(
      median=common.finite_or_none(common.median(values)),
      min=min(finite) if finite else None,
      max=max(finite) if len(finite) == len(values) else None,
    )
  return out


def run_method(
  runner: Runner, name: str, mode: str, bar: tqdm.tqdm
) -> tuple[Results, Steps]:
  """A method on a task: tuning, then its best configuration on every seed.

  Returns its results and its jitted steps (for the timing)."""
  method = METHODS[name]
  steps = compose_steps(
    runner.grads,
    tuple(jax.jit(f, donate_argnums=(1, 2)) for f in updates(method)),
  )
  tuning = tune(runner, name, steps, mode, bar)
  best = tuning['runs'].get(tuning['best'])
  seeds = {}
  if best is not None:
    seeds[str(best['seed'])] = best
    for seed in runner.plan.seeds[1:]:
      bar.set_postfix_str(f'{runner.task.name}/{name} seed {seed}')
      seeds[str(seed)] = runner.run(
        method, steps, best['learning_rate'], best['knob'], seed
      )
      bar.update(1)
  return dict(
    label=method.label, tuning=tuning, seeds=seeds, final=seed_summary(seeds)
  ), steps


# ------------------------------------------------------------ wall clock ---


def best_config(method: Method, result: Results, plan: Plan, name: str):
  """The chosen (lr, knob value), or the grid's first if every run failed."""
  best = result['tuning']['runs'].get(result['tuning']['best'])
  if best is None:
    return plan.lrs[name][0], KNOBS[method.knob][0]
  return best['learning_rate'], best['knob']


def step_times(
  runner: Runner, results: dict[str, Results], steps: dict[str, Steps]
) -> dict[str, dict[str, float]]:
  """Median seconds of one step of each method (and anchor) at its chosen
  configuration, all timed in one interleaved loop (a first round warms
  up)."""
  plan, data = runner.plan, runner.task.data
  ids = np.arange(max(plan.batch, plan.anchor_batch), dtype=np.int32)
  jobs, carries = [], {}
  for name, result in results.items():
    method = METHODS[name]
    model = runner.model(0)
    lr, value = best_config(method, result, plan, name)
    carries[name] = model, optimizer(method, lr, value).init(model[0])
    kinds = (
      ('anchor', 'paired')
      if method.anchored
      else ('paired',)
      if method.paired
      else ('plain',)
    )
    jobs += [(name, kind) for kind in kinds]
  times: dict[str, dict[str, list[float]]] = {}
  for r in range(plan.timing_rounds + 1):
    for name, kind in jobs:
      step = steps[name]['paired' if kind == 'paired' else 'plain']
      clock = time.perf_counter()
      out = jax.block_until_ready(
        step(*carries[name], data, ids[: plan.size(kind)])
      )
      if r:
        times.setdefault(name, {}).setdefault(kind, []).append(
          time.perf_counter() - clock
        )
      carries[name] = out[:2]
  return {
    name: {kind: float(np.median(v)) for kind, v in kinds.items()}
    for name, kinds in times.items()
  }


def wall_estimate(
  curves: dict[str, list[float]], times: dict[str, float]
) -> list[float]:
  """Estimated seconds at each checkpoint: steps x median step times."""
  step = times.get('paired', times.get('plain', 0.0))
  anchor = times.get('anchor', 0.0)
  return [
    a * anchor + (k - a) * step
    for k, a in zip(curves['steps'], curves['anchors'])
  ]


def vmap_check(
  runner: Runner, name: str, *, n_steps: int = 3, rounds: int = 5
) -> Results:
  """One step ``jax.vmap``-ed over the lr grid against single steps.

  Takes ``n_steps`` steps at each learning rate of the method's grid (the
  lanes; the first knob value, seed 0, one minibatch), as single steps and as
  one vmapped, jitted step over the stacked states. Returns the largest
  difference of the params and how far they moved, and the median time per
  lane of a vmapped step against a single one.
  """
  method, plan, data = METHODS[name], runner.plan, runner.task.data
  lrs, value = plan.lrs[name], KNOBS[method.knob][0]
  kind = 'paired' if method.paired else 'plain'
  single = compose_steps(
    runner.grads, tuple(jax.jit(f) for f in updates(method))
  )[kind]
  vmapped = jax.jit(
    jax.vmap(
      compose_steps(gradients(runner.task), updates(method))[kind],
      in_axes=(0, 0, None, None),
    )
  )
  model = runner.model(0)
  lanes = [(model, optimizer(method, lr, value).init(model[0])) for lr in lrs]
  stacked = jax.tree.map(lambda *x: jnp.stack(x), *lanes)
  ids = np.random.default_rng(0).integers(0, runner.task.n_train, plan.batch)
  single_s, vmap_s = [], []
  for i in range(max(n_steps, rounds + 1)):
    clock = time.perf_counter()
    stepped = [
      jax.block_until_ready(single(*lane, data, ids)[:2]) for lane in lanes
    ]
    middle = time.perf_counter()
    stacked_next = jax.block_until_ready(vmapped(*stacked, data, ids)[:2])
    if i:  # the first call compiles
      single_s.append((middle - clock) / len(lrs))
      vmap_s.append((time.perf_counter() - middle) / len(lrs))
    if i < n_steps:
      lanes, stacked = stepped, stacked_next
  singles = jnp.stack([lane[0][0] for lane in lanes])
  return dict(
    method=name,
    lanes=len(lrs),
    steps=n_steps,
    max_abs_param_diff=float(jnp.max(jnp.abs(singles - stacked[0][0]))),
    max_abs_param_change=float(jnp.max(jnp.abs(singles - model[0]))),
    single_step_s=float(np.median(single_s)),
    vmapped_step_per_lane_s=float(np.median(vmap_s)),
  )


# ------------------------------------------------------------ experiment ---

TASKS: dict[str, Callable[[str], tasks.DeepTask]] = {
  'transformer': lambda mode: tasks.transformer_task(
    layers=1 if mode == 'quick' else 2
  ),
  'cnn': lambda mode: tasks.cnn_task(),
}


def run_task(name: str, mode: str, bar: tqdm.tqdm) -> Results:
  """Every method on one task, the step timing and the vmap check."""
  task, plan = TASKS[name](mode), PLANS[mode][name]
  runner = Runner(task, plan)
  methods, steps = {}, {}
  for method in METHODS:
    methods[method], steps[method] = run_method(runner, method, mode, bar)
  bar.set_postfix_str(f'{name}: timing')
  times = step_times(runner, methods, steps)
  for method, result in methods.items():
    result['step_time_s'] = times[method]
    for run in result['seeds'].values():
      curves = run['curves']
      curves['wall_estimate_s'] = wall_estimate(curves, times[method])
  check = vmap_check(runner, 'mars_exact')
  bar.update(1)
  result = dict(
    description=task.description,
    plan=dataclasses.asdict(plan),
    methods=methods,
    vmap_check=check,
  )
  result['table'] = table_rows(result)
  return result


def runs_per_task(mode: str, name: str) -> int:
  """Runs a task takes before any widening (+1 for the timing)."""
  plan = PLANS[mode][name]
  return 1 + sum(
    len(plan.lrs[m]) * len(knob_grid(METHODS[m], mode, plan))
    + len(plan.seeds)
    - 1
    for m in METHODS
  )


def experiment(options: argparse.Namespace, bar: tqdm.tqdm) -> Results:
  mode = 'quick' if options.quick else 'full'
  bar.reset(total=sum(runs_per_task(mode, t) for t in options.tasks))
  results = {name: run_task(name, mode, bar) for name in options.tasks}
  goal = mars_goal(results)
  return dict(
    config=dict(
      methods={k: m.label for k, m in METHODS.items()},
      knobs=KNOBS,
      ladder=LADDER,
      clip=CLIP,
      paired_vectorized=PAIRED_VECTORIZED,
      accounting='gradient evaluations (oracle calls) per sample: plain '
      'step B, paired step 2B, SPIDER anchor S1, recursive step 2B',
      selection='lowest final validation loss on seed 0',
    ),
    tasks=results,
    mars_goal=goal,
    summary=format_summary(results, goal),
  )


# --------------------------------------------------------------- reports ---


def table_rows(task: Results) -> list[Results]:
  """One row per method: the chosen configuration and the seed statistics."""
  rows = []
  for name, r in task['methods'].items():
    final, tuning = r['final'], r['tuning']
    any_seed = next(iter(r['seeds'].values()), {})
    rows.append(
      dict(
        method=name,
        label=r['label'],
        config=tuning['best'],
        edge=tuning['edge'],
        n_configs=tuning['n_configs'],
        steps=any_seed.get('steps'),
        oracle_calls=any_seed.get('oracle_calls'),
        train_median=final['train_loss']['median'],
        train_min=final['train_loss']['min'],
        train_max=final['train_loss']['max'],
        val_median=final['val_loss']['median'],
        val_min=final['val_loss']['min'],
        val_max=final['val_loss']['max'],
        step_ms={k: 1e3 * v for k, v in r['step_time_s'].items()},
        wall_estimate_s=(
          any_seed['curves']['wall_estimate_s'][-1] if any_seed else None
        ),
      )
    )
  return rows


def mars_goal(results: Results) -> Results:
  """Whether MARS (approx) beats the best tuned clip + AdamW on validation
  loss by more than the seed spread (the larger of their max - min)."""
  out = {}
  for name, task in results.items():
    rows = {row['method']: row for row in task['table']}
    mars, adamw = rows['mars'], rows['adamw']
    if None in (mars['val_max'], adamw['val_max']):
      out[name] = dict(met=False, reason='a seed diverged')
      continue
    spread = max(
      mars['val_max'] - mars['val_min'], adamw['val_max'] - adamw['val_min']
    )
    gap = adamw['val_median'] - mars['val_median']
    out[name] = dict(
      met=bool(gap > spread),
      gap=gap,
      spread=spread,
      mars_val_median=mars['val_median'],
      adamw_val_median=adamw['val_median'],
    )
  return out


def _range(median: float | None, lo: float | None, hi: float | None) -> str:
  if median is None:
    return 'diverged'
  return (
    f'{median:.4f} ({lo:.4f}-{hi:.4f})'
    if hi is not None
    else (f'{median:.4f} (a seed diverged)')
  )


def format_table(task: Results) -> list[str]:
  header = (
    f'{"method":<20} {"config":<26} {"edge":<4} {"cfgs":>4} '
    f'{"steps":>5} {"val loss (min-max)":<26} '
    f'{"train loss (min-max)":<26} {"ms/step":>13} {"est s":>6}'
  )
  lines = [header, '-' * len(header)]
  for row in task['table']:
    ms = '/'.join(
      f'{row["step_ms"][k]:.1f}'
      for k in ('anchor', 'paired', 'plain')
      if k in row['step_ms']
    )
    est = row['wall_estimate_s']
    lines.append(
      f'{row["label"]:<20} {row["config"] or "-":<26} '
      f'{"yes" if row["edge"] else "no":<4} {row["n_configs"]:>4} '
      f'{row["steps"] or 0:>5} '
      f'{_range(row["val_median"], row["val_min"], row["val_max"]):<26} '
      f'{_range(row["train_median"], row["train_min"], row["train_max"]):<26}'
      f' {ms:>13} {est if est is None else round(est, 1):>6}'
    )
  return lines


def format_summary(results: Results, goal: Results) -> str:
  lines = []
  for name, task in results.items():
    check = task['vmap_check']
    lines += [
      f'== {name}: {task["description"]}',
      f'budget {task["plan"]["budget"]} gradient evaluations, batch '
      f'{task["plan"]["batch"]}, SPIDER anchors '
      f'{task["plan"]["anchor_batch"]}; medians over seeds '
      f'{task["plan"]["seeds"]}',
      *format_table(task),
    ]
    edges = [row['label'] for row in task['table'] if row['edge']]
    lines.append(
      'WARNING, best lr at a grid edge: ' + ', '.join(edges)
      if edges
      else 'Every best lr is interior to its grid.'
    )
    lines.append(
      f'vmap over {check["lanes"]} configurations ({check["method"]}): max '
      f'|param diff| {check["max_abs_param_diff"]:.2g} after '
      f'{check["steps"]} steps (params moved up to '
      f'{check["max_abs_param_change"]:.2g}); '
      f'{1e3 * check["vmapped_step_per_lane_s"]:.1f}'
      f' ms per lane against {1e3 * check["single_step_s"]:.1f} ms single.'
    )
    g = goal[name]
    lines.append(
      'MARS approx vs clip + AdamW: '
      + (
        f'median val {g["mars_val_median"]:.4f} vs '
        f'{g["adamw_val_median"]:.4f}, gap {g["gap"]:+.4f}, seed spread '
        f'{g["spread"]:.4f}: goal {"MET" if g["met"] else "NOT met"}'
        if 'gap' in g
        else f'goal not met ({g["reason"]})'
      )
    )
    lines.append('')
  return '\n'.join(lines)


def report(results: Results) -> str:
  return results['summary']


def plots(results: Results, plot_dir: pathlib.Path) -> dict[str, str]:
  """Per task: median val and train loss (seed range as a band) against
  gradient evaluations, and median val loss against estimated wall time."""
  plt = common.pyplot()
  out = {}
  for name, task in results['tasks'].items():
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    for r in task['methods'].values():
      seeds = list(r['seeds'].values())
      if not seeds or any(s['diverged'] for s in seeds):
        continue
      label = f'{r["label"]} ({r["tuning"]["best"]})'
      for ax, (x, y) in zip(
        axes,
        (
          ('oracle_calls', 'val_loss'),
          ('oracle_calls', 'train_loss'),
          ('wall_estimate_s', 'val_loss'),
        ),
      ):
        xs = np.asarray(seeds[0]['curves'][x])
        ys = np.asarray([s['curves'][y] for s in seeds])
        (line,) = ax.plot(xs, np.median(ys, 0), label=label)
        ax.fill_between(
          xs, ys.min(0), ys.max(0), alpha=0.2, color=line.get_color()
        )
    unit = 'windows' if name == 'transformer' else 'images'
    for ax, (x, y) in zip(
      axes,
      (
        (f'gradient evaluations ({unit})', 'validation loss'),
        (f'gradient evaluations ({unit})', 'training loss'),
        ('estimated wall time [s] (median step times)', 'validation loss'),
      ),
    ):
      common.label_axes(ax, x, y, yscale='log', legend=ax is axes[0])
    fig.suptitle(
      f'{name}: {task["description"]}\nmedian over seeds '
      f'{task["plan"]["seeds"]}, band: min-max',
      fontsize=9,
    )
    out[name] = common.save_plot(fig, plot_dir, f'family_{name}.png')
  return out


def main(argv: Sequence[str] | None = None) -> Results:
  """Runs every task and method, prints the tables, writes JSON and PNGs."""
  return common.script(
    'family', __doc__, argv, experiment, report, plots, tasks=list(TASKS)
  )


if __name__ == '__main__':
  main()
