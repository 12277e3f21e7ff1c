"""Oracle complexity benchmark: stochastic gradients to an eps-stationary point.

Online: two stochastic (L0, L1)-smooth problems, five methods, eps on a
geometric grid. The count is oracle calls (as in ``benchmarks/common.py``: an
anchor costs S1, a recursive step 2 S2, an SGD step its batch) until the
stopping rule below holds. Finite sum: oracle calls against n at a fixed eps.

Problems (``benchmarks/tasks.py`` has their definitions and the derivations
of their (L0, L1)). A sample is F(x; s, z) = sum_j phi_j(x) (1 + s_j)
+ <z, x>, with multiplicative noise s_j ~ N(0, 1/4), which survives the
paired difference, and additive noise z ~ N(0, (sigma^2/d) I), sigma = 1.

- ``wells`` (fixed, non-convex, d = 4): phi(u) = (u^2 - 1)^4 / 8, flat minima
  and saddles, (L0, L1) = (2, 11), from x0 = (2, 1.6, 0.3, -0.25), where
  ||grad f(x0)|| = 54 and the Hessian is 243.
- ``ramp`` (scaled with eps, d = 2): slope 2 eps over a length 1/(2 eps) into
  a basin, and a flat quartic, (L0, L1) = (1, 3): the gradient stays near
  eps along a path of length ~1/eps, which is how worst-case (lower-bound)
  instances are built, and gives the bounds' eps^-3 for SPIDER and eps^-4 for
  SGD. On a fixed function such as ``wells``, distances do not grow as eps
  shrinks.

Stopping rule, the same for every method: stop at the first checkpoint k where
the mean of ||grad f(x_i)|| over the last half of the iterates (i in
(k/2, k], at least 8 iterates) is <= eps. Checkpoints are 2^(1/8) apart
(k = 1, 2, ..., 23, then +9% each). ||grad f|| is exact and not counted. The
theorems bound E||grad f(x_out)|| for an output iterate drawn uniformly from
the iterates. The window mean is that expectation for the run at hand, taken
over the last half so that the far start does not weigh in. A noisy method
cannot pass it with one lucky iterate in the eps-ball, as it could with the
previous first-hit rule (which is why SGD won before). It has to stay near
stationarity for as many steps as it took to get there.

Methods and tuning. Each method gets a grid over a step size and a batch size,
and the best median over the seeds is reported for each eps. The grids
(GRIDS) are the same for every eps and in both modes.

- ``spider``: ``so.spider`` with ``so.theory.online(L0, L1, eps, sigma)``
  (lr = 1/(4 L0), c0 = eps, c1 = eps L0/L1, and its q, S1, S2). lr is
  multiplied by lambda in 2^0..2^9, and S1 and S2 by mu in 4^-4..1 (q as the
  preset). The preset as is (lambda = mu = 1) also runs, in rows of its own,
  with the count it predicts (initial_gap = f(x0)).
- ``spider_sfo``: the same with c1 = None (SPIDER-SFO's normalised step).
- ``sarah``: no clipping. lr = lambda / (L0 + L1 ||grad f(x0)||), a step that
  is stable at x0, with the same lambda and mu grids.
- ``clipped_sgd``: ``optax.chain(optax.clip_by_global_norm(c),
  optax.sgd(lr))`` with lr in 2^-12..2, c in {1/16, 1/4, 1, 4} and batch size
  in {1, 8, 64}.
- ``sgd``: plain SGD, with lr and batch size as above.

A configuration fails (inf, written as Infinity in the JSON) if its median
seed does not stop within the budget. The search drops a configuration once
it has used more calls than the best median found so far, so only the best
configuration's counts are complete. Seeds of the best configuration still
running at 8x its median are recorded as inf (censored). The table marks with
* a best value at an end of its grid. Slopes are least-squares fits of
log(median calls) against log(1/eps), over the whole grid and over its 3
smallest eps ("tail").

Simulation. F is linear in the noise, so a minibatch gradient depends on its
samples only through their means, which are exactly Gaussian. The script
draws those means (O(d) per step whatever the batch) and counts the whole
batch. All configurations and seeds of a group run as lanes of one jitted
``lax.scan``, in lockstep, so their anchors are decided on the device, by the
fixed period (k % q == 0) that ``so.is_anchor_step`` applies on the host.
Seed j's noise is shared by every configuration (common random numbers),
which makes the comparison across the grid less noisy. Long groups drop their
finished configurations from the lanes as they go.

Finite sum: the cosh problem f_i(x) = sum_j 2 cosh(x_j)(1 + s_ij)
+ <z_i, x>, d = 5, (L0, L1) = (3, 1.5), with antithetic pairs
(s, z)_{i+n/2} = -(s, z)_i, so f = sum_j 2 cosh(x_j).
For each n in n_grid and a fixed eps, SPIDER with ``so.theory.finite_sum``
(S1 = n, q = S2 = ceil(sqrt n)) runs against clipped full-gradient descent
(``so.spider`` with the same lr, c0, c1 and every step an anchor: n calls per
step; each run is one jitted ``lax.while_loop``). It reports the slopes of
log(calls) against log(n) (predicted: 0.5 and 1). It stops at the first
iterate with ||grad f|| <= eps. Clipped GD is deterministic, and luck matters
little to a slope in n at a fixed eps.

What it shows (full mode, 5 seeds; benchmarks/RESULTS.md has the tables):

- ramp: slope 2.98 for SPIDER and 3.89 for clipped SGD (3.97 for SGD), the
  bounds' 3 and 4, on a family built to attain them. At eps = 0.0101 SPIDER
  needs 4.9x fewer calls than clipped SGD. Above eps ~ 0.06 it needs more.
  SARAH (unclipped, tuned constant step) also has slope ~3 and needs the
  fewest calls at the smallest eps.
- wells: no separation. Every slope is at most 2.1, and clipped SGD needs the
  fewest calls at every eps. The (L0, L1) SPIDER is the worst: its
  c1 = eps L0/L1 slows the far phase.
- The presets as is need 27x (ramp) to 1100x (wells) more calls than the
  tuned runs at the smallest eps. Their predicted counts are 2-18x above what
  they use.

Run (from the repository root)::

  python -m benchmarks.complexity --quick   # 16 s
  python -m benchmarks.complexity           # full mode, 2.4-3.6 min
"""

