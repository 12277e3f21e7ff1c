"""Per-step overhead of SPIDER against clipped SGD and Adam.

What it measures, on the machine it runs on (all in one run):

1. Jitted optimizer update time (update + ``optax.apply_updates``) for flat
   float32 parameter pytrees (4 leaves) of 1e5 .. 1e8 parameters:
   ``so.spider(lr, c0, c1)`` recursive step (also with ``lean=True``),
   ``optax.chain(
   optax.clip_by_global_norm(c), optax.sgd(lr))``, ``optax.adam(lr)``,
   ``optax.adamw(lr)`` and ``so.mars_adamw(lr)`` (approx mode, one gradient).
   Every method is jitted with params and optimizer state donated (fair to all:
   each updates its buffers in place), compiled and warmed up outside the
   timing, and timed interleaved (the order of the methods rotates every
   repetition) with ``jax.block_until_ready``. Medians are reported, with the
   ratio to ``clip_by_global_norm``. Peak memory of each update is XLA's own
   account of the compiled step (``compiled.memory_analysis()``): arguments +
   outputs not aliased to a donated argument + temporaries.
2. A bytes model: the float32 arrays each update must read and write, times
   4 bytes. ``apply_updates`` is counted as fused into the update (the updates
   are never written out). Two columns:
   - ``ideal`` (one pass, as if the global norm were free): SPIDER reads
     g, g', v, x and writes v, x_prev, x: 7 arrays (lean, without x_prev:
     6); clip+SGD reads g, x and
     writes x: 3; Adam and AdamW read g, m, v, x and write m, v, x: 7; MARS
     (approx) also reads and writes the kept gradient g_{k-1}: 9.
   - ``two_pass`` (the minimum given that the global norm must be complete
     before any element can be scaled): SPIDER pass 1 reads g, g', v, writes v
     (and reduces ||v||), pass 2 reads v, x, writes x, x_prev: 8 arrays
     (lean: 7);
     clip+SGD reads g (norm), then g, x and writes x: 4; Adam has no norm: 7;
     MARS reads g, g_{k-1} for the norm of c_k, then the 9 arrays: 11.
   The machine's achievable memory bandwidth is measured with a jitted
   ``y = a*x + y`` (3 arrays moved) and a copy over a large array; each method's
   bandwidth fraction is ``two_pass bytes / time / measured bandwidth``.
3. What XLA fuses: the optimized HLO of each update
   (``jax.jit(f).lower(...).compile().as_text()``) is parsed; every top-level
   instruction that reads or writes a parameter-sized array is one pass over
   memory. The number of passes per leaf and the bytes they move are reported
   next to the model.
4. A full training step on an MLP (784-256-256-10, ReLU, random data) and
   the character LSTM of ``benchmarks/tasks.py`` (embedding 16, hidden 128,
   32 steps), batch 32 and 256: ``so.paired_grad`` (vectorized and not) +
   SPIDER update against one ``jax.grad`` + clip/SGD update. A naive estimate
   of the ratio is 2.0.

Every step, update or training step, comes from ``benchmarks.common
.step_pair``: the SPIDER steps are its recursive step (after one anchor), the
others its anchor step (a plain update).

Run (from the repository root)::

  python -m benchmarks.overhead --quick      # < 1 minute
  python -m benchmarks.overhead              # a few minutes

Results go to ``--out`` (JSON, default benchmarks/out/overhead.json) and plots
to ``--plot-dir`` (default benchmarks/out/).
"""

import argparse
import functools
import math
import pathlib
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
import tqdm

import spider_optax as so

if __package__ in (None, ''):  # python benchmarks/overhead.py
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402
from benchmarks import tasks  # noqa: E402

