"""optax's contrib conformance checks, applied to every public transformation.

The checks of ``optax/contrib/_common_test.py`` (what optax asks of each
optimizer it ships), adapted to this library, on a table of cases:

1. ``update`` takes unexpected extra keyword arguments under ``jax.jit``, and
   a second call does not recompile;
2. ``optax.inject_hyperparams`` gives the updates and inner state of the
   plain factory;
3. updates have the params' dtype (bfloat16, float32);
4. inside ``optax.MultiSteps`` the first update is zeros; paired-gradient
   transformations are refused there by ``so.prev_params``;
5. the state keeps its shapes and dtypes: ``jax.lax.cond`` between an update
   and a no-op accepts both branches (float16 to float64);
6. a constant schedule gives the trajectory of the constant learning rate;
7. convergence on a parabola and a (mild) Rosenbrock function.

Paired-gradient transformations (``needs_prev_grads``) take ``prev_grads=``:
in the single-update checks the gradient itself (the gradient at the previous
point when that is the current one), on trajectories the exact gradient at
``so.prev_params(state)`` from ``so.paired_grad``. Those with a SPIDER
estimator start with an anchor step (no ``prev_grads``), as README.md's quick
start does.

To keep the file fast, each case compiles few functions: a check's variants
(dtypes, targets) share one jitted function where they can, and the dtype
check reads the output types of ``jit(...).trace``, which are those of the
compiled function, without compiling it.
"""

import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
import pytest
from optax._src import test_utils

import spider_optax as so

STEPS = 500  # convergence
SGD_LR = 0.05  # after the transformations that emit a direction, not a step

# Compile fast: the checks test types, state and convergence, not XLA's code
# generation, and these options make the compilations of this file about
# three times faster on CPU. Every jitted function of this file uses them.
jit = functools.partial(
  jax.jit,
  compiler_options={
    'xla_backend_optimization_level': 0,
    'xla_llvm_disable_expensive_passes': True,
    'xla_cpu_use_fusion_emitters': False,
    'xla_cpu_parallel_codegen_split_count': 1,
  },
)

# Hyperparameters that optax.inject_hyperparams must not trace: structural
# options, dtypes, callables, and numbers a factory needs on the host.
STATIC = frozenset(
  {
    'approx',
    'mask',
    'diagnostics',
    'per_tensor_clip',
    'adamw_1d',
    'betas_1d',
    'estimator_dtype',
    'mu_dtype',
    'state_dtype',
    'epsilon',
    'fit_learning_rate',
    'max_consecutive_errors',
    # The Muon members: the iteration count is a loop length and a static
    # argument of the jitted Newton-Schulz; the coefficients, the dimension
    # numbers (a tree, or a callable that inject_hyperparams would take
    # for a schedule) and the leaf rule are structure.
    'ns_steps',
    'ns_coeffs',
    'muon_weight_dimension_numbers',
    'adamw_leaves',
  }
)


def spider_if_finite(
  learning_rate: optax.ScalarOrSchedule,
  c0: float | None = None,
  c1: float | None = None,
  max_consecutive_errors: int = 3,
) -> optax.GradientTransformationExtraArgs:
  """``so.spider`` inside ``so.apply_if_finite``."""
  return so.apply_if_finite(
    so.spider(learning_rate, c0, c1), max_consecutive_errors
  )


def matrices(tree):
  return jax.tree.map(lambda x: x.ndim >= 2, tree)


def transposed_matrices(tree):
  """Muon dimension numbers that read each 2-D leaf as ``(fan_out,
  fan_in)`` (the other leaves go to AdamW): the callable form."""
  dims = optax.contrib.MuonDimensionNumbers(reduction_axis=1, output_axis=0)
  return jax.tree.map(lambda x: dims if x.ndim == 2 else None, tree)


def decaying(peak: float) -> optax.Schedule:
  """A learning rate that decays to 0 over the convergence run.

  The sign-like members (Lion's sign, Muon's and Shampoo's orthogonalised
  momentum: a step of fixed size whatever the gradient's) settle within
  about one step of the minimum under a constant learning rate: Lion within
  ``lr``, MARS-M within ``0.2 * sqrt(2) * lr`` on the 2x2 matrix (0.032
  after 500 steps at ``lr = 0.1``). Reaching the minimum 11 away at
  ``atol=1e-2`` takes the decay.
  """
  return optax.cosine_decay_schedule(peak, STEPS)


class Case(NamedTuple):
  name: str
  factory: Callable[..., optax.GradientTransformation]
  kwargs: dict[str, Any]
  needs_prev_grads: bool
  # The convergence run takes decaying(learning_rate) (the other checks the
  # number itself, as optax's do).
  decay: bool = False


