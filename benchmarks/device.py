"""Per-step cost on whatever backend this runs on: one script, one JSON.

``python -m benchmarks.device`` (under 8 minutes on a 2-core CPU; ``--quick``
for the smoke test) measures, side by side in one run on the default JAX
backend (CPU, GPU or TPU):

1. The jitted, donated update + ``optax.apply_updates`` of ``so.spider``
   (recursive step, with and without ``lean=True``), clip + SGD, Adam, AdamW
   and ``so.mars_adamw``, ``optax.lion(b1=0.95, b2=0.95)`` and
   ``so.mars_lion`` on float32 params of 1e6, 1e7 and 1e8 (fewer with
   ``--quick``), with each update's time over its bytes bound: the two-pass
   bytes model of ``benchmarks/overhead.py`` divided by the bandwidth a jitted
   ``a*x + y`` achieves on the same device. The matrix members,
   ``so.mars_muon`` against ``optax.contrib.muon(nesterov=False,
   consistent_rms=0.2, beta=0.95)`` and ``so.mars_shampoo`` against
   ``optax.contrib.muon(nesterov=False, beta=0.95)``, on 1e6 and 1e7 params
   of 500 x 500 matrices (and 1e8 as 100 of 1000 x 1000 on an accelerator;
   on a 2-core CPU that size takes half a minute an update), against their
   bound: Newton-Schulz's flops at the rate of a jitted ``x @ x`` on the same
   matrices, plus their bytes at the measured bandwidth.
2. The default mode's copy of x_k into its previous-params buffer, alone,
   against clip + SGD's update.
3. A training step with ``so.paired_grad`` vectorized (one vmapped
   evaluation) and not (two), against one gradient + clip/SGD, on an MLP and
   an LSTM at batch 32 and 256 (one case with ``--quick``), with the
   temporary memory XLA reports for each.
4. What the run-time checks of traced hyperparameters cost: ``so.spider``'s
   update on 1e3 params with a constant learning rate, a schedule, and
   ``optax.inject_hyperparams``.
5. A training step (one gradient + update + apply) on the character
   transformer of ``benchmarks/tasks.py`` (2 layers, batch 16 and 64; one
   pair on 1 layer with ``--quick``), each MARS member in approx mode
   against its base optimizer.
6. Automatic clipping: ``so.spider(lr, epsilon=...)``'s update with the fit
   redone on every sample and every 16th (the default), against the
   fixed-clip ``so.spider(lr, c0, c1)`` update, on 1e3 and 1e6 params; and
   the trajectory effect of amortising the refit, on the cosh problem of
   ``tests/test_autoclip.py`` over 3 seeds.

The targets of the per-step cost issue are printed with each ratio: lean
within 2.2x clip + SGD, the default within 2.7x, automatic clipping within
1.3x the fixed clip, the recursive-correction update within 1.3x AdamW, and
on a GPU each update within 1.25x its bytes bound; each MARS member's
update within 1.5x its bound (bytes, and flops for the matrix members) and
its training step within 1.1x its base optimizer's.
"""

import argparse
import pathlib
import sys
from collections.abc import Sequence
from typing import Any

if __package__ in (None, ''):  # run as a file: make the package importable
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

import spider_optax as so
from benchmarks import common  # noqa: E402
from benchmarks import overhead  # noqa: E402
from spider_optax import _buffers

TARGETS = {
  'spider_lean / clip_sgd': 2.2,
  'spider / clip_sgd': 2.7,
  'mars_adamw / adamw': 1.3,
  'auto_clip / fixed_clip': 1.3,
  'time / bytes bound (GPU)': 1.25,
  'MARS update / its bound': 1.5,
  'MARS step / base step': 1.1,
}
REFITS = (1, 16)