LR, C0, C1, CLIP = 0.01, 1.0, 10.0, 1.0
METHODS = ('spider', 'spider_lean', 'clip_sgd', 'adam', 'adamw', 'mars_adamw')
BASELINE = 'clip_sgd'
# Arrays of P float32 each update moves (see the module docstring).
BYTES_MODEL = {
  'ideal': {
    'spider': 7,
    'spider_lean': 6,
    'clip_sgd': 3,
    'adam': 7,
    'adamw': 7,
    'mars_adamw': 9,
  },
  'two_pass': {
    'spider': 8,
    'spider_lean': 7,
    'clip_sgd': 4,
    'adam': 7,
    'adamw': 7,
    'mars_adamw': 11,
  },
}
TRAIN_METHODS = ('grad_clip_sgd', 'spider_paired_vmap', 'spider_paired_loop')


# ----------------------------------------------------------------- helpers --


def make_params(size: int, key: jax.Array) -> dict[str, jax.Array]:
  """A flat float32 pytree of 4 leaves (1/2, 1/4, 1/8, 1/8 of ``size``)."""
  sizes = [size // 2, size // 4, size // 8]
  sizes.append(size - sum(sizes))
  keys = jax.random.split(key, 4)
  return {
    f'w{i}': jax.random.normal(k, (n,), jnp.float32) * 0.01
    for i, (k, n) in enumerate(zip(keys, sizes))
  }


def _tx(method: str) -> optax.GradientTransformation:
  if method == 'spider':
    return so.spider(LR, C0, C1)
  if method == 'spider_lean':
    return so.spider(LR, C0, C1, lean=True)
  if method == 'clip_sgd':
    return optax.chain(optax.clip_by_global_norm(CLIP), optax.sgd(LR))
  if method == 'adam':
    return optax.adam(LR)
  if method == 'adamw':
    return optax.adamw(LR)
  if method == 'mars_adamw':
    return so.mars_adamw(LR)
  raise ValueError(method)


class Timed:
  """Holds (params, state) and steps a donated, jitted update in place.

  ``step(params, state, *args) -> (params, state, info)``; compiled and
  warmed up (two steps) here, outside any timing.
  """

  def __init__(
    self, step: common.Step, params: Any, state: Any, args: tuple[Any, ...]
  ):
    self.raw, self.args = step, args
    self.fn = jax.jit(step, donate_argnums=(0, 1))
    self.params, self.state = jax.tree.map(jnp.copy, (params, state))
    self()
    self()

  def __call__(self) -> None:
    self.params, self.state, _ = self.fn(self.params, self.state, *self.args)
    jax.block_until_ready((self.params, self.state))

  def compiled(self) -> Any:
    args = (self.params, self.state, *self.args)
    shapes = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), args
    )
    return jax.jit(self.raw, donate_argnums=(0, 1)).lower(*shapes).compile()


def timed_step(
  method: str | optax.GradientTransformation,
  params: Any,
  grad_fn: Callable[..., Any],
  anchor_args: tuple[Any, ...],
  paired_fn: Callable[..., Any] | None = None,
  args: tuple[Any, ...] = (),
) -> Timed:
  """A plain update of ``method`` (a name, or the optimizer itself) on
  ``anchor_args``; with ``paired_fn``, SPIDER's recursive step on ``args``
  after one anchor step on ``anchor_args``, so that every timed step
  recurses."""
  tx = _tx(method) if isinstance(method, str) else method
  anchor, recursive = (
    functools.partial(f, None)
    for f in common.step_pair(lambda _: tx, grad_fn, paired_fn)
  )
  state = tx.init(params)
  if paired_fn is None:
    return Timed(anchor, params, state, anchor_args)
  params, state, _ = jax.jit(anchor)(params, state, *anchor_args)
  return Timed(recursive, params, state, args)


def recursive_update(
  method: str | optax.GradientTransformation,
  params: Any,
  grads: Any,
  prev_grads: Any,
) -> Timed:
  """``method``'s recursive update on given ``grads`` and ``prev_grads``
  (after one anchor step on ``grads``), without gradient evaluations."""
  return timed_step(
    method,
    params,
    common.GIVEN[0],
    (grads,),
    common.GIVEN[1],
    (grads, prev_grads),
  )


