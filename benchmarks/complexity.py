"""Oracle complexity benchmark: stochastic gradients to an eps-stationary point.

Problem (online, stochastic, (L0, L1)-smooth, d = 5 coordinates)::

    F(x; xi) = sum_j 2 cosh(x_j) (1 + s_j) + <z, x>,
    s_j ~ U[-1/2, 1/2] i.i.d.,   z ~ N(0, (sigma^2 / d) I),   sigma = 1,
    f(x) = E F(x; xi) = sum_j 2 cosh(x_j),   grad f(x) = 2 sinh(x),  f* = 2d.

Every sample's Hessian is diag(2 cosh(x_j)(1 + s_j)), of norm at most
(3/2)(2 + 2|sinh x_j|) <= 3 + 1.5 ||grad f(x)||: (L0, L1) = (3, 1.5) (the same
constants as tests/test_theory.py). The additive part z gives the anchor
variance E||z||^2 = sigma^2; the multiplicative part s varies with x, so the
paired difference grad F(x; xi) - grad F(y; xi) = 2(sinh x - sinh y)(1 + s)
is noisy too (z cancels in it, s does not). The start x0 =
linspace(2, 3, d) is far out: ||grad f(x0)|| = 32, the sample Hessians there
reach 30 against about 2 at the minimum, so a constant step that is stable at
x0 is about 15 times too short near the minimum; this is where clipping
matters.

Methods (online part), each counted per SPEC (an anchor costs S1, a recursive
step 2 S2, an SGD step its batch), until the first iterate with
||grad f(x_k)|| <= eps (the exact gradient, not counted):

- ``spider``: ``so.spider`` with ``so.theory.online(L0, L1, eps, sigma)``
  (lr = 1/(4 L0), c0 = eps, c1 = eps L0/L1, q, S1, S2 of the preset), with ONE
  global factor lambda on lr tuned per eps on a coarse grid (``lr_scales`` of
  MODES: 1, 4, 16 quick; 1, 3, 10, 30, 100 full):
  the best median over seeds is reported (lambda = 1 is the untuned preset;
  its counts and slopes are printed and in the JSON as ``lr_scale_1``).
- ``spider_sfo``: the same with c1 = None (SPIDER-SFO's normalised step), same
  lambda grid.
- ``sarah``: no clipping (c0 = c1 = None), same q, S1, S2; lr = lambda /
  (L0 + L1 ||grad f(x0)||) = lambda / 48.8 (a constant step that is stable at
  the far start x0), same lambda grid.
- ``clipped_sgd``: ``optax.chain(optax.clip_by_global_norm(c), optax.sgd(lr))``
  with batch size 1; lr and c tuned per eps on the grid ``sgd_lrs`` x
  ``sgd_clips`` of MODES (best median over the seeds, the same seeds as
  reported; lr from 3e-4 (3e-3 quick) to 0.3, c in {0.25, 1, 4} ({1, 4} quick)).
- ``sgd``: plain SGD, batch 1, lr tuned on ``sgd_lrs``.

A run that exhausts the oracle budget (or diverges) is a failure, recorded as
``inf`` (``Infinity`` in the JSON). For each method the script fits the slope
of log(median oracle calls) against log(1/eps) over the finite medians. The
analysis predicts 3 for SPIDER (O(eps^-3)) and 4 for clipped SGD (its
worst-case O(eps^-4)); the problem is strongly convex near its minimum, so
SGD's worst case is not expected to show (SGD needs about sigma^2/eps^2 steps
there); the measured slopes are reported as they come.

Finite sum: f_i(x) = sum_j 2 cosh(x_j)(1 + s_ij) + <z_i, x> with antithetic
pairs (s, z)_{i+n/2} = -(s, z)_i, so f = (1/n) sum_i f_i is the same function
as above. For n in ``N_GRID`` and a fixed eps, SPIDER with
``so.theory.finite_sum`` (S1 = n, q = S2 = ceil(sqrt n)) against clipped
full-gradient descent (``so.spider`` with the same lr, c0, c1 and every step an
anchor: n per step); slopes of log(calls) vs log(n) (predicted 0.5 and 1).

What it shows (full mode, seeds 0-2; see the JSON for the numbers of a run):
the finite-sum slopes match the prediction (0.51 for SPIDER, 1.00 for clipped
GD; SPIDER needs 11x fewer calls at n = 2^10 and 84x fewer at 2^16). The
online slopes do not: the untuned presets (lambda = 1) give about 2, not 3,
because on this problem the number of steps grows like 1/eps, not 1/eps^2
(the far phase is c1-limited, f falling by lr c1 = eps/(4 L1) per step, and
near the minimum the normalised steps of length lr c0 cross a fixed
distance); the eps^-2 steps of the worst case need long flat regions that
this problem lacks. The tuned lambda sits at 30-100 (the presets' constants
are conservative), where the step overshoots near the minimum and the
per-eps choice makes the tuned slopes noisy. SGD, plain or clipped, stops
first by far: f is strongly convex near its minimum and the stopping rule
(the FIRST iterate with ||grad f|| <= eps) rewards noisy iterates that pass
through the eps-ball, so SGD's worst-case eps^-4 does not show either (its
slope is about 2).

Usage::

    python benchmarks/complexity.py --quick
    python benchmarks/complexity.py --out benchmarks/out/complexity.json
"""