import argparse
import functools
import math
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

if __package__ in (None, ''):  # python benchmarks/complexity.py
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402
from benchmarks import tasks  # noqa: E402
from benchmarks.tasks import Problem  # noqa: E402

PROBLEMS = (tasks.WELLS, tasks.RAMP)
RING = 8  # the stopping window: the last RING blocks between checkpoints,
RATIO = 2.0 ** (1 / RING)  # which are 2^(1/8) apart: about the last half.

METHODS = ('spider', 'spider_sfo', 'sarah', 'clipped_sgd', 'sgd')
SPIDER_VARIANTS = ('spider', 'spider_sfo', 'sarah')

# The same grids in both modes; the modes differ in eps, n and seeds.
GRIDS: dict[str, Any] = dict(
  lr_scales=[2.0**i for i in range(10)],  # lambda: 1 .. 512
  batch_scales=[4.0**-i for i in range(4, -1, -1)],  # mu: 1/256 .. 1
  sgd_lrs=[2.0**i for i in range(-12, 2)],  # 2^-12 .. 2
  sgd_clips=[1 / 16, 1 / 4, 1.0, 4.0],
  sgd_batches=[64, 8, 1],  # largest first: its best caps the others
)

MODES: dict[str, dict[str, Any]] = {
  'quick': dict(
    eps=[0.16, 0.08, 0.04],
    seeds=3,
    n_grid=[2**10, 2**11, 2**12],
    fs_eps=0.2,
    fs_seeds=2,
  ),
  'full': dict(
    eps=[round(0.16 * 10 ** (-i / 5), 4) for i in range(7)],
    seeds=5,
    n_grid=[2**10, 2**11, 2**12, 2**13, 2**14, 2**15, 2**16],
    fs_eps=0.1,
    fs_seeds=3,
  ),
}
SPIDER_BUDGET: dict[str, int] = dict(calls=10**9, steps=10**6)
SGD_BUDGET = 10**8  # calls
CALLS_MAX = 2**31 - 2**24  # int32 counters saturate here (beyond any budget)
BEST_SLACK = 8  # the best configuration's seeds run to 8x its median
COMPACT_AFTER = 16384  # steps; shorter groups are not worth a recompilation


def _spider_tx(h):
  return so.spider(h['lr'], h['c0'], h['c1'])  # c = inf drops a term


