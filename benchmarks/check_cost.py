"""What the run-time overflow checks cost per update.

Every update of ``so.spider`` (lean too), ``so.storm`` and the MARS members
checks that finite gradients did not give a non-finite step, and every Adam
inside a MARS member checks that its second moment did not overflow; most
read the verdict off a sum the step computes anyway (the clip's norm).
This script times each optimizer with its checks and the same optimizer
built with them removed (the two functions that add them replaced by no-ops
while it is built and compiled), side by side in one run, interleaved, on
flat float32 pytrees of 4 leaves (``benchmarks.overhead``'s layout, its
timing loop and donation), and reports the median time of each and their
ratio.

Run: ``python -m benchmarks.check_cost`` (``--quick``: one small size).
"""

import argparse
import contextlib
import pathlib
import statistics
import sys
import unittest.mock
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import tqdm

import spider_optax as so
from spider_optax import _checks
from spider_optax import muon

if __package__ in (None, ''):  # run as a file: benchmarks/check_cost.py
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402
from benchmarks import overhead  # noqa: E402

LR, C0 = 1e-3, 1.0

# (name, builder, paired): paired members take prev_grads (two gradients).
METHODS: tuple[tuple[str, Callable[[], Any], bool], ...] = (
  ('spider', lambda: so.spider(LR, C0), True),
  ('spider_lean', lambda: so.spider(LR, C0, lean=True), True),
  ('storm', lambda: so.storm(LR, 0.9, C0, approx=True), False),
  ('mars_adamw', lambda: so.mars_adamw(LR), False),
  ('mars_lion', lambda: so.mars_lion(LR), False),
)


@contextlib.contextmanager
def unchecked() -> Iterator[None]:
  """Builds and traces optimizers without the overflow checks."""
  no_square_check = lambda grads, nu: jax.numpy.array(False)
  with (
    unittest.mock.patch.object(
      _checks, 'overflow_check', lambda bad, inputs, result, *a, **k: result
    ),
    unittest.mock.patch.object(muon, '_square_overflowed', no_square_check),
  ):
    yield


def timed(build: Callable[[], Any], paired: bool, size: int) -> Any:
  """A compiled, warmed-up update of ``build()`` on ``size`` parameters."""
  keys = jax.random.split(jax.random.key(0), 3)
  params = overhead.make_params(size, keys[0])
  grads = overhead.make_params(size, keys[1])
  if paired:
    prev = overhead.make_params(size, keys[2])
    return overhead.recursive_update(build(), params, grads, prev)
  return overhead.timed_step(build(), params, common.GIVEN[0], (grads,))


def experiment(args: argparse.Namespace, bar: tqdm.tqdm) -> dict[str, Any]:
  sizes = [100_000] if args.quick else [1_000_000, 10_000_000]
  reps = (lambda n: 10) if args.quick else (lambda n: 100 if n <= 1e6 else 60)
  bar.total = sum(reps(n) for n in sizes)
  rows = []
  for size in sizes:
    runners = {}
    for name, build, paired in METHODS:
      runners[name] = timed(build, paired, size)
      with unchecked():
        runners[f'{name} (unchecked)'] = timed(build, paired, size)
    times = overhead.time_interleaved(runners, reps(size), f'{size:.0e}', bar)
    for name, _, _ in METHODS:
      checked = statistics.median(times[name])
      bare = statistics.median(times[f'{name} (unchecked)'])
      rows.append(
        dict(
          method=name,
          size=size,
          checked_ms=1e3 * checked,
          unchecked_ms=1e3 * bare,
          ratio=checked / bare,
        )
      )
  return dict(rows=rows)


def report(res: dict[str, Any]) -> str:
  lines = [
    'Update time with the overflow checks against without them '
    '(median ms; ratio > 1: the checks cost that much)',
    f'{"method":<14}{"params":>10}{"checked":>10}{"unchecked":>11}{"ratio":>8}',
  ]
  for r in res['rows']:
    lines.append(
      f'{r["method"]:<14}{r["size"]:>10.0e}{r["checked_ms"]:>10.2f}'
      f'{r["unchecked_ms"]:>11.2f}{r["ratio"]:>7.2f}x'
    )
  return '\n'.join(lines)


def plots(res: dict[str, Any], plot_dir: Any) -> list[str]:
  del res, plot_dir
  return []  # a table says it


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Measures, prints the table, writes JSON."""
  return common.script('check_cost', __doc__, argv, experiment, report, plots)


if __name__ == '__main__':
  main()
