"""Oracle complexity benchmark: stochastic gradients to an eps-stationary point.

Online: two stochastic (L0, L1)-smooth problems, five methods, eps on a
geometric grid. The count is oracle calls (SPEC section 2: an anchor costs S1,
a recursive step 2 S2, an SGD step its batch) until the stopping rule below
holds. Finite sum: oracle calls against n at a fixed eps.

Problems. A sample is F(x; s, z) = sum_j phi_j(x) (1 + s_j) + <z, x> with
s_j ~ N(0, tau^2), tau = 1/2, which is multiplicative and survives the paired
difference grad F(x) - grad F(y) = (phi'(x) - phi'(y))(1 + s), and
z ~ N(0, (sigma^2/d) I), sigma = 1, which is additive (the anchor noise) and
cancels in it. So f = E F = sum_j phi_j with f* = 0.

- ``wells`` (fixed, non-convex, d = 4): phi(u) = (u^2 - 1)^4 / 8 in every
  coordinate. Its stationary points have every coordinate in {-1, 0, 1}. The
  minima are flat (phi ~ 2 (u -+ 1)^4, Hessian 0, not strongly convex), and 0
  is a local maximum, so the mixed points are saddles.
  x0 = (2, 1.6, 0.3, -0.25) puts one coordinate far out, where
  ||grad f(x0)|| = 54 and the Hessian is 243 (0 at the minima): a constant
  step that is stable at x0 is far too short later, which is what clipping
  fixes. Two coordinates start on the concave side of the barrier at 0.
  (L0, L1) = (2, 11). With w = u^2, phi' = u (w - 1)^3 and
  phi'' = (w - 1)^2 (7w - 1). On |u| <= 1, |phi''| <= 2: for w <= 3/7,
  |7w - 1| <= 2 and (1 - w)^2 <= 1; for 3/7 <= w <= 1, (1 - w)^2 <= 16/49 and
  7w - 1 <= 6. For w >= 1, put t = w - 1: phi'' = 7t^3 + 6t^2 <= 2 + 11t^3 (by
  AM-GM, t^2 <= (2t^3 + 1)/3), and |phi'| = sqrt(w) t^3 >= t^3. The Hessian
  is diagonal, so ||hess f|| = max_j |phi''(x_j)| <= 2 + 11 ||grad f||.
- ``ramp`` (scaled with eps, d = 2): phi_1(u) = 2 eps (sqrt(u^2 + 4 eps^2)
  - 2 eps), phi_2(w) = w^4 / 4, x0 = (1/(2 eps), 3/2). Coordinate 1 has slope
  2 eps (just above the target) over a length 1/(2 eps) (a gap of 1), into a
  basin of curvature 1. Coordinate 2 is a flat quartic. The only stationary
  point is (0, 0), with Hessian diag(1, 0), which is degenerate.
  (L0, L1) = (1, 3): phi_1'' <= 1, and 3w^2 <= 4/9 + 3|w|^3.
  The function is convex. What matters is the scaling with eps, which is how
  worst-case (lower-bound) instances are built. The gradient stays near eps
  along a path of length ~1/eps, so a step of length ~eps/L0 needs ~eps^-2
  steps. The noise in the basin (sigma at curvature 1) holds a constant-step
  SGD to lr ~ eps^2/sigma^2. These are the sources of the bounds' eps^-3 for
  SPIDER (eps^-2 steps at ~sigma/eps calls each) and eps^-4 for SGD
  (1/(lr eps^2) steps). On a fixed function such as ``wells``, distances do
  not grow as eps shrinks.

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
``lax.scan``, in lockstep. Seed j's noise is shared by every configuration
(common random numbers), which makes the comparison across the grid less
noisy. Long groups drop their finished configurations from the lanes as they
go.

Finite sum (kept from the previous version): the cosh problem
f_i(x) = sum_j 2 cosh(x_j)(1 + s_ij) + <z_i, x>, d = 5, (L0, L1) = (3, 1.5),
with antithetic pairs (s, z)_{i+n/2} = -(s, z)_i, so f = sum_j 2 cosh(x_j).
For each n in n_grid and a fixed eps, SPIDER with ``so.theory.finite_sum``
(S1 = n, q = S2 = ceil(sqrt n)) runs against clipped full-gradient descent
(``so.spider`` with the same lr, c0, c1 and every step an anchor: n calls per
step). It reports the slopes of log(calls) against log(n) (predicted: 0.5 and
1). It stops at the first iterate with ||grad f|| <= eps. Clipped GD is
deterministic, and luck matters little to a slope in n at a fixed eps.

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

Usage::

    python benchmarks/complexity.py --quick
    python benchmarks/complexity.py --out benchmarks/out/complexity.json
"""

