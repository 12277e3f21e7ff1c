"""Does the family pay off on deep nets? The paired-seed study.

The protocol is ``benchmarks/study.py``'s (warmup + cosine schedules, tuning
seeds apart from evaluation seeds, a sqrt(2) learning-rate ladder widened
until the best is interior, the betas or momentum as the second knob,
paired evaluation with 95% intervals, speedup at equal loss from the
reference's runs at 0.5x to 4x its budget, interleaved step times). This
file only says which tasks and arms it runs.

Tasks (``benchmarks/tasks.py``, nothing downloaded), 200 steps x 16
windows on the transformers, 225 x 32 images on the CNN, 8 evaluation
seeds each: ``transformer``, the 2-layer character transformer (d 64, 117k
params) on the pydoc help text, its validation loss on all 666 windows of
the held-out 10%, with every arm below; ``transformer_d96``, the same at
d 96 (249k params, 2.1x), and ``cnn``, the CNN with BatchNorm and dropout on
sklearn's digits (loss on the whole test split), each with the family's
best member (MARS-M), its bases and its control. The ``long`` arms run
again at twice the budget: Muon, MARS-M and its control everywhere, and
MARS-AdamW and its control on the main transformer.

Arms (clip = global norm 1 where the optimizer has one; library defaults for
everything not named):

- baselines: ``adamw`` = ``clip_by_global_norm(1)`` + ``optax.adamw``, betas
  in {(0.9, 0.95), (0.95, 0.99)}; ``lion`` = ``optax.lion``, (b1, b2) in
  {(0.9, 0.99), (0.95, 0.98)}; ``muon`` = ``optax.contrib.muon`` with
  ``consistent_rms=0.2`` (so one learning rate suits its matrices and its
  Adam leaves) on the task's hidden matrices, beta in {0.9, 0.95};
- the family: ``mars_adamw``, ``mars_lion``, ``mars_muon`` (MARS-M), at
  gamma 0.025 (approx mode: one gradient per step), their knob as their
  base's; ``storm`` (exact, paired), beta in {0.9, 0.99};
- controls: ``*_g0``, each MARS arm at gamma = 0 (its base with MARS's other
  settings), tuned the same way.

Run (from the repository root)::

  python -m benchmarks.family --quick   # the smoke test, under a minute
  python -m benchmarks.family           # the full study (see RESULTS.md)
"""

import argparse
import dataclasses
import functools
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

import optax
import tqdm

import spider_optax as so

if __package__ in (None, ''):  # python benchmarks/family.py
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402
from benchmarks import study  # noqa: E402
from benchmarks import tasks  # noqa: E402

Results = dict[str, Any]
CLIP = 1.0
GAMMA = 0.025


def adamw(task, learning_rate, b1, b2):
  del task
  return optax.chain(
    optax.clip_by_global_norm(CLIP), optax.adamw(learning_rate, b1, b2)
  )


def lion(task, learning_rate, b1, b2):
  del task
  return optax.lion(learning_rate, b1, b2)


def muon(task, learning_rate, beta):
  return optax.contrib.muon(
    learning_rate,
    beta=beta,
    consistent_rms=0.2,
    muon_weight_dimension_numbers=task.matrices,
  )


def mars_adamw(task, learning_rate, b1, b2, gamma=GAMMA):
  del task
  return so.mars_adamw(learning_rate, b1=b1, b2=b2, gamma=gamma, max_norm=CLIP)


def mars_lion(task, learning_rate, b1, gamma=GAMMA):
  del task
  return so.mars_lion(learning_rate, b1=b1, gamma=gamma, max_norm=CLIP)


def mars_muon(task, learning_rate, b1, gamma=GAMMA):
  return so.mars_muon(
    learning_rate,
    b1=b1,
    gamma=gamma,
    max_norm=CLIP,
    muon_weight_dimension_numbers=task.matrices,
  )


def storm(task, learning_rate, beta):
  del task
  return so.storm(learning_rate, beta, c0=CLIP)


ADAM_BETAS = ({'b1': 0.9, 'b2': 0.95}, {'b1': 0.95, 'b2': 0.99})
MOMENTA = ({'b1': 0.9}, {'b1': 0.95})
g0 = lambda f: functools.partial(f, gamma=0.0)

