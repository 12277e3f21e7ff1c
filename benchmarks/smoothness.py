"""Smoothness benchmark: (L0, L1), automatic clipping, adaptive anchoring.

On the two finite-sum tasks of ``benchmarks/train.py`` (the char-LSTM on
fewer windows so that the grids fit the time), this script

1. plots the local smoothness SPIDER measures for free,
   L_hat_k = ||g_k - g'_k|| / ||x_k - x_{k-1}|| (``so.diagnostics``), against
   the minibatch gradient norm ||g_k||, along a run with the task's hand-tuned
   settings, and overlays the upper envelope L0 + L1 ||g|| fitted by
   ``so.theory.fit_smoothness`` (quantile 0.9, 8 bins: the package default);
2. compares four ways to set SPIDER's knobs, each at the same oracle budget,
   in oracle calls (as in ``benchmarks/common.py``: a full-gradient anchor
   costs n, a recursive step 2 * S2, S2 = ceil(sqrt(n))) to reach the same
   training loss:

   - ``fixed``: ``so.spider(lr, c0, c1)``, an anchor every q steps, tuned
     coordinate-wise: lr x (c0, c1) scaled by {1/3, 1, 3} from the task's
     hand-tuned pair at q0 = ceil(sqrt(n)) (9 settings), then q in
     {q0/2, 2 q0, 4 q0} at the best of those (3 more).
   - ``auto_clip``: ``so.spider(lr, epsilon=eps)``: c0 and c1 come from a
     running (L0, L1) fit, one knob eps in place of two; q is the best fixed
     q. The best fixed (c0, c1) are passed only as the thresholds of the
     first ~8 recursive steps, before the fit has samples. Grid: lr x eps (9).
   - ``adaptive_anchor``: the best fixed (c0, c1); an anchor when
     ``so.anchor_due(state, error_budget)`` says the summed split-half
     variance estimates (``so.paired_grad(..., split_batch=True)``) exceed
     ``error_budget = eps_a**2 / 8``, or after ``4 q0`` steps (a cap): the
     policy of ``so.is_anchor_step``, which every run here uses. Grid:
     lr x eps_a (9).
   - ``adaptive_minibatch``: as ``adaptive_anchor`` with the minibatch-mean
     heuristic, ``so.anchor_due(state, error_budget, S2)``. Grid: lr x eps_a
     (9).
   - ``auto_both``: automatic clipping and adaptive anchoring (split-half)
     together: the best ``auto_clip`` eps; grid lr x eps_a, eps_a from the
     grid above plus eps_a = eps (the budget eps**2 / 8 tied to the clipping
     eps) (12).

   Every recursive step evaluates its minibatch as two halves (the same
   gradient cost; the gradients equal the whole minibatch's up to rounding),
   so every run carries both estimates.

   So each automatic method replaces only the knobs it is meant to and keeps
   the best fixed values of the others. The fixed q grid includes 4 q0, the
   cap of the adaptive rules, so that a rule that always waits for the cap is
   no better than a fixed q.

3. checks what ``so.anchor_due`` measures: along the hand-tuned run it
   compares, outside the budget, the estimator's true error
   ||v_k - grad f(x_k)||^2 (full gradient) with the package's two estimates
   (the summed split-half estimates; accumulated_error / S2) and with
   per-sample versions of Fang et al.'s Lemma 1 term (see
   :func:`error_check`).

Protocol. Every setting runs on seed 0 (the selection seed: init and
minibatch order); each method's best setting (lowest final full training loss,
as train.py picks; diverged runs never count) then reruns on the other seeds,
and the tables report medians over all seeds. Target losses come from the best
``fixed`` setting and are reached by every one of its seeds: target A is the
highest (worst seed's) loss at half the budget, target B the highest final
loss. Calls to a target are interpolated (log-linearly)
between checkpoints of the full training loss, evaluated every half pass
outside the budget and the clock; a seed that never reaches the target counts
as infinite, and a median that is infinite is reported as "not reached".

Outputs: a table and plain statements of wins and losses on stdout, a JSON
file (``--out``) and three PNGs in ``--plot-dir``: ``smoothness_fit.png``
(L_hat vs ||g_k|| and vs ||v_k|| with the fits; the running fit of
automatic clipping), ``smoothness_loss.png`` (loss vs oracle calls, each
method at its best setting) and ``smoothness_anchors.png`` (where adaptive
anchors happen; the error check).

Run (from the repository root)::

  python -m benchmarks.smoothness --quick   # under 2 minutes on 2 CPU cores
  python -m benchmarks.smoothness           # full mode, ~7 minutes
"""

import argparse
import dataclasses
import functools
import itertools
import math
import pathlib
import sys
from collections.abc import Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

import spider_optax as so

if __package__ in (None, ''):  # python benchmarks/smoothness.py
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import common  # noqa: E402
from benchmarks import tasks  # noqa: E402