import argparse
import json
import math
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                '..'))
import spider_optax as so  # pylint: disable=g-import-not-at-top

D = 5
X0 = 3.0
SIGMA = 1.0
L0, L1 = 3.0, 1.5

METHODS = ('spider', 'spider_sfo', 'sarah', 'clipped_sgd', 'sgd')

MODES = {
    'quick': dict(
        eps=[0.2, 0.1, 0.05], seeds=2, lr_scales=[1.0, 4.0, 16.0],
        sgd_lrs=[3e-3, 1e-2, 3e-2, 1e-1, 3e-1], sgd_clips=[1.0, 4.0],
        budget=2_000_000, sgd_budget=20_000,
        n_grid=[2**10, 2**11, 2**12], fs_eps=0.2, fs_seeds=2),
    'full': dict(
        eps=[0.2, 0.141, 0.1, 0.0707, 0.05, 0.0354], seeds=3,
        lr_scales=[1.0, 3.0, 10.0, 30.0, 100.0],
        sgd_lrs=[3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1],
        sgd_clips=[0.25, 1.0, 4.0], budget=50_000_000, sgd_budget=100_000,
        n_grid=[2**10, 2**11, 2**12, 2**13, 2**14, 2**15, 2**16],
        fs_eps=0.1, fs_seeds=3),
}


def grad_norm(x):
  return jnp.linalg.norm(2 * jnp.sinh(x))


def sample_loss(x, batch):
  """Mean of F(x; xi) over the rows of batch = (s, z)."""
  s, z = batch
  return jnp.mean(jnp.sum(2 * jnp.cosh(x) * (1 + s) + z * x, axis=-1))


def draw(key, size):
  ks, kz = jax.random.split(key)
  s = jax.random.uniform(ks, (size, D), minval=-0.5, maxval=0.5)
  z = jax.random.normal(kz, (size, D)) * (SIGMA / math.sqrt(D))
  return s, z


def x0():
  """x0_j from 2 to 3: far out, and not symmetric (coordinates desynchronised)."""
  return jnp.linspace(X0 - 1.0, X0, D, dtype=jnp.float32)


