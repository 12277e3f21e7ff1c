"""What every benchmark shares.

- :func:`parser` and :func:`main` (both at once: :func:`script`): one
  command line (``--quick``, ``--no-progress``, ``--out``, ``--plot-dir``;
  outputs in ``benchmarks/out/`` by default, wherever the script runs from),
  one progress bar, and one way to print, plot and write the results with the
  :func:`environment`.
- :func:`step_pair`: SPIDER's anchor and recursive steps (the anchor step is
  also the step of a plain optimizer such as clipped SGD or Adam).
- :func:`run_budgeted`: the training loop of a fixed budget of oracle calls,
  with untimed checkpoints; its anchors come from ``so.is_anchor_step``
  (:func:`spider_schedule`).
- :func:`median`: the median over seeds, with one rule for failed runs.

Oracle calls (stochastic-gradient evaluations) are counted as in the analyses
of SPIDER (Fang, Li, Lin and Zhang, NeurIPS 2018) and of its clipped variant
(Reisizadeh, Li, Das and Jadbabaie, arXiv 2303.00883): an anchor step costs
S1 (n for the full gradient), a recursive step 2 * S2 (one minibatch of S2
samples at two points), an SGD or Adam step its batch size.
"""

import argparse
import dataclasses
import datetime
import json
import math
import os
import pathlib
import platform
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from importlib import metadata
from typing import Any, cast

import jax
import numpy as np
import optax
import tqdm

import spider_optax as so

OUT_DIR = pathlib.Path(__file__).resolve().parent / 'out'

Params = Any
Step = Callable[..., tuple[Params, Any, Any]]
Results = dict[str, Any]


# ------------------------------------------------------------ the script ---


def parser(
  name: str, doc: str | None, *, tasks: Sequence[str] = ()
) -> argparse.ArgumentParser:
  """The options every benchmark takes; a script adds its own.

  Args:
    name: the script's name: ``python -m benchmarks.{name}``.
    doc: its docstring, whose first line describes it.
    tasks: the names of its tasks, if it has several: a ``--tasks`` option
      chooses among them (default: all).
  """
  p = argparse.ArgumentParser(
    prog=f'python -m benchmarks.{name}',
    description=(doc or name).split('\n')[0],
  )
  p.add_argument(
    '--quick',
    action='store_true',
    help='small budgets and grids: the smoke test the tests run',
  )
  p.add_argument('--no-progress', action='store_true', help='no progress bar')
  p.add_argument(
    '--out',
    type=pathlib.Path,
    default=OUT_DIR / f'{name}.json',
    help='the JSON results (default: %(default)s)',
  )
  p.add_argument(
    '--plot-dir',
    type=pathlib.Path,
    default=OUT_DIR,
    help='the folder of the PNG plots (default: %(default)s)',
  )
  if tasks:
    p.add_argument(
      '--tasks',
      nargs='+',
      default=list(tasks),
      choices=tasks,
      help='the tasks to run (default: all)',
    )
  return p


def main(
  cli: argparse.ArgumentParser,
  argv: Sequence[str] | None,
  experiment: Callable[[argparse.Namespace, tqdm.tqdm], Results],
  *,
  report: Callable[[Results], str],
  plots: Callable[[Results, pathlib.Path], Any],
) -> Results:
  """Runs a benchmark from its command line.

  Args:
    cli: the script's :func:`parser`.
    argv: the command line (None: ``sys.argv[1:]``).
    experiment: ``experiment(options, bar)`` runs the benchmark under a
      progress bar, whose total it sets, and returns its results.
    report: the text printed for the results.
    plots: saves the plots into the folder it is given (see
      :func:`save_plot`) and returns their paths.

  Returns:
    The results as written to ``--out``: the mode (quick or full), the
    experiment's results, the :func:`environment`, the plots' paths and the
    wall time in seconds.
  """
  options = cli.parse_args(argv)
  start = time.perf_counter()
  with tqdm.tqdm(
    desc=cli.prog.split('.')[-1],
    unit='run',
    file=sys.stderr,
    disable=options.no_progress,
  ) as bar:
    results: Results = dict(
      mode='quick' if options.quick else 'full',
      **experiment(options, bar),
      environment=environment(),
    )
  print(report(results))
  options.plot_dir.mkdir(parents=True, exist_ok=True)
  results['plots'] = plots(results, options.plot_dir)
  results['wall_time_s'] = time.perf_counter() - start
  write_json(options.out, results)
  print(f'\nwall time {results["wall_time_s"]:.1f} s; wrote')
  written = results['plots']
  if isinstance(written, dict):
    written = list(written.values())
  for path in (options.out, *written):
    print(f'  {path}')
  return results


