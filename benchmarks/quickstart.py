"""The main job: when does spider-optax beat what you use today, by how much?

Two comparisons at equal numbers of gradient evaluations, each against the
baseline a user runs today, in about a minute on 2 CPU cores:

1. A finite sum, the setting of the paper (Reisizadeh, Li, Das, Jadbabaie,
   arXiv 2303.00883): the digits MLP of ``benchmarks/tasks.py`` (64 -> 32
   tanh -> 10, n = 1797 images), ``so.spider(lr=1, c0=0.1, c1=0.05)`` with a
   full-gradient anchor every q = ceil(sqrt(n)) = 43 steps and recursive
   steps on minibatches of 43 at both points (``so.paired_grad``), against
   ``clip_by_global_norm(0.25)`` + ``sgd(2.0)`` on minibatches of 32. What
   the variance-reduction theory bounds is the distance to a stationary
   point, the full-gradient norm; the script reports it and the loss.
2. A small deep net: the 2-layer character transformer of the paired-seed
   study (``benchmarks/family.py``: d 64, 4 heads, context 64, on the pydoc
   help text that ships with Python, 90/10 train/validation split, the loss
   on the whole validation split), the member the study recommends, MARS-M
   (``so.mars_muon``, approx mode: one gradient per step), against
   ``clip_by_global_norm(1)`` + ``adamw``. Both run the study's protocol
   (warmup + cosine decay to 0, its budget) at the configurations the study
   tuned for them (read from ``benchmarks/results/family.json``), on one
   seed. Beside it the summary quotes the study's verdicts: 8 paired seeds,
   95% intervals.

The hyperparameters of (1) come from a small sweep at this budget (seed 0):
spider lr in {0.3 ... 5}, c0 in {0.05 ... 5, None}, c1 in {0.05 ... 5, None};
clipped SGD lr in {0.1 ... 3}, clip in {0.25 ... 5, none}.

It prints a plain-language summary with the ratios, then the tables with
every term explained, and writes a JSON and a PNG next to the script
(``benchmarks/out/quickstart.json`` and ``.png``; ``--out`` and ``--plot-dir``
move them), printing the path of each.

Run (from the repository root)::

  python -m benchmarks.quickstart           # about a minute on 2 cores
  python -m benchmarks.quickstart --quick   # a few seconds, the smoke test
"""

import argparse
import functools
import json
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

import spider_optax as so

if __package__ in (None, ''):  # python benchmarks/quickstart.py
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402
from benchmarks import family  # noqa: E402
from benchmarks import study  # noqa: E402
from benchmarks import tasks  # noqa: E402

SPIDER: dict[str, Any] = dict(learning_rate=1.0, c0=0.1, c1=0.05)
SGD: dict[str, Any] = dict(learning_rate=2.0, clip_norm=0.25, batch_size=32)
BUDGET_PASSES = dict(full=150, quick=12)  # oracle calls / n
CHECKPOINT_PASSES = dict(full=10, quick=1)
METHODS = ('spider', 'clipped_sgd')


def steppers(task: tasks.Task) -> dict[str, common.Stepper]:
  """SPIDER (full-gradient anchors every q = S2 steps) and clipped SGD."""
  x, y = task.data
  s2 = common.ceil_sqrt(task.n)  # = q, as theory.finite_sum
  pair = common.step_pair(
    lambda _: so.spider(**SPIDER),
    lambda p: jax.grad(task.loss_fn)(p, x, y),  # the full gradient: S1 = n
    lambda p, prev, idx: so.paired_grad(task.loss_fn)(p, prev, x[idx], y[idx]),
  )
  anchor, recursive = (functools.partial(jax.jit(f), None) for f in pair)
  sgd = optax.chain(
    optax.clip_by_global_norm(SGD['clip_norm']), optax.sgd(SGD['learning_rate'])
  )
  sgd_step, _ = common.step_pair(
    lambda _: sgd, lambda p, idx: jax.grad(task.loss_fn)(p, x[idx], y[idx])
  )
  return dict(
    spider=common.Stepper(
      init=so.spider(**SPIDER).init,
      step=recursive,
      batch_size=s2,
      cost=2 * s2,
      anchor=anchor,
      anchor_cost=task.n,
      is_anchor=common.spider_schedule(s2),
    ),
    clipped_sgd=common.Stepper(
      init=sgd.init,
      step=functools.partial(jax.jit(sgd_step), None),
      batch_size=SGD['batch_size'],
      cost=SGD['batch_size'],
    ),
  )