CASES = [
  Case('spider', so.spider, dict(learning_rate=0.1, c0=1.0, c1=10.0), True),
  Case(
    'spider_epsilon',
    so.spider,
    dict(learning_rate=0.1, c0=1.0, c1=10.0, epsilon=1.0),
    True,
  ),
  Case(
    'spider_diagnostics',
    so.spider,
    dict(learning_rate=0.1, c0=1.0, c1=10.0, diagnostics=True),
    True,
  ),
  Case('spider_estimator', so.spider_estimator, {}, True),
  Case('relaxed_clip', so.relaxed_clip, dict(c0=1.0, c1=10.0), False),
  Case('clip_by_leaf_norm', so.clip_by_leaf_norm, dict(max_norm=1.0), False),
  Case(
    'recursive_correction_approx',
    so.recursive_correction,
    dict(beta=0.9, gamma=0.1, approx=True),
    False,
  ),
  Case(
    'recursive_correction_exact',
    so.recursive_correction,
    dict(beta=0.9, gamma=0.1, approx=False),
    True,
  ),
  Case('mars_adamw', so.mars_adamw, dict(learning_rate=0.1), False),
  Case(
    'mars_adamw_exact',
    so.mars_adamw,
    dict(learning_rate=0.1, approx=False),
    True,
  ),
  Case(
    'mars_adamw_per_tensor_clip',
    so.mars_adamw,
    dict(learning_rate=0.1, per_tensor_clip=True),
    False,
  ),
  Case(
    'mars_adamw_1d',
    so.mars_adamw,
    dict(learning_rate=0.1, adamw_1d=True, weight_decay=1e-4, mask=matrices),
    False,
  ),
  Case(
    'mars_adamw_not_2d',
    so.mars_adamw,
    dict(
      learning_rate=0.1,
      adamw_1d=True,
      adamw_leaves='not_2d',
      lr_1d=0.05,
      weight_decay=1e-4,
      weight_decay_1d=1e-3,
    ),
    False,
  ),
  # Lion's sign and Muon's orthogonalised momentum take steps of a fixed
  # size: their convergence runs decay the learning rate (decay=True).
  Case('mars_lion', so.mars_lion, dict(learning_rate=0.1), False, True),
  Case(
    'mars_lion_exact',
    so.mars_lion,
    dict(learning_rate=0.1, approx=False),
    True,
    True,
  ),
  Case(
    'mars_lion_1d',
    so.mars_lion,
    dict(learning_rate=0.1, adamw_1d=True, weight_decay=1e-4, mask=matrices),
    False,
    True,
  ),
  Case(
    # Hyperparameters given as schedules (gamma too), as a training script
    # gives them.
    'mars_lion_schedules',
    so.mars_lion,
    dict(
      learning_rate=decaying(0.1),
      gamma=optax.linear_schedule(0.0, 0.025, STEPS),
    ),
    False,
  ),
  Case('mars_muon', so.mars_muon, dict(learning_rate=0.2), False, True),
  Case(
    'mars_muon_exact',
    so.mars_muon,
    dict(learning_rate=0.2, approx=False),
    True,
    True,
  ),
  Case(
    'mars_muon_no_clip',
    so.mars_muon,
    dict(learning_rate=0.2, max_norm=None),
    False,
    True,
  ),
  Case(
    'mars_muon_per_tensor_clip',
    so.mars_muon,
    dict(
      learning_rate=0.2,
      per_tensor_clip=True,
      weight_decay=1e-4,
      lr_1d=0.05,
      weight_decay_1d=1e-3,
    ),
    False,
    True,
  ),
  Case(
    'mars_muon_dimension_numbers',
    so.mars_muon,
    dict(
      learning_rate=0.2,
      consistent_rms=None,
      ns_steps=6,
      muon_weight_dimension_numbers=transposed_matrices,
    ),
    False,
    True,
  ),
  Case('mars_shampoo', so.mars_shampoo, dict(learning_rate=0.2), False, True),
  Case('storm', so.storm, dict(learning_rate=0.1, beta=0.5, c0=1.0), True),
  Case(
    'storm_approx',
    so.storm,
    dict(learning_rate=0.1, beta=0.5, c0=1.0, approx=True),
    False,
  ),
  Case(
    'apply_if_finite_spider',
    spider_if_finite,
    dict(learning_rate=0.1, c0=1.0, c1=10.0),
    True,
  ),
  Case('keep_prev_params', so.keep_prev_params, {}, False),
]
BY_NAME = {case.name: case for case in CASES}