def script(
  name: str,
  doc: str | None,
  argv: Sequence[str] | None,
  experiment: Callable[[argparse.Namespace, tqdm.tqdm], Results],
  report: Callable[[Results], str],
  plots: Callable[[Results, pathlib.Path], Any],
  tasks: Sequence[str] = (),
) -> Results:
  """:func:`main` under the :func:`parser` of script ``name``, for a script
  that adds no options of its own: its ``main(argv)`` is
  ``script(name, __doc__, argv, experiment, report, plots)``."""
  cli = parser(name, doc, tasks=tasks)
  return main(cli, argv, experiment, report=report, plots=plots)


def environment() -> dict[str, Any]:
  """The hardware, versions and date of this run."""
  memory = os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
  return dict(
    date=datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec='seconds'
    ),
    cpu=_cpu_name(),
    cpu_count=os.cpu_count(),
    memory_gib=round(memory / 2**30, 1),
    platform=platform.platform(),
    python=platform.python_version(),
    jax_backend=jax.default_backend(),
    jax_devices=[f'{d} ({d.device_kind})' for d in jax.devices()],
    versions={
      name: _version(name)
      for name in (
        'jax',
        'jaxlib',
        'optax',
        'numpy',
        'scikit-learn',
        'matplotlib',
        'spider-optax',
      )
    },
  )


def _cpu_name() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
  try:
    return metadata.version(package)
  except metadata.PackageNotFoundError:
    return None


def write_json(path: pathlib.Path, results: Results) -> None:
  """Writes ``results``; inf and NaN are written as Infinity and NaN."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(results, indent=1, default=_plain) + '\n')


def _plain(x: Any) -> Any:
  if isinstance(x, (np.generic, jax.Array)):
    return x.item()
  if isinstance(x, pathlib.Path):
    return str(x)
  raise TypeError(f'not JSON serialisable: {type(x)}')


def pyplot() -> Any:
  """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  return plt


def save_plot(fig: Any, plot_dir: pathlib.Path, name: str) -> str:
  """Writes ``fig`` as ``plot_dir/name`` (100 dpi), closes it; its path."""
  fig.tight_layout()
  path = pathlib.Path(plot_dir) / name
  fig.savefig(path, dpi=100)
  pyplot().close(fig)
  return str(path)


def label_axes(
  ax: Any,
  xlabel: str,
  ylabel: str,
  title: str = '',
  *,
  xscale: str = 'linear',
  yscale: str = 'linear',
  legend: bool = True,
) -> None:
  """Labels, scales, a light grid and a small legend."""
  ax.set(xlabel=xlabel, ylabel=ylabel, xscale=xscale, yscale=yscale)
  ax.set_title(title, fontsize=9)
  ax.grid(True, which='both', alpha=0.3)
  if legend:
    ax.legend(fontsize=8)


def curves_plot(
  runs: dict[str, dict[str, list[float]]],
  n: int,
  title: str,
  plot_dir: pathlib.Path,
  name: str,
) -> str:
  """Loss and gradient norm against oracle calls, loss against wall time.

  Args:
    runs: label -> the ``curves`` of a :func:`run_budgeted` run, with
      ``loss`` and ``grad_norm``.
    n: the number of samples (the x axis is in passes, oracle calls / n).
    title: the figure's title.
    plot_dir: where to save it.
    name: its file name.

  Returns:
    The path of the PNG.
  """
  fig, axes = pyplot().subplots(1, 3, figsize=(16, 4.5))
  for label, c in runs.items():
    passes = np.asarray(c['oracle_calls']) / n
    for ax, (x, y) in zip(
      axes,
      ((passes, 'loss'), (passes, 'grad_norm'), (c['wall_time_s'], 'loss')),
    ):
      ax.plot(x, c[y], label=label)
  for ax, (x, y) in zip(
    axes,
    (
      ('stochastic gradients / n', 'full training loss'),
      ('stochastic gradients / n', 'full-gradient norm'),
      ('wall time [s] (steps only)', 'full training loss'),
    ),
  ):
    label_axes(ax, x, y, yscale='log', legend=ax is axes[0])
  fig.suptitle(title, fontsize=10)
  return save_plot(fig, plot_dir, name)


# ------------------------------------------------------------- the steps ---