def peak_bytes(compiled: Any) -> int:
  """Bytes live during one call of a compiled step, by XLA's account."""
  m = compiled.memory_analysis()
  return (
    m.argument_size_in_bytes
    + m.output_size_in_bytes
    - m.alias_size_in_bytes
    + m.temp_size_in_bytes
  )


def time_interleaved(
  runners: dict[str, Callable[[], Any]],
  reps: int,
  desc: str,
  bar: tqdm.tqdm,
) -> dict[str, list[float]]:
  """Calls each runner ``reps`` times, rotating the order every repetition.

  Each runner must do one step and block until its results are ready.
  """
  names = list(runners)
  times = {n: [] for n in names}
  for r in range(reps):
    order = names[r % len(names) :] + names[: r % len(names)]
    for n in order:
      t0 = time.perf_counter()
      runners[n]()
      times[n].append(time.perf_counter() - t0)
    bar.update(1)
    bar.set_postfix_str(desc)
  return times


# ---------------------------------------------------------------- bandwidth --


def measure_bandwidth(n: int, reps: int) -> dict[str, float]:
  """Achievable memory bandwidth (bytes/s) from jitted axpy and copy."""
  x = jnp.ones((n,), jnp.float32)
  y = jnp.ones((n,), jnp.float32)
  axpy = jax.jit(lambda a, x, y: a * x + y, donate_argnums=(2,))
  copy = jax.jit(lambda x: x * 1.0001)  # read x, write a new array
  a = jnp.float32(1e-6)
  for _ in range(2):
    y = jax.block_until_ready(axpy(a, x, y))
    jax.block_until_ready(copy(x))
  t_axpy, t_copy = [], []
  for _ in range(reps):
    t0 = time.perf_counter()
    y = jax.block_until_ready(axpy(a, x, y))
    t_axpy.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    z = jax.block_until_ready(copy(x))
    t_copy.append(time.perf_counter() - t0)
    del z
  bw_axpy = 3 * 4 * n / common.median(t_axpy)
  bw_copy = 2 * 4 * n / common.median(t_copy)
  return {
    'n_floats': n,
    'axpy_bytes_per_s': bw_axpy,
    'copy_bytes_per_s': bw_copy,
    'bytes_per_s': max(bw_axpy, bw_copy),
  }


# --------------------------------------------------------------- HLO passes --

_INSTR = re.compile(
  r'^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.*?)\s+([\w\-]+)\((.*)$'
)
_SHAPE = re.compile(r'\b(f32|f16|bf16|f64|s32|u32|pred|s8|u8)\[([\d,]*)\]')
_DTYPE_BYTES = {
  'f32': 4,
  'f16': 2,
  'bf16': 2,
  'f64': 8,
  's32': 4,
  'u32': 4,
  'pred': 1,
  's8': 1,
  'u8': 1,
}
_FREE_OPS = {'parameter', 'constant', 'tuple', 'get-tuple-element', 'bitcast'}


def _shape_list(type_str: str) -> list[tuple[int, int]]:
  """[(numel, bytes per element)] of every array in an HLO type string."""
  out = []
  for dtype, dims in _SHAPE.findall(type_str):
    numel = math.prod(int(d) for d in dims.split(',') if d) if dims else 1
    out.append((numel, _DTYPE_BYTES[dtype]))
  return out