def cases(keep: Callable[[Case], bool] = lambda case: True):
  """``pytest.mark.parametrize`` over the cases that ``keep`` keeps."""
  kept = [case for case in CASES if keep(case)]
  return pytest.mark.parametrize('case', kept, ids=[c.name for c in kept])


def build(case: Case, **overrides) -> optax.GradientTransformation:
  return case.factory(**{**case.kwargs, **overrides})


def optimizer(case: Case, **overrides) -> optax.GradientTransformation:
  """The case as an optimizer: plain SGD after those that emit a direction."""
  tx = build(case, **overrides)
  if 'learning_rate' in inspect.signature(case.factory).parameters:
    return tx
  return optax.chain(tx, optax.sgd(SGD_LR))


# --------------------------------------------------------------------------
# Targets: optax's, with dict params (a vector and a matrix in the parabola).


def parabola(dtype=jnp.float32):
  init = {
    'b': jnp.array([-1.0, 10.0, 1.0], dtype),
    'w': jnp.zeros((2, 2), dtype),
  }
  final = {
    'b': jnp.array([1.0, -1.0, 1.0], dtype),
    'w': jnp.array([[3.0, -2.0], [1.0, 4.0]], dtype),
  }

  def loss(params):
    return sum(jnp.sum(jnp.square(params[k] - final[k])) for k in final)

  return init, final, loss


def rosenbrock(dtype=jnp.float32, a=1.0, b=1.0):
  """Rosenbrock's banana valley; b=1 keeps it in reach of a few hundred SGD
  steps (b=100, optax's, needs a learning rate 50x smaller)."""
  init = {'x': jnp.zeros(2, dtype)}
  final = {'x': jnp.array([a, a**2], dtype)}

  def loss(params):
    x = params['x']
    return jnp.square(a - x[0]) + b * jnp.square(x[1] - x[0] ** 2)

  return init, final, loss


# --------------------------------------------------------------------------
# Updates and trajectories.


def single_update(case, tx, grads, state, params, **extra):
  """``tx.update``, with ``prev_grads=grads`` for a paired transformation."""
  if case.needs_prev_grads:
    extra['prev_grads'] = grads
  return tx.update(grads, state, params, **extra)


def updated(case, tx, loss, params, state):
  """The update at ``params`` (single-update checks)."""
  return single_update(case, tx, jax.grad(loss)(params), state, params)


def step(case, tx, loss, params, state, *, anchor=False):
  """One step: an anchor, or exact paired gradients where the case takes
  them, or one gradient."""
  if case.needs_prev_grads and not anchor:
    grads, prev_grads = so.paired_grad(loss)(params, so.prev_params(state))
    updates, state = tx.update(grads, state, params, prev_grads=prev_grads)
  else:
    updates, state = tx.update(jax.grad(loss)(params), state, params)
  return optax.apply_updates(params, updates), state


def trajectories(case, runs, steps):
  """The params after ``steps`` steps of each ``(tx, loss, params)`` run,
  all in one jitted function; a SPIDER estimator anchors first."""

  def trajectory(tx, loss, params):
    state = tx.init(params)
    length = steps
    if case.needs_prev_grads and so.lookup.find_all(
      state, so.SpiderEstimatorState
    ):
      params, state = step(case, tx, loss, params, state, anchor=True)
      length -= 1
    body = lambda carry, _: (step(case, tx, loss, *carry), None)
    return jax.lax.scan(body, (params, state), length=length)[0][0]

  return jit(lambda: [trajectory(*run) for run in runs])()


def dtypes_of(tree):
  return {jnp.dtype(leaf.dtype) for leaf in jax.tree.leaves(tree)}


def is_error(x) -> bool:
  return isinstance(x, Exception)


def raise_if_error(x):
  if is_error(x):
    raise x
  return x


def jit_each(fn):
  """``{key: fn(key, *args)}`` for a dict of ``{key: args}``, in one jitted
  function: one compilation for all keys, e.g. dtypes.

  A key whose trace raises gets the exception in place of its result, so
  that one failing dtype does not hide the others.
  """
  errors = {}

  @jit
  def each(inputs):
    out = {}
    for key, args in inputs.items():
      try:
        out[key] = fn(key, *args)
      except Exception as error:  # reported by the test of that key
        errors[key] = error
    return out

  def call(inputs):
    out = each({k: v for k, v in inputs.items() if k not in errors})
    return {**out, **{k: errors[k] for k in inputs if k in errors}}

  return call


# --------------------------------------------------------------------------
# 1. Extra arguments, no recompilation.