def step_pair(
  make_tx: Callable[[Any], optax.GradientTransformation],
  grad_fn: Callable[..., Any],
  paired_fn: Callable[..., tuple[Any, ...]] | None = None,
  *,
  info: Callable[[Any, Any], Any] | None = None,
  other_point: Callable[[Any, Params], Params] = so.prev_params,
) -> tuple[Step, Step]:
  """SPIDER's anchor and recursive steps, pure functions to jit, vmap or cond.

  Each step is ``step(hp, params, state, *batch) -> (params, state, info)``
  and builds its optimizer inside, so that its hyperparameters ``hp`` may be
  traced: one compilation serves a whole grid.

  Args:
    make_tx: ``hp -> tx``, e.g. ``lambda hp: so.spider(hp['lr'], ...)``.
    grad_fn: ``(params, *batch) -> grads``, the anchor gradient (S1 samples or
      the full gradient). The anchor step is also the step of an optimizer
      without anchors (clipped SGD, Adam): an update without ``prev_grads``.
    paired_fn: ``(params, other, *batch) -> (grads, prev_grads)`` on one
      minibatch, e.g. ``so.paired_grad(loss_fn)``; with a third output, the
      ``grad_diff_variance`` of ``so.paired_grad(loss_fn, split_batch=True)``.
    info: ``(state, hp) -> what a step returns third`` (default None).
    other_point: ``(state, params) ->`` where the recursive step's
      ``prev_grads`` are taken: the previous params, by default.

  Returns:
    ``(anchor, recursive)``.
  """

  def finish(params, hp, updates_and_state):
    updates, state = updates_and_state
    return (
      optax.apply_updates(params, updates),
      state,
      None if info is None else info(state, hp),
    )

  def anchor(hp, params, state, *batch):
    tx = make_tx(hp)
    return finish(params, hp, tx.update(grad_fn(params, *batch), state, params))

  def recursive(hp, params, state, *batch):
    assert paired_fn is not None, 'a recursive step needs paired_fn'
    grads, prev, *variance = paired_fn(
      params, other_point(state, params), *batch
    )
    extra = dict(grad_diff_variance=variance[0]) if variance else {}
    tx = cast(optax.GradientTransformationExtraArgs, make_tx(hp))
    return finish(
      params, hp, tx.update(grads, state, params, prev_grads=prev, **extra)
    )

  return anchor, recursive


# Gradients computed before the step, passed as its batch: step_pair(make_tx,
# *GIVEN) updates with them (for gradients jitted apart, or none at all).
GIVEN = (
  lambda params, grads: grads,
  lambda params, other, grads, prev_grads: (grads, prev_grads),
)


def ceil_sqrt(n: int) -> int:
  """ceil(sqrt(n)): q = S2 of ``so.theory.finite_sum``."""
  return math.isqrt(n - 1) + 1


# -------------------------------------------------------------- the loop ---


def spider_schedule(
  anchor_period: int,
  *,
  error_budget: float | None = None,
  batch_size: int | None = None,
) -> Callable[[Any, int], bool]:
  """``(state, k) -> so.is_anchor_step(state, ...)``, for :class:`Stepper`."""
  return lambda state, k: so.is_anchor_step(
    state, anchor_period, error_budget=error_budget, batch_size=batch_size
  )


@dataclasses.dataclass(frozen=True)
class Stepper:
  """How :func:`run_budgeted` takes a run's steps.

  Attributes:
    init: ``params -> state``.
    step: ``(params, state, idx) -> (params, state, info)`` on the minibatch
      of rows ``idx``: a recursive step, or an SGD or Adam step.
    batch_size: the minibatch's size, S2 or the SGD batch.
    cost: oracle calls of ``step``: 2 * S2, or the batch size.
    anchor: ``(params, state) -> (params, state, info)``, an anchor step on
      the full data; None for a method without anchors.
    anchor_cost: its oracle calls (n).
    is_anchor: ``(state, k) -> bool``, whether step ``k`` is an anchor:
      :func:`spider_schedule` for SPIDER.
  """

  init: Callable[[Params], Any]
  step: Step
  batch_size: int
  cost: int
  anchor: Step | None = None
  anchor_cost: int = 0
  is_anchor: Callable[[Any, int], bool] = lambda state, k: False


@dataclasses.dataclass
class Run:
  """A finished :func:`run_budgeted` run.

  Attributes:
    steps: steps taken.
    oracle_calls: their cost.
    wall_time_s: seconds spent in the steps (compilation and checkpoints
      excluded).
    diverged: whether a checkpoint was not finite (the run stopped there).
    anchors: the anchor steps' indices.
    curves: at each checkpoint, ``steps``, ``oracle_calls``, ``wall_time_s``
      and what ``evaluate`` returned.
    params: the final params.
    infos: what each step returned third (device values).
  """

  steps: int
  oracle_calls: int
  wall_time_s: float
  diverged: bool
  anchors: list[int]
  curves: dict[str, list[float]]
  params: Params
  infos: list[Any]

  def record(self) -> Results:
    """The run for the JSON: all but the params and the infos."""
    return {
      k: v
      for k, v in dataclasses.asdict(self).items()
      if k not in ('params', 'infos')
    }