ARMS: dict[str, study.Arm] = {
  'adamw': study.Arm('clip + AdamW', adamw, 4, ADAM_BETAS),
  'lion': study.Arm(
    'Lion', lion, -1, ({'b1': 0.9, 'b2': 0.99}, {'b1': 0.95, 'b2': 0.98})
  ),
  'muon': study.Arm('Muon', muon, 8, ({'beta': 0.9}, {'beta': 0.95})),
  'mars_adamw': study.Arm(
    'MARS-AdamW',
    mars_adamw,
    5,
    ADAM_BETAS,
    base='adamw',
    control='mars_adamw_g0',
  ),
  'mars_adamw_g0': study.Arm('MARS-AdamW γ=0', g0(mars_adamw), 5, ADAM_BETAS),
  'mars_lion': study.Arm(
    'MARS-Lion', mars_lion, -1, MOMENTA, base='lion', control='mars_lion_g0'
  ),
  'mars_lion_g0': study.Arm('MARS-Lion γ=0', g0(mars_lion), -1, MOMENTA),
  'mars_muon': study.Arm(
    'MARS-M', mars_muon, 8, MOMENTA, base='muon', control='mars_muon_g0'
  ),
  'mars_muon_g0': study.Arm('MARS-M γ=0', g0(mars_muon), 8, MOMENTA),
  'storm': study.Arm(
    'STORM (exact)', storm, 15, ({'beta': 0.9}, {'beta': 0.99}), paired=True
  ),
}


# The study's main task (its d=96 twin has 2.1x the params).
transformer_task = functools.partial(
  tasks.transformer_task, flat=False, whole_split=True
)
LONG = ('muon', 'mars_muon', 'mars_muon_g0')


def plan(mode: str) -> list[tuple[str, Any, study.Protocol, tuple[str, ...]]]:
  """(task name, task factory, protocol, arms) of each task in this mode."""
  if mode == 'quick':
    p = study.Protocol(
      batch=8,
      budget=8 * 8,
      tuning_seeds=(100,),
      eval_seeds=(0, 1, 2),
      lrs=2,
      max_widen=0,
      checkpoints=2,
      curve_arms=('adamw',),
      long_arms=('mars_muon', 'mars_muon_g0'),
      timing_rounds=2,
    )
    small = functools.partial(
      tasks.transformer_task, layers=1, d=32, flat=False, whole_split=True
    )
    arms = ('adamw', 'muon', 'mars_muon', 'mars_muon_g0', 'storm')
    return [
      ('transformer', small, p, arms),
      (
        'cnn',
        functools.partial(tasks.cnn_task, flat=False),
        dataclasses.replace(p, long_arms=()),
        ('adamw', 'mars_muon'),
      ),
    ]

  def protocol(batch: int, steps: int, long_arms=LONG, **options):
    return study.Protocol(
      batch=batch,
      budget=steps * batch,
      tuning_seeds=(100, 101),
      eval_seeds=tuple(range(8)),
      checkpoints=4,
      curve_arms=('adamw',),
      long_arms=long_arms,
      **options,
    )

  best = ('adamw', 'muon', 'mars_muon', 'mars_muon_g0')
  return [
    (
      'transformer',
      transformer_task,
      protocol(16, 200, long_arms=LONG + ('mars_adamw', 'mars_adamw_g0')),
      tuple(ARMS),
    ),
    (
      'transformer_d96',
      functools.partial(transformer_task, d=96),
      protocol(16, 200),
      best,
    ),
    (
      'cnn',
      functools.partial(tasks.cnn_task, flat=False),
      protocol(32, 225, max_widen=6),
      best,
    ),
  ]


def experiment(options: argparse.Namespace, bar: tqdm.tqdm) -> Results:
  mode = 'quick' if options.quick else 'full'
  todo = [t for t in plan(mode) if t[0] in options.tasks]
  bar.reset(
    total=sum(
      study.runs_planned(p, {a: ARMS[a] for a in arms})
      for _, _, p, arms in todo
    )
  )
  results = {
    name: study.run_task(factory(), p, {a: ARMS[a] for a in arms}, bar)
    for name, factory, p, arms in todo
  }
  out = dict(tasks=results)
  out['summary'] = study.markdown(out)
  return out


def report(results: Results) -> str:
  return results['summary']


def plots(results: Results, plot_dir: pathlib.Path) -> dict[str, str]:
  return study.plots(results, plot_dir, 'family')


def main(argv: Sequence[str] | None = None) -> Results:
  """Runs the study, prints its tables, writes the JSON and the PNGs."""
  names = [t[0] for t in plan('full')]
  return common.script(
    'family', __doc__, argv, experiment, report, plots, tasks=names
  )


if __name__ == '__main__':
  main()