def evaluator(task: tasks.Task) -> Callable[[Any], dict[str, jax.Array]]:
  """Jitted ``params -> {loss, grad_norm, accuracy}`` on the full data."""
  x, y = task.data

  @jax.jit
  def evaluate(params):
    loss, grads = jax.value_and_grad(task.loss_fn)(params, x, y)
    accuracy = jnp.mean(jnp.argmax(tasks.mlp_logits(params, x), -1) == y)
    return dict(loss=loss, grad_norm=so.global_norm(grads), accuracy=accuracy)

  return evaluate


DEEP_ARMS = ('mars_muon', 'adamw')  # the study's member, its reference
DEEP_STEPS = dict(quick=12)  # full: the study's budget
DEEP_EVALS = dict(full=8, quick=2)  # checkpoints along each run
STUDY = pathlib.Path(__file__).resolve().parent / 'results' / 'family.json'

TERMS = (
  (
    'gradient evaluations',
    'per-sample gradients computed: a full gradient '
    'costs n, a minibatch of b at one point b, at two points 2b',
  ),
  ('passes', 'gradient evaluations / n: how many times the data was used'),
  (
    'train loss',
    'the loss on the whole training set (digits), or the mean minibatch '
    'loss over the last 10% of the steps (transformer)',
  ),
  ('|grad f|', 'the norm of the full gradient: 0 at a stationary point'),
  ('val loss', 'the loss on the whole held-out 10% of the text (666 windows)'),
  ('lr', 'the peak learning rate of the schedule, as the study tuned it'),
  (
    'wall s',
    'seconds spent in the steps, compilation and checkpoints excluded '
    '(digits; the study times the transformer steps)',
  ),
)


def finite_sum(args: argparse.Namespace, bar: tqdm.tqdm) -> dict[str, Any]:
  """SPIDER against clipped SGD on the digits finite sum."""
  task = tasks.digits_task(args.seed)
  n, mode = task.n, 'quick' if args.quick else 'full'
  budget = BUDGET_PASSES[mode] * n
  s2 = common.ceil_sqrt(n)
  evaluate = evaluator(task)
  methods = {}
  for name, stepper in steppers(task).items():
    methods[name] = common.run_budgeted(
      stepper,
      task.params,
      rng=np.random.default_rng(args.seed),
      n=n,
      budget=budget,
      every=CHECKPOINT_PASSES[mode] * n,
      evaluate=evaluate,
    ).record()
    bar.update()
  config = dict(
    dataset='sklearn digits',
    n=n,
    hidden=tasks.HIDDEN,
    l2=tasks.L2,
    budget=budget,
    seed=args.seed,
    spider=dict(
      SPIDER, anchor_period=s2, anchor_batch_size=n, minibatch_size=s2
    ),
    clipped_sgd=dict(SGD),
  )
  return dict(config=config, methods=methods)


def study_task(path: pathlib.Path = STUDY) -> dict[str, Any] | None:
  """The study's transformer results (``benchmarks/family.py``'s committed
  JSON), or None before it has run."""
  if not path.exists():
    return None
  return json.loads(path.read_text())['tasks'].get('transformer')


def deep_net(args: argparse.Namespace, bar: tqdm.tqdm) -> dict[str, Any]:
  """MARS-M against clip + AdamW on the study's transformer, one seed, at the
  configurations and the budget the study chose (its arms' centres and
  first knobs, and 200 steps, before it has run)."""
  study_results = study_task()
  mode = 'quick' if args.quick else 'full'
  batch = 16 if study_results is None else study_results['protocol']['batch']
  budget = (
    DEEP_STEPS[mode] * batch
    if mode == 'quick' or study_results is None
    else study_results['protocol']['budget']
  )
  protocol = study.Protocol(
    batch=batch, budget=budget, tuning_seeds=(), eval_seeds=(args.seed,)
  )
  trainer = study.Trainer(family.transformer_task(), protocol)
  methods, config = {}, {}
  for name in DEEP_ARMS:
    arm = family.ARMS[name]
    k_lr, knob = arm.lr_centre, arm.knobs[0]
    if study_results is not None:
      t = study_results['arms'][name]['tuning']
      k_lr, knob = t['k_lr'], t['knob']
    methods[name] = trainer.run(
      name, arm, k_lr, knob, args.seed, budget, checkpoints=DEEP_EVALS[mode]
    )
    config[name] = dict(label=arm.label, lr=study.ladder(k_lr), **knob)
    bar.update()
  config = dict(
    task=trainer.task.description,
    batch_size=batch,
    budget=budget,
    seed=args.seed,
    schedule=f'warmup {protocol.warmup:g} of the steps, cosine decay to 0',
    tuned_by='benchmarks/family.py'
    if study_results is not None
    else 'nothing yet (the study has not run): arm centres',
    **config,
  )
  return dict(config=config, methods=methods)