import argparse
import functools
import json
import math
import os
import platform
import sys
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                '..'))
import spider_optax as so  # pylint: disable=g-import-not-at-top

SIGMA = 1.0  # additive noise of one sample: E||z||^2 = SIGMA^2
TAU = 0.5  # multiplicative noise of one sample: s_j ~ N(0, TAU^2)
RING = 8  # the stopping window: the last RING blocks between checkpoints,
RATIO = 2.0 ** (1 / RING)  # which are 2^(1/8) apart: about the last half.

METHODS = ('spider', 'spider_sfo', 'sarah', 'clipped_sgd', 'sgd')
SPIDER_VARIANTS = ('spider', 'spider_sfo', 'sarah')

# The same grids in both modes; the modes differ in eps, n and seeds.
GRIDS = dict(
    lr_scales=[2.0**i for i in range(10)],  # lambda: 1 .. 512
    batch_scales=[4.0**-i for i in range(4, -1, -1)],  # mu: 1/256 .. 1
    sgd_lrs=[2.0**i for i in range(-12, 2)],  # 2^-12 .. 2
    sgd_clips=[1 / 16, 1 / 4, 1.0, 4.0],
    sgd_batches=[64, 8, 1],  # largest first: its best caps the others
)

MODES = {
    'quick': dict(eps=[0.16, 0.08, 0.04], seeds=3, n_grid=[2**10, 2**11, 2**12],
                  fs_eps=0.2, fs_seeds=2),
    'full': dict(eps=[round(0.16 * 10**(-i / 5), 4) for i in range(7)],
                 seeds=5,
                 n_grid=[2**10, 2**11, 2**12, 2**13, 2**14, 2**15, 2**16],
                 fs_eps=0.1, fs_seeds=3),
}
SPIDER_BUDGET = dict(calls=10**9, steps=10**6)
SGD_BUDGET = 10**8  # calls
CALLS_MAX = 2**31 - 2**24  # int32 counters saturate here (beyond any budget)
BEST_SLACK = 8  # the best configuration's seeds run to 8x its median
COMPACT_AFTER = 16384  # steps; shorter groups are not worth a recompilation


