"""The study harness: tuned, paired-seed comparisons of optimizers.

A task is a model, a data source and a loss (``tasks.DeepTask``); an arm is
an optimizer with its tuning grid (:class:`Arm`); a :class:`Protocol` fixes
the budgets and seeds. :func:`run_task` then, on one task:

1. **Schedules as users run them.** Every run warms up linearly over the
   first ``warmup`` of its steps, then decays by a cosine to 0 at the end of
   its budget (``optax.warmup_cosine_decay_schedule``; its value at each step
   is passed to the optimizer as its learning rate, so one compilation
   serves every configuration and budget).
2. **Tuning apart from evaluation.** Each arm runs every configuration of its
   grid on the tuning seeds (never used for evaluation): learning rates on a
   sqrt(2) ladder (``lr = 1e-3 * 2**(k/2)``), ``lrs`` values around its
   centre, times the values of its second knob (its betas or momentum). The
   configuration with the lowest mean final validation loss wins; while its
   learning rate is at an edge of the grid, the grid grows by the next ladder
   value beyond it (up to ``max_widen`` times; the output flags a best still
   at an edge).
3. **Paired evaluation.** The chosen configuration runs on every evaluation
   seed. A seed fixes the init, the minibatch order and the dropout keys, for
   every arm alike.
4. **Budgets.** The arms of ``curve_arms`` also run at the ``curve_budgets``
   multiples of the main budget, each with its own full schedule and its
   learning rate re-tuned (the knob kept): the baseline curves from which
   :mod:`benchmarks.stats` reads the speedup at equal loss. The arms of
   ``long_arms`` are also tuned and evaluated at ``long_budget`` times the
   main budget, to compare them there with their bases.
5. **Step times.** One step of every arm at its chosen configuration, timed
   in one interleaved loop (medians), gives the step-time ratios and the
   wall-clock speedups.

Gradient evaluations are counted per sample: a plain step costs its batch
B, a paired step (both points of ``so.paired_grad``) 2B, so paired arms take
half as many steps.
"""

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

import spider_optax as so
from benchmarks import stats
from benchmarks import tasks

Results = dict[str, Any]
Knob = dict[str, float]


def ladder(k: int) -> float:
  """The k-th learning rate of the sqrt(2) ladder, 1e-3 * 2**(k/2)."""
  return 1e-3 * 2 ** (k / 2)


@dataclasses.dataclass(frozen=True)
class Arm:
  """An optimizer and how it is tuned.

  Attributes:
    label: its name in tables and plots.
    factory: ``factory(task, learning_rate, **knob) -> tx``; called inside
      the jitted step with traced hyperparameters.
    lr_centre: the ladder index its first learning-rate grid is centred on.
    knobs: the values of its second knob, each a dict of keywords.
    base: the arm it adds something to (its base optimizer), if any.
    control: its gamma = 0 control arm, if any.
    paired: each step evaluates its minibatch at x_k and x_{k-1} (cost 2B).
  """

  label: str
  factory: Callable[..., optax.GradientTransformation]
  lr_centre: int
  knobs: tuple[Knob, ...]
  base: str | None = None
  control: str | None = None
  paired: bool = False


@dataclasses.dataclass(frozen=True)
class Protocol:
  """Budgets, seeds and grids of one task.

  Attributes:
    batch: B, the minibatch of every step.
    budget: the main budget in gradient evaluations.
    tuning_seeds: the seeds the grids run on.
    eval_seeds: the seeds the chosen configurations run on.
    lrs: the learning rates of a first grid (consecutive ladder values).
    max_widen: how many times a best at an edge may widen the grid.
    warmup: the fraction of each run's steps spent warming up.
    checkpoints: validation losses along an evaluation run (besides the
      start); a tuning run evaluates at its end only.
    reference: the arm every other is compared with (clip + AdamW).
    curve_arms: the arms also run at ``curve_budgets`` (the reference first).
    curve_budgets: multiples of ``budget`` (1 included).
    long_arms: arms also tuned (learning rate only) and evaluated at
      ``long_budget`` times the budget; each is compared there with its base
      and its control (each an arm of ``long_arms`` too, or of
      ``curve_arms``).
    long_budget: that multiple (in ``curve_budgets`` for the bases).
    timing_rounds: rounds of the interleaved step timing.
  """

  batch: int
  budget: int
  tuning_seeds: tuple[int, ...]
  eval_seeds: tuple[int, ...]
  lrs: int = 3
  max_widen: int = 3
  warmup: float = 0.05
  checkpoints: int = 6
  reference: str = 'adamw'
  curve_arms: tuple[str, ...] = ('adamw',)
  curve_budgets: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
  long_arms: tuple[str, ...] = ()
  long_budget: float = 2.0
  timing_rounds: int = 20