def study_verdict(path: pathlib.Path = STUDY) -> list[str]:
  """The paired-seed study's verdicts on the transformer against clip +
  AdamW (``benchmarks/family.py``'s committed results), one line each."""
  task = study_task(path)
  if task is None:
    return []
  lines = []
  for c in task['comparisons']:
    if not c['comparison'].endswith('vs adamw'):
      continue
    d, sp = c['paired'], c.get('speedup') or {}
    speed = (
      f'; speedup at equal loss {sp["speedup"]:.2f}x '
      f'[{sp["low"]:.2f}, {sp["high"]:.2f}]'
      if sp.get('speedup') is not None
      else ''
    )
    lines.append(
      f'  {c["comparison"]}: {d["mean"]:+.4f} nats [{d["low"]:+.4f}, '
      f'{d["high"]:+.4f}], {d["verdict"]}{speed}'
    )
  n = len(task['protocol']['eval_seeds'])
  return (
    [
      f'- The study (benchmarks/family.py: tuned, warmup + cosine, {n} paired '
      'seeds, 95% intervals), final validation loss against clip + AdamW:',
      *lines,
    ]
    if lines
    else []
  )


def experiment(args: argparse.Namespace, bar: tqdm.tqdm) -> dict[str, Any]:
  bar.reset(total=len(METHODS) + len(DEEP_ARMS))
  results = dict(finite_sum=finite_sum(args, bar), deep_net=deep_net(args, bar))
  return dict(results, summary=summarize(results))


def summarize(results: dict[str, Any]) -> dict[str, float]:
  """The figures the summary states, from the runs' last checkpoints."""
  fs = lambda name, key: results['finite_sum']['methods'][name]['curves'][key][
    -1
  ]
  dn = results['deep_net']['methods']
  member, reference = (dn[name] for name in DEEP_ARMS)
  return dict(
    spider_grad_norm=fs('spider', 'grad_norm'),
    sgd_grad_norm=fs('clipped_sgd', 'grad_norm'),
    grad_norm_ratio=fs('clipped_sgd', 'grad_norm') / fs('spider', 'grad_norm'),
    spider_loss=fs('spider', 'loss'),
    sgd_loss=fs('clipped_sgd', 'loss'),
    member_val_loss=member['final_val_loss'],
    adamw_val_loss=reference['final_val_loss'],
    val_loss_gap=reference['final_val_loss'] - member['final_val_loss'],
  )


def summary_text(results: dict[str, Any]) -> str:
  """What was measured, in words, with the ratios."""
  s, fs, dn = results['summary'], results['finite_sum'], results['deep_net']
  passes = fs['config']['budget'] / fs['config']['n']
  better = 'lower' if s['val_loss_gap'] > 0 else 'higher'
  member, reference = (dn['config'][name]['label'] for name in DEEP_ARMS)
  return '\n'.join(
    [
      'Summary',
      f'- Finite sum (digits MLP, n = {fs["config"]["n"]}), {passes:.0f} '
      'passes of gradient evaluations each: SPIDER ends '
      f'{s["grad_norm_ratio"]:.1f}x closer to a stationary point than '
      f'clipped SGD (|grad f| {s["spider_grad_norm"]:.2g} against '
      f'{s["sgd_grad_norm"]:.2g}); training loss {s["spider_loss"]:.4f} '
      f'against {s["sgd_loss"]:.4f}.',
      f'- Small deep net (char transformer), {dn["config"]["budget"]} sequence '
      f'gradients each, warmup + cosine: {member} ends with a validation loss '
      f'of {s["member_val_loss"]:.3f} against {s["adamw_val_loss"]:.3f} for '
      f'{reference} ({abs(s["val_loss_gap"]):.3f} {better}), one seed, at the '
      'configurations the study tuned.',
      *study_verdict(),
    ]
  )