@cases()
def test_accepts_extra_args_without_recompiling(case):
  tx = build(case)
  if not isinstance(tx, optax.GradientTransformationExtraArgs):
    # optax's convention: a plain GradientTransformation (relaxed_clip,
    # clip_by_leaf_norm, like optax.clip_by_global_norm) takes no extra
    # arguments; optax.chain adds them, as this does.
    tx = optax.with_extra_args_support(tx)
  params, _, loss = rosenbrock()

  @jit
  def train_step(params, state):
    grads = jax.grad(loss)(params)
    updates, state = single_update(
      case,
      tx,
      grads,
      state,
      params,
      unexpected_extra_args_your_optimizer_doesnt_expect=1,
    )
    return optax.apply_updates(params, updates), state

  params, state = train_step(params, jit(tx.init)(params))
  with test_utils.log_compilations() as logs:
    params, state = train_step(params, state)
  assert not logs, 'the second call to update recompiled: ' + ', '.join(
    log.getMessage() for log in logs
  )
  test_utils.assert_tree_all_finite(params)


# --------------------------------------------------------------------------
# 2. optax.inject_hyperparams.


def injectable(case: Case) -> bool:
  """Whether the factory has a numeric hyperparameter that can be injected."""
  signature = inspect.signature(case.factory)
  values = {name: p.default for name, p in signature.parameters.items()}
  values.update(case.kwargs)
  return any(
    name not in STATIC
    and not isinstance(value, bool)
    and isinstance(value, (int, float))
    for name, value in values.items()
  )


def without_schedule_counts(state):
  """``state`` as the factory keeps it under ``optax.inject_hyperparams``.

  inject_hyperparams evaluates a schedule itself and passes the inner
  factory its value, a number: ``optax.scale_by_learning_rate`` then keeps
  ``EmptyState`` where, given the schedule, it keeps a step count.
  """
  return jax.tree.map(
    lambda s: (
      optax.EmptyState() if isinstance(s, optax.ScaleByScheduleState) else s
    ),
    state,
    is_leaf=lambda s: isinstance(s, optax.ScaleByScheduleState),
  )


@cases(injectable)
def test_inject_hyperparams(case):
  static = STATIC & set(inspect.signature(case.factory).parameters)
  txs = (
    build(case),
    optax.inject_hyperparams(case.factory, static_args=static)(**case.kwargs),
  )
  params, _, loss = parabola()

  @jit
  def both_update(points, states):
    out = [
      updated(case, tx, loss, p, s) for tx, p, s in zip(txs, points, states)
    ]
    return [
      (updates, optax.apply_updates(p, updates), state)
      for (updates, state), p in zip(out, points)
    ]

  states = jit(lambda params: tuple(tx.init(params) for tx in txs))(params)
  points = (params, params)
  for _ in range(2):  # two updates, so that the state has moved
    (updates, p, state), (updates_inject, p_inject, state_inject) = both_update(
      points, states
    )
    test_utils.assert_trees_all_close(updates_inject, updates, rtol=1e-5)
    test_utils.assert_trees_all_close(
      state_inject.inner_state,
      without_schedule_counts(state),
      rtol=1e-5,
      atol=1e-5,
    )
    points, states = (p, p_inject), (state, state_inject)


# --------------------------------------------------------------------------
# 3. dtype preservation.


@pytest.mark.parametrize('dtype', ['bfloat16', 'float32'])
@cases()
def test_preserves_dtype(case, dtype):
  tx = build(case)
  params, _, loss = parabola(dtype)
  # The output types of the jitted init and update: .trace() gives them
  # without compiling.
  state = jit(tx.init).trace(params).out_info
  update = functools.partial(updated, case, tx, loss)
  updates, _ = jit(update).trace(params, state).out_info
  assert dtypes_of(updates) == {jnp.dtype(dtype)}, updates


# --------------------------------------------------------------------------
# 4. Gradient accumulation.


@functools.cache
def first_accumulated(name: str) -> dict[str, Any]:
  """The first update of MultiSteps(case) in bfloat16 and float32 (jitted
  init and update, one compilation)."""
  tx = optax.MultiSteps(build(BY_NAME[name]), every_k_schedule=4)
  targets = {dtype: parabola(dtype) for dtype in ('bfloat16', 'float32')}
  first = lambda _, params, grads: tx.update(grads, tx.init(params), params)[0]
  return jit_each(first)(
    {d: (p, jax.grad(loss)(p)) for d, (p, _, loss) in targets.items()}
  )