METHODS = (
  'fixed',
  'auto_clip',
  'adaptive_anchor',
  'adaptive_minibatch',
  'auto_both',
)
LABELS = dict(
  fixed='fixed (hand-tuned grid)',
  auto_clip='automatic clipping',
  adaptive_anchor='adaptive anchoring (split-half estimates)',
  adaptive_minibatch='adaptive anchoring (minibatch-mean heuristic)',
  auto_both='automatic clipping + adaptive anchoring',
)
COLORS = dict(zip(METHODS, ('C0', 'C1', 'C2', 'C4', 'C3')))
CAP_PERIODS = 4  # adaptive anchoring: at most 4 q0 steps between anchors
EVAL_EVERY_PASSES = 0.5
# so.theory.fit_smoothness's defaults.
FIT: dict[str, Any] = dict(quantile=0.9, num_bins=8)

# Grids, each a (full, quick) pair: SHARED holds those of both tasks.
# ``eps`` (automatic clipping) and ``eps_a`` (anchor budget eps_a^2/8) are
# spaced by ~3 and centred where they match the hand-tuned run: eps =
# 4 lr L0 c0 for the fitted L0 (so.spider's c0 = eps / (4 lr L0)), and eps_a
# around the error the hand-tuned recursion accumulates per period.
SHARED: dict[str, tuple[Any, Any]] = dict(
  seeds=(3, 2),
  c_scale=((1 / 3, 1.0, 3.0), (1.0,)),
  q_scale=((0.5, 1.0, 2.0, 4.0), (1.0, 2.0)),
)


def _task(hand: dict[str, float], **grids: tuple[Any, Any]) -> dict[str, Any]:
  """A task's hand-tuned settings and its full and quick grids, from its
  (full, quick) pairs ``grids`` and SHARED."""
  grids.update(SHARED)
  order = 'n budget_passes seeds lr c_scale q_scale eps eps_a'.split()
  return dict(
    hand=hand,
    **{
      mode: {k: grids[k][i] for k in order if k in grids}
      for i, mode in enumerate(('full', 'quick'))
    },
  )


TASKS: dict[str, dict[str, Any]] = dict(
  digits=_task(
    dict(lr=1.0, c0=0.1, c1=0.05),  # quickstart.py's tuned values
    budget_passes=(60, 8),
    lr=((0.5, 1.0, 2.0), (1.0,)),
    eps=((0.1, 0.3, 1.0), (0.1, 0.3)),
    eps_a=((0.01, 0.03, 0.1), (0.01, 0.03)),
  ),
  charlm=_task(
    dict(lr=3.0, c0=1.0, c1=1.0),  # train.py's settings and best lr
    n=(512, 128),
    budget_passes=(32, 4),
    lr=((1.0, 3.0, 10.0), (3.0,)),
    eps=((1.0, 3.0, 10.0), (1.0, 3.0)),
    eps_a=((0.3, 1.0, 3.0), (0.3, 1.0)),
  ),
)


def build_task(name: str, mode: str, seed: int) -> tasks.Task:
  if name == 'digits':
    return tasks.digits_task(seed)
  return tasks.charlm_task(seed, TASKS['charlm'][mode]['n'])


# ----------------------------------------------------------------------------
# Steps. Every hyperparameter (lr, c0, c1, eps) is a traced argument, so each
# task compiles one anchor and one recursive step per optimizer kind, whatever
# the grid.
# ----------------------------------------------------------------------------


def _tx(kind: str, hp: dict[str, jax.Array]) -> optax.GradientTransformation:
  if kind == 'auto':
    # A callable lr keeps the traced value out of the concrete-value checks.
    return so.spider(
      lambda _: hp['lr'],
      c0=hp['c0'],
      c1=hp['c1'],
      epsilon=cast(float, hp['eps']),
    )
  return so.spider(hp['lr'], hp['c0'], hp['c1'], diagnostics=True)


def _info(kind: str, state: Any, hp: dict[str, jax.Array]) -> dict[str, Any]:
  """What the host logs after a step (all scalars)."""
  del hp
  d = so.diagnostics(state)
  out = {
    k: d[k]
    for k in (
      'grad_norm',
      'smoothness',
      'estimate_norm',
      'accumulated_error',
      'accumulated_variance',
    )
  }
  out['since'] = d['steps_since_anchor']
  if kind == 'auto':  # the running fit and the thresholds it sets
    out.update(
      {k: optax.tree_utils.tree_get(state, k) for k in ('L0', 'L1', 'c0', 'c1')}
    )
  return out