# Each table's columns: (header, width, the value of a run).
FINITE_SUM_COLUMNS = (
  ('steps', 6, lambda r, n: str(r['steps'])),
  ('grad evals', 10, lambda r, n: str(r['oracle_calls'])),
  ('passes', 7, lambda r, n: f'{r["oracle_calls"] / n:.1f}'),
  ('train loss', 10, lambda r, n: f'{r["curves"]["loss"][-1]:.5f}'),
  ('|grad f|', 9, lambda r, n: f'{r["curves"]["grad_norm"][-1]:.5f}'),
  ('wall s', 7, lambda r, n: f'{r["wall_time_s"]:.2f}'),
)
DEEP_NET_COLUMNS = (
  ('steps', 6, lambda r, n: str(r['steps'])),
  ('grad evals', 10, lambda r, n: str(r['grad_evals'])),
  ('lr', 8, lambda r, n: f'{r["lr"]:.3g}'),
  ('train loss', 10, lambda r, n: f'{r["train_loss_tail"]:.4f}'),
  ('val loss', 9, lambda r, n: f'{r["final_val_loss"]:.4f}'),
)


def table(title: str, part: dict[str, Any], columns: tuple, n: int) -> list:
  """A part's table: a row per method, a column per entry of ``columns``."""
  header = f'{"method":<12}' + ''.join(f' {h:>{w}}' for h, w, _ in columns)
  rows = [
    f'{name:<12}' + ''.join(f' {cell(r, n):>{w}}' for _, w, cell in columns)
    for name, r in part['methods'].items()
  ]
  return ['', title, header, '-' * len(header), *rows]


def report(results: dict[str, Any]) -> str:
  fs, dn = results['finite_sum'], results['deep_net']
  lines = [summary_text(results), '', 'Terms']
  lines += [f'  {term:<21} {meaning}' for term, meaning in TERMS]
  lines += table(
    '1. Finite sum: ' + fs['config']['dataset'],
    fs,
    FINITE_SUM_COLUMNS,
    fs['config']['n'],
  )
  lines += table(
    '2. Deep net: ' + dn['config']['task'], dn, DEEP_NET_COLUMNS, 1
  )
  return '\n'.join(lines)


def plots(results: dict[str, Any], plot_dir: pathlib.Path) -> list[str]:
  fs, dn = results['finite_sum'], results['deep_net']
  n = fs['config']['n']
  fig, axes = common.pyplot().subplots(1, 3, figsize=(16, 4.5))
  panels = (
    (fs, 'loss', 1 / n, '1. digits: full training loss', 'passes', 'log'),
    (fs, 'grad_norm', 1 / n, '1. digits: |grad f|', 'passes', 'log'),
  )
  for ax, (part, key, scale, title, xlabel, yscale) in zip(axes, panels):
    for name, r in part['methods'].items():
      c = r['curves']
      ax.plot(np.asarray(c['oracle_calls']) * scale, c[key], label=name)
    common.label_axes(ax, xlabel, title, yscale=yscale, legend=True)
  ax = axes[-1]
  for name, r in dn['methods'].items():
    label = dn['config'][name]['label']
    ax.plot(r['curve']['grad_evals'], r['curve']['val_loss'], label=label)
  common.label_axes(
    ax, 'sequences', '2. transformer: val loss (one seed)', legend=True
  )
  fig.suptitle(
    'spider-optax against what you use today, at equal gradient evaluations',
    fontsize=10,
  )
  return [common.save_plot(fig, plot_dir, 'quickstart.png')]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs both comparisons, prints the summary and tables, writes the files."""
  cli = common.parser('quickstart', __doc__)
  cli.add_argument(
    '--seed',
    type=int,
    default=0,
    help='seed of the inits and the minibatches (default 0)',
  )
  return common.main(cli, argv, experiment, report=report, plots=plots)


if __name__ == '__main__':
  main()