def _keep_going(eps, budget):
  def keep_going(carry):
    x, calls = carry[0], carry[-1]
    g = grad_norm(x)
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
      grads = jax.grad(sample_loss)(x, sampler(sub, s1))
      return tx.update(grads, state, x), jnp.int32(s1)

    def recursive():
      grads, prev = so.paired_grad(sample_loss)(
          x, so.prev_params(state), sampler(sub, s2))
      return tx.update(grads, state, x, prev_grads=prev), jnp.int32(2 * s2)

    (updates, state), cost = jax.lax.cond(k % q == 0, anchor, recursive)
    return optax.apply_updates(x, updates), state, key, k + 1, calls + cost

  @jax.jit
  def run(key, lr, c0, c1, eps):
    tx = so.spider(lr, c0, c1)
    x = x0()
    carry = (x, tx.init(x), key, jnp.int32(0), jnp.int32(0))
    carry = jax.lax.while_loop(_keep_going(eps, budget),
                               lambda c: step(c, tx), carry)
    return carry[-1], grad_norm(carry[0])

  def call(key, lr, c0, c1, eps):
    f32 = lambda v: jnp.float32(math.inf if v is None else v)
    return run(key, f32(lr), f32(c0), f32(c1), f32(eps))

  return call


def make_sgd_run(budget, batch=1):
  """Jitted run(lr, clip, key, eps) of clipped SGD, vmapped over lr, clip, key."""

  def one(lr, clip, key, eps):
    tx = optax.chain(optax.clip_by_global_norm(clip), optax.sgd(lr))

    def step(carry):
      x, state, key, calls = carry
      key, sub = jax.random.split(key)
      grads = jax.grad(sample_loss)(x, draw(sub, batch))
      updates, state = tx.update(grads, state, x)
      return optax.apply_updates(x, updates), state, key, calls + batch

    x = x0()
    carry = (x, tx.init(x), key, jnp.int32(0))
    carry = jax.lax.while_loop(_keep_going(eps, budget), step, carry)
    return carry[-1], grad_norm(carry[0])

  return jax.jit(jax.vmap(one, in_axes=(0, 0, 0, None)))


def _calls(calls, g, eps):
  return int(calls) if float(g) <= eps else math.inf


def _median(values):
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


def online(cfg, seeds, bar):
  g0 = float(grad_norm(x0()))
  sarah_den = L0 + L1 * g0
  results = {m: [] for m in METHODS}
  sgd_run = make_sgd_run(cfg['sgd_budget'])
  for eps in cfg['eps']:
    p = so.theory.online(L0, L1, eps, SIGMA)
    q, s1, s2 = p.anchor_period, p.anchor_batch_size, p.minibatch_size
    run = make_spider_run(q, s1, s2, cfg['budget'], draw)
    variants = {
        'spider': lambda lam: (lam * p.learning_rate, p.c0, p.c1),
        'spider_sfo': lambda lam: (lam * p.learning_rate, p.c0, None),
        'sarah': lambda lam: (lam / sarah_den, None, None),
    }
    for method, hyper in variants.items():
      by_scale = {}
      for lam in cfg['lr_scales']:
        by_scale[lam] = [_calls(*run(jax.random.key(seed), *hyper(lam), eps),
                                eps) for seed in seeds]
        bar.update(1)
      best = min(by_scale, key=lambda lam: (_median(by_scale[lam]), lam))
      results[method].append(dict(
          eps=eps, calls=by_scale[best], median=_median(by_scale[best]),
          lr_scale=best, lr=hyper(best)[0], c0=hyper(best)[1],
          c1=hyper(best)[2], q=q, S1=s1, S2=s2,
          by_lr_scale={str(k): v for k, v in by_scale.items()}))
    # Clipped and plain SGD: one vmapped run over (lr, clip, seed).
    clips = list(cfg['sgd_clips']) + [math.inf]
    grid = [(lr, c, sd) for lr in cfg['sgd_lrs'] for c in clips
            for sd in seeds]
    calls, g = sgd_run(
        jnp.array([a for a, _, _ in grid], jnp.float32),
        jnp.array([min(c, 1e30) for _, c, _ in grid], jnp.float32),
        jax.vmap(jax.random.key)(jnp.array([sd for *_, sd in grid])),
        jnp.float32(eps))
    table = {}
    for (lr, c, _), n, gn in zip(grid, np.asarray(calls), np.asarray(g)):
      table.setdefault((lr, c), []).append(_calls(n, gn, eps))
    bar.update(1)
    for method, allowed in (('clipped_sgd', cfg['sgd_clips']),
                            ('sgd', [math.inf])):
      cands = [k for k in table if k[1] in allowed]
      best = min(cands, key=lambda k: (_median(table[k]), -k[0]))
      results[method].append(dict(
          eps=eps, calls=table[best], median=_median(table[best]),
          lr=best[0], clip=None if math.isinf(best[1]) else best[1], batch=1))
  slopes = {m: fit_slope([1 / r['eps'] for r in results[m]],
                         [r['median'] for r in results[m]]) for m in METHODS}
  # The untuned presets (lambda = 1): counts and slopes, for reference.
  untuned = {}
  for m in ('spider', 'spider_sfo', 'sarah'):
    med = [_median(r['by_lr_scale'][str(1.0)]) for r in results[m]]
    untuned[m] = dict(median=med, slope=fit_slope(
        [1 / r['eps'] for r in results[m]], med))
  return dict(results=results, slopes=slopes, sarah_lr_denominator=sarah_den,
              grad_norm_x0=g0, lr_scale_1=untuned)