def _sgd_tx(h):
  return optax.chain(optax.clip_by_global_norm(h['clip']), optax.sgd(h['lr']))


def _lanes(problem: Problem, kind: str) -> tuple[Callable, Callable]:
  """(init, step) of so.spider lanes (``kind='spider'``) or clipped SGD lanes
  (clip = inf: plain SGD).

  ``step(k, q, x, opt, normals, h, eps) -> (x, opt, oracle calls)``. SPIDER
  lanes anchor when k % q == 0: they step in lockstep and share q, so the
  branch is one scalar cond.
  """
  loss = tasks.sample_loss(problem)
  make_tx = _spider_tx if kind == 'spider' else _sgd_tx
  anchor, recursive = common.step_pair(
    make_tx, jax.grad(loss), so.paired_grad(loss)
  )

  def lanes(step: Callable, size: str, cost: int) -> Callable:
    def one(x, opt, normals, h, eps):
      batch = tasks.minibatch(problem, normals, h[size], eps)
      return *step(h, x, opt, batch)[:2], cost * h[size]

    return jax.vmap(one)

  def step(k, q, *args):
    if kind != 'spider':
      return lanes(anchor, 'batch', 1)(*args)
    return jax.lax.cond(
      k % q == 0, lanes(anchor, 's1', 1), lanes(recursive, 's2', 2), *args
    )

  def init(h, eps):
    x = problem.x0(eps)
    return x, make_tx(h).init(x)

  return init, step


class Carry(NamedTuple):
  """A group of lanes (configurations x seeds) that step in lockstep."""

  x: jax.Array  # (lanes, d)
  opt: Any  # optimizer states, stacked over lanes
  calls: jax.Array  # (lanes,) int32 oracle calls so far
  k: jax.Array  # steps taken (the same for every lane)
  next_check: jax.Array  # the next checkpoint, a step count
  block_n: jax.Array  # iterates since the last checkpoint
  ring_n: jax.Array  # (RING,) iterates of the last RING blocks
  block_sum: jax.Array  # (lanes,) sum of ||grad f|| since the last checkpoint
  ring_sum: jax.Array  # (lanes, RING)
  stop: jax.Array  # (lanes,) oracle calls at the stop, -1 before it