def make_steps(task: tasks.Task) -> dict[str, Any]:
  """The jitted steps of both kinds, and the untimed measurements."""
  loss_fn, (x, y) = task.loss_fn, task.data
  full = jax.jit(lambda p: jax.value_and_grad(loss_fn)(p, x, y))
  steps = {}
  for kind in ('fixed', 'auto'):
    # Every recursive step evaluates its minibatch as two halves, so that
    # every run carries both error estimates.
    pair = common.step_pair(
      functools.partial(_tx, kind),
      lambda p: full(p)[1],
      lambda p, prev, idx: so.paired_grad(loss_fn, split_batch=True)(
        p, prev, x[idx], y[idx]
      ),
      info=functools.partial(_info, kind),
    )
    steps[kind] = tuple(jax.jit(f) for f in pair)
  steps['loss'] = jax.jit(lambda p: loss_fn(p, x, y))
  norm = jax.jit(so.global_norm)
  steps['final'] = lambda p: (lambda lg: (float(lg[0]), float(norm(lg[1]))))(
    full(p)
  )

  def per_sample(p, other, idx):
    """Of d_i = grad f_i(p) - grad f_i(other) over the minibatch: the mean
    of ||d_i||^2 and the sample variance (1/(S2-1)) sum_i ||d_i - d_bar||^2."""
    grad_i = jax.vmap(
      jax.grad(lambda q, xi, yi: loss_fn(q, xi[None], yi[None])), (None, 0, 0)
    )
    d = jax.tree.map(
      lambda a, b: (a - b).reshape(a.shape[0], -1),
      grad_i(p, x[idx], y[idx]),
      grad_i(other, x[idx], y[idx]),
    )
    sq = sum(jnp.sum(jnp.square(v), 1) for v in jax.tree.leaves(d))
    dev = sum(jnp.sum(jnp.square(v - v.mean(0)), 1) for v in jax.tree.leaves(d))
    return jnp.mean(sq), jnp.sum(dev) / (idx.shape[0] - 1)

  steps['per_sample'] = jax.jit(per_sample)
  # ||v_k - grad f(x_k)||^2, x_k being the params of the last update.
  steps['error'] = jax.jit(
    lambda state: jnp.square(
      so.global_norm(
        jax.tree.map(
          jnp.subtract,
          optax.tree_utils.tree_get(state, 'estimate'),
          full(so.prev_params(state))[1],
        )
      )
    )
  )
  return steps


@dataclasses.dataclass(frozen=True)
class Setup:
  """What every run on a task shares: the steps of :func:`make_steps`, n,
  the minibatch size S2, and the budget and the checkpoint spacing in oracle
  calls."""

  steps: dict[str, Any]
  n: int
  s2: int
  budget: int
  every: int


def stepper(setup: Setup, setting: dict[str, Any]) -> common.Stepper:
  """The run of ``setting``: its kind ('fixed' or 'auto'), lr, c0, c1, eps,
  q (the period, or the cap under adaptive anchoring) and anchor rule:
  'every_q', 'split' (``so.anchor_due(state, error_budget)``) or 'minibatch'
  (``so.anchor_due(state, error_budget, S2)``), applied by
  ``so.is_anchor_step``."""
  hp = {k: jnp.float32(setting[k] or 1.0) for k in ('lr', 'c0', 'c1', 'eps')}
  anchor, recursive = setup.steps[setting['kind']]
  s2 = setup.s2
  schedule = common.spider_schedule(
    setting['q'],
    error_budget=setting['error_budget'],
    batch_size=s2 if setting['anchor'] == 'minibatch' else None,
  )
  return common.Stepper(
    init=_tx(setting['kind'], hp).init,
    step=functools.partial(recursive, hp),
    batch_size=s2,
    cost=2 * s2,
    anchor=functools.partial(anchor, hp),
    anchor_cost=setup.n,
    is_anchor=schedule,
  )