# ------------------------------------------------------------------ runs ---


class Trainer:
  """The runs of one task: one jitted step per arm, shared by its runs."""

  def __init__(self, task: tasks.DeepTask, protocol: Protocol):
    self.task, self.protocol = task, protocol
    self._steps: dict[str, Callable[..., Any]] = {}

  def step_fn(self, name: str, arm: Arm) -> Callable[..., Any]:
    """``step(hp, params, model_state, opt_state, data, ids, key, k)``."""
    if name in self._steps:
      return self._steps[name]
    task = self.task
    value_and_grad = jax.value_and_grad(task.loss, has_aux=True)
    paired_grad = so.paired_grad(task.loss, has_aux=True)

    def step(hp, params, model_state, opt_state, data, ids, key, k):
      tx = arm.factory(task, **hp)
      batch, key = task.take(data, ids), jax.random.fold_in(key, k)
      if arm.paired:
        (grads, new_state), (prev, _) = paired_grad(
          params, so.prev_params(opt_state), model_state, batch, key=key
        )
        loss = jnp.nan
        extra = dict(prev_grads=prev)
      else:
        (loss, new_state), grads = value_and_grad(
          params, model_state, batch, key=key
        )
        extra = {}
      updates, opt_state = tx.update(grads, opt_state, params, **extra)
      return optax.apply_updates(params, updates), new_state, opt_state, loss

    self._steps[name] = jax.jit(step, donate_argnums=(1, 3))
    return self._steps[name]

  def cost(self, arm: Arm) -> int:
    """Gradient evaluations of one step of ``arm``: B, or 2B if paired."""
    return self.protocol.batch * (2 if arm.paired else 1)

  def steps_of(self, arm: Arm, budget: float) -> int:
    return int(budget // self.cost(arm))

  def start(self, arm: Arm, lr: float, knob: Knob, seed: int):
    params, model_state = self.task.init(seed)
    params = jax.tree.map(jnp.asarray, params)
    tx = arm.factory(self.task, learning_rate=lr, **knob)
    return params, model_state, tx.init(params)

  def run(
    self,
    name: str,
    arm: Arm,
    k_lr: int,
    knob: Knob,
    seed: int,
    budget: float,
    *,
    checkpoints: int = 1,
  ) -> Results:
    """One run: its final validation loss, and its curve at ``checkpoints``
    evenly spaced steps (inf once a loss is not finite)."""
    p, task = self.protocol, self.task
    n_steps = self.steps_of(arm, budget)
    lr = ladder(k_lr)
    schedule = optax.warmup_cosine_decay_schedule(
      0.0, lr, max(1, round(p.warmup * n_steps)), n_steps, 0.0
    )
    lrs = np.asarray(jax.vmap(schedule)(jnp.arange(n_steps)), np.float32)
    step = self.step_fn(name, arm)
    params, model_state, opt_state = self.start(arm, lr, knob, seed)
    rng, key = np.random.default_rng(seed), jax.random.key(seed)
    marks = {round(n_steps * (i + 1) / checkpoints) for i in range(checkpoints)}
    curve: dict[str, list[float]] = dict(steps=[], grad_evals=[], val_loss=[])
    cost = self.cost(arm)
    losses = []
    for k in range(n_steps):
      ids = rng.integers(0, task.n_train, p.batch).astype(np.int32)
      params, model_state, opt_state, loss = step(
        hyperparams(lrs[k], knob),
        params,
        model_state,
        opt_state,
        task.data,
        ids,
        key,
        k,
      )
      losses.append(loss)
      if k + 1 in marks:
        val = float(task.evaluate(params, model_state)['val_loss'])
        curve['steps'].append(k + 1)
        curve['grad_evals'].append((k + 1) * cost)
        curve['val_loss'].append(val if math.isfinite(val) else math.inf)
        if not math.isfinite(val):
          break
    tail = [float(v) for v in losses[-max(1, n_steps // 10) :]]
    tail = [v for v in tail if math.isfinite(v)]  # none for paired arms
    return dict(
      seed=seed,
      lr=lr,
      knob=knob,
      steps=n_steps,
      grad_evals=n_steps * cost,
      final_val_loss=curve['val_loss'][-1] if curve['val_loss'] else math.inf,
      train_loss_tail=float(np.mean(tail)) if tail else None,
      curve=curve,
    )


def hyperparams(lr: float, knob: Knob) -> dict[str, np.float32]:
  """A step's ``hp``: the learning rate and the knob, as float32 scalars (one
  compilation serves every value)."""
  return dict(
    learning_rate=np.float32(lr),
    **{key: np.float32(v) for key, v in knob.items()},
  )


# ---------------------------------------------------------------- tuning ---


def config_key(k_lr: int, knob: Knob) -> str:
  return ','.join(
    [f'lr={ladder(k_lr):.3g}'] + [f'{n}={v:g}' for n, v in knob.items()]
  )


def search(
  score: Callable[[int, int], float],
  ks: Sequence[int],
  n_knobs: int,
  *,
  max_widen: int,
  bounds: tuple[int, int] | None = None,
) -> Results:
  """The best of a grid of ladder indices ``ks`` times ``n_knobs`` knob
  values, widened while its learning rate is at an edge.

  Args:
    score: ``score(k, j)``, the loss of ladder value ``k`` with knob ``j``
      (inf when it diverged); lower is better.
    ks: the first ladder indices.
    n_knobs: the number of knob values, tried at every index.
    max_widen: at most this many indices added, each the next one beyond the
      edge where the best sits.
    bounds: the lowest and highest index the ladder has, if it ends.

  Returns:
    ``k`` and ``j`` of the best, its ``score``, ``edge`` (whether its index
    is still the smallest or largest tried), ``ks`` (every index tried, in
    order), ``scores`` keyed by ``(k, j)`` and ``widened``.
  """
  ks = sorted(ks)
  scores = {(k, j): score(k, j) for k in ks for j in range(n_knobs)}
  lo, hi = bounds or (-math.inf, math.inf)
  widened = 0
  while True:
    (k, j), best = min(scores.items(), key=lambda kv: kv[1])
    edge = k in (ks[0], ks[-1])
    new = k + (1 if k == ks[-1] else -1)
    if (
      not edge
      or widened >= max_widen
      or not math.isfinite(best)
      or not lo <= new <= hi
    ):
      break
    ks = sorted([*ks, new])
    scores.update({(new, i): score(new, i) for i in range(n_knobs)})
    widened += 1
  return dict(
    k=k, j=j, score=best, edge=edge, ks=ks, scores=scores, widened=widened
  )


def tune(
  trainer: Trainer,
  name: str,
  arm: Arm,
  budget: float,
  *,
  centre: int,
  knobs: Sequence[Knob],
  bar: tqdm.tqdm,
) -> Results:
  """The grid on the tuning seeds (:func:`search`)."""
  p = trainer.protocol
  ks = range(centre - (p.lrs - 1) // 2, centre + p.lrs // 2 + 1)
  runs: dict[str, list[float]] = {}

  def score(k: int, j: int) -> float:
    if k not in ks and j == 0:  # widening: more runs than planned
      bar.total += len(knobs) * len(p.tuning_seeds)
    finals = []
    for seed in p.tuning_seeds:
      bar.set_postfix_str(f'{name} tune {config_key(k, knobs[j])} s{seed}')
      r = trainer.run(name, arm, k, knobs[j], seed, budget)
      finals.append(r['final_val_loss'])
      bar.update(1)
    runs[config_key(k, knobs[j])] = finals
    return float(np.mean(finals))

  best = search(score, ks, len(knobs), max_widen=p.max_widen)
  k_best, knob = best['k'], dict(knobs[best['j']])
  return dict(
    k_lr=k_best,
    lr=ladder(k_best),
    knob=knob,
    config=config_key(k_best, knob),
    score=best['score'],
    edge=best['edge'],
    lr_grid=[ladder(k) for k in best['ks']],
    n_configs=len(best['scores']),
    widened=best['widened'],
    runs=runs,
  )


def evaluate(
  trainer: Trainer,
  name: str,
  arm: Arm,
  tuned: Results,
  budget: float,
  bar: tqdm.tqdm,
) -> Results:
  """The tuned configuration on every evaluation seed."""
  p, runs = trainer.protocol, []
  for seed in p.eval_seeds:
    bar.set_postfix_str(f'{name} eval {tuned["config"]} s{seed}')
    runs.append(
      trainer.run(
        name,
        arm,
        tuned['k_lr'],
        tuned['knob'],
        seed,
        budget,
        checkpoints=p.checkpoints,
      )
    )
    bar.update(1)
  finals = [r['final_val_loss'] for r in runs]
  return dict(
    tuning=tuned,
    runs=runs,
    finals=finals,
    mean=float(np.mean(finals)),
    sd=float(np.std(finals, ddof=1)),
    budget=budget,
  )


def tune_and_evaluate(
  trainer, name, arm, budget, bar, *, centre=None, knobs=None
) -> Results:
  tuned = tune(
    trainer,
    name,
    arm,
    budget,
    centre=arm.lr_centre if centre is None else centre,
    knobs=arm.knobs if knobs is None else knobs,
    bar=bar,
  )
  return evaluate(trainer, name, arm, tuned, budget, bar)


# ---------------------------------------------------------------- timing ---


def step_times(
  trainer: Trainer, arms: dict[str, Arm], chosen: dict[str, Results]
) -> dict[str, float]:
  """Median seconds per step of each arm at its chosen configuration, all
  timed in one interleaved loop (a first round compiles and warms up)."""
  task, p = trainer.task, trainer.protocol
  ids = np.arange(p.batch, dtype=np.int32)
  key = jax.random.key(0)
  carries, times = {}, {name: [] for name in arms}
  for name, arm in arms.items():
    t = chosen[name]['tuning']
    carries[name] = trainer.start(arm, t['lr'], t['knob'], 0)
  for r in range(p.timing_rounds + 1):
    for name, arm in arms.items():
      t = chosen[name]['tuning']
      hp = hyperparams(t['lr'], t['knob'])
      params, model_state, opt_state = carries[name]
      clock = time.perf_counter()
      out = jax.block_until_ready(
        trainer.step_fn(name, arm)(
          hp, params, model_state, opt_state, task.data, ids, key, r
        )
      )
      if r:
        times[name].append(time.perf_counter() - clock)
      carries[name] = out[0], out[1], out[2]
  return {name: float(np.median(v)) for name, v in times.items()}


# ----------------------------------------------------------- comparisons ---


def compare(
  label: str,
  method: Results,
  baseline: Results,
  curve: Results | None,
  times: dict[str, float] | None = None,
) -> Results:
  """Paired difference, and the speedup at equal loss against ``curve``."""
  out = dict(
    comparison=label,
    budget=method['budget'],
    paired=stats.paired(method['finals'], baseline['finals']),
  )
  if curve is not None:
    budgets = sorted(curve)
    losses = np.array([curve[b]['finals'] for b in budgets]).T
    out['speedup'] = stats.bootstrap_speedup(
      [b * curve[1.0]['budget'] for b in budgets],
      losses,
      method['budget'],
      method['finals'],
    )
    if times is not None and out['speedup']['speedup'] is not None:
      out['wall_speedup'] = out['speedup']['speedup'] * times['ratio']
  return out


def run_task(
  task: tasks.DeepTask,
  protocol: Protocol,
  arms: dict[str, Arm],
  bar: tqdm.tqdm,
) -> Results:
  """The whole protocol on one task (see the module docstring)."""
  trainer, p = Trainer(task, protocol), protocol
  main: dict[str, Results] = {}
  for name, arm in arms.items():
    main[name] = tune_and_evaluate(trainer, name, arm, p.budget, bar)
  curves: dict[str, dict[float, Results]] = {}
  for name in p.curve_arms:
    t = main[name]['tuning']
    curves[name] = {1.0: main[name]}
    for m in p.curve_budgets:
      if m != 1.0:
        curves[name][m] = tune_and_evaluate(
          trainer,
          name,
          arms[name],
          m * p.budget,
          bar,
          centre=t['k_lr'],
          knobs=(t['knob'],),
        )
  long: dict[str, Results] = {}
  for name in p.long_arms:
    t = main[name]['tuning']
    long[name] = tune_and_evaluate(
      trainer,
      name,
      arms[name],
      p.long_budget * p.budget,
      bar,
      centre=t['k_lr'],
      knobs=(t['knob'],),
    )
  bar.set_postfix_str(f'{task.name}: timing')
  times = step_times(trainer, arms, main)
  per_eval = {n: times[n] / trainer.cost(a) for n, a in arms.items()}
  ref = p.reference
  comparisons = []
  for name, arm in arms.items():
    if name == ref:
      continue
    ratio = dict(ratio=per_eval[ref] / per_eval[name])
    comparisons.append(
      compare(f'{name} vs {ref}', main[name], main[ref], curves.get(ref), ratio)
    )
    for other in (arm.base, arm.control):
      if other is not None and other in main and other != ref:
        ratio = dict(ratio=per_eval[other] / per_eval[name])
        comparisons.append(
          compare(
            f'{name} vs {other}',
            main[name],
            main[other],
            curves.get(other),
            ratio,
          )
        )
  for name, result in long.items():
    for base in (arms[name].base, arms[name].control):
      other = long.get(base) or curves.get(base, {}).get(p.long_budget)
      if base is not None and other is not None:
        comparisons.append(
          compare(
            f'{name} vs {base} at {p.long_budget:g}x budget',
            result,
            other,
            curves.get(base),
          )
        )
  budgets_ref = sorted(curves.get(ref, {}))
  power = None
  if len(budgets_ref) >= 2:
    slope = stats.loss_slope(
      [b * p.budget for b in budgets_ref],
      [curves[ref][b]['mean'] for b in budgets_ref],
    )
    sds = [
      c['paired']['sd']
      for c in comparisons
      if c['comparison'].endswith(f'vs {ref}') and c['paired']['sd']
    ]
    if sds:
      power = stats.detectable_speedup(
        slope, float(np.median(sds)), len(p.eval_seeds)
      )
  return dict(
    description=task.description,
    protocol=dataclasses.asdict(p),
    arms={
      name: dict(
        label=arm.label,
        paired=arm.paired,
        base=arm.base,
        control=arm.control,
        **main[name],
      )
      for name, arm in arms.items()
    },
    curves={
      name: {f'{m:g}': r for m, r in c.items()} for name, c in curves.items()
    },
    long={name: r for name, r in long.items()},
    step_time_s=times,
    comparisons=comparisons,
    power=power,
  )


def runs_planned(protocol: Protocol, arms: dict[str, Arm]) -> int:
  """Runs before any widening (for the progress bar)."""
  p = protocol
  tuning = len(p.tuning_seeds) * p.lrs
  one = lambda knobs: tuning * knobs + len(p.eval_seeds)
  total = sum(one(len(a.knobs)) for a in arms.values())
  total += len(p.curve_arms) * (len(p.curve_budgets) - 1) * one(1)
  return total + len(p.long_arms) * one(1)


# --------------------------------------------------------------- reports ---


def _interval(x: Results, key: str = 'mean', fmt: str = '+.4f') -> str:
  if x.get(key) is None:
    return x.get('verdict', '-')
  return f'{x[key]:{fmt}} [{x["low"]:{fmt}}, {x["high"]:{fmt}}]'


def markdown(results: Results) -> str:
  """The study's tables, from its results (the JSON)."""
  lines = []
  for name, t in results['tasks'].items():
    p = t['protocol']
    lines += [
      f'### {name}',
      '',
      t['description'] + '.',
      f'Budget {p["budget"]} gradient evaluations (batch {p["batch"]}); '
      f'tuning seeds {p["tuning_seeds"]}, evaluation seeds '
      f'{p["eval_seeds"]}.',
      '',
      '| arm | chosen config (configs tried) | edge | final val loss, mean '
      '± sd | ms per step |',
      '| --- | --- | --- | --- | --- |',
    ]
    for arm_name, a in t['arms'].items():
      tu = a['tuning']
      lines.append(
        f'| {a["label"]} (`{arm_name}`) | {tu["config"]} ({tu["n_configs"]}) '
        f'| {"yes" if tu["edge"] else "no"} | {a["mean"]:.4f} ± '
        f'{a["sd"]:.4f} | {1e3 * t["step_time_s"][arm_name]:.1f} |'
      )
    lines += [
      '',
      '| comparison | paired diff (method − baseline) [95% CI] | wins | '
      'verdict | speedup at equal loss [95% CI] | wall-clock speedup |',
      '| --- | --- | --- | --- | --- | --- |',
    ]
    for c in t['comparisons']:
      d, s = c['paired'], c.get('speedup')
      wins = '-' if d['wins'] is None else f'{d["wins"]}/{d["n"]}'
      sp = '-'
      if s is not None:
        sp = _interval(s, 'speedup', '.2f') + (
          f' ({s["verdict"]}'
          + (', extrapolated)' if s['extrapolated'] else ')')
          if s['speedup'] is not None
          else ''
        )
      wall = f'{c["wall_speedup"]:.2f}' if 'wall_speedup' in c else '-'
      lines.append(
        f'| {c["comparison"]} | {_interval(d)} | {wins} | {d["verdict"]} | '
        f'{sp} | {wall} |'
      )
    if t['power']:
      w = t['power']
      lines += [
        '',
        f"Power: the reference's final loss falls by {-w['slope']:.4f} per "
        f'unit of ln(budget), so a 1.15x speedup is worth '
        f'{w["loss_gap_of_1_15x"]:.4f} nats. The median sd of the paired '
        f'differences against it is {w["sd"]:.4f}; with {w["n"]} seeds the '
        f'95% half-width is {w["half_width"]:.4f}, so the smallest '
        f'detectable speedup is {w["detectable_speedup"]:.2f}x; '
        f'{w["seeds_for_1_15x"]} seeds would resolve 1.15x.',
      ]
    lines.append('')
  return '\n'.join(lines)


def plots(results: Results, plot_dir: Any, prefix: str) -> dict[str, str]:
  """Per task: validation loss curves (mean, band ± sd over the evaluation
  seeds) and a forest plot of paired differences and speedups."""
  from benchmarks import common  # pylint: disable=g-import-not-at-top

  plt = common.pyplot()
  out = {}
  for name, t in results['tasks'].items():
    fig, axes = plt.subplots(1, 3, figsize=(18, 5))
    for a in t['arms'].values():
      xs = np.asarray(a['runs'][0]['curve']['grad_evals'])
      ys = np.asarray(
        [
          r['curve']['val_loss']
          for r in a['runs']
          if len(r['curve']['val_loss']) == len(xs)
        ]
      )
      mean, sd = ys.mean(0), ys.std(0)
      (line,) = axes[0].plot(xs, mean, label=a['label'])
      axes[0].fill_between(
        xs, mean - sd, mean + sd, alpha=0.2, color=line.get_color()
      )
    common.label_axes(
      axes[0],
      'gradient evaluations',
      'validation loss',
      f'{name}: mean ± sd over {len(t["protocol"]["eval_seeds"])} seeds',
    )
    comps = t['comparisons']
    ys = np.arange(len(comps))[::-1]
    for y, c in zip(ys, comps):
      d = c['paired']
      if d['mean'] is not None:
        axes[1].errorbar(
          d['mean'],
          y,
          xerr=[[d['mean'] - d['low']], [d['high'] - d['mean']]],
          fmt='o',
          capsize=3,
        )
      s = c.get('speedup')
      if s and s['speedup'] is not None and math.isfinite(s['high']):
        axes[2].errorbar(
          s['speedup'],
          y,
          xerr=[[s['speedup'] - s['low']], [s['high'] - s['speedup']]],
          fmt='o',
          capsize=3,
        )
    for ax, x0, xlabel in (
      (
        axes[1],
        0.0,
        'paired loss difference (< 0: method better), 95% t-interval',
      ),
      (axes[2], 1.0, 'speedup at equal loss, 95% bootstrap interval'),
    ):
      ax.axvline(x0, color='k', lw=0.8)
      ax.set_yticks(ys, [c['comparison'] for c in comps], fontsize=8)
      ax.set_xlabel(xlabel)
      ax.grid(True, alpha=0.3)
    axes[2].set_xscale('log')
    fig.suptitle(t['description'], fontsize=9)
    out[name] = common.save_plot(fig, plot_dir, f'{prefix}_{name}.png')
  return out