@pytest.mark.parametrize('dtype', ['bfloat16', 'float32'])
@cases()
def test_gradient_accumulation(case, dtype):
  if case.needs_prev_grads:
    # MultiSteps would average the grads of its micro-batches but pass on
    # only the last prev_grads: the library refuses it and names the way.
    params, _, _ = parabola(dtype)
    tx = optax.MultiSteps(build(case), every_k_schedule=4)
    state = jax.eval_shape(tx.init, params)  # the state's structure suffices
    with pytest.raises(ValueError, match='microbatches'):
      so.prev_params(state)
    return
  first = raise_if_error(first_accumulated(case.name)[dtype])
  test_utils.assert_trees_all_equal(first, jax.tree.map(jnp.zeros_like, first))
  assert dtypes_of(first) == {jnp.dtype(dtype)}
  assert jax.tree.structure(first) == jax.tree.structure(parabola()[0])


# --------------------------------------------------------------------------
# 5. State shape and dtype stability.


@functools.cache
def stability(name: str, dtypes: tuple[str, ...]) -> dict[str, Any]:
  """optax's two ``lax.cond`` steps for ``dtypes``, in one jitted function.

  For each dtype: the params' dtypes after two steps, or the exception its
  trace raised (a ``lax.cond`` whose branches differ in shape or dtype).
  """
  case = BY_NAME[name]
  tx = build(case)
  targets = {dtype: parabola(dtype) for dtype in dtypes}

  def cond_step(dtype, params, state, coin):
    grads = jax.grad(targets[dtype][2])(params)
    updates, new_state = jax.lax.cond(
      coin,
      lambda: single_update(case, tx, grads, state, params),
      lambda: (params, state),
    )
    params = optax.apply_updates(params, updates)
    return params, jax.lax.cond(coin, lambda: new_state, lambda: state)

  cond_steps = jit_each(cond_step)
  coin = jnp.array(True)  # a branch condition the compiler cannot fold
  params = {d: (p,) for d, (p, _, _) in targets.items()}
  states = jit_each(lambda _, params: tx.init(params))(params)
  outcome = {d: state for d, state in states.items() if is_error(state)}
  carry = {
    d: (p, states[d], coin) for d, (p,) in params.items() if d not in outcome
  }
  for _ in range(2):
    carry = cond_steps(carry)
    outcome.update({d: c for d, c in carry.items() if is_error(c)})
    carry = {d: (*c, coin) for d, c in carry.items() if not is_error(c)}
  return {**outcome, **{d: dtypes_of(c[0]) for d, c in carry.items()}}


@pytest.mark.parametrize('dtype', ['float16', 'bfloat16', 'float32', 'float64'])
@cases()
def test_state_shape_dtype_shard_stability(case, dtype):
  if dtype == 'float64':
    with jax.enable_x64(True):
      outcome = stability(case.name, ('float64',))
  else:
    outcome = stability(case.name, ('float16', 'bfloat16', 'float32'))
  assert raise_if_error(outcome[dtype]) == {jnp.dtype(dtype)}


# --------------------------------------------------------------------------
# 6. Learning-rate schedules.


def takes_a_schedule(case: Case) -> bool:
  lr = inspect.signature(case.factory).parameters.get('learning_rate')
  return lr is not None and lr.annotation in (
    optax.ScalarOrSchedule,
    optax.Schedule,
  )


@cases(takes_a_schedule)
def test_accepts_a_learning_rate_schedule(case):
  params, _, loss = parabola()
  txs = [build(case, learning_rate=optax.constant_schedule(1e-3))]
  txs.append(build(case, learning_rate=1e-3))
  got, want = trajectories(case, [(tx, loss, params) for tx in txs], 10)
  test_utils.assert_trees_all_close(got, want)
  # The params moved: equal trajectories that stand still prove nothing.
  assert jnp.max(jnp.abs(got['b'] - params['b'])) > 1e-3


# --------------------------------------------------------------------------
# 7. Convergence.


@functools.cache
def converged(name: str) -> dict[str, Any]:
  """The params after STEPS steps on each target, and the minimum."""
  case = BY_NAME[name]
  targets = {'parabola': parabola(), 'rosenbrock': rosenbrock()}
  overrides = {}
  if case.decay:
    overrides['learning_rate'] = decaying(case.kwargs['learning_rate'])
  tx = optimizer(case, **overrides)
  runs = [(tx, loss, init) for init, _, loss in targets.values()]
  out = trajectories(case, runs, STEPS)
  return {key: (got, t[1]) for (key, t), got in zip(targets.items(), out)}


@pytest.mark.parametrize('target', ['parabola', 'rosenbrock'])
@cases()
def test_converges(case, target):
  got, final = converged(case.name)[target]
  test_utils.assert_trees_all_close(got, final, atol=1e-2)