def run_budgeted(
  stepper: Stepper,
  params: Params,
  *,
  rng: np.random.Generator,
  n: int,
  budget: int,
  every: int,
  evaluate: Callable[[Params], dict[str, Any]],
  compile_first: bool = True,
) -> Run:
  """Takes steps while the next step's oracle cost fits in ``budget``.

  Before each step ``stepper.is_anchor`` decides its kind (for SPIDER,
  ``so.is_anchor_step`` reads the estimator's counters from the state). The
  clock counts each step to its end but not that decision. Minibatches are
  drawn uniformly with replacement from ``rng``, one per non-anchor step.
  Checkpoints are taken at the start, each time the oracle count passes a
  multiple of ``every`` and at the end; they are neither timed nor counted. A
  checkpoint whose values are not all finite marks the run diverged and ends
  it.

  Args:
    stepper: the method.
    params: the initial params.
    rng: the minibatches' generator.
    n: the number of samples.
    budget: oracle calls.
    every: the checkpoint period in oracle calls.
    evaluate: ``params -> {name: scalar}`` at each checkpoint.
    compile_first: compile both kinds of step (on a dummy minibatch, results
      discarded) before the clock starts.

  Returns:
    The :class:`Run`.
  """
  state = stepper.init(params)
  if compile_first:
    warm = params, state
    if stepper.anchor is not None:
      warm = stepper.anchor(*warm)[:2]
    jax.block_until_ready(
      stepper.step(*warm, np.zeros(stepper.batch_size, np.int32))
    )
  curves: dict[str, list[float]] = {}
  anchors, infos = [], []
  k = calls = 0
  seconds, diverged, clock = 0.0, False, time.perf_counter()

  def checkpoint() -> bool:
    nonlocal seconds, clock
    jax.block_until_ready(params)
    seconds += time.perf_counter() - clock if k else 0.0  # the steps' time
    values = {key: float(v) for key, v in evaluate(params).items()}
    finite = all(math.isfinite(v) for v in values.values())
    if finite:
      for key, v in dict(
        steps=k, oracle_calls=calls, wall_time_s=seconds, **values
      ).items():
        curves.setdefault(key, []).append(v)
    clock = time.perf_counter()
    return not finite

  diverged = checkpoint()
  while not diverged:
    jax.block_until_ready(state)  # the last step's time counts
    paused = time.perf_counter()
    anchor = stepper.anchor if stepper.is_anchor(state, k) else None
    clock += time.perf_counter() - paused
    cost = stepper.cost if anchor is None else stepper.anchor_cost
    if calls + cost > budget:
      break
    if anchor is not None:
      anchors.append(k)
      params, state, info = anchor(params, state)
    else:
      idx = rng.integers(0, n, stepper.batch_size).astype(np.int32)
      params, state, info = stepper.step(params, state, idx)
    infos.append(info)
    k, calls = k + 1, calls + cost
    if calls // every > (calls - cost) // every:
      diverged = checkpoint()
  if not diverged and curves['steps'][-1] != k:
    diverged = checkpoint()
  return Run(k, calls, seconds, diverged, anchors, curves, params, infos)


# ------------------------------------------------------------ the numbers ---


def median(values: Iterable[float | None]) -> float:
  """The median over runs, where a failed run counts as +inf.

  The one rule for failures in every benchmark: a run that failed (it
  diverged, ended non-finite, or did not reach its target within its budget)
  is given as None, NaN or inf and counts as +inf, behind every run that
  finished. So the median is finite while more than half of the runs
  finished (with an even count, both middle ones), and ``math.inf``, a failed
  median, otherwise.
  """
  return float(
    np.median(
      [math.inf if v is None or not math.isfinite(v) else v for v in values]
    )
  )


def finite_or_none(x: float | None) -> float | None:
  """``x``, or None where it is not finite (for strict JSON)."""
  return x if x is not None and math.isfinite(x) else None


def loglog_slope(
  xs: Sequence[float], ys: Sequence[float | None]
) -> float | None:
  """Least-squares slope of log y against log x over the points where both
  are finite and positive; None with fewer than 2."""
  pts = [
    (x, y)
    for x, y in zip(xs, ys)
    if y is not None and 0 < x < math.inf and 0 < y < math.inf
  ]
  if len(pts) < 2:
    return None
  lx, ly = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
  return float(np.polyfit(lx, ly, 1)[0])