def error_check(
  setup: Setup, setting: dict[str, Any], params: Any, seed: int
) -> dict[str, Any]:
  """What ``so.anchor_due`` estimates against the estimator's true error.

  Replays ``setting`` (every-q anchors) and records, outside the budget, the
  true error ||v_k - grad f(x_k)||^2 (full gradient) at 5 points per period,
  and four estimates of it: the package's two, accumulated_variance (the
  summed split-half estimates, ``anchor_due(state, budget)``) and
  accumulated_error / S2 (the squared minibatch-mean differences
  ||g_j - g'_j||^2 over S2, ``anchor_due(state, budget, S2)``); Fang et
  al.'s Lemma 1 bound, sum_j mean_i ||d_i||^2 / S2 with per-sample
  differences d_i = grad f_i(x_j) - grad f_i(x_{j-1}) on the same minibatch;
  and its centred form sum_j Var_i(d_i) / S2, which is what the recursion adds
  to E||v_k - grad f(x_k)||^2 (the steps' mean gradient change is no error).
  The last two need per-sample gradients.
  """
  q, steps, s2 = setting['q'], setup.steps, setup.s2
  base = stepper(setup, setting)
  probes = {1, q // 4, q // 2, (3 * q) // 4, q - 1} - {0}
  rows, sums = [], dict(k=0, lemma=0.0, centred=0.0)

  def probe(params, state, info):
    k, since = sums['k'], int(info['since'])  # since the last anchor
    sums['k'] += 1
    if since in probes:
      rows.append(
        (
          k,
          since,
          float(steps['error'](state)),
          float(info['accumulated_error']) / s2,
          sums['lemma'] / s2,
          sums['centred'] / s2,
          float(info['estimate_norm']) ** 2,
          float(info['accumulated_variance']),
        )
      )
    return params, state, info

  def anchor(params, state):
    assert base.anchor is not None
    sums.update(lemma=0.0, centred=0.0)
    return probe(*base.anchor(params, state))

  def recursive(params, state, idx):
    sq, var = steps['per_sample'](params, so.prev_params(state), idx)
    sums['lemma'] += float(sq)
    sums['centred'] += float(var)
    return probe(*base.step(params, state, idx))

  k = common.run_budgeted(
    dataclasses.replace(base, anchor=anchor, step=recursive),
    params,
    rng=np.random.default_rng(seed),
    n=setup.n,
    budget=setup.budget,
    every=setup.budget + 1,
    evaluate=lambda p: {},
    compile_first=False,
  ).steps
  cols = (
    'step',
    'since_anchor',
    'true_error',
    'minibatch_estimate',
    'per_sample_estimate',
    'centred_estimate',
    'estimate_norm_sq',
    'split_half_estimate',
  )
  table = {c: [row[i] for row in rows] for i, c in enumerate(cols)}
  # Medians of the ratios over each third of the run, at period ends.
  ratios = []
  third = max(1, k // 3)
  for part in range(3):
    span = range(part * third, (part + 1) * third)
    sel = [r for r in rows if r[1] == q - 1 and r[0] in span] or [
      r for r in rows if r[0] in span
    ]
    if not sel:
      continue
    column = {c: np.asarray([r[i] for r in sel]) for i, c in enumerate(cols)}
    ratios.append(
      dict(
        steps=[span.start, span.stop],
        **{c: common.median(column[c]) for c in cols[2:]},
        **{
          f'true_over_{c.removesuffix("_estimate")}': common.median(
            column['true_error'] / column[c]
          )
          for c in cols
          if c.endswith('_estimate')
        },
      )
    )
  return dict(
    setting=setting, seed=seed, minibatch=s2, by_third=ratios, **table
  )


def run(
  setup: Setup, setting: dict[str, Any], params: Any, seed: int
) -> dict[str, Any]:
  """One run at ``setting`` until the next step's cost would pass ``budget``;
  the training loss at the checkpoints, the loss and gradient norm at the
  end, and the per-step trace of the estimator's diagnostics."""
  steps = setup.steps
  r = common.run_budgeted(
    stepper(setup, setting),
    params,
    rng=np.random.default_rng(seed),
    n=setup.n,
    budget=setup.budget,
    every=setup.every,
    evaluate=lambda p: dict(loss=steps['loss'](p)),
  )
  final_loss, final_grad_norm = steps['final'](r.params)
  diverged = r.diverged or not (
    math.isfinite(final_loss) and math.isfinite(final_grad_norm)
  )
  infos = jax.device_get(r.infos)
  trace = (
    {key: np.asarray([i[key] for i in infos], np.float64) for key in infos[0]}
    if infos
    else {}
  )
  return dict(
    r.record(),
    seed=seed,
    diverged=diverged,
    final_loss=None if diverged else final_loss,
    final_grad_norm=None if diverged else final_grad_norm,
    trace=trace,
  )


# ----------------------------------------------------------------------------
# Grids, selection and the comparison.
# ----------------------------------------------------------------------------


def grid(
  method: str,
  g: dict[str, Any],
  hand: dict[str, float],
  q0: int,
  best: dict[str, dict[str, Any]],
) -> list[dict[str, Any]]:
  """The settings of ``method``; ``best`` holds earlier methods' best.

  ``fixed`` is tuned coordinate-wise: lr x c_scale at q0 here, then
  ``fixed_q`` varies q around that best. Each automatic method replaces the
  knobs it is meant to and keeps the best fixed values of the others.
  """
  if method == 'fixed':
    return [
      dict(
        kind='fixed',
        lr=lr,
        c0=hand['c0'] * cs,
        c1=hand['c1'] * cs,
        eps=None,
        q=q0,
        anchor='every_q',
        error_budget=None,
      )
      for lr, cs in itertools.product(g['lr'], g['c_scale'])
    ]
  fixed = best['fixed']
  cap = CAP_PERIODS * q0
  if method == 'fixed_q':
    return [
      dict(fixed, q=max(1, round(q0 * qs))) for qs in g['q_scale'] if qs != 1
    ]
  if method == 'auto_clip':  # (c0, c1) -> eps; they only warm the fit up
    return [
      dict(fixed, kind='auto', lr=lr, eps=eps)
      for lr, eps in itertools.product(g['lr'], g['eps'])
    ]
  if method in ('adaptive_anchor', 'adaptive_minibatch'):  # q -> a budget
    rule = 'split' if method == 'adaptive_anchor' else 'minibatch'
    return [
      dict(fixed, lr=lr, q=cap, anchor=rule, eps_a=e, error_budget=e**2 / 8)
      for lr, e in itertools.product(g['lr'], g['eps_a'])
    ]
  # auto_both: the best eps; eps_a from the grid and tied to eps (eps_a = eps).
  auto = best['auto_clip']
  return [
    dict(auto, lr=lr, q=cap, anchor='split', eps_a=e, error_budget=e**2 / 8)
    for lr, e in itertools.product(
      g['lr'], dict.fromkeys(g['eps_a'] + (auto['eps'],))
    )
  ]


def _key(r: dict[str, Any]) -> float:
  return math.inf if r['diverged'] else r['final_loss']


def _log_interp(x: float, xs: Sequence[float], ys: Sequence[float]) -> float:
  return float(np.exp(np.interp(x, xs, np.log(ys))))


def calls_to(curve: dict[str, list], target: float) -> float:
  """Oracle calls at which the loss first reaches ``target`` (inf: never)."""
  calls, loss = curve['oracle_calls'], curve['loss']
  for i, value in enumerate(loss):
    if value <= target:
      if i == 0:
        return float(calls[0])
      a, b = math.log(loss[i - 1]), math.log(value)
      t = (a - math.log(target)) / (a - b) if a > b else 1.0
      return calls[i - 1] + t * (calls[i] - calls[i - 1])
  return math.inf


def _strip(r: dict[str, Any], keep_trace: bool) -> dict[str, Any]:
  out = {k: v for k, v in r.items() if k != 'trace'}
  if keep_trace:
    out['trace'] = {
      k: [None if not math.isfinite(x) else x for x in v.tolist()]
      for k, v in r['trace'].items()
    }
  return out


def smoothness_picture(r: dict[str, Any]) -> dict[str, Any]:
  """The (L0, L1) fit of a run's recursive steps, against ||g_k|| (what the
  package fits) and against the estimator's ||v_k|| (less noisy)."""
  tr = r['trace']
  h = tr['smoothness']
  keep = np.isfinite(h)
  out: dict[str, Any] = dict(
    fit_options=FIT,
    step=np.flatnonzero(keep).tolist(),
    smoothness=h[keep].tolist(),
    smoothness_quantiles=np.quantile(h[keep], [0.1, 0.5, 0.9]).tolist(),
  )
  for x_key, prefix in (('grad_norm', ''), ('estimate_norm', 'estimate_')):
    x = tr[x_key]
    fit = so.theory.fit_smoothness(x, h, **FIT)
    fit_all = so.theory.fit_smoothness(
      x, h, quantile=1.0, num_bins=FIT['num_bins']
    )
    out.update(
      {
        f'{prefix}L0': float(fit.L0),
        f'{prefix}L1': float(fit.L1),
        f'{prefix}num_samples': int(fit.num_samples),
        f'{prefix}L0_quantile_1': float(fit_all.L0),
        f'{prefix}L1_quantile_1': float(fit_all.L1),
        x_key: x[keep].tolist(),
        f'{x_key}_quantiles': np.quantile(x[keep], [0.1, 0.5, 0.9]).tolist(),
        # Log-log slope of L_hat against the norm: 0 is L0-smooth, 1 is
        # L_hat proportional to the norm.
        f'{prefix}loglog_slope': common.loglog_slope(x[keep], h[keep]),
      }
    )
  return out


def run_task(name: str, mode: str, bar: tqdm.tqdm) -> dict[str, Any]:
  g = TASKS[name][mode]
  hand = TASKS[name]['hand']
  task = build_task(name, mode, 0)
  n = task.n
  q0 = s2 = common.ceil_sqrt(n)  # as theory.finite_sum
  budget = g['budget_passes'] * n
  every = max(1, int(EVAL_EVERY_PASSES * n))
  setup = Setup(make_steps(task), n, s2, budget, every)
  seeds = list(range(g['seeds']))
  params = {0: task.params}
  params.update({s: build_task(name, mode, s).params for s in seeds[1:]})

  def go(setting, seed):
    bar.set_postfix_str(
      f'{name}/{setting["kind"]} lr={setting["lr"]:g} seed={seed}'
    )
    r = run(setup, setting, params[seed], seed)
    bar.update(1)
    return r

  methods, best = {}, {}
  hand_setting = dict(
    kind='fixed',
    lr=hand['lr'],
    c0=hand['c0'],
    c1=hand['c1'],
    eps=None,
    q=q0,
    anchor='every_q',
    error_budget=None,
  )
  picture = None
  for method in METHODS:
    settings = grid(method, g, hand, q0, best)
    runs = [go(s, 0) for s in settings]
    if method == 'fixed':
      match = [r for s, r in zip(settings, runs) if s == hand_setting]
      # The hand-tuned run is in the grid when its lr is; else run it.
      hand_run = match[0] if match else go(hand_setting, 0)
      picture = smoothness_picture(hand_run)
      bar.set_postfix_str(f'{name}/error check')
      check = error_check(setup, hand_setting, params[0], 0)
      i = min(range(len(runs)), key=lambda j: _key(runs[j]))
      best['fixed'] = settings[i]
      more = grid('fixed_q', g, hand, q0, best)
      settings, runs = settings + more, runs + [go(s, 0) for s in more]
    i = min(range(len(runs)), key=lambda j: _key(runs[j]))
    best[method] = settings[i]
    seed_runs = [runs[i]] + [go(settings[i], s) for s in seeds[1:]]
    methods[method] = dict(
      grid_size=len(settings),
      best=settings[i],
      grid=[
        dict(setting=s, final_loss=r['final_loss'], diverged=r['diverged'])
        for s, r in zip(settings, runs)
      ],
      # Per-step traces of seed 0 only (the plots' run), to keep the JSON
      # small.
      seeds=[_strip(r, keep_trace=i == 0) for i, r in enumerate(seed_runs)],
      diverged_settings=sum(r['diverged'] for r in runs),
    )
    if method == 'fixed':
      methods[method]['hand_tuned_run'] = _strip(hand_run, keep_trace=False)

  # Targets that every seed of the best fixed setting reaches (worst seed).
  ref = [r for r in methods['fixed']['seeds'] if not r['diverged']]
  target_a = max(
    _log_interp(budget / 2, r['curves']['oracle_calls'], r['curves']['loss'])
    for r in ref
  )
  target_b = max(r['final_loss'] for r in ref)
  for m in methods.values():
    # Medians over the seeds; a diverged seed, or one that never reaches a
    # target, is a failure (common.median), and a failed median is None.
    med = lambda values: common.finite_or_none(common.median(values))
    rs = m['seeds']
    m.update(
      final_loss=med(r['final_loss'] for r in rs),
      final_grad_norm=med(r['final_grad_norm'] for r in rs),
      wall_time_s=med(r['wall_time_s'] for r in rs),
      anchors=med(len(r['anchors']) for r in rs),
      calls_to_target_a=med(calls_to(r['curves'], target_a) for r in rs),
      calls_to_target_b=med(calls_to(r['curves'], target_b) for r in rs),
    )
  return dict(
    description=task.description,
    n=n,
    q0=q0,
    minibatch=s2,
    anchor_batch=n,
    budget=budget,
    budget_passes=g['budget_passes'],
    eval_every=every,
    seeds=seeds,
    grids=g,
    hand_tuned=hand,
    smoothness=picture,
    error_check=check,
    targets=dict(
      a=target_a,
      b=target_b,
      a_is="best fixed: worst seed's loss at half the budget",
      b_is="best fixed: worst seed's final loss",
    ),
    methods=methods,
  )


def _or_nan(x: float | None) -> float:
  return math.nan if x is None else x


def _fmt_calls(c: float | None, n: int) -> str:
  return 'not reached' if c is None else f'{c / n:.1f}'


def verdicts(results: dict[str, Any]) -> list[str]:
  """Plain statements: each method against the best fixed setting.

  Calls to a target within 5% of the fixed setting's count as a tie.
  """
  out = []
  for name, t in results.items():
    n, ref = t['n'], t['methods']['fixed']
    for method in METHODS[1:]:
      m = t['methods'][method]
      for key, label in (
        ('calls_to_target_a', 'target A'),
        ('calls_to_target_b', 'target B'),
      ):
        a, b = m[key], ref[key]
        if a is None and b is None:
          continue
        # Within 5% is a tie: checkpoints are half a pass apart.
        if a is not None and b is not None and abs(a - b) <= 0.05 * b:
          word = 'ties'
        elif a is None or (b is not None and a > b):
          word = 'LOSES'
        else:
          word = 'wins'
        ratio = '' if a is None or b is None else f', {b / a:.2f}x'
        out.append(
          f'{name}: {method} {word} on {label} '
          f'({_fmt_calls(a, n)} vs {_fmt_calls(b, n)} passes{ratio})'
        )
      if m['final_loss'] is not None and ref['final_loss'] is not None:
        word = 'wins' if m['final_loss'] < ref['final_loss'] else 'LOSES'
        out.append(
          f'{name}: {method} {word} on final loss '
          f'({m["final_loss"]:.4g} vs {ref["final_loss"]:.4g})'
        )
  return out


def format_summary(results: dict[str, Any], lines_wl: list[str]) -> str:
  lines = []
  for name, t in results.items():
    s = t['smoothness']
    lines.append(
      f'{name}: n={t["n"]}, budget {t["budget_passes"]} passes, q0=S2='
      f'{t["q0"]}; targets A={t["targets"]["a"]:.4g} '
      f'B={t["targets"]["b"]:.4g}'
    )
    for prefix, label in (('', '||g_k||'), ('estimate_', '||v_k||')):
      lines.append(
        f'  L_hat vs {label}: fitted (L0, L1) = ({s[prefix + "L0"]:.3g}, '
        f'{s[prefix + "L1"]:.3g}) from {s[prefix + "num_samples"]} steps '
        f'(quantile 1: ({s[prefix + "L0_quantile_1"]:.3g}, '
        f'{s[prefix + "L1_quantile_1"]:.3g})); log-log slope '
        f'{_or_nan(s[prefix + "loglog_slope"]):.2f}'
      )
    thirds = t['error_check']['by_third']
    for key, label in (
      ('split_half', 'split-half (anchor_due)'),
      ('minibatch', 'minibatch-mean (anchor_due, S2)'),
      ('centred', 'per-sample centred'),
    ):
      ratios = ', '.join(f'{r["true_over_" + key]:.3g}' for r in thirds)
      lines.append(
        f'  true error / {label} estimate, by third of the run: {ratios}'
      )
    header = (
      f'  {"method":<17} {"grid":>4} {"best setting":<40} '
      f'{"to A":>11} {"to B":>11} {"final loss":>10} {"|grad f|":>9} '
      f'{"anchors":>7}'
    )
    lines += [header, '  ' + '-' * (len(header) - 2)]
    for method, m in t['methods'].items():
      b = m['best']
      desc = f'lr={b["lr"]:g}'
      if b['kind'] == 'auto':
        desc += f' eps={b["eps"]:g}'
      else:
        desc += f' c0={b["c0"]:.3g} c1={b["c1"]:.3g}'
      if b['anchor'] == 'every_q':
        desc += f' q={b["q"]}'
      else:
        desc += f' eps_a={b["eps_a"]:g} cap={b["q"]}'
      fl = '-' if m['final_loss'] is None else f'{m["final_loss"]:.4g}'
      fg = (
        '-' if m['final_grad_norm'] is None else f'{m["final_grad_norm"]:.3g}'
      )
      lines.append(
        f'  {method:<17} {m["grid_size"]:>4} {desc:<40} '
        f'{_fmt_calls(m["calls_to_target_a"], t["n"]):>11} '
        f'{_fmt_calls(m["calls_to_target_b"], t["n"]):>11} {fl:>10} '
        f'{fg:>9} {m["anchors"]:>7g}'
      )
    lines.append('')
  lines.append('Calls to targets in passes (units of n), medians over seeds.')
  lines.append('Against the best fixed setting:')
  lines += [f'  - {s}' for s in lines_wl]
  return '\n'.join(lines)


# ----------------------------------------------------------------------------
# Plots.
# ----------------------------------------------------------------------------


def plots(results: dict[str, Any], plot_dir: pathlib.Path) -> dict[str, str]:
  plt, by_task = common.pyplot(), results['tasks']
  rows = len(by_task)
  paths = {}
  # 1. L_hat vs ||g|| and vs ||v|| with the envelope; auto clip's running fit.
  fig, axes = plt.subplots(rows, 3, figsize=(19, 4.6 * rows), squeeze=False)
  for (name, t), row in zip(by_task.items(), axes):
    sc = [
      _fit_panel(ax, name, t, x_key, prefix)
      for ax, x_key, prefix in (
        (row[0], 'grad_norm', ''),
        (row[1], 'estimate_norm', 'estimate_'),
      )
    ]
    fig.colorbar(sc[-1], ax=row[1], label='step')
    _running_fit_panel(row[2], name, t)
  paths['fit'] = common.save_plot(fig, plot_dir, 'smoothness_fit.png')

  # 2. Loss vs oracle calls, each method at its best setting.
  fig, axes = plt.subplots(1, rows, figsize=(7 * rows, 4.6), squeeze=False)
  for (name, t), ax in zip(by_task.items(), axes[0]):
    for method, m in t['methods'].items():
      for i, r in enumerate(m['seeds']):
        c = r['curves']
        ax.plot(
          np.asarray(c['oracle_calls']) / t['n'],
          c['loss'],
          color=COLORS[method],
          alpha=1.0 if i == 0 else 0.35,
          lw=1.5 if i == 0 else 0.8,
          label=LABELS[method] if i == 0 else None,
        )
    for key, ls in (('a', ':'), ('b', '--')):
      label = f'target {key.upper()}'
      ax.axhline(t['targets'][key], color='k', ls=ls, lw=0.8, label=label)
    common.label_axes(
      ax,
      'stochastic gradients / n',
      'full training loss',
      f'{name}: best setting of each method (seed 0 bold, other seeds light)',
      yscale='log',
    )
  paths['loss'] = common.save_plot(fig, plot_dir, 'smoothness_loss.png')

  # 3. Where anchors happen: period vs progress, a histogram, and what the
  # anchor rule estimates against the estimator's true error.
  fig, axes = plt.subplots(rows, 3, figsize=(19, 4.4 * rows), squeeze=False)
  for (name, t), row in zip(by_task.items(), axes):
    _anchor_panels(row[0], row[1], name, t)
    _error_panel(row[2], name, t)
  paths['anchors'] = common.save_plot(fig, plot_dir, 'smoothness_anchors.png')
  return paths


def _fit_panel(
  ax: Any, name: str, t: dict[str, Any], x_key: str, prefix: str
) -> Any:
  """L_hat against ``x_key`` with the fitted envelopes; the scatter."""
  s, hand = t['smoothness'], t['hand_tuned']
  x = np.asarray(s[x_key])
  sc = ax.scatter(
    x, s['smoothness'], c=s['step'], s=6, cmap='viridis', alpha=0.7
  )
  xs = np.geomspace(x.min(), x.max(), 100)
  for q, suffix, style, lw in (
    ('0.9', '', 'r-', 2),
    ('1', '_quantile_1', 'r--', 1),
  ):
    L0, L1 = s[f'{prefix}L0{suffix}'], s[f'{prefix}L1{suffix}']
    ax.plot(
      xs,
      L0 + L1 * xs,
      style,
      lw=lw,
      label=f'fit q={q}: L0={L0:.3g}, L1={L1:.3g}',
    )
  slope = s[prefix + 'loglog_slope']
  common.label_axes(
    ax,
    'minibatch gradient norm ||g_k|| (fitted by the package)'
    if x_key == 'grad_norm'
    else 'estimator norm ||v_k||',
    'local smoothness L_hat_k',
    f'{name}: hand-tuned SPIDER (lr={hand["lr"]:g}, c0={hand["c0"]:g}, '
    f'c1={hand["c1"]:g}, q={t["q0"]})'
    + ('' if slope is None else f', log-log slope {slope:.2f}'),
    xscale='log',
    yscale='log',
  )
  return sc


def _running_fit_panel(ax: Any, name: str, t: dict[str, Any]) -> None:
  """Automatic clipping's running (L0, L1) against the hand-tuned run's."""
  r = t['methods']['auto_clip']['seeds'][0]
  calls = _step_calls(r, t['n'], t['minibatch']) / t['n']
  for key, style in (('L0', '-'), ('L1', '--')):
    y = np.asarray([np.nan if v is None else v for v in r['trace'][key]])
    ax.plot(calls, y, 'C1' + style, label=f'running {key} (auto_clip)')
    ax.axhline(
      t['smoothness'][key],
      color='r',
      ls=style,
      lw=1,
      label=f'{key} of the hand-tuned run',
    )
  b = t['methods']['auto_clip']['best']
  common.label_axes(
    ax,
    'stochastic gradients / n',
    'fitted constant (0 not shown)',
    f'{name}: automatic clipping, lr={b["lr"]:g}, '
    f'eps={b["eps"]:g} (seed 0): its fit over the last 256 '
    'steps',
    yscale='log',
  )


def _anchor_panels(ax: Any, ax2: Any, name: str, t: dict[str, Any]) -> None:
  """The periods between anchors along the run, and their histogram."""
  n, cap = t['n'], CAP_PERIODS * t['q0']
  for method in ('fixed', 'adaptive_anchor', 'adaptive_minibatch', 'auto_both'):
    r = t['methods'][method]['seeds'][0]
    a = np.asarray(r['anchors'])
    if len(a) < 2:
      continue
    periods = np.diff(a)
    ax.plot(
      _step_calls(r, n, t['minibatch'])[a[1:]] / n,
      periods,
      'o-',
      ms=3,
      color=COLORS[method],
      label=LABELS[method],
    )
    width = max(1, cap // 40)
    ax2.hist(
      periods,
      bins=np.arange(0, periods.max() + 2 * width, width),
      color=COLORS[method],
      alpha=0.5,
      label=LABELS[method],
    )
  ax.axhline(cap, color='k', ls='--', lw=0.8, label=f'cap {CAP_PERIODS} q0')
  common.label_axes(
    ax,
    'stochastic gradients / n (at the anchor)',
    'steps since the previous anchor',
    f'{name}: anchor periods (seed 0, best settings)',
  )
  common.label_axes(ax2, 'period (steps)', 'count', f'{name}: period histogram')


def _error_panel(ax: Any, name: str, t: dict[str, Any]) -> None:
  """The error check: the true error against its estimates."""
  e = t['error_check']
  for key, style, label in (
    ('true_error', 'k-', 'true ||v_k - grad f(x_k)||^2'),
    ('split_half_estimate', 'C2-', 'summed split-half estimates (anchor_due)'),
    (
      'minibatch_estimate',
      'C4-',
      'accumulated_error / S2 (anchor_due with S2)',
    ),
    ('per_sample_estimate', 'C5--', 'per-sample Lemma 1 bound'),
    ('centred_estimate', 'C1--', 'per-sample, centred (variance)'),
    ('estimate_norm_sq', 'C7:', '||v_k||^2'),
  ):
    ax.plot(e['step'], e[key], style, lw=1, label=label)
  common.label_axes(
    ax,
    'step',
    'squared norm',
    f'{name}: estimator error along the hand-tuned run '
    f'(q={t["q0"]}, 5 probes per period)',
    yscale='log',
  )


def _step_calls(r: dict[str, Any], n: int, s2: int) -> np.ndarray:
  """Oracle calls after each step of run ``r`` (from its anchor steps)."""
  cost = np.full(r['steps'], 2 * s2)
  cost[np.asarray(r['anchors'], int)] = n
  return np.cumsum(cost)


def experiment(args: argparse.Namespace, bar: tqdm.tqdm) -> dict[str, Any]:
  mode = 'quick' if args.quick else 'full'

  def n_runs(g):
    return (
      len(g['lr'])
      * (len(g['c_scale']) + len(g['eps']) + 3 * len(g['eps_a']) + 1)
      + len(g['q_scale'])
      - 1
      + len(METHODS) * (g['seeds'] - 1)
    )

  bar.reset(total=sum(n_runs(TASKS[t][mode]) for t in args.tasks))
  results = {name: run_task(name, mode, bar) for name in args.tasks}
  wl = verdicts(results)
  return dict(
    config=dict(
      methods=METHODS,
      cap_periods=CAP_PERIODS,
      eval_every_passes=EVAL_EVERY_PASSES,
      fit=FIT,
      tasks={k: TASKS[k] for k in args.tasks},
      oracle_accounting='anchor n (full gradient); recursive '
      'step 2*S2, S2 = ceil(sqrt(n))',
    ),
    tasks=results,
    verdicts=wl,
    summary=format_summary(results, wl),
  )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  """Runs every task and method, prints the summary, writes JSON and PNGs."""
  return common.main(
    common.parser('smoothness', __doc__, tasks=list(TASKS)),
    argv,
    experiment,
    report=lambda r: r['summary'],
    plots=plots,
  )


if __name__ == '__main__':
  main()
