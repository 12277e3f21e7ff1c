"""Per-step overhead of SPIDER against clipped SGD and Adam, and of each MARS
member against the optimizer it is built on.

What it measures, on the machine it runs on (all in one run):

1. Jitted optimizer update time (update + ``optax.apply_updates``) for flat
   float32 parameter pytrees (4 leaves) of 1e5 .. 1e8 parameters:
   ``so.spider(lr, c0, c1)`` recursive step (also with ``lean=True``),
   ``optax.chain(
   optax.clip_by_global_norm(c), optax.sgd(lr))``, ``optax.adam(lr)``,
   ``optax.adamw(lr)`` and ``so.mars_adamw(lr)``, ``optax.lion(lr, b1=0.95,
   b2=0.95)`` and ``so.mars_lion(lr)`` (the MARS members in approx mode, one
   gradient per step).
   Every method is jitted with params and optimizer state donated (fair to all:
   each updates its buffers in place), compiled and warmed up outside the
   timing, and timed interleaved (the order of the methods rotates every
   repetition) with ``jax.block_until_ready``. Medians are reported, with the
   ratio to ``clip_by_global_norm``. Peak memory of each update is XLA's own
   account of the compiled step (``compiled.memory_analysis()``): arguments +
   outputs not aliased to a donated argument + temporaries.
2. A bytes model: the float32 arrays each update must read and write, times
   4 bytes. ``apply_updates`` is counted as fused into the update (the updates
   are never written out), and a gradient produced in the same jitted step as
   free to keep (g_{k-1} is written from g_k, not read back). Two columns:
   - ``ideal`` (one pass, as if the global norm were free): SPIDER reads
     g, g', v, x and writes v, x_prev, x: 7 arrays (lean, without x_prev:
     6); clip+SGD reads g, x and
     writes x: 3; Adam and AdamW read g, m, v, x and write m, v, x: 7; MARS
     (approx) also reads and writes the kept gradient g_{k-1}: 9; Lion reads
     g, m, x and writes m, x: 5; MARS-Lion reads g, g_{k-1}, m, x and writes
     g_{k-1}, m, x: 7.
   - ``two_pass`` (the minimum given that the global norm must be complete
     before any element can be scaled): SPIDER pass 1 reads g, g', v, writes v
     (and reduces ||v||), pass 2 reads v, x, writes x, x_prev: 8 arrays
     (lean: 7);
     clip+SGD reads g (norm), then g, x and writes x: 4; Adam has no norm: 7;
     MARS reads g, g_{k-1} for the norm of c_k, then the 9 arrays: 11; Lion
     has no norm: 5; MARS-Lion reads g, g_{k-1} for the norm, then its 7: 9.
   So the bytes bound puts MARS-AdamW at 11/7 = 1.57x AdamW and MARS-Lion at
   9/5 = 1.8x Lion. The machine's achievable memory bandwidth is measured
   with a jitted
   ``y = a*x + y`` (3 arrays moved) and a copy over a large array; each method's
   bandwidth fraction is ``two_pass bytes / time / measured bandwidth``.
3. What XLA fuses: the optimized HLO of each update
   (``jax.jit(f).lower(...).compile().as_text()``) is parsed; every top-level
   instruction that reads or writes a parameter-sized array is one pass over
   memory. The number of passes per leaf and the bytes they move are reported
   next to the model.
4. The matrix members on square float32 matrices: ``so.mars_muon(lr)``
   (MARS-M) against ``optax.contrib.muon(lr, nesterov=False,
   consistent_rms=0.2, beta=0.95)`` (``muon_rms``) and ``so.mars_shampoo(lr)``
   against ``optax.contrib.muon(lr, nesterov=False, beta=0.95)`` (``muon``),
   on 1e6 parameters (4 matrices of 500 x 500) and 1e7 (40 of them); 1e8 (400
   of them, about 10 s an update on a 2-core CPU: 5 minutes for the four
   with their warm-up) is left out. These updates
   are bound by the matmuls of Newton-Schulz, not by memory: each of its
   ``ns_steps`` = 5 iterations on an m x n matrix (m <= n) is X X^T, A A and
   B X, 4 m^2 n + 2 m^3 flops, so 30 n^3 for a square one (15000 flops per
   parameter at n = 500, against the 32-48 bytes below). The bound is
   ``flops / matmul rate + bytes / bandwidth``, the matmul rate measured by a
   jitted ``x @ x`` over the same matrices timed interleaved with the
   updates (its fastest repetition: a shared machine slows the median).
   Its bytes (arrays of P float32 outside the matmuls):
   ``optax.contrib.muon`` reads g, m and writes m (the Frobenius norm of m
   reduced in the same pass), Newton-Schulz reads m and writes its result
   O, the apply reads O, x and writes x: 8; MARS-M and MARS-Shampoo read g,
   g_{k-1} for the norm of c_k, then g, g_{k-1}, m and write g_{k-1}, m, then
   the same 5: 12. Bytes bound 12/8 = 1.5x, the bound with the flops 1.00x
   at these shapes (the flops are identical).
5. A full training step on an MLP (784-256-256-10, ReLU, random data) and
   the character LSTM of ``benchmarks/tasks.py`` (embedding 16, hidden 128,
   32 steps), batch 32 and 256: ``so.paired_grad`` (vectorized and not) +
   SPIDER update against one ``jax.grad`` + clip/SGD update. A naive estimate
   of the ratio is 2.0.
6. A full training step (one ``jax.grad`` + update + apply, one jitted,
   donated function) on the character transformer of ``benchmarks/tasks.py``
   (2 layers, d 64, 4 heads, context 64, its params as a tree: the matrix
   members need the matrices), batch 16 and 64, for each MARS member and its
   base: ``so.mars_adamw`` / ``optax.adamw``, ``so.mars_lion`` /
   ``optax.lion``, ``so.mars_muon`` / ``muon_rms``, ``so.mars_shampoo`` /
   ``muon`` (the leaves that are not 2-D take AdamW in all four matrix
   optimizers).

Every step, update or training step, comes from ``benchmarks.common
.step_pair``: the SPIDER steps are its recursive step (after one anchor), the
others its anchor step (a plain update).

Run (from the repository root)::

  python -m benchmarks.overhead --quick      # < 1 minute
  python -m benchmarks.overhead              # about 6 minutes on 2 cores

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
import numpy as np
import optax
import tqdm

import spider_optax as so

if __package__ in (None, ''):  # python benchmarks/overhead.py
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402
from benchmarks import tasks  # noqa: E402

LR, C0, C1, CLIP = 0.01, 1.0, 10.0, 1.0
METHODS = (
  'spider',
  'spider_lean',
  'clip_sgd',
  'adam',
  'adamw',
  'mars_adamw',
  'lion',
  'mars_lion',
)
BASELINE = 'clip_sgd'
# The matrix members and their bases, timed on 2-D leaves (section 4).
MATRIX_METHODS = ('muon_rms', 'mars_muon', 'muon', 'mars_shampoo')
# Each MARS member and the optimizer it is built on.
MARS_BASES = {
  'mars_adamw': 'adamw',
  'mars_lion': 'lion',
  'mars_muon': 'muon_rms',
  'mars_shampoo': 'muon',
}
# Arrays of P float32 each update moves (see the module docstring); for the
# matrix methods, those outside the Newton-Schulz matmuls.
BYTES_MODEL = {
  'ideal': {
    'spider': 7,
    'spider_lean': 6,
    'clip_sgd': 3,
    'adam': 7,
    'adamw': 7,
    'mars_adamw': 9,
    'lion': 5,
    'mars_lion': 7,
    'muon_rms': 8,
    'mars_muon': 10,
    'muon': 8,
    'mars_shampoo': 10,
  },
  'two_pass': {
    'spider': 8,
    'spider_lean': 7,
    'clip_sgd': 4,
    'adam': 7,
    'adamw': 7,
    'mars_adamw': 11,
    'lion': 5,
    'mars_lion': 9,
    'muon_rms': 8,
    'mars_muon': 12,
    'muon': 8,
    'mars_shampoo': 12,
  },
}
NS_STEPS = 5  # Newton-Schulz iterations of every matrix method (the default)
# (count, n): count square n x n float32 matrices.
MATRIX_LAYOUTS = {'quick': [(1, 64)], 'full': [(4, 500), (40, 500)]}
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
  if method == 'lion':
    return optax.lion(LR, b1=0.95, b2=0.95)
  if method == 'mars_lion':
    return so.mars_lion(LR)
  if method in ('muon_rms', 'muon'):
    return optax.contrib.muon(
      LR,
      nesterov=False,
      beta=0.95,
      consistent_rms=0.2 if method == 'muon_rms' else None,
    )
  if method == 'mars_muon':
    return so.mars_muon(LR)
  if method == 'mars_shampoo':
    return so.mars_shampoo(LR)
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
  return {
    m: recursive(m) if m.startswith('spider') else plain(m) for m in METHODS
  }


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


# ---------------------------------------------------------- MARS members --


def make_matrices(count: int, n: int, key: jax.Array) -> dict[str, jax.Array]:
  """``count`` float32 matrices of ``n`` x ``n``, entries N(0, 0.01^2)."""
  return {
    f'w{i:03d}': jax.random.normal(k, (n, n), jnp.float32) * 0.01
    for i, k in enumerate(jax.random.split(key, count))
  }


def ns_flops(params: Any, steps: int = NS_STEPS) -> int:
  """Flops of Newton-Schulz on every 2-D leaf: each iteration on an m x n
  matrix (m <= n) is X X^T, A A and B X, 4 m^2 n + 2 m^3 flops."""
  total = 0
  for x in jax.tree.leaves(params):
    if x.ndim == 2:
      m, n = sorted(x.shape)
      total += steps * (4 * m * m * n + 2 * m**3)
  return total


def _matmul_runner(xs: Any) -> Callable[[], Any]:
  """A runner of a jitted ``x @ x`` for every leaf of ``xs``, compiled."""
  matmul = jax.jit(lambda xs: jax.tree.map(lambda x: x @ x, xs))
  jax.block_until_ready(matmul(xs))
  return lambda: jax.block_until_ready(matmul(xs))


def matrix_costs(
  layouts: Sequence[tuple[int, int]],
  reps: Callable[[int], int],
  bandwidth: float,
  bar: tqdm.tqdm,
  methods: Sequence[str] = MATRIX_METHODS,
) -> dict[str, Any]:
  """Each matrix method's update on ``count`` matrices of ``n`` x ``n``, for
  each ``(count, n)`` in ``layouts`` (``reps(size)`` interleaved
  repetitions), against its bound ``flops / matmul rate + bytes /
  bandwidth``; the matmul rate is a jitted ``x @ x`` over the same matrices,
  timed among the updates."""
  rows = {}
  for count, n in layouts:
    size = count * n * n
    k1, k2 = jax.random.split(jax.random.key(size))
    params, grads = make_matrices(count, n, k1), make_matrices(count, n, k2)
    runners: dict[str, Callable[[], Any]] = {
      m: timed_step(m, params, common.GIVEN[0], (grads,)) for m in methods
    }
    runners['matmul'] = _matmul_runner(grads)
    times = time_interleaved(
      runners, reps(size), f'{count} matrices {n}x{n}', bar
    )
    del runners
    # The bound takes the fastest matmul seen: on a shared machine the
    # median is slowed by whatever else runs (the minima are also kept).
    t_matmul = min(times['matmul'])
    rate = count * 2 * n**3 / t_matmul
    flops = ns_flops(params)
    row = {}
    for m in methods:
      t = common.median(times[m])
      model_bytes = BYTES_MODEL['two_pass'][m] * 4 * size
      bound = flops / rate + model_bytes / bandwidth
      row[m] = {
        'median_s': t,
        'min_s': float(min(times[m])),
        'reps': len(times[m]),
        'ns_flops': flops,
        'model_bytes_two_pass': model_bytes,
        'flop_time_s': flops / rate,
        'bytes_time_s': model_bytes / bandwidth,
        'bound_s': bound,
        'time_over_bound': t / bound,
        'min_over_bound': float(min(times[m])) / bound,
        'time_over_flop_time': t / (flops / rate),
      }
    for m, base in MARS_BASES.items():
      if m in row and base in row:
        r, rb = row[m], row[base]
        r['ratio_vs_base'] = r['median_s'] / rb['median_s']
        r['min_ratio_vs_base'] = r['min_s'] / rb['min_s']
        r['bound_ratio_vs_base'] = r['bound_s'] / rb['bound_s']
    rows[str(size)] = {
      'count': count,
      'n': n,
      'matmul_min_s': t_matmul,
      'matmul_median_s': common.median(times['matmul']),
      'matmul_flops_per_s': rate,
      'methods': row,
    }
  return rows


def transformer_model(
  layers: int, batches: Sequence[int]
) -> tuple[Callable[..., Any], Any, dict[int, tuple[Any, ...]], str]:
  """The character transformer of ``benchmarks/tasks.py`` with its params as
  a tree (2-D matrices for the matrix members): ``(loss_fn(params,
  windows), params, {batch: (windows,)}, description)``."""
  ids, alphabet = tasks.encode(tasks.pydoc_text())
  params = jax.tree.map(
    jnp.asarray, tasks.transformer_init(0, len(alphabet), layers=layers)
  )
  starts = np.linspace(0, len(ids) - tasks.CONTEXT - 2, max(batches))
  windows = tasks.take_windows(jnp.asarray(ids), jnp.asarray(starts, int))
  loss_fn = lambda p, w: tasks.lm_loss(p, {}, w)[0]
  description = (
    f'char transformer ({layers} layers, d 64, 4 heads, context '
    f'{tasks.CONTEXT}, {len(alphabet)} symbols)'
  )
  return loss_fn, params, {b: (windows[:b],) for b in batches}, description


def member_train_costs(
  layers: int,
  batches: Sequence[int],
  members: Sequence[str],
  reps: int,
  bar: tqdm.tqdm,
) -> dict[str, Any]:
  """A training step (one gradient + update + apply) on the transformer for
  each MARS member in ``members`` (approx mode) and its base optimizer, all
  timed interleaved at each batch size."""
  loss_fn, params, batch_of, description = transformer_model(layers, batches)
  grad_fn = jax.grad(loss_fn)
  methods = [m for member in members for m in (MARS_BASES[member], member)]
  rows = {}
  for b in batches:
    steppers = {m: timed_step(m, params, grad_fn, batch_of[b]) for m in methods}
    times = time_interleaved(steppers, reps, f'transformer B={b}', bar)
    del steppers
    row = {
      m: {
        'median_s': common.median(times[m]),
        'min_s': float(min(times[m])),
        'reps': len(times[m]),
      }
      for m in methods
    }
    for m in members:
      row[m]['ratio_vs_base'] = (
        row[m]['median_s'] / row[MARS_BASES[m]]['median_s']
      )
    rows[str(b)] = row
  return {
    'description': description,
    'params': sum(x.size for x in jax.tree.leaves(params)),
    'members': list(members),
    'results': rows,
  }


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
  layouts = MATRIX_LAYOUTS['quick' if quick else 'full']
  # One 500 x 500 update takes about 60 ms here: 1e7 (40 of them) 2.5 s.
  matrix_reps = lambda size: 3 if quick else (10 if size <= 1e6 else 5)
  # Quick: one pair (the cheapest to compile: a transformer step takes 1-4
  # s), on 1 layer at batch 4.
  members = ['mars_lion'] if quick else list(MARS_BASES)
  member_layers, member_batches = (1, [4]) if quick else (2, [16, 64])
  member_reps = 3 if quick else 40
  bar.reset(
    total=sum(update_reps(s) for s in sizes)
    + train_reps * len(batches) * 2  # 2 models
    + sum(matrix_reps(c * n * n) for c, n in layouts)
    + member_reps * len(member_batches)
  )
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

  matrix = matrix_costs(layouts, matrix_reps, bw['bytes_per_s'], bar)

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
  member_train = member_train_costs(
    member_layers, member_batches, members, member_reps, bar
  )
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
        'finish before scaling; for the matrix methods, the arrays '
        'outside the Newton-Schulz matmuls'
      ),
      'matrix_methods': list(MATRIX_METHODS),
      'mars_bases': MARS_BASES,
      'matrix_layouts': layouts,
      'ns_steps': NS_STEPS,
    },
    bandwidth=bw,
    updates=updates,
    hlo=hlo,
    hlo_by_size=hlo_by_size,
    matrix_updates=matrix,
    train_step={'batches': batches, 'models': train},
    member_train_step=member_train,
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
  lines += [
    '',
    'MARS members against their bases: update + apply_updates, median '
    '(t/bound = time / bytes bound; member / base; bound ratio)',
    f'{"params":>7} {"member":>12} {"time":>10} {"t/bound":>7} '
    f'{"base":>8} {"time":>10} {"t/bound":>7} {"ratio":>6} {"bound":>6}',
  ]
  for size, row in res['updates'].items():
    for m, base in MARS_BASES.items():
      if m not in row:
        continue
      r, rb = row[m], row[base]
      lines.append(
        f'{_fmt_size(int(size)):>7} {m:>12} {r["median_s"] * 1e3:>8.3f}ms '
        f'{r["time_over_bytes_bound"]:>7.2f} {base:>8} '
        f'{rb["median_s"] * 1e3:>8.3f}ms {rb["time_over_bytes_bound"]:>7.2f} '
        f'{r["median_s"] / rb["median_s"]:>5.2f}x '
        f'{r["model_bytes_two_pass"] / rb["model_bytes_two_pass"]:>5.2f}x'
      )
  lines += [
    '',
    'Matrix members on square float32 matrices (median and min; bound = NS '
    'flops / fastest matmul rate + bytes / bandwidth)',
    f'{"params":>7} {"matrices":>12} {"GFLOP/s":>7} {"method":>12} '
    f'{"time":>10} {"min":>10} {"bound":>10} {"t/bound":>7} {"vs base":>7} '
    f'{"(min)":>6}',
  ]
  for size, block in res['matrix_updates'].items():
    shape = f'{block["count"]}x{block["n"]}^2'
    for m, r in block['methods'].items():
      ratio = r.get('ratio_vs_base')
      lines.append(
        f'{_fmt_size(int(size)):>7} {shape:>12} '
        f'{block["matmul_flops_per_s"] / 1e9:>7.1f} {m:>12} '
        f'{r["median_s"] * 1e3:>8.2f}ms {r["min_s"] * 1e3:>8.2f}ms '
        f'{r["bound_s"] * 1e3:>8.2f}ms {r["time_over_bound"]:>7.2f} '
        + (
          f'{ratio:>6.2f}x {r["min_ratio_vs_base"]:>5.2f}x'
          if ratio is not None
          else ''
        )
      )
  member = res['member_train_step']
  lines += [
    '',
    f'Training step, {member["description"]} ({member["params"]} params), '
    'median: each MARS member (approx) against its base',
  ]
  for b, row in member['results'].items():
    lines.append(
      f'{"batch " + b:>9}: '
      + ', '.join(
        f'{m} {row[m]["median_s"] * 1e3:.2f}ms / {MARS_BASES[m]} '
        f'{row[MARS_BASES[m]]["median_s"] * 1e3:.2f}ms = '
        f'{row[m]["ratio_vs_base"]:.2f}x'
        for m in member['members']
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