def finite_sum_data(n, seed=0):
  rng = np.random.default_rng(seed)
  s = rng.uniform(-0.5, 0.5, size=(n // 2, D))
  z = rng.normal(size=(n // 2, D)) * (SIGMA / math.sqrt(D))
  return (jnp.asarray(np.concatenate([s, -s]), jnp.float32),
          jnp.asarray(np.concatenate([z, -z]), jnp.float32))


def finite_sum(cfg, seeds, bar):
  eps = cfg['fs_eps']
  out = {'spider': [], 'clipped_gd': []}
  for n in cfg['n_grid']:
    s_all, z_all = finite_sum_data(n)
    p = so.theory.finite_sum(n, L0, L1, eps)
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
  slopes = {m: fit_slope([r['n'] for r in out[m]], [r['median'] for r in out[m]])
            for m in out}
  return dict(eps=eps, results=out, slopes=slopes,
              lr=so.theory.finite_sum(1024, L0, L1, eps).learning_rate,
              c0=eps, c1=eps * L0 / L1)


def _fmt(v):
  return 'FAIL' if math.isinf(v) else f'{v:.3g}'


def print_tables(res):
  on = res['online']
  eps = [r['eps'] for r in on['results']['spider']]
  print('\nOnline: median oracle calls to ||grad f|| <= eps '
        f'(seeds={res["config"]["seeds"]})')
  print(f'{"method":<15}' + ''.join(f'{e:>11.4g}' for e in eps)
        + f'{"slope":>8}')
  for m in METHODS:
    row = ''.join(f'{_fmt(r["median"]):>11}' for r in on['results'][m])
    s = on['slopes'][m]
    print(f'{m:<15}{row}{("n/a" if s is None else f"{s:.2f}"):>8}')
  for m, u in on['lr_scale_1'].items():
    row = ''.join(f'{_fmt(v):>11}' for v in u['median'])
    s = u['slope']
    print(f'{m + " lam=1":<15}{row}{("n/a" if s is None else f"{s:.2f}"):>8}')
  print('tuned: ' + '; '.join(
      f'{m}: ' + ', '.join(
          (f'lam={r["lr_scale"]:g}' if 'lr_scale' in r else
           f'lr={r["lr"]:g},clip={r["clip"]}') for r in on['results'][m])
      for m in METHODS))
  fs = res['finite_sum']
  print(f'\nFinite sum: median oracle calls to eps={fs["eps"]}')
  print(f'{"n":>8}{"spider":>12}{"clipped_gd":>12}{"ratio":>8}')
  for a, b in zip(fs['results']['spider'], fs['results']['clipped_gd']):
    ratio = b['median'] / a['median'] if math.isfinite(a['median']) else math.nan
    print(f'{a["n"]:>8}{_fmt(a["median"]):>12}{_fmt(b["median"]):>12}'
          f'{ratio:>8.2f}')
  print('slopes vs n: ' + ', '.join(
      f'{m}={("n/a" if s is None else f"{s:.2f}")}'
      for m, s in fs['slopes'].items()) + ' (predicted 0.5, 1)')


def plot(res, plot_dir):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  paths = []
  fig, ax = plt.subplots(figsize=(6, 4.5))
  on = res['online']
  for m in METHODS:
    xs = [1 / r['eps'] for r in on['results'][m] if math.isfinite(r['median'])]
    ys = [r['median'] for r in on['results'][m] if math.isfinite(r['median'])]
    s = on['slopes'][m]
    ax.loglog(xs, ys, 'o-', label=m + ('' if s is None else f' (slope {s:.2f})'))
  inv = np.array([1 / e for e in res['config']['eps']])
  ref = on['results']['spider'][0]['median']
  if not math.isfinite(ref):
    ref = 1e5
  for k, style in ((3, 'k--'), (4, 'k:')):
    ax.loglog(inv, ref * (inv / inv[0]) ** k, style, lw=1,
              label=f'reference slope {k}')
  ax.set_xlabel('1/eps')
  ax.set_ylabel('oracle calls (median over seeds)')
  ax.set_title('Online cosh problem: calls to ||grad f|| <= eps')
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
    s = fs['slopes'][m]
    ax.loglog(xs, ys, 'o-', label=m + ('' if s is None else f' (slope {s:.2f})'))
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


def environment():
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
                      help='3 eps values, 2 seeds, n up to 2^12 (< 1 min).')
  parser.add_argument('--out', default=os.path.join(here, 'out',
                                                    'complexity.json'))
  parser.add_argument('--plot-dir', default=os.path.join(here, 'out'))
  args = parser.parse_args(argv)
  mode = 'quick' if args.quick else 'full'
  cfg = dict(MODES[mode])
  seeds = list(range(cfg['seeds']))
  fs_seeds = list(range(cfg['fs_seeds']))
  total = len(cfg['eps']) * (3 * len(cfg['lr_scales']) + 1) + 2 * len(
      cfg['n_grid'])
  start = time.time()
  with tqdm(total=total, desc=f'complexity ({mode})') as bar:
    on = online(cfg, seeds, bar)
    fs = finite_sum(cfg, fs_seeds, bar)
  res = dict(
      mode=mode, config=cfg,
      problem=dict(
          F='sum_j 2cosh(x_j)(1+s_j) + <z,x>, s~U[-1/2,1/2]^d, '
            'z~N(0, sigma^2/d I)', d=D, x0=X0, L0=L0, L1=L1, sigma=SIGMA,
          f_star=2 * D, stop='first k with ||grad f(x_k)|| <= eps (exact, '
          'not counted)', oracle='anchor S1, recursive 2*S2, SGD its batch',
          failure='inf: budget exhausted or diverged', x0_desc='linspace(x0-1, x0, d)'),
      online=on, finite_sum=fs, predicted_slopes=dict(
          spider=3, clipped_sgd=4, finite_sum_spider=0.5,
          finite_sum_clipped_gd=1),
      environment=environment(), wall_time_s=None)
  res['wall_time_s'] = time.time() - start
  print_tables(res)
  print(f'wall time {res["wall_time_s"]:.1f} s')
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  os.makedirs(args.plot_dir, exist_ok=True)
  res['plots'] = plot(res, args.plot_dir)
  with open(args.out, 'w') as f:
    json.dump(res, f, indent=1)  # failures are written as Infinity
  print(f'wrote {args.out} and {", ".join(res["plots"])}')
  return res


if __name__ == '__main__':
  main()