@functools.cache
def _group_runner(problem: Problem, kind: str, seeds: int):
  """Jitted (start, advance) of a group of lanes of `kind` on `problem`."""
  init, step = _lanes(problem, kind)
  gnorm = jax.vmap(lambda x, e: tasks.true_grad_norm(problem, x, e))

  @jax.jit
  def start(h, eps):
    x, opt = jax.vmap(init)(h, eps)
    lanes = eps.shape[0]
    zi = jnp.zeros(lanes, jnp.int32)
    return Carry(
      x,
      opt,
      zi,
      jnp.int32(0),
      jnp.int32(1),
      jnp.int32(0),
      jnp.zeros(RING, jnp.int32),
      jnp.zeros(lanes),
      jnp.zeros((lanes, RING)),
      zi - 1,
    )

  def check(c: Carry, eps) -> Carry:
    # A checkpoint: close the block, test the mean over the last RING blocks.
    ring_n = jnp.concatenate([c.block_n[None], c.ring_n[:-1]])
    ring_sum = jnp.concatenate([c.block_sum[:, None], c.ring_sum[:, :-1]], 1)
    window = ring_sum.sum(1) / jnp.maximum(ring_n.sum(), 1)
    hit = (ring_n[-1] > 0) & (window <= eps) & (c.stop < 0)
    return c._replace(
      ring_n=ring_n,
      ring_sum=ring_sum,
      block_n=jnp.int32(0),
      block_sum=jnp.zeros_like(c.block_sum),
      stop=jnp.where(hit, c.calls, c.stop),
      next_check=jnp.maximum(c.k + 1, jnp.floor(c.k * RATIO).astype(jnp.int32)),
    )

  @jax.jit
  def advance(c: Carry, normals, h, eps, q):
    # normals: (steps, seeds, 2, d); seed j's noise is shared by every
    # configuration (common random numbers make the grid search less noisy).
    normals = jnp.tile(normals, (1, eps.shape[0] // seeds, 1, 1))

    def one(c, nz):
      x, opt, cost = step(c.k, q, c.x, c.opt, nz, h, eps)
      c = c._replace(
        x=x,
        opt=opt,
        k=c.k + 1,
        calls=jnp.minimum(c.calls, CALLS_MAX - cost) + cost,
        block_n=c.block_n + 1,
        block_sum=c.block_sum + gnorm(x, eps),
      )
      return jax.lax.cond(
        c.k == c.next_check, check, lambda c, e: c, c, eps
      ), None

    c, _ = jax.lax.scan(one, c, normals)
    return c, jnp.all(jnp.isfinite(c.x), axis=-1)

  return start, advance


def _take(c: Carry, lanes: np.ndarray) -> Carry:
  """The carry of a subset of the lanes (the step counters are shared)."""
  take = lambda a: jnp.take(a, lanes, axis=0)
  return c._replace(
    x=take(c.x),
    opt=jax.tree.map(take, c.opt),
    calls=take(c.calls),
    block_sum=take(c.block_sum),
    ring_sum=take(c.ring_sum),
    stop=take(c.stop),
  )


def run_group(
  problem: Problem,
  kind: str,
  configs: list[dict],
  eps: float,
  seeds: int,
  rng: np.random.Generator,
  *,
  chunk: int,
  budget: int,
  max_steps: int,
  cap: float = math.inf,
  q: int = 1,
) -> np.ndarray:
  """Oracle calls to the stop, (configs, seeds), inf where none was seen.

  Runs until no configuration can still beat the best median: every lane has
  stopped, failed (budget, max_steps, non-finite), or used more calls than
  the best median known (or `cap`, the best of an earlier group). The best
  configuration's seeds run on up to BEST_SLACK times its median; a seed not
  stopped by then is recorded as inf (censored). So only the best
  configuration's counts are complete; the others are where the search left
  them. Long groups drop their finished configurations from the jitted lanes
  (a recompilation per halving), so that the few lanes still running are
  cheap.
  """
  start, advance = _group_runner(problem, kind, seeds)
  ints = ('q', 's1', 's2', 'batch')
  h = {
    k: jnp.asarray(
      np.repeat([c[k] for c in configs], seeds),
      jnp.int32 if k in ints else jnp.float32,
    )
    for k in configs[0]
  }
  e = jnp.full(len(configs) * seeds, eps, jnp.float32)
  c, steps = start(h, e), 0
  here = np.arange(len(configs))  # the configurations still in the lanes
  calls_to = np.full((len(configs), seeds), np.inf)
  while True:
    normals = rng.standard_normal((chunk, seeds, 2, problem.d), np.float32)
    c, ok = advance(c, normals, h, e, jnp.int32(q))
    steps += chunk
    stop, calls, ok = np.asarray(c.stop), np.asarray(c.calls), np.asarray(ok)
    calls_to[here] = np.where(
      (stop >= 0) & (stop <= budget), stop, np.inf
    ).reshape(-1, seeds)
    median = np.array([common.median(row) for row in calls_to])
    best = int(np.argmin(median))
    limit = np.full(len(configs), min(median[best], cap))
    if median[best] <= cap:
      limit[best] = BEST_SLACK * median[best]
    live = (
      (stop < 0)
      & ok
      & (calls < budget)
      & (calls < np.repeat(limit[here], seeds))
    ).reshape(-1, seeds)
    if not live.any() or steps >= max_steps:
      return calls_to
    keep = np.flatnonzero(live.any(1))
    if steps >= COMPACT_AFTER and len(keep) <= len(here) // 2:
      lanes = (keep[:, None] * seeds + np.arange(seeds)).ravel()
      c, e = _take(c, lanes), jnp.take(e, lanes)
      h = {k: jnp.take(v, lanes) for k, v in h.items()}
      here = here[keep]


def _count(v: float):
  return int(v) if math.isfinite(v) else math.inf


def _spider_configs(problem: Problem, variant: str, eps: float, scales):
  """so.spider hyperparameters of `variant` for (lambda, mu) in `scales`."""
  p = so.theory.online(problem.L0, problem.L1, eps, tasks.SIGMA)
  g0 = float(tasks.true_grad_norm(problem, problem.x0(jnp.float32(eps)), eps))
  out = []
  for lam, mu in scales:
    if variant == 'sarah':  # no clipping: a step stable at the far start
      lr, c0, c1 = lam / (problem.L0 + problem.L1 * g0), math.inf, math.inf
    else:
      lr, c0 = lam * p.learning_rate, p.c0
      c1 = p.c1 if variant == 'spider' else math.inf
    out.append(
      dict(
        lr=lr,
        c0=c0,
        c1=c1,
        q=p.anchor_period,
        s1=max(1, round(mu * p.anchor_batch_size)),
        s2=max(1, round(mu * p.minibatch_size)),
        lr_scale=lam,
        batch_scale=mu,
      )
    )
  return out, p


def _best_row(eps, configs, calls_to, edges):
  """The row of the best configuration (least median calls).

  edges: {name: values}; at_grid_edge lists the names whose best value is one
  of those (the grid's ends, where a better value may lie outside it).
  """
  median = [common.median(row) for row in calls_to]
  i = int(np.argmin(median))
  hyper = {
    k: (None if isinstance(v, float) and math.isinf(v) else v)
    for k, v in configs[i].items()
  }
  at_edge = [
    k
    for k, ends in edges.items()
    if math.isfinite(median[i]) and hyper[k] in ends
  ]
  return dict(
    eps=eps,
    calls=[_count(v) for v in calls_to[i]],
    median=median[i],
    failed=int(np.isinf(calls_to[i]).sum()),
    hyper=hyper,
    at_grid_edge=at_edge,
  )


def online(problem: Problem, cfg: dict, bar, tag: int = 0) -> dict:
  """Best median calls per method and eps, fitted slopes, untuned presets."""
  seeds, eps_grid = cfg['seeds'], cfg['eps']
  results = {m: [] for m in METHODS}
  preset: dict[str, dict[str, Any]] = {
    v: dict(calls=[], median=[], predicted=[]) for v in ('spider', 'spider_sfo')
  }
  scales = [
    (lam, mu) for lam in GRIDS['lr_scales'] for mu in GRIDS['batch_scales']
  ]
  lrs, lams = GRIDS['sgd_lrs'], GRIDS['lr_scales']
  spider_edges = dict(
    lr_scale=(lams[0], lams[-1]), batch_scale=(GRIDS['batch_scales'][0],)
  )

  def spider_group(variant, eps, pairs, generator):
    """The configurations of ``variant`` at (lambda, mu) in ``pairs``, and
    their calls to the stop (one group of :func:`run_group`)."""
    configs, p = _spider_configs(problem, variant, eps, pairs)
    return configs, run_group(
      problem,
      'spider',
      configs,
      eps,
      seeds,
      generator,
      chunk=128,
      budget=SPIDER_BUDGET['calls'],
      max_steps=SPIDER_BUDGET['steps'],
      q=p.anchor_period,
    )

  for i, eps in enumerate(eps_grid):
    rng = lambda group, i=i: np.random.default_rng([tag, i, group])
    for v, variant in enumerate(SPIDER_VARIANTS):
      configs, calls_to = spider_group(variant, eps, scales, rng(v))
      results[variant].append(_best_row(eps, configs, calls_to, spider_edges))
      bar.update(1)
      if variant in preset:  # the preset as is: lambda = mu = 1, own group
        _, calls_to = spider_group(variant, eps, [(1.0, 1.0)], rng(v))
        gap = float(tasks.f_value(problem, problem.x0(jnp.float32(eps)), eps))
        preset[variant]['calls'].append([_count(c) for c in calls_to[0]])
        preset[variant]['median'].append(common.median(calls_to[0]))
        preset[variant]['predicted'].append(
          so.theory.online(
            problem.L0, problem.L1, eps, tasks.SIGMA, initial_gap=gap
          ).oracle_calls
        )
    for m, (method, clips) in enumerate(
      (('clipped_sgd', GRIDS['sgd_clips']), ('sgd', [math.inf]))
    ):
      best: dict[str, Any] | None = None
      for b, batch in enumerate(GRIDS['sgd_batches']):
        configs = [
          dict(lr=lr, clip=c, batch=batch)
          for lr in GRIDS['sgd_lrs']
          for c in clips
        ]
        cap = math.inf if best is None else best['median']
        calls_to = run_group(
          problem,
          'sgd',
          configs,
          eps,
          seeds,
          rng(10 + 3 * m + b),
          chunk=1024,
          budget=SGD_BUDGET,
          max_steps=SGD_BUDGET // batch,
          cap=cap,
        )
        row = _best_row(
          eps, configs, calls_to, dict(lr=(lrs[0], lrs[-1]), clip=(clips[0],))
        )
        if best is None or row['median'] < best['median']:
          best = row
        bar.update(1)
      results[method].append(best)
  inv = [1 / e for e in eps_grid]
  slopes = {
    m: common.loglog_slope(inv, [r['median'] for r in results[m]])
    for m in METHODS
  }
  tail = {
    m: common.loglog_slope(inv[-3:], [r['median'] for r in results[m]][-3:])
    for m in METHODS
  }
  for v in preset.values():
    v['slope'] = common.loglog_slope(inv, v['median'])
  x0 = problem.x0(jnp.float32(eps_grid[-1]))
  return dict(
    eps=list(eps_grid),
    results=results,
    slopes=slopes,
    tail_slopes=tail,
    preset=preset,
    problem=dict(
      name=problem.name,
      title=problem.title,
      d=problem.d,
      L0=problem.L0,
      L1=problem.L1,
      sigma=tasks.SIGMA,
      tau=tasks.TAU,
      x0_at_smallest_eps=[float(v) for v in x0],
      grad_norm_x0=float(tasks.true_grad_norm(problem, x0, eps_grid[-1])),
    ),
  )


def _calls(result: tuple[jax.Array, jax.Array], eps: float) -> float:
  """The oracle calls of a run that stopped at eps; inf if it did not."""
  calls, g = result
  return int(calls) if float(g) <= eps else math.inf


def _keep_going(eps, budget):
  def keep_going(carry):
    x, calls = carry[0], carry[-1]
    g = tasks.cosh_grad_norm(x)
    return (g > eps) & jnp.isfinite(g) & (calls < budget)

  return keep_going


def make_spider_run(q, s1, s2, budget, sampler):
  """Jitted run(key, lr, c0, c1, eps) -> (calls, ||grad f||) of so.spider.

  q, s1, s2 are static (shapes); lr, c0, c1, eps are traced so that one
  compilation serves every method and learning-rate factor (c0 = inf or
  c1 = inf drops that term of min(1, c0/|v|, c1/|v|^2), as None does).
  sampler(key, size) returns a batch (s, z) of `size` samples; an anchor
  costs s1 evaluations, a recursive step 2 s2.
  """
  anchor, recursive = common.step_pair(
    lambda hp: so.spider(*hp),
    jax.grad(tasks.cosh_loss),
    so.paired_grad(tasks.cosh_loss),
  )

  def step(carry, hp):
    x, state, key, k, calls = carry
    key, sub = jax.random.split(key)
    is_anchor = k % q == 0
    x, state, _ = jax.lax.cond(
      is_anchor,
      lambda: anchor(hp, x, state, sampler(sub, s1)),
      lambda: recursive(hp, x, state, sampler(sub, s2)),
    )
    cost = jnp.where(is_anchor, jnp.int32(s1), jnp.int32(2 * s2))
    return x, state, key, k + 1, calls + cost

  @jax.jit
  def run(key, lr, c0, c1, eps):
    x = tasks.cosh_x0()
    carry = (x, so.spider(lr, c0, c1).init(x), key, jnp.int32(0), jnp.int32(0))
    carry = jax.lax.while_loop(
      _keep_going(eps, budget), lambda c: step(c, (lr, c0, c1)), carry
    )
    return carry[-1], tasks.cosh_grad_norm(carry[0])

  def call(key, lr, c0, c1, eps):
    f32 = lambda v: jnp.float32(math.inf if v is None else v)
    return run(key, f32(lr), f32(c0), f32(c1), f32(eps))

  return call


def finite_sum(cfg, seeds, bar):
  eps = cfg['fs_eps']
  out = {'spider': [], 'clipped_gd': []}
  for n in cfg['n_grid']:
    s_all, z_all = tasks.cosh_data(n)
    p = so.theory.finite_sum(n, tasks.COSH_L0, tasks.COSH_L1, eps)
    q = p.anchor_period

    def sampler(key, size, n=n, s_all=s_all, z_all=z_all):
      if size == n:  # the full gradient
        return s_all, z_all
      rows = jax.random.randint(key, (size,), 0, n)  # with replacement
      return s_all[rows], z_all[rows]

    budget = 2_000_000_000
    hyper = (p.learning_rate, p.c0, p.c1, eps)
    run = make_spider_run(q, n, p.minibatch_size, budget, sampler)
    calls = [_calls(run(jax.random.key(sd), *hyper), eps) for sd in seeds]
    out['spider'].append(
      dict(
        n=n,
        calls=calls,
        median=common.median(calls),
        q=q,
        S1=n,
        S2=p.minibatch_size,
        predicted=p.oracle_calls,
      )
    )
    bar.update(1)
    run = make_spider_run(1, n, 1, budget, sampler)
    c = _calls(run(jax.random.key(0), *hyper), eps)  # deterministic
    out['clipped_gd'].append(dict(n=n, calls=[c], median=c))
    bar.update(1)
  slopes = {
    m: common.loglog_slope(
      [r['n'] for r in out[m]], [r['median'] for r in out[m]]
    )
    for m in out
  }
  return dict(
    eps=eps,
    results=out,
    slopes=slopes,
    lr=so.theory.finite_sum(
      1024, tasks.COSH_L0, tasks.COSH_L1, eps
    ).learning_rate,
    c0=eps,
    c1=eps * tasks.COSH_L0 / tasks.COSH_L1,
  )


def _fmt(v) -> str:
  return 'FAIL' if v is None or math.isinf(v) else f'{v:.3g}'


def _fmt_slope(v) -> str:
  return 'n/a' if v is None else f'{v:.2f}'


def _hyper_text(row: dict) -> str:
  h = row['hyper']
  if 'lr_scale' in h:
    text = f'lam={h["lr_scale"]:g},mu={h["batch_scale"]:g}'
  else:
    clip = '' if h['clip'] is None else f',clip={h["clip"]:g}'
    text = f'lr=2^{math.log2(h["lr"]):g}{clip},B={h["batch"]}'
  return text + ('*' if row['at_grid_edge'] else '')


def report(res: dict[str, Any]) -> str:
  lines = []
  for on in res['online'].values():
    lines += [
      f'\nOnline, {on["problem"]["title"]}: median oracle calls until '
      'the last-half mean of ||grad f|| <= eps (seeds='
      f'{res["config"]["seeds"]})',
      f'{"method":<19}'
      + ''.join(f'{e:>10.4g}' for e in on['eps'])
      + f'{"slope":>7}{"tail":>7}',
    ]
    lines += [
      f'{m:<19}'
      + ''.join(f'{_fmt(r["median"]):>10}' for r in on['results'][m])
      + f'{_fmt_slope(on["slopes"][m]):>7}'
      f'{_fmt_slope(on["tail_slopes"][m]):>7}'
      for m in METHODS
    ]
    for v, pre in on['preset'].items():
      lines += [
        f'{v + " preset":<19}'
        + ''.join(f'{_fmt(x):>10}' for x in pre['median'])
        + f'{_fmt_slope(pre["slope"]):>7}',
        f'{"  (predicted)":<19}'
        + ''.join(f'{_fmt(x):>10}' for x in pre['predicted']),
      ]
    lines += [
      f'  best {m}: ' + '; '.join(map(_hyper_text, on['results'][m]))
      for m in METHODS
    ]
    lines.append(
      '  seeds not stopped in the best configuration: '
      + '; '.join(
        f'{m} ' + ','.join(str(r['failed']) for r in on['results'][m])
        for m in METHODS
      )
    )
  fs = res['finite_sum']
  lines += [
    '  (* = best value at an end of its grid)',
    f'\nFinite sum: median oracle calls to eps={fs["eps"]}',
    f'{"n":>8}{"spider":>12}{"clipped_gd":>12}{"ratio":>8}',
  ]
  for a, b in zip(fs['results']['spider'], fs['results']['clipped_gd']):
    ratio = (
      b['median'] / a['median'] if math.isfinite(a['median']) else math.nan
    )
    lines.append(
      f'{a["n"]:>8}{_fmt(a["median"]):>12}{_fmt(b["median"]):>12}{ratio:>8.2f}'
    )
  lines.append(
    'slopes vs n: '
    + ', '.join(f'{m}={_fmt_slope(v)}' for m, v in fs['slopes'].items())
    + ' (predicted 0.5, 1)'
  )
  lines.append(
    'timings: ' + ', '.join(f'{k}={v:.0f}' for k, v in res['timings'].items())
  )
  return '\n'.join(lines)


def plots(res: dict[str, Any], plot_dir: pathlib.Path) -> list[str]:
  plt = common.pyplot()
  fig, axes = plt.subplots(1, len(res['online']), figsize=(11, 4.5))
  for ax, on in zip(np.atleast_1d(axes), res['online'].values()):
    inv = np.array([1 / e for e in on['eps']])
    lines = {m: [r['median'] for r in on['results'][m]] for m in METHODS}
    lines['spider preset'] = on['preset']['spider']['median']
    for m, ys in lines.items():
      ok = [i for i, y in enumerate(ys) if math.isfinite(y)]
      slope = (
        on['slopes'][m]
        if m in on['slopes']
        else on['preset']['spider']['slope']
      )
      ax.plot(
        inv[ok],
        [ys[i] for i in ok],
        'o-' if m in METHODS else 'x:',
        label=f'{m} ({_fmt_slope(slope)})',
      )
    ref = min(y for ys in lines.values() for y in ys if math.isfinite(y))
    for k, style in ((2, 'k-.'), (3, 'k--'), (4, 'k:')):
      ax.plot(inv, ref * (inv / inv[0]) ** k, style, lw=0.8, label=f'slope {k}')
    common.label_axes(
      ax,
      '1/eps',
      'oracle calls (median over seeds, best of grid)',
      on['problem']['title'],
      xscale='log',
      yscale='log',
    )
  paths = [common.save_plot(fig, plot_dir, 'complexity_online.png')]

  fig, ax = plt.subplots(figsize=(6, 4.5))
  fs = res['finite_sum']
  for m, rows in fs['results'].items():
    ok = [r for r in rows if math.isfinite(r['median'])]
    ax.plot(
      [r['n'] for r in ok],
      [r['median'] for r in ok],
      'o-',
      label=f'{m} (slope {_fmt_slope(fs["slopes"][m])})',
    )
  ns = np.array(res['config']['n_grid'], float)
  ref = fs['results']['spider'][0]['median']
  ref = ref if math.isfinite(ref) else 1e5
  for k, style in ((0.5, 'k--'), (1, 'k:')):
    ax.plot(
      ns, ref * (ns / ns[0]) ** k, style, lw=1, label=f'reference slope {k}'
    )
  common.label_axes(
    ax,
    'n',
    'oracle calls',
    f'Finite sum: calls to eps={fs["eps"]}',
    xscale='log',
    yscale='log',
  )
  return paths + [common.save_plot(fig, plot_dir, 'complexity_finite_sum.png')]


def experiment(args: argparse.Namespace, bar: tqdm.tqdm) -> dict[str, Any]:
  cfg = dict(MODES['quick' if args.quick else 'full'])
  groups = len(SPIDER_VARIANTS) + 2 * len(GRIDS['sgd_batches'])
  bar.reset(
    total=len(PROBLEMS) * len(cfg['eps']) * groups + 2 * len(cfg['n_grid'])
  )
  timings, on = {}, {}
  for tag, problem in enumerate(PROBLEMS):
    t = time.time()
    on[problem.name] = online(problem, cfg, bar, tag)
    timings[f'online_{problem.name}_s'] = time.time() - t
  t = time.time()
  fs = finite_sum(cfg, list(range(cfg['fs_seeds'])), bar)
  timings['finite_sum_s'] = time.time() - t
  return dict(
    config=dict(cfg, grids=GRIDS),
    stop=(
      'online: first checkpoint (2^(1/8) apart) at which the mean of '
      '||grad f|| (exact, not counted) over the last half of the '
      'iterates (>= 8) is <= eps; finite sum: first iterate with '
      '||grad f|| <= eps'
    ),
    oracle='anchor S1, recursive step 2*S2, SGD step its batch',
    failure='inf: no stop within the budget, or non-finite iterates; for '
    f'the best configuration also a seed still running at '
    f'{BEST_SLACK}x the median (censored). A median is inf when '
    'its middle seed failed (benchmarks.common.median).',
    online=on,
    finite_sum=fs,
    predicted_slopes=dict(
      spider=3, clipped_sgd=4, finite_sum_spider=0.5, finite_sum_clipped_gd=1
    ),
    timings=timings,
  )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs both problems and the finite sum; prints, plots, writes JSON."""
  return common.script('complexity', __doc__, argv, experiment, report, plots)


if __name__ == '__main__':
  main()