def _median(values) -> float:
  v = sorted(values)
  if any(math.isinf(x) for x in v[: len(v) // 2 + 1]):
    return math.inf  # the median itself is a failure
  return float(np.median(v))


def fit_slope(xs, ys):
  """Slope of log y vs log x over the finite points (None if fewer than 2)."""
  pts = [(x, y) for x, y in zip(xs, ys) if math.isfinite(y) and y > 0]
  if len(pts) < 2:
    return None
  lx, ly = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
  return float(np.polyfit(lx, ly, 1)[0])


class Problem(NamedTuple):
  """f(x) = sum_j phi(x; eps)_j; a sample is sum_j phi_j (1 + s_j) + <z, x>."""
  name: str
  d: int
  L0: float
  L1: float
  phi: Callable[[jax.Array, jax.Array], jax.Array]  # (x, eps) -> (d,) terms
  x0: Callable[[jax.Array], jax.Array]  # eps -> (d,) float32
  title: str


def phi_wells(x: jax.Array, eps: jax.Array) -> jax.Array:
  del eps  # a fixed function
  return (x * x - 1) ** 4 / 8


def phi_ramp(x: jax.Array, eps: jax.Array) -> jax.Array:
  u, w = x[0], x[1]
  ramp = 2 * eps * (jnp.sqrt(u * u + 4 * eps * eps) - 2 * eps)
  return jnp.stack([ramp, w**4 / 4])


PROBLEMS = (
    Problem('wells', 4, 2.0, 11.0, phi_wells,
            lambda eps: jnp.array([2.0, 1.6, 0.3, -0.25], jnp.float32),
            'wells: sum_j (x_j^2-1)^4/8 (fixed, non-convex)'),
    Problem('ramp', 2, 1.0, 3.0, phi_ramp,
            lambda eps: jnp.stack([0.5 / eps, 1.5]).astype(jnp.float32),
            'ramp: slope 2 eps over 1/(2 eps) + x_2^4/4 (eps-scaled)'),
)


def f_value(problem: Problem, x: jax.Array, eps) -> jax.Array:
  return jnp.sum(problem.phi(x, eps))


def true_grad_norm(problem: Problem, x: jax.Array, eps) -> jax.Array:
  """||grad f(x)||: exact, for the stopping rule only (not an oracle call)."""
  return jnp.linalg.norm(jax.grad(lambda y: f_value(problem, y, eps))(x))


def sample_loss(problem: Problem):
  """F(x; batch), batch = (mean s, mean z, eps) of a minibatch."""
  def loss(x, batch):
    s, z, eps = batch
    return jnp.sum(problem.phi(x, eps) * (1 + s) + z * x)
  return loss


def minibatch(problem: Problem, normals: jax.Array, size, eps):
  """The minibatch mean of `size` samples' noise, drawn directly.

  F is linear in (s, z), so a minibatch gradient depends on the samples only
  through their means, which are exactly N(0, TAU^2/size) and
  N(0, SIGMA^2/(d size) I): one draw costs O(d) whatever the batch size, and
  the oracle count is still `size`.
  """
  size = jnp.asarray(size, jnp.float32)
  return (normals[0] * (TAU / jnp.sqrt(size)),
          normals[1] * (SIGMA / jnp.sqrt(problem.d * size)), eps)


def _spider_tx(h):
  return so.spider(h['lr'], h['c0'], h['c1'])  # c = inf drops a term


def _sgd_tx(h):
  return optax.chain(optax.clip_by_global_norm(h['clip']), optax.sgd(h['lr']))


def _spider_lanes(problem: Problem):
  """(init, step) of so.spider lanes; step picks the anchor by k % q."""
  loss = sample_loss(problem)

  def anchor(x, opt, normals, h, eps):
    batch = minibatch(problem, normals, h['s1'], eps)
    updates, opt = _spider_tx(h).update(jax.grad(loss)(x, batch), opt, x)
    return optax.apply_updates(x, updates), opt, h['s1']

  def recursive(x, opt, normals, h, eps):
    batch = minibatch(problem, normals, h['s2'], eps)
    grads, prev = so.paired_grad(loss)(x, so.prev_params(opt), batch)
    updates, opt = _spider_tx(h).update(grads, opt, x, prev_grads=prev)
    return optax.apply_updates(x, updates), opt, 2 * h['s2']

  def step(k, q, *lanes):
    # Lanes step in lockstep and share q, so the branch is one scalar cond.
    return jax.lax.cond(k % q == 0, jax.vmap(anchor), jax.vmap(recursive),
                        *lanes)

  def init(h, eps):
    x = problem.x0(eps)
    return x, _spider_tx(h).init(x)

  return init, step


def _sgd_lanes(problem: Problem):
  """(init, step) of clipped SGD lanes (clip = inf: plain SGD)."""
  loss = sample_loss(problem)

  def one(x, opt, normals, h, eps):
    batch = minibatch(problem, normals, h['batch'], eps)
    updates, opt = _sgd_tx(h).update(jax.grad(loss)(x, batch), opt, x)
    return optax.apply_updates(x, updates), opt, h['batch']

  def step(k, q, *lanes):
    del k, q
    return jax.vmap(one)(*lanes)

  def init(h, eps):
    x = problem.x0(eps)
    return x, _sgd_tx(h).init(x)

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


@functools.lru_cache(maxsize=None)
def _group_runner(problem: Problem, kind: str, seeds: int):
  """Jitted (start, advance) of a group of lanes of `kind` on `problem`."""
  init, step = (_spider_lanes if kind == 'spider' else _sgd_lanes)(problem)
  gnorm = jax.vmap(lambda x, e: true_grad_norm(problem, x, e))

  @jax.jit
  def start(h, eps):
    x, opt = jax.vmap(init)(h, eps)
    lanes = eps.shape[0]
    zi = jnp.zeros(lanes, jnp.int32)
    return Carry(x, opt, zi, jnp.int32(0), jnp.int32(1), jnp.int32(0),
                 jnp.zeros(RING, jnp.int32), jnp.zeros(lanes),
                 jnp.zeros((lanes, RING)), zi - 1)

  def check(c: Carry, eps) -> Carry:
    # A checkpoint: close the block, test the mean over the last RING blocks.
    ring_n = jnp.concatenate([c.block_n[None], c.ring_n[:-1]])
    ring_sum = jnp.concatenate([c.block_sum[:, None], c.ring_sum[:, :-1]], 1)
    window = ring_sum.sum(1) / jnp.maximum(ring_n.sum(), 1)
    hit = (ring_n[-1] > 0) & (window <= eps) & (c.stop < 0)
    return c._replace(
        ring_n=ring_n, ring_sum=ring_sum, block_n=jnp.int32(0),
        block_sum=jnp.zeros_like(c.block_sum),
        stop=jnp.where(hit, c.calls, c.stop),
        next_check=jnp.maximum(c.k + 1,
                               jnp.floor(c.k * RATIO).astype(jnp.int32)))

  @jax.jit
  def advance(c: Carry, normals, h, eps, q):
    # normals: (steps, seeds, 2, d); seed j's noise is shared by every
    # configuration (common random numbers make the grid search less noisy).
    normals = jnp.tile(normals, (1, eps.shape[0] // seeds, 1, 1))

    def one(c, nz):
      x, opt, cost = step(c.k, q, c.x, c.opt, nz, h, eps)
      c = c._replace(x=x, opt=opt, k=c.k + 1,
                     calls=jnp.minimum(c.calls, CALLS_MAX - cost) + cost,
                     block_n=c.block_n + 1,
                     block_sum=c.block_sum + gnorm(x, eps))
      return jax.lax.cond(c.k == c.next_check, check, lambda c, e: c,
                          c, eps), None

    c, _ = jax.lax.scan(one, c, normals)
    return c, jnp.all(jnp.isfinite(c.x), axis=-1)

  return start, advance


def _take(c: Carry, lanes: np.ndarray) -> Carry:
  """The carry of a subset of the lanes (the step counters are shared)."""
  take = lambda a: jnp.take(a, lanes, axis=0)
  return c._replace(x=take(c.x), opt=jax.tree.map(take, c.opt),
                    calls=take(c.calls), block_sum=take(c.block_sum),
                    ring_sum=take(c.ring_sum), stop=take(c.stop))


def run_group(problem: Problem, kind: str, configs: list[dict], eps: float,
              seeds: int, rng: np.random.Generator, *, chunk: int,
              budget: int, max_steps: int, cap: float = math.inf,
              q: int = 1) -> np.ndarray:
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
  h = {k: jnp.asarray(np.repeat([c[k] for c in configs], seeds),
                      jnp.int32 if k in ints else jnp.float32)
       for k in configs[0]}
  e = jnp.full(len(configs) * seeds, eps, jnp.float32)
  c, steps = start(h, e), 0
  here = np.arange(len(configs))  # the configurations still in the lanes
  calls_to = np.full((len(configs), seeds), np.inf)
  while True:
    normals = rng.standard_normal((chunk, seeds, 2, problem.d), np.float32)
    c, ok = advance(c, normals, h, e, jnp.int32(q))
    steps += chunk
    stop, calls, ok = np.asarray(c.stop), np.asarray(c.calls), np.asarray(ok)
    calls_to[here] = np.where((stop >= 0) & (stop <= budget), stop,
                              np.inf).reshape(-1, seeds)
    median = np.sort(calls_to, 1)[:, seeds // 2]
    best = int(np.argmin(median))
    limit = np.full(len(configs), min(median[best], cap))
    if median[best] <= cap:
      limit[best] = BEST_SLACK * median[best]
    live = ((stop < 0) & ok & (calls < budget)
            & (calls < np.repeat(limit[here], seeds))).reshape(-1, seeds)
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
  p = so.theory.online(problem.L0, problem.L1, eps, SIGMA)
  g0 = float(true_grad_norm(problem, problem.x0(jnp.float32(eps)), eps))
  out = []
  for lam, mu in scales:
    if variant == 'sarah':  # no clipping: a step stable at the far start
      lr, c0, c1 = lam / (problem.L0 + problem.L1 * g0), math.inf, math.inf
    else:
      lr, c0 = lam * p.learning_rate, p.c0
      c1 = p.c1 if variant == 'spider' else math.inf
    out.append(dict(lr=lr, c0=c0, c1=c1, q=p.anchor_period,
                    s1=max(1, round(mu * p.anchor_batch_size)),
                    s2=max(1, round(mu * p.minibatch_size)),
                    lr_scale=lam, batch_scale=mu))
  return out, p


def _best_row(eps, configs, calls_to, edges):
  """The row of the best configuration (least median calls).

  edges: {name: values}; at_grid_edge lists the names whose best value is one
  of those (the grid's ends, where a better value may lie outside it).
  """
  median = [_median(row) for row in calls_to]
  i = int(np.argmin(median))
  hyper = {k: (None if isinstance(v, float) and math.isinf(v) else v)
           for k, v in configs[i].items()}
  at_edge = [k for k, ends in edges.items()
             if math.isfinite(median[i]) and hyper[k] in ends]
  return dict(eps=eps, calls=[_count(v) for v in calls_to[i]],
              median=median[i], failed=int(np.isinf(calls_to[i]).sum()),
              hyper=hyper, at_grid_edge=at_edge)


def online(problem: Problem, cfg: dict, bar, tag: int = 0) -> dict:
  """Best median calls per method and eps, fitted slopes, untuned presets."""
  seeds, eps_grid = cfg['seeds'], cfg['eps']
  results = {m: [] for m in METHODS}
  preset = {v: dict(calls=[], median=[], predicted=[])
            for v in ('spider', 'spider_sfo')}
  scales = [(lam, mu) for lam in GRIDS['lr_scales']
            for mu in GRIDS['batch_scales']]
  lrs, lams = GRIDS['sgd_lrs'], GRIDS['lr_scales']
  spider_edges = dict(lr_scale=(lams[0], lams[-1]),
                      batch_scale=(GRIDS['batch_scales'][0],))
  for i, eps in enumerate(eps_grid):
    rng = lambda group, i=i: np.random.default_rng([tag, i, group])
    for v, variant in enumerate(SPIDER_VARIANTS):
      configs, p = _spider_configs(problem, variant, eps, scales)
      calls_to = run_group(problem, 'spider', configs, eps, seeds, rng(v),
                           chunk=128, budget=SPIDER_BUDGET['calls'],
                           max_steps=SPIDER_BUDGET['steps'],
                           q=p.anchor_period)
      results[variant].append(_best_row(eps, configs, calls_to,
                                        spider_edges))
      bar.update(1)
      if variant in preset:  # the preset as is: lambda = mu = 1, own group
        configs, p = _spider_configs(problem, variant, eps, [(1.0, 1.0)])
        gap = float(f_value(problem, problem.x0(jnp.float32(eps)), eps))
        calls_to = run_group(problem, 'spider', configs, eps, seeds, rng(v),
                             chunk=128, budget=SPIDER_BUDGET['calls'],
                             max_steps=SPIDER_BUDGET['steps'],
                             q=p.anchor_period)
        preset[variant]['calls'].append([_count(c) for c in calls_to[0]])
        preset[variant]['median'].append(_median(calls_to[0]))
        preset[variant]['predicted'].append(so.theory.online(
            problem.L0, problem.L1, eps, SIGMA, initial_gap=gap).oracle_calls)
    for m, (method, clips) in enumerate((('clipped_sgd', GRIDS['sgd_clips']),
                                         ('sgd', [math.inf]))):
      best = None
      for b, batch in enumerate(GRIDS['sgd_batches']):
        configs = [dict(lr=lr, clip=c, batch=batch) for lr in GRIDS['sgd_lrs']
                   for c in clips]
        cap = math.inf if best is None else best['median']
        calls_to = run_group(problem, 'sgd', configs, eps, seeds,
                             rng(10 + 3 * m + b), chunk=1024,
                             budget=SGD_BUDGET, max_steps=SGD_BUDGET // batch,
                             cap=cap)
        row = _best_row(eps, configs, calls_to,
                        dict(lr=(lrs[0], lrs[-1]), clip=(clips[0],)))
        if best is None or row['median'] < best['median']:
          best = row
        bar.update(1)
      results[method].append(best)
  inv = [1 / e for e in eps_grid]
  slopes = {m: fit_slope(inv, [r['median'] for r in results[m]])
            for m in METHODS}
  tail = {m: fit_slope(inv[-3:], [r['median'] for r in results[m]][-3:])
          for m in METHODS}
  for v in preset.values():
    v['slope'] = fit_slope(inv, v['median'])
  x0 = problem.x0(jnp.float32(eps_grid[-1]))
  return dict(
      eps=list(eps_grid), results=results, slopes=slopes, tail_slopes=tail,
      preset=preset,
      problem=dict(name=problem.name, title=problem.title, d=problem.d,
                   L0=problem.L0, L1=problem.L1, sigma=SIGMA, tau=TAU,
                   x0_at_smallest_eps=[float(v) for v in x0],
                   grad_norm_x0=float(true_grad_norm(problem, x0,
                                                     eps_grid[-1]))))


# Finite sum: the cosh problem of the previous version, kept as it was (its
# first-hit stopping rule included; see the module doc).
COSH_D = 5
COSH_SIGMA = 1.0
COSH_L0, COSH_L1 = 3.0, 1.5


def cosh_grad_norm(x):
  return jnp.linalg.norm(2 * jnp.sinh(x))


def cosh_loss(x, batch):
  """Mean of F(x; xi) over the rows of batch = (s, z)."""
  s, z = batch
  return jnp.mean(jnp.sum(2 * jnp.cosh(x) * (1 + s) + z * x, axis=-1))


def cosh_x0():
  return jnp.linspace(2.0, 3.0, COSH_D, dtype=jnp.float32)


def _calls(calls, g, eps):
  return int(calls) if float(g) <= eps else math.inf


def _keep_going(eps, budget):
  def keep_going(carry):
    x, calls = carry[0], carry[-1]
    g = cosh_grad_norm(x)
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

  def step(carry, tx):
    x, state, key, k, calls = carry
    key, sub = jax.random.split(key)

    def anchor():
      grads = jax.grad(cosh_loss)(x, sampler(sub, s1))
      return tx.update(grads, state, x), jnp.int32(s1)

    def recursive():
      grads, prev = so.paired_grad(cosh_loss)(
          x, so.prev_params(state), sampler(sub, s2))
      return tx.update(grads, state, x, prev_grads=prev), jnp.int32(2 * s2)

    (updates, state), cost = jax.lax.cond(k % q == 0, anchor, recursive)
    return optax.apply_updates(x, updates), state, key, k + 1, calls + cost

  @jax.jit
  def run(key, lr, c0, c1, eps):
    tx = so.spider(lr, c0, c1)
    x = cosh_x0()
    carry = (x, tx.init(x), key, jnp.int32(0), jnp.int32(0))
    carry = jax.lax.while_loop(_keep_going(eps, budget),
                               lambda c: step(c, tx), carry)
    return carry[-1], cosh_grad_norm(carry[0])

  def call(key, lr, c0, c1, eps):
    f32 = lambda v: jnp.float32(math.inf if v is None else v)
    return run(key, f32(lr), f32(c0), f32(c1), f32(eps))

  return call


def finite_sum_data(n, seed=0):
  rng = np.random.default_rng(seed)
  s = rng.uniform(-0.5, 0.5, size=(n // 2, COSH_D))
  z = rng.normal(size=(n // 2, COSH_D)) * (COSH_SIGMA / math.sqrt(COSH_D))
  return (jnp.asarray(np.concatenate([s, -s]), jnp.float32),
          jnp.asarray(np.concatenate([z, -z]), jnp.float32))


def finite_sum(cfg, seeds, bar):
  eps = cfg['fs_eps']
  out = {'spider': [], 'clipped_gd': []}
  for n in cfg['n_grid']:
    s_all, z_all = finite_sum_data(n)
    p = so.theory.finite_sum(n, COSH_L0, COSH_L1, eps)
    q = p.anchor_period

    def sampler(key, size, n=n, s_all=s_all, z_all=z_all):
      if size == n:  # the full gradient
        return s_all, z_all
      rows = jax.random.randint(key, (size,), 0, n)  # with replacement
      return s_all[rows], z_all[rows]

    budget = 2_000_000_000
    hyper = (p.learning_rate, p.c0, p.c1, eps)
    run = make_spider_run(q, n, p.minibatch_size, budget, sampler)
    calls = [_calls(*run(jax.random.key(sd), *hyper), eps) for sd in seeds]
    out['spider'].append(dict(n=n, calls=calls, median=_median(calls), q=q,
                              S1=n, S2=p.minibatch_size,
                              predicted=p.oracle_calls))
    bar.update(1)
    run = make_spider_run(1, n, 1, budget, sampler)
    c = _calls(*run(jax.random.key(0), *hyper), eps)  # deterministic
    out['clipped_gd'].append(dict(n=n, calls=[c], median=c))
    bar.update(1)
  slopes = {m: fit_slope([r['n'] for r in out[m]],
                         [r['median'] for r in out[m]])
            for m in out}
  return dict(eps=eps, results=out, slopes=slopes,
              lr=so.theory.finite_sum(1024, COSH_L0, COSH_L1,
                                      eps).learning_rate,
              c0=eps, c1=eps * COSH_L0 / COSH_L1)


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


def print_tables(res: dict) -> None:
  for name, on in res['online'].items():
    seeds = res['config']['seeds']
    print(f'\nOnline, {on["problem"]["title"]}: median oracle calls until the '
          f'last-half mean of ||grad f|| <= eps (seeds={seeds})')
    print(f'{"method":<19}' + ''.join(f'{e:>10.4g}' for e in on['eps'])
          + f'{"slope":>7}{"tail":>7}')
    for m in METHODS:
      row = ''.join(f'{_fmt(r["median"]):>10}' for r in on['results'][m])
      print(f'{m:<19}{row}{_fmt_slope(on["slopes"][m]):>7}'
            f'{_fmt_slope(on["tail_slopes"][m]):>7}')
    for v, pre in on['preset'].items():
      row = ''.join(f'{_fmt(x):>10}' for x in pre['median'])
      print(f'{v + " preset":<19}{row}{_fmt_slope(pre["slope"]):>7}')
      row = ''.join(f'{_fmt(x):>10}' for x in pre['predicted'])
      print(f'{"  (predicted)":<19}{row}')
    for m in METHODS:
      print(f'  best {m}: ' + '; '.join(_hyper_text(r)
                                        for r in on['results'][m]))
    print('  seeds not stopped in the best configuration: ' + '; '.join(
        f'{m} ' + ','.join(str(r['failed']) for r in on['results'][m])
        for m in METHODS))
  print('  (* = best value at an end of its grid)')
  fs = res['finite_sum']
  print(f'\nFinite sum: median oracle calls to eps={fs["eps"]}')
  print(f'{"n":>8}{"spider":>12}{"clipped_gd":>12}{"ratio":>8}')
  for a, b in zip(fs['results']['spider'], fs['results']['clipped_gd']):
    ratio = (b['median'] / a['median'] if math.isfinite(a['median'])
             else math.nan)
    print(f'{a["n"]:>8}{_fmt(a["median"]):>12}{_fmt(b["median"]):>12}'
          f'{ratio:>8.2f}')
  print('slopes vs n: ' + ', '.join(
      f'{m}={_fmt_slope(s)}' for m, s in fs['slopes'].items())
        + ' (predicted 0.5, 1)')


def plot(res: dict, plot_dir: str) -> list[str]:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  paths = []
  fig, axes = plt.subplots(1, len(res['online']), figsize=(11, 4.5))
  for ax, on in zip(np.atleast_1d(axes), res['online'].values()):
    inv = np.array([1 / e for e in on['eps']])
    lines = {m: [r['median'] for r in on['results'][m]] for m in METHODS}
    lines['spider preset'] = on['preset']['spider']['median']
    for m, ys in lines.items():
      ok = [i for i, y in enumerate(ys) if math.isfinite(y)]
      s = (on['slopes'][m] if m in on['slopes']
           else on['preset']['spider']['slope'])
      ax.loglog(inv[ok], [ys[i] for i in ok], 'o-' if m in METHODS else 'x:',
                label=f'{m} ({_fmt_slope(s)})')
    ref = min(y for ys in lines.values() for y in ys if math.isfinite(y))
    for k, style in ((2, 'k-.'), (3, 'k--'), (4, 'k:')):
      ax.loglog(inv, ref * (inv / inv[0]) ** k, style, lw=0.8,
                label=f'slope {k}')
    ax.set_xlabel('1/eps')
    ax.set_ylabel('oracle calls (median over seeds, best of grid)')
    ax.set_title(on['problem']['title'], fontsize=9)
    ax.legend(fontsize=7)
  fig.tight_layout()
  paths.append(os.path.join(plot_dir, 'complexity_online.png'))
  fig.savefig(paths[-1], dpi=110)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(6, 4.5))
  fs = res['finite_sum']
  for m, rows in fs['results'].items():
    xs = [r['n'] for r in rows if math.isfinite(r['median'])]
    ys = [r['median'] for r in rows if math.isfinite(r['median'])]
    ax.loglog(xs, ys, 'o-', label=f'{m} (slope {_fmt_slope(fs["slopes"][m])})')
  ns = np.array(res['config']['n_grid'], float)
  ref = fs['results']['spider'][0]['median']
  ref = ref if math.isfinite(ref) else 1e5
  for k, style in ((0.5, 'k--'), (1, 'k:')):
    ax.loglog(ns, ref * (ns / ns[0]) ** k, style, lw=1,
              label=f'reference slope {k}')
  ax.set_xlabel('n')
  ax.set_ylabel('oracle calls')
  ax.set_title(f'Finite sum: calls to eps={fs["eps"]}')
  ax.legend(fontsize=7)
  fig.tight_layout()
  paths.append(os.path.join(plot_dir, 'complexity_finite_sum.png'))
  fig.savefig(paths[-1], dpi=110)
  plt.close(fig)
  return paths


def environment() -> dict:
  import matplotlib  # pylint: disable=g-import-not-at-top
  return dict(
      python=platform.python_version(), platform=platform.platform(),
      processor=platform.processor() or platform.machine(),
      cpu_count=os.cpu_count(), jax=jax.__version__, optax=optax.__version__,
      numpy=np.__version__, matplotlib=matplotlib.__version__,
      devices=[str(d) for d in jax.devices()])


def main(argv=None) -> dict:
  here = os.path.dirname(os.path.abspath(__file__))
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--quick', action='store_true',
                      help='3 eps values, n up to 2^12 (under 2 minutes).')
  parser.add_argument('--out', default=os.path.join(here, 'out',
                                                    'complexity.json'))
  parser.add_argument('--plot-dir', default=os.path.join(here, 'out'))
  args = parser.parse_args(argv)
  mode = 'quick' if args.quick else 'full'
  cfg = dict(MODES[mode])
  groups = len(SPIDER_VARIANTS) + 2 * len(GRIDS['sgd_batches'])
  total = len(PROBLEMS) * len(cfg['eps']) * groups + 2 * len(cfg['n_grid'])
  start = time.time()
  timings = {}
  with tqdm(total=total, desc=f'complexity ({mode})') as bar:
    on = {}
    for tag, problem in enumerate(PROBLEMS):
      t = time.time()
      on[problem.name] = online(problem, cfg, bar, tag)
      timings[f'online_{problem.name}_s'] = time.time() - t
    t = time.time()
    fs = finite_sum(cfg, list(range(cfg['fs_seeds'])), bar)
    timings['finite_sum_s'] = time.time() - t
  res = dict(
      mode=mode, config=dict(cfg, grids=GRIDS),
      stop=('online: first checkpoint (2^(1/8) apart) at which the mean of '
            '||grad f|| (exact, not counted) over the last half of the '
            'iterates (>= 8) is <= eps; finite sum: first iterate with '
            '||grad f|| <= eps'),
      oracle='anchor S1, recursive step 2*S2, SGD step its batch',
      failure='inf: no stop within the budget, or non-finite iterates; for '
              'the best configuration also a seed still running at 4x the '
              'median (censored)',
      online=on, finite_sum=fs,
      predicted_slopes=dict(spider=3, clipped_sgd=4, finite_sum_spider=0.5,
                            finite_sum_clipped_gd=1),
      environment=environment(), timings=timings, wall_time_s=None)
  res['wall_time_s'] = time.time() - start
  print_tables(res)
  print(f'wall time {res["wall_time_s"]:.1f} s ' + ', '.join(
      f'{k}={v:.0f}' for k, v in timings.items()))
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  os.makedirs(args.plot_dir, exist_ok=True)
  res['plots'] = plot(res, args.plot_dir)
  with open(args.out, 'w') as f:
    json.dump(res, f, indent=1)  # failures are written as Infinity
  print(f'wrote {args.out} and {", ".join(res["plots"])}')
  return res


if __name__ == '__main__':
  main()