def analyze_hlo(hlo: str, min_numel: int) -> dict[str, Any]:
  """Counts top-level instructions that move parameter-sized arrays.

  Every instruction of the ENTRY computation (a fusion, a copy, an unfused
  op) that reads or writes an array of at least ``min_numel`` elements is one
  pass over memory; its bytes are the large operands it reads plus the large
  outputs it writes.
  """
  m = re.search(r'^ENTRY[^\n]*\n(.*?)^\}', hlo, re.S | re.M)
  body = m.group(1) if m else ''
  sizes: dict[str, list[tuple[int, int]]] = {}
  passes, fusions, copies, total_bytes = [], 0, 0, 0
  for line in body.splitlines():
    mi = _INSTR.match(line)
    if not mi:
      continue
    name, type_str, op, rest = mi.groups()
    sizes[name] = _shape_list(type_str)
    if op in _FREE_OPS:
      continue
    operands = re.findall(r'%([\w.\-]+)', rest.split('), ')[0])
    read = sum(
      n * b for o in operands for n, b in sizes.get(o, []) if n >= min_numel
    )
    written = sum(n * b for n, b in sizes[name] if n >= min_numel)
    if read or written:
      kind = re.search(r'kind=(\w+)', rest)
      numels = [n for o in operands for n, _ in sizes.get(o, [])]
      numels += [n for n, _ in sizes[name]]
      passes.append(
        {
          'name': name,
          'op': op,
          'kind': kind.group(1) if kind else None,
          'max_numel': max(numels),
          'read_bytes': read,
          'written_bytes': written,
        }
      )
      total_bytes += read + written
    fusions += op == 'fusion'
    copies += op == 'copy'
  return {
    'entry_fusions': fusions,
    'entry_copies': copies,
    'passes': passes,
    'n_passes': len(passes),
    'bytes_moved': total_bytes,
  }


# ----------------------------------------------------------- train models --


def train_models(key: jax.Array, batches: Sequence[int]) -> dict[str, Any]:
  """name -> (loss_fn(params, x, y), params, {batch: (x, y)}, description)."""
  kx, ky = jax.random.split(key)
  mlp = (
    functools.partial(tasks.mlp_loss, activation=jax.nn.relu, l2=0.0),
    tasks.mlp_init(0, (784, 256, 256, 10)),
    {
      b: (jax.random.normal(kx, (b, 784)), jax.random.randint(ky, (b,), 0, 10))
      for b in batches
    },
    'MLP 784-256-256-10',
  )
  lm = tasks.charlm_task(0, max(batches), hidden=128)
  x, y = lm.data
  lstm = (
    lm.loss_fn,
    lm.params,
    {b: (x[:b], y[:b]) for b in batches},
    'char LSTM, embed 16, hidden 128, 32 steps',
  )
  return {'mlp': mlp, 'lstm': lstm}


def _fmt_size(n: int) -> str:
  e = int(math.floor(math.log10(n)))
  m = n / 10**e
  return f'{m:g}e{e}'


def update_steps(size: int, key: jax.Array) -> dict[str, Timed]:
  """Every method's donated update on float32 params of ``size``."""
  k1, k2, k3 = jax.random.split(jax.random.fold_in(key, size), 3)
  params, grads, prev_grads = (make_params(size, k) for k in (k1, k2, k3))
  plain = lambda m: timed_step(m, params, common.GIVEN[0], (grads,))
  recursive = lambda m: recursive_update(m, params, grads, prev_grads)
  return dict(
    spider=recursive('spider'),
    spider_lean=recursive('spider_lean'),
    clip_sgd=plain('clip_sgd'),
    adam=plain('adam'),
    adamw=plain('adamw'),
    mars_adamw=plain('mars_adamw'),
  )


def hlo_analysis(method: str, timed: Timed, size: int) -> dict[str, Any]:
  """The passes of ``method``'s compiled update (see :func:`analyze_hlo`)."""
  compiled = timed.compiled()
  min_numel = min(x.size for x in jax.tree.leaves(timed.params))
  a = analyze_hlo(compiled.as_text(), min_numel)
  return dict(
    a,
    peak_bytes=peak_bytes(compiled),
    size=size,
    passes_per_leaf=a['n_passes'] / 4,
    bytes_moved_per_param=a['bytes_moved'] / size,
    model_bytes_per_param={k: 4 * v[method] for k, v in BYTES_MODEL.items()},
  )