def update_costs(sizes: Sequence[int], reps: int, bar: tqdm.tqdm) -> dict:
  """Every method's update at each size, and its time over the bytes bound."""
  bw = overhead.measure_bandwidth(min(max(sizes), 25_000_000), 10)
  rows = {}
  for size in sizes:
    steppers = overhead.update_steps(size, jax.random.key(0))
    times = overhead.time_interleaved(steppers, reps, f'P={size:.0e}', bar)
    del steppers
    row = {}
    for m in overhead.METHODS:
      t = common.median(times[m])
      bound = overhead.BYTES_MODEL['two_pass'][m] * 4 * size / bw['bytes_per_s']
      row[m] = {'median_s': t, 'time_over_bytes_bound': t / bound}
    rows[str(size)] = row
  return {'bandwidth': bw, 'updates': rows}


def matrix_costs(
  layouts: Sequence[tuple[int, int]],
  methods: Sequence[str],
  reps: int,
  bandwidth: float,
  bar: tqdm.tqdm,
) -> dict:
  """The matrix members and their bases on ``(count, n)`` square matrices
  (:func:`benchmarks.overhead.matrix_costs`), half the repetitions from 1e7
  parameters on."""
  return overhead.matrix_costs(
    layouts,
    lambda size: reps if size <= 1_000_000 else max(2, reps // 2),
    bandwidth,
    bar,
    methods,
  )


def paired_costs(
  cases: Sequence[tuple[str, int]], reps: int, bar: tqdm.tqdm
) -> dict:
  """A training step: paired gradients vectorized or not, against one
  gradient + clip/SGD; and each paired step's temporary memory."""
  models = overhead.train_models(
    jax.random.key(7), sorted({b for _, b in cases})
  )
  out = {}
  for name, batch in cases:
    loss_fn, params, batch_of, description = models[name]
    steppers = overhead.train_steps(loss_fn, params, batch_of[batch])
    times = overhead.time_interleaved(steppers, reps, name, bar)
    base = common.median(times['grad_clip_sgd'])
    out[f'{name} {batch}'] = {
      'model': description,
      'batch': batch,
      'steps': {
        m: {
          'median_s': common.median(t),
          'ratio_vs_grad_clip_sgd': (common.median(t) / base),
          'temp_bytes': steppers[m]
          .compiled()
          .memory_analysis()
          .temp_size_in_bytes,
        }
        for m, t in times.items()
      },
    }
  return out


def check_costs(size: int, reps: int, bar: tqdm.tqdm) -> dict:
  """``so.spider``'s update with a constant learning rate, a schedule and
  ``optax.inject_hyperparams`` (traced values, checked at run time), and
  ``optax.adam`` with the same schedule: what the run-time checks cost."""
  keys = jax.random.split(jax.random.key(size), 3)
  params, grads, prev = (overhead.make_params(size, k) for k in keys)
  schedule = optax.linear_schedule(0.0, 0.01, 100)
  recursive = lambda tx: overhead.recursive_update(tx, params, grads, prev)
  steppers = {
    'spider_constant_lr': recursive(so.spider(0.01, 1.0, 10.0)),
    'spider_schedule': recursive(so.spider(schedule, 1.0, 10.0)),
    'spider_inject_hyperparams': recursive(
      optax.inject_hyperparams(so.spider)(0.01, 1.0, 10.0)
    ),
    'adam_schedule': overhead.timed_step(
      optax.adam(schedule), params, common.GIVEN[0], (grads,)
    ),
  }
  times = overhead.time_interleaved(steppers, reps, f'checks {size}', bar)
  return {'size': size, **{m: common.median(t) for m, t in times.items()}}


def copy_costs(sizes: Sequence[int], reps: int, bar: tqdm.tqdm) -> dict:
  """The default mode's copy of x_k into its donated previous-params buffer,
  alone, against clip + SGD's whole update."""
  out = {}
  for size in sizes:
    params = overhead.make_params(size, jax.random.key(size))
    grads = overhead.make_params(size, jax.random.key(size + 1))
    # The estimator's own write of x_k over the donated buffer.
    copy = lambda p, prev, *_: (
      p,
      jax.tree.map(_buffers.overwrite, prev, p),
      None,
    )
    steppers = {
      'copy': overhead.Timed(copy, params, params, ()),
      'clip_sgd': overhead.timed_step(
        'clip_sgd', params, common.GIVEN[0], (grads,)
      ),
    }
    times = overhead.time_interleaved(steppers, reps, f'copy {size}', bar)
    out[str(size)] = {m: common.median(t) for m, t in times.items()}
  return out


def autoclip_costs(sizes: Sequence[int], reps: int, bar: tqdm.tqdm) -> dict:
  """The automatic-clipping update (refit every 1 and 16 samples) against
  the fixed clip, each on its recursive step."""
  out = {}
  for size in sizes:
    keys = jax.random.split(jax.random.key(size), 3)
    params, grads, prev = (overhead.make_params(size, k) for k in keys)
    txs = {'fixed_clip': so.spider(0.01, 1.0, 10.0, diagnostics=True)}
    for n in REFITS:
      txs[f'auto_refit_{n}'] = so.autoclip.auto_clip_spider(
        0.01, 1.0, c0=1.0, c1=10.0, refit_every=n
      )
    steppers = {
      name: overhead.recursive_update(tx, params, grads, prev)
      for name, tx in txs.items()
    }
    # Small updates take microseconds: more repetitions for a stable median.
    n = 10 * reps if size <= 10_000 else reps
    times = overhead.time_interleaved(steppers, n, f'auto {size}', bar)
    base = common.median(times['fixed_clip'])
    out[str(size)] = {
      m: {
        'median_s': common.median(t),
        'ratio_vs_fixed_clip': (common.median(t) / base),
      }
      for m, t in times.items()
    }
  return out


def cosh_loss(params, s, z):
  """f = mean_i sum_j cosh(x_j)(1 + s_ij) + z_i . x (tests/test_autoclip.py)."""
  x = params['x']
  return jnp.mean(jnp.sum(jnp.cosh(x) * (1 + s), -1) + z @ x)


def autoclip_trajectory(steps: int, seeds: Sequence[int]) -> dict:
  """Final |grad f| (f's gradient is sinh x) after ``steps`` steps, anchors
  every 10 on 8x larger batches, for each refit interval and seed."""
  result = {}
  for n in REFITS:
    tx = so.autoclip.auto_clip_spider(0.2, 2.0, c0=1.0, c1=3.0, refit_every=n)
    anchor, recursive = _cosh_steps(tx)
    finals = []
    for seed in seeds:
      rng = np.random.default_rng(seed)
      params = {'x': jnp.full(4, 4.0, jnp.float32)}
      state = tx.init(params)
      for k in range(steps):
        size = 128 if k % 10 == 0 else 16
        batch = (
          jnp.asarray(rng.uniform(-0.5, 0.5, (size, 4)), jnp.float32),
          jnp.asarray(rng.normal(size=(size, 4)), jnp.float32),
        )
        step = anchor if k % 10 == 0 else recursive
        params, state = step(params, state, *batch)
      finals.append(float(np.linalg.norm(np.sinh(np.float64(params['x'])))))
    result[f'refit_{n}'] = {'final_grad_norms': finals}
  return result


def _cosh_steps(tx):
  """Jitted anchor and recursive steps of ``tx`` on :func:`cosh_loss`."""
  paired = so.paired_grad(cosh_loss)
  anchor = jax.jit(
    lambda p, st, *b: _apply(tx, p, st, jax.grad(cosh_loss)(p, *b))
  )

  @jax.jit
  def recursive(p, st, *b):
    g, pg = paired(p, so.prev_params(st, p), *b)
    return _apply(tx, p, st, g, prev_grads=pg)

  return anchor, recursive


def _apply(tx, params, state, grads, **extra):
  updates, state = tx.update(grads, state, params, **extra)
  return jax.tree.map(lambda p, u: p + u, params, updates), state


def experiment(args: argparse.Namespace, bar: tqdm.tqdm) -> dict[str, Any]:
  quick = args.quick
  sizes = [10_000] if quick else [1_000_000, 10_000_000, 100_000_000]
  reps = 2 if quick else 10
  layouts = overhead.MATRIX_LAYOUTS['quick' if quick else 'full']
  if not quick and jax.default_backend() != 'cpu':
    layouts = [*layouts, (100, 1000)]  # 1e8: 30 s an update on 2 CPU cores
  matrix_methods = (
    ('muon', 'mars_shampoo') if quick else overhead.MATRIX_METHODS
  )
  # Quick: one pair on a 1-layer transformer (each step compiles for 1-4 s).
  members = ['mars_adamw'] if quick else list(overhead.MARS_BASES)
  member_layers, member_batches = (1, [4]) if quick else (2, [16, 64])
  member_reps = reps if quick else 3 * reps
  matrix_reps = sum(
    reps if c * n * n <= 1_000_000 else max(2, reps // 2) for c, n in layouts
  )
  autoclip_sizes = [1_000] if quick else [1_000, 1_000_000]
  paired_cases = (
    [('mlp', 32)]
    if quick
    else [('mlp', 32), ('mlp', 256), ('lstm', 32), ('lstm', 256)]
  )
  bar.reset(
    total=reps * (2 * len(sizes) + len(paired_cases) + len(autoclip_sizes) + 10)
    + matrix_reps
    + member_reps * len(member_batches)
  )
  bar.unit = 'rep'
  costs = update_costs(sizes, reps, bar)
  result = dict(
    backend=jax.default_backend(),
    device=str(jax.devices()[0].device_kind),
    targets=TARGETS,
    **costs,
    matrix=matrix_costs(
      layouts, matrix_methods, reps, costs['bandwidth']['bytes_per_s'], bar
    ),
    members=overhead.member_train_costs(
      member_layers, member_batches, members, member_reps, bar
    ),
    copy=copy_costs(sizes, reps, bar),
    paired=paired_costs(paired_cases, reps, bar),
    checks=check_costs(1_000, 10 * reps, bar),
    autoclip=autoclip_costs(autoclip_sizes, reps, bar),
    autoclip_trajectory=autoclip_trajectory(
      20 if quick else 200, [0] if quick else [0, 1, 2]
    ),
  )
  result['ratios'] = ratios(result)
  return result


def ratios(res: dict[str, Any]) -> dict[str, dict[str, float]]:
  """The issue's ratios, by size: each against its target."""
  out: dict[str, dict[str, float]] = {}
  for size, row in res['updates'].items():
    t = {m: row[m]['median_s'] for m in row}
    out[size] = {
      'spider_lean / clip_sgd': t['spider_lean'] / t['clip_sgd'],
      'spider / clip_sgd': t['spider'] / t['clip_sgd'],
      'mars_adamw / adamw': t['mars_adamw'] / t['adamw'],
      'mars_lion / lion': t['mars_lion'] / t['lion'],
      'mars_adamw / its bound': row['mars_adamw']['time_over_bytes_bound'],
      'mars_lion / its bound': row['mars_lion']['time_over_bytes_bound'],
    }
  for size, block in res['matrix'].items():
    row = block['methods']
    for m, base in overhead.MARS_BASES.items():
      if m in row:
        out.setdefault(f'matrix {size}', {}).update(
          {
            f'{m} / {base}': row[m]['ratio_vs_base'],
            f'{m} / its bound': row[m]['time_over_bound'],
          }
        )
  for batch, row in res['members']['results'].items():
    out[f'transformer B={batch}'] = {
      f'{m} step / {overhead.MARS_BASES[m]} step': row[m]['ratio_vs_base']
      for m in res['members']['members']
    }
  for size, row in res['autoclip'].items():
    out.setdefault(f'autoclip {size}', {}).update(
      {
        f'auto_clip (refit {n}) / fixed_clip': row[f'auto_refit_{n}'][
          'ratio_vs_fixed_clip'
        ]
        for n in REFITS
      }
    )
  return out


def target(name: str) -> float | None:
  """The issue's target for the ratio ``name`` of :func:`ratios`, or None."""
  if name.endswith(' / its bound'):
    return TARGETS['MARS update / its bound']
  if name.endswith(' step'):
    return TARGETS['MARS step / base step']
  return next((v for k, v in TARGETS.items() if name.startswith(k[:8])), None)


def report(res: dict[str, Any]) -> str:
  env = res['environment']
  lines = [
    f'device ({res["mode"]}): backend {res["backend"]}, {res["device"]}, '
    f'{env["cpu"]}, jax {env["versions"]["jax"]}',
    f'bandwidth (a*x + y): {res["bandwidth"]["bytes_per_s"] / 1e9:.1f} GB/s',
    '',
    'update + apply_updates, median ms (time / bytes bound)',
  ]
  for size, row in res['updates'].items():
    cells = ', '.join(
      f'{m} {v["median_s"] * 1e3:.3f} ({v["time_over_bytes_bound"]:.2f})'
      for m, v in row.items()
    )
    lines.append(f'  P={float(size):.0e}: {cells}')
  lines.append(
    'matrix members, median ms (time / flops + bytes bound), '
    'matmul rate of x @ x'
  )
  for size, block in res['matrix'].items():
    cells = ', '.join(
      f'{m} {v["median_s"] * 1e3:.2f} ({v["time_over_bound"]:.2f})'
      for m, v in block['methods'].items()
    )
    lines.append(
      f'  P={float(size):.0e} ({block["count"]} x {block["n"]}^2, '
      f'{block["matmul_flops_per_s"] / 1e9:.1f} GFLOP/s): {cells}'
    )
  members = res['members']
  lines.append(f'training step, {members["description"]}, median ms:')
  for batch, row in members['results'].items():
    lines.append(
      f'  batch {batch}: '
      + ', '.join(f'{m} {v["median_s"] * 1e3:.2f}' for m, v in row.items())
    )
  lines.append('')
  lines.append('ratios (target)')
  for key, row in res['ratios'].items():
    for name, value in row.items():
      lines.append(f'  {key:>14} {name:36} {value:5.2f}x  ({target(name)}x)')
  lines.append('')
  lines.append(
    "the default mode's copy of x_k alone, against clip + SGD's update: "
    + ', '.join(
      f'P={float(size):.0e} {row["copy"] / row["clip_sgd"]:.2f}x'
      for size, row in res['copy'].items()
    )
  )
  lines.append('training steps against one gradient + clip/SGD:')
  for row in res['paired'].values():
    lines.append(
      f'  {row["model"]}, batch {row["batch"]}: '
      + ', '.join(
        f'{m} {v["ratio_vs_grad_clip_sgd"]:.2f}x '
        f'({v["temp_bytes"] / 1e6:.1f} MB temp)'
        for m, v in row['steps'].items()
      )
    )
  checks = res['checks']
  lines.append(
    f'run-time checks, update at P={checks["size"]}: '
    + ', '.join(
      f'{m} {v * 1e6:.0f} us' for m, v in checks.items() if m != 'size'
    )
  )
  lines.append('automatic clipping, final |grad f| over seeds:')
  for name, v in res['autoclip_trajectory'].items():
    lines.append(
      f'  {name}: ' + ', '.join(f'{g:.3f}' for g in v['final_grad_norms'])
    )
  return '\n'.join(lines)


def plots(res: dict[str, Any], plot_dir: pathlib.Path) -> list[str]:
  del res, plot_dir
  return []


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Measures, prints the ratios, writes JSON."""
  return common.script('device', __doc__, argv, experiment, report, plots)


if __name__ == '__main__':
  main()