def update_row(
  size: int,
  times: dict[str, list[float]],
  hlo_here: dict[str, Any],
  bandwidth: float,
) -> dict[str, Any]:
  """Each method's median time, against the bytes models and the HLO."""
  row = {}
  for m in METHODS:
    t = common.median(times[m])
    bytes_2p = BYTES_MODEL['two_pass'][m] * 4 * size
    bytes_1p = BYTES_MODEL['ideal'][m] * 4 * size
    hlo_bytes = hlo_here[m]['bytes_moved_per_param'] * size
    row[m] = {
      'median_s': t,
      'min_s': float(min(times[m])),
      'reps': len(times[m]),
      'model_bytes_two_pass': bytes_2p,
      'model_bytes_ideal': bytes_1p,
      'achieved_bytes_per_s': bytes_2p / t,
      'bandwidth_fraction': bytes_2p / t / bandwidth,
      'time_over_bytes_bound': t / (bytes_2p / bandwidth),
      'time_over_ideal_bound': t / (bytes_1p / bandwidth),
      'peak_bytes': hlo_here[m]['peak_bytes'],
      # Bytes the compiled HLO moves (see analyze_hlo).
      'hlo_bytes': hlo_bytes,
      'hlo_bandwidth_fraction': hlo_bytes / t / bandwidth,
    }
  for m in METHODS:
    row[m]['ratio_vs_clip_sgd'] = row[m]['median_s'] / row[BASELINE]['median_s']
  return row


def train_steps(
  loss_fn: Callable[..., Any], params: Any, batch: tuple[Any, ...]
) -> dict[str, Timed]:
  """One jitted training step (gradient(s) + update + apply) per method."""
  grad_fn = jax.grad(loss_fn)
  paired = lambda vectorized: so.paired_grad(loss_fn, vectorized=vectorized)
  return dict(
    grad_clip_sgd=timed_step('clip_sgd', params, grad_fn, batch),
    spider_paired_vmap=timed_step(
      'spider', params, grad_fn, batch, paired(True), batch
    ),
    spider_paired_loop=timed_step(
      'spider', params, grad_fn, batch, paired(False), batch
    ),
  )


def experiment(args: argparse.Namespace, bar: tqdm.tqdm) -> dict[str, Any]:
  quick = args.quick
  sizes = (
    [100_000]
    if quick
    else [100_000, 1_000_000, 10_000_000, 30_000_000, 100_000_000]
  )
  batches = [32] if quick else [32, 256]
  update_reps = lambda size: (
    10
    if quick
    else {100_000: 200, 1_000_000: 60, 10_000_000: 20, 30_000_000: 10}.get(
      size, 6
    )
  )
  train_reps = 10 if quick else 60
  bar.reset(
    total=sum(update_reps(s) for s in sizes) + train_reps * len(batches) * 2
  )  # 2 models
  bar.unit = 'rep'
  bw = measure_bandwidth(
    4_000_000 if quick else 25_000_000, 10 if quick else 20
  )

  key = jax.random.key(0)
  updates, hlo, hlo_by_size = {}, {}, {}
  for size in sizes:
    steppers = update_steps(size, key)
    hlo_here = {m: hlo_analysis(m, st, size) for m, st in steppers.items()}
    hlo_by_size[str(size)] = {
      m: {
        k: a[k]
        for k in (
          'n_passes',
          'entry_fusions',
          'entry_copies',
          'bytes_moved_per_param',
        )
      }
      for m, a in hlo_here.items()
    }
    if size == sizes[min(1, len(sizes) - 1)]:  # Full detail at 1e6 params.
      hlo = hlo_here
    times = time_interleaved(
      steppers, update_reps(size), f'update P={_fmt_size(size)}', bar
    )
    del steppers
    updates[str(size)] = update_row(size, times, hlo_here, bw['bytes_per_s'])

  train: dict[str, Any] = {}
  models = train_models(jax.random.fold_in(key, 7), batches)
  for name, (loss_fn, params, batch_of, description) in models.items():
    rows = {}
    for b in batches:
      times = time_interleaved(
        train_steps(loss_fn, params, batch_of[b]),
        train_reps,
        f'{name} B={b}',
        bar,
      )
      base = common.median(times['grad_clip_sgd'])
      rows[str(b)] = {
        m: {
          'median_s': common.median(times[m]),
          'min_s': float(min(times[m])),
          'reps': len(times[m]),
          'ratio_vs_grad_clip_sgd': common.median(times[m]) / base,
        }
        for m in TRAIN_METHODS
      }
    train[name] = {
      'description': description,
      'params': sum(x.size for x in jax.tree.leaves(params)),
      'results': rows,
    }
  return dict(
    config={
      'lr': LR,
      'c0': C0,
      'c1': C1,
      'clip': CLIP,
      'methods': list(METHODS),
      'baseline': BASELINE,
      'sizes': sizes,
      'leaves': 4,
      'dtype': 'float32',
      'donated': 'params and optimizer state, for every method',
      'timing': 'median of interleaved repetitions (order rotated)',
      'bytes_model_arrays': BYTES_MODEL,
      'bytes_model_note': (
        'arrays of P float32 read+written per update, '
        'apply_updates counted as fused into the update; '
        'two_pass = minimum given that the global norm must '
        'finish before scaling'
      ),
    },
    bandwidth=bw,
    updates=updates,
    hlo=hlo,
    hlo_by_size=hlo_by_size,
    train_step={'batches': batches, 'models': train},
  )


def report(res: dict[str, Any]) -> str:
  env, bw = res['environment'], res['bandwidth']
  lines = [
    f'overhead ({res["mode"]}): {env["cpu"]}, {env["cpu_count"]} CPUs, '
    f'{env["jax_devices"]}, jax {env["versions"]["jax"]}, optax '
    f'{env["versions"]["optax"]}',
    f'measured bandwidth: axpy {bw["axpy_bytes_per_s"] / 1e9:.2f} GB/s, '
    f'copy to a fresh buffer {bw["copy_bytes_per_s"] / 1e9:.2f} GB/s '
    f'(using {bw["bytes_per_s"] / 1e9:.2f} GB/s)',
    '',
    'Jitted update + apply_updates (median; bytes = two-pass model; '
    'bw frac = bytes/time/bandwidth; HLO = bytes the compiled update moves)',
    f'{"params":>7} {"method":>9} {"time":>10} {"vs clip":>8} '
    f'{"bytes/P":>7} {"GB/s":>7} {"bw frac":>7} {"t/bound":>7} '
    f'{"HLO B/P":>7} {"HLO frac":>8} {"peak MB":>8}',
  ]
  for size, row in res['updates'].items():
    for m in METHODS:
      r = row[m]
      lines.append(
        f'{_fmt_size(int(size)):>7} {m:>9} {r["median_s"] * 1e3:>8.3f}ms '
        f'{r["ratio_vs_clip_sgd"]:>7.2f}x '
        f'{r["model_bytes_two_pass"] / int(size):>7.0f} '
        f'{r["achieved_bytes_per_s"] / 1e9:>7.2f} '
        f'{r["bandwidth_fraction"]:>7.2f} {r["time_over_bytes_bound"]:>7.2f} '
        f'{r["hlo_bytes"] / int(size):>7.0f} '
        f'{r["hlo_bandwidth_fraction"]:>8.2f}'
        f' {r["peak_bytes"] / 1e6:>8.1f}'
      )
  if res['hlo']:
    size = next(iter(res['hlo'].values()))['size']
    lines += [
      '',
      f'Optimized HLO at P={_fmt_size(size)} (4 leaves): passes '
      'over parameter-sized arrays',
      f'{"method":>9} {"passes":>6} {"/leaf":>6} {"fusions":>7} '
      f'{"copies":>6} {"HLO B/P":>7} {"model B/P":>9}',
    ]
    for m, a in res['hlo'].items():
      lines.append(
        f'{m:>9} {a["n_passes"]:>6} {a["passes_per_leaf"]:>6.2f} '
        f'{a["entry_fusions"]:>7} {a["entry_copies"]:>6} '
        f'{a["bytes_moved_per_param"]:>7.1f} '
        f'{a["model_bytes_per_param"]["two_pass"]:>9}'
      )
    for m, a in res['hlo'].items():
      top = max(p['max_numel'] for p in a['passes'])
      leaf = [p for p in a['passes'] if p['max_numel'] == top]
      lines.append(
        f'{m:>9} largest leaf: '
        + ', '.join(
          f'{p["op"]}{"/" + p["kind"] if p["kind"] else ""}'
          f'(R{p["read_bytes"] // (4 * top)} '
          f'W{p["written_bytes"] // (4 * top)})'
          for p in leaf
        )
      )
  for model in res['train_step']['models'].values():
    lines += [
      '',
      f'Training step, {model["description"]} ({model["params"]} '
      'params), median (ratio vs grad + clip/sgd)',
      f'{"batch":>5} ' + ' '.join(f'{m:>24}' for m in TRAIN_METHODS),
    ]
    for b, row in model['results'].items():
      lines.append(
        f'{b:>5} '
        + ' '.join(
          f'{row[m]["median_s"] * 1e3:>13.3f}ms '
          f'({row[m]["ratio_vs_grad_clip_sgd"]:.2f}x)'
          for m in TRAIN_METHODS
        )
      )
  return '\n'.join(lines)


def plots(res: dict[str, Any], plot_dir: pathlib.Path) -> list[str]:
  plt = common.pyplot()
  sizes = [int(s) for s in res['updates']]
  fig, ax = plt.subplots(figsize=(6, 4.5))
  for m in METHODS:
    ax.plot(
      sizes,
      [res['updates'][str(s)][m]['median_s'] * 1e3 for s in sizes],
      'o-',
      label=m,
    )
  bw = res['bandwidth']['bytes_per_s']
  for m, style in (('spider', ':'), ('clip_sgd', '--')):
    ax.plot(
      sizes,
      [BYTES_MODEL['two_pass'][m] * 4 * s / bw * 1e3 for s in sizes],
      style,
      color='gray',
      label=f'{m} bytes bound',
    )
  common.label_axes(
    ax,
    'parameters (float32)',
    'time per update (ms)',
    f'Jitted update + apply ({res["environment"]["jax_backend"]})',
    xscale='log',
    yscale='log',
  )
  paths = [common.save_plot(fig, plot_dir, 'overhead_update_time.png')]

  fig, ax = plt.subplots(figsize=(7, 4.5))
  groups = [
    (name, b, row)
    for name, model in res['train_step']['models'].items()
    for b, row in model['results'].items()
  ]
  width = 0.8 / len(TRAIN_METHODS)
  for i, m in enumerate(TRAIN_METHODS):
    ax.bar(
      [j + i * width for j in range(len(groups))],
      [row[m]['ratio_vs_grad_clip_sgd'] for _, _, row in groups],
      width,
      label=m,
    )
  ax.axhline(2.0, color='gray', ls='--', label='naive 2x')
  ax.set_xticks([j + width for j in range(len(groups))])
  ax.set_xticklabels([f'{name}\nbatch {b}' for name, b, _ in groups])
  common.label_axes(
    ax,
    '',
    'step time / (grad + clip/sgd)',
    'Training step: paired gradients + SPIDER update',
  )
  return paths + [common.save_plot(fig, plot_dir, 'overhead_train_step.png')]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Measures, prints the tables, writes JSON and PNGs."""
  return common.script('overhead', __doc__, argv, experiment, report, plots)


if __name__ == '__main__':
  main()
