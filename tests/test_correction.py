"""The recursive-correction family: so.recursive_correction, so.mars_adamw and
so.storm against the float64 references of tests/reference_correction.py."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import spider_optax as so
from reference_correction import grad_np
from reference_correction import make_problem
from reference_correction import MarsAdamW
from reference_correction import Storm

STEPS, MINIBATCH = 40, 8

# Float32 rounds every value to a relative 2**-24 (6e-8). A step rounds the
# params (|x| < 4 here) and about ten intermediates of the update, adding at
# most 10 * 4 * 6e-8 = 2.4e-6 to the error of the trajectory. Roundings of
# either sign add up like a random walk: sqrt(40) * 2.4e-6 = 1.5e-5 over the
# 40 steps (1e-4 if all had one sign, which the runs are far from: they
# measure <= 8e-7 against the float64 reference). A change to the formulas
# moves the params by a fraction of a step, lr = 0.05: 1e-3 or more.
ATOL, RTOL = 2e-5, 0.0


def loss(params, batch):
  r = batch['x'] @ params['kernel'] + params['bias'] - batch['y']
  return jnp.mean(
    0.5 * jnp.sum(r**2, axis=1)
    + 0.25 * jnp.sum((params['scale'] - batch['z']) ** 4, axis=1)
  )


def minibatches(data, steps=STEPS, seed=1):
  rng = np.random.default_rng(seed)
  n = data['x'].shape[0]
  for _ in range(steps):
    idx = rng.choice(n, MINIBATCH, replace=False)
    yield {k: v[idx] for k, v in data.items()}


def to32(tree):
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)


def run(
  tx, params, data, *, exact, jit=True, state=None, steps=STEPS, poison=None
):
  """Trains on minibatches; returns the params after each step and the state.

  ``poison=(k, 'grads' or 'prev_grads')`` inserts, before step k, an extra
  step whose gradients hold a NaN; it is not in the returned trajectory.
  """

  def step(params, state, batch, nan=False):
    if exact:
      grads, prev_grads = so.paired_grad(loss)(
        params, so.prev_params(state), batch
      )
      if nan and poison[1] == 'grads':
        grads = with_nan(grads)
      elif nan:
        prev_grads = with_nan(prev_grads)
      updates, state = tx.update(grads, state, params, prev_grads=prev_grads)
    else:
      grads = jax.grad(loss)(params, batch)
      updates, state = tx.update(
        with_nan(grads) if nan else grads, state, params
      )
    return optax.apply_updates(params, updates), state

  if jit:
    step = jax.jit(step, static_argnums=3)
  state = tx.init(params) if state is None else state
  trajectory = []
  for k, batch in enumerate(minibatches(data, steps)):
    if poison is not None and k == poison[0]:
      moved, state = step(params, state, to32(batch), True)
      np.testing.assert_array_equal(moved['kernel'], params['kernel'])
    params, state = step(params, state, to32(batch))
    trajectory.append(params)
  return trajectory, state


def run_reference(ref, data, *, exact, steps=STEPS):
  trajectory = []
  for batch in minibatches(data, steps):
    prev_grads = grad_np(ref.x_prev, batch) if exact else None
    trajectory.append(ref.step(grad_np(ref.x, batch), prev_grads))
  return trajectory


def assert_close(got, want, atol=ATOL, rtol=RTOL):
  assert len(got) == len(want)
  for k, (g, w) in enumerate(zip(got, want)):
    for name in w:
      np.testing.assert_allclose(
        np.asarray(g[name], np.float64),
        w[name],
        rtol=rtol,
        atol=atol,
        err_msg=f'step {k}, leaf {name}',
      )


def with_nan(tree):
  return jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.nan), tree)


SCHEDULE = optax.exponential_decay(0.05, transition_steps=10, decay_rate=0.5)
DECAY_MASK = {'kernel': True, 'bias': False, 'scale': True}

# name: (so.mars_adamw kwargs, reference kwargs)
MARS = {
  'approx': (dict(learning_rate=0.05), dict(learning_rate=0.05)),
  'exact': (
    dict(learning_rate=0.05, approx=False),
    dict(learning_rate=0.05, approx=False),
  ),
  'approx_per_tensor_schedule': (
    dict(learning_rate=SCHEDULE, per_tensor_clip=True),
    dict(learning_rate=lambda t: 0.05 * 0.5 ** (t / 10), per_tensor_clip=True),
  ),
  'exact_per_tensor_decay_mask': (
    dict(
      learning_rate=0.05,
      approx=False,
      per_tensor_clip=True,
      weight_decay=0.1,
      mask=DECAY_MASK,
    ),
    dict(
      learning_rate=0.05,
      approx=False,
      per_tensor_clip=True,
      weight_decay=0.1,
      decay_mask=DECAY_MASK,
    ),
  ),
  'approx_adamw_1d_decay_callable_mask': (
    dict(
      learning_rate=SCHEDULE,
      adamw_1d=True,
      weight_decay=0.1,
      mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p),
      gamma=0.1,
      b1=0.9,
      b2=0.95,
      max_norm=2.0,
    ),
    dict(
      learning_rate=lambda t: 0.05 * 0.5 ** (t / 10),
      adamw_1d=True,
      weight_decay=0.1,
      decay_mask={'kernel': True, 'bias': False, 'scale': False},
      gamma=0.1,
      b1=0.9,
      b2=0.95,
      max_norm=2.0,
    ),
  ),
  'exact_adamw_1d_per_tensor': (
    dict(
      learning_rate=0.05,
      approx=False,
      adamw_1d=True,
      per_tensor_clip=True,
      max_norm=3.0,
      betas_1d=(0.8, 0.9),
    ),
    dict(
      learning_rate=0.05,
      approx=False,
      adamw_1d=True,
      per_tensor_clip=True,
      max_norm=3.0,
      betas_1d=(0.8, 0.9),
    ),
  ),
  # The official fallback rule, its own learning rate and decay, a gamma
  # schedule.
  'approx_official_fallback_lr_1d_gamma_schedule': (
    dict(
      learning_rate=SCHEDULE,
      gamma=optax.linear_schedule(0.05, 0.45, 40),
      adamw_1d=True,
      adamw_leaves='not_2d',
      weight_decay=0.1,
      lr_1d=0.03,
      weight_decay_1d=0.05,
    ),
    dict(
      learning_rate=lambda t: 0.05 * 0.5 ** (t / 10),
      gamma=lambda t: 0.05 + 0.01 * t,
      adamw_1d=True,
      adamw_leaves='not_2d',
      weight_decay=0.1,
      lr_1d=0.03,
      weight_decay_1d=0.05,
    ),
  ),
}


@pytest.mark.parametrize('jit', [True, False], ids=['jit', 'nojit'])
@pytest.mark.parametrize('config', list(MARS))
def test_mars_adamw_matches_float64_reference(config, jit):
  kwargs, ref_kwargs = MARS[config]
  exact = kwargs.get('approx') is False
  params64, data64 = make_problem()
  got, _ = run(
    so.mars_adamw(**kwargs), to32(params64), data64, exact=exact, jit=jit
  )
  ref = MarsAdamW(params64, **ref_kwargs)
  want = run_reference(ref, data64, exact=exact)
  assert any(ref.clipped), 'the clip must act for the test to mean much'
  moved = max(np.abs(want[-1][k] - params64[k]).max() for k in params64)
  assert moved > 0.3, 'the run must move the params for the test to mean much'
  assert_close(got, want)


STORM = {
  'exact': dict(c0=None, c1=None, approx=False),
  'approx': dict(c0=None, c1=None, approx=True),
  'exact_clipped': dict(c0=1.0, c1=2.0, approx=False),
  'approx_clipped': dict(c0=1.0, c1=2.0, approx=True),
}


@pytest.mark.parametrize('jit', [True, False], ids=['jit', 'nojit'])
@pytest.mark.parametrize('config', list(STORM))
def test_storm_matches_float64_reference(config, jit):
  kwargs = STORM[config]
  exact = not kwargs['approx']
  params64, data64 = make_problem()
  got, _ = run(
    so.storm(0.05, 0.9, **kwargs), to32(params64), data64, exact=exact, jit=jit
  )
  ref = Storm(params64, 0.05, 0.9, **kwargs)
  want = run_reference(ref, data64, exact=exact)
  if kwargs['c0'] is not None:
    assert min(ref.factors) < 0.1, 'the clip must act'
  moved = max(np.abs(want[-1][k] - params64[k]).max() for k in params64)
  assert moved > 0.3
  assert_close(got, want)


@pytest.mark.parametrize('approx', [True, False], ids=['approx', 'exact'])
def test_recursive_correction_formula(approx):
  """c_k = g_k + gamma beta/(1-beta) (g_k - g'_k), g'_0 = 0; masked leaves
  pass through."""
  beta, gamma = 0.8, 0.5
  scale = gamma * beta / (1 - beta)
  rng = np.random.default_rng(0)
  params = {'a': jnp.ones((2, 3)), 'b': jnp.ones(3)}
  rand = lambda: jax.tree.map(
    lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params
  )
  mask = {'a': True, 'b': False}
  tx = so.recursive_correction(beta, gamma, approx=approx, mask=mask)
  assert isinstance(tx, optax.GradientTransformationExtraArgs)
  state = tx.init(params)
  previous = jax.tree.map(jnp.zeros_like, params)  # g'_0 = 0
  for k in range(4):
    grads = rand()
    extra = {} if approx else {'prev_grads': rand()}
    c, state = jax.jit(tx.update)(grads, state, params, **extra)
    g_prev = previous if approx or k == 0 else extra['prev_grads']
    want_a = np.asarray(grads['a'], np.float64) + scale * (
      np.asarray(grads['a'], np.float64) - g_prev['a']
    )
    np.testing.assert_allclose(c['a'], want_a, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(c['b'], grads['b'])
    previous = grads
    assert int(state.correction_count) == k + 1
    if approx:
      assert state.prev_params is None
      # g_{k-1} is kept where it corrects, nothing for the masked leaf.
      assert isinstance(state.prev_grads['b'], optax.MaskedNode)
      chex.assert_trees_all_equal(state.prev_grads['a'], grads['a'])
    else:
      assert state.prev_grads is None
      chex.assert_trees_all_equal(so.prev_params(state), params)


@pytest.mark.parametrize('approx', [True, False], ids=['approx', 'exact'])
def test_gamma_zero_is_adamw_after_a_global_norm_clip(approx):
  params64, data64 = make_problem()
  kwargs = dict(b1=0.9, b2=0.95, eps=1e-6, weight_decay=0.1)
  got, _ = run(
    so.mars_adamw(SCHEDULE, gamma=0.0, approx=approx, **kwargs),
    to32(params64),
    data64,
    exact=not approx,
  )
  plain = optax.chain(
    optax.clip_by_global_norm(1.0), optax.adamw(SCHEDULE, **kwargs)
  )
  want, _ = run(plain, to32(params64), data64, exact=False)
  # The same float32 operations: equal up to a few roundings of 2**-24.
  jax.tree.map(
    lambda g, w: np.testing.assert_allclose(g, w, rtol=4 * 2**-24, atol=1e-7),
    got,
    want,
  )


def test_approx_mode_keeps_no_prev_params():
  """Approx modes need neither prev_grads nor so.prev_params."""
  params64, data64 = make_problem()
  for tx in (so.mars_adamw(0.05), so.storm(0.05, 0.9, approx=True)):
    _, state = run(tx, to32(params64), data64, exact=False, steps=3)
    (correction,) = [
      s
      for s in jax.tree.leaves(
        state, is_leaf=lambda s: isinstance(s, so.RecursiveCorrectionState)
      )
      if isinstance(s, so.RecursiveCorrectionState)
    ]
    assert correction.prev_params is None
    with pytest.raises(ValueError, match='no previous parameters'):
      so.prev_params(state)


@pytest.mark.parametrize(
  'wrap', ['none', 'inject_hyperparams', 'apply_if_finite']
)
def test_prev_params_found_in_exact_mode(wrap):
  params64, data64 = make_problem()
  factories = {
    'mars': functools.partial(so.mars_adamw, approx=False),
    'storm': functools.partial(so.storm, beta=0.9),
  }
  for name, factory in factories.items():
    if wrap == 'inject_hyperparams':
      tx = optax.inject_hyperparams(factory)(learning_rate=0.05)
    elif wrap == 'apply_if_finite':
      tx = so.apply_if_finite(factory(learning_rate=0.05), 2)
    else:
      tx = factory(learning_rate=0.05)
    trajectory, state = run(tx, to32(params64), data64, exact=True, steps=3)
    chex.assert_trees_all_equal(
      so.prev_params(state), trajectory[-2], custom_message=name
    )


@pytest.mark.parametrize('jit', [True, False], ids=['jit', 'nojit'])
def test_mars_adamw_inject_hyperparams(jit):
  params64, data64 = make_problem()
  tx = optax.inject_hyperparams(so.mars_adamw)(
    learning_rate=SCHEDULE, approx=False, weight_decay=0.1
  )
  state = tx.init(to32(params64))
  assert set(state.hyperparams) == {
    'learning_rate',
    'b1',
    'b2',
    'gamma',
    'eps',
    'weight_decay',
    'max_norm',
  }
  # Injected values are the ones used: set them before the first step.
  state.hyperparams.update(
    b1=jnp.asarray(0.9), b2=jnp.asarray(0.95), gamma=jnp.asarray(0.2)
  )
  got, _ = run(tx, to32(params64), data64, exact=True, jit=jit, state=state)
  ref = MarsAdamW(
    params64,
    lambda t: 0.05 * 0.5 ** (t / 10),
    b1=0.9,
    b2=0.95,
    gamma=0.2,
    weight_decay=0.1,
    approx=False,
  )
  assert_close(got, run_reference(ref, data64, exact=True))


def test_storm_inject_hyperparams():
  params64, data64 = make_problem()
  tx = optax.inject_hyperparams(so.storm)(
    learning_rate=0.05, beta=0.9, c0=1.0, c1=2.0, approx=True
  )
  state = tx.init(to32(params64))
  assert set(state.hyperparams) == {'learning_rate', 'beta', 'c0', 'c1'}
  state.hyperparams.update(beta=jnp.asarray(0.7), c1=jnp.asarray(5.0))
  got, _ = run(tx, to32(params64), data64, exact=False, state=state)
  ref = Storm(params64, 0.05, 0.7, 1.0, 5.0, approx=True)
  assert_close(got, run_reference(ref, data64, exact=False))


def test_recursive_correction_inject_hyperparams():
  tx = optax.inject_hyperparams(so.recursive_correction)(beta=0.5, gamma=1.0)
  params = {'w': jnp.zeros(2)}
  state = tx.init(params)
  state.hyperparams['gamma'] = jnp.asarray(2.0)
  c, _ = jax.jit(tx.update)(
    {'w': jnp.array([1.0, 2.0])}, state, params, prev_grads={'w': jnp.zeros(2)}
  )
  np.testing.assert_allclose(c['w'], [3.0, 6.0])  # g'_0 = 0: (1 + 2) g


@pytest.mark.parametrize('alias', ['mars_approx', 'mars_exact', 'storm_exact'])
def test_bfloat16_params_float32_state(alias):
  params64, data64 = make_problem()
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), params64)
  exact = alias != 'mars_approx'
  if alias == 'storm_exact':
    tx = so.storm(0.05, 0.9, c0=1.0, mu_dtype=jnp.float32)
  else:
    tx = so.mars_adamw(0.05, approx=not exact, mu_dtype=jnp.float32)
  trajectory, state = run(tx, params, data64, exact=exact, steps=20)
  # The state keeps its dtypes from step to step (a jitted loop or a scan
  # carry needs that): float32 moment and kept gradient, bfloat16 params.
  chex.assert_trees_all_equal_shapes_and_dtypes(state, tx.init(params))
  kept = [
    x
    for x in jax.tree.leaves(state)
    if x.dtype not in (jnp.bfloat16, jnp.int32)
  ]
  assert kept and all(x.dtype == jnp.float32 for x in kept)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(trajectory[-1]))
  start, end = (loss(p, to32(data64)) for p in (to32(params), trajectory[-1]))
  assert float(end) < 0.8 * float(start)


def test_float32_state_for_bfloat16_params():
  """With float32 gradients for bfloat16 params, state_dtype=float32 keeps
  g_{k-1} exactly; the params' dtype would round it to bfloat16. With
  bfloat16 gradients it emits c_k in float32, unrounded."""
  params = {'w': jnp.ones(64, jnp.bfloat16)}
  rng = np.random.default_rng(0)
  g0, g1 = (jnp.asarray(rng.normal(size=64), jnp.float32) for _ in range(2))
  want = 2 * np.asarray(g1, np.float64) - np.asarray(g0, np.float64)
  errors = {}
  for dtype in (jnp.float32, None):
    tx = so.recursive_correction(0.5, approx=True, state_dtype=dtype)
    state = tx.init(params)
    _, state = tx.update({'w': g0}, state)
    c, state = tx.update({'w': g1}, state)
    assert c['w'].dtype == jnp.float32
    errors[dtype] = np.abs(np.asarray(c['w'], np.float64) - want).max()
  assert errors[jnp.float32] < 1e-6 < 1e-3 < errors[None]
  # bfloat16 gradients: c_k is emitted in state_dtype where that is wider.
  g = {'w': jnp.asarray(rng.normal(size=64), jnp.bfloat16)}
  for dtype, emitted in ((jnp.float32, jnp.float32), (None, jnp.bfloat16)):
    tx = so.recursive_correction(0.9, approx=True, state_dtype=dtype)
    c, _ = tx.update(g, tx.init(params))  # c_0 = (1 + 0.9/0.1) g_0
    assert c['w'].dtype == emitted
  np.testing.assert_array_equal(c['w'], (10 * g['w']).astype(jnp.bfloat16))
  c, _ = so.recursive_correction(
    0.9, approx=True, state_dtype=jnp.float32
  ).update(g, tx.init(params))
  np.testing.assert_array_equal(c['w'], 10 * np.asarray(g['w'], np.float32))


@pytest.mark.parametrize(
  'case', ['mars_approx_grads', 'mars_exact_prev_grads', 'storm_exact_grads']
)
def test_apply_if_finite_skips_a_nonfinite_step(case):
  name, mode, bad = case.split('_', 2)
  exact = mode == 'exact'
  tx = (
    so.mars_adamw(0.05, approx=not exact)
    if name == 'mars'
    else so.storm(0.05, 0.9, c0=1.0)
  )
  tx = so.apply_if_finite(tx, max_consecutive_errors=2)
  params64, data64 = make_problem()
  want, _ = run(tx, to32(params64), data64, exact=exact, steps=10)
  got, state = run(
    tx, to32(params64), data64, exact=exact, steps=10, poison=(5, bad)
  )
  assert int(state.total_notfinite) == 1
  # The rest of the run is as if the bad step had never happened.
  jax.tree.map(np.testing.assert_array_equal, got, want)


@pytest.mark.parametrize('approx', [True, False], ids=['approx', 'exact'])
def test_donated_step_writes_its_state_in_place(approx):
  tx = so.mars_adamw(0.1, approx=approx, per_tensor_clip=True)
  params = {'kernel': jnp.ones((64, 64)), 'bias': jnp.ones(64)}

  def step(params, state, grads, prev_grads):
    extra = {} if approx else {'prev_grads': prev_grads}
    updates, state = tx.update(grads, state, params, **extra)
    return optax.apply_updates(params, updates), state

  memory = (
    jax.jit(step, donate_argnums=(0, 1))
    .lower(params, tx.init(params), params, params)
    .compile()
    .memory_analysis()
  )
  assert memory.output_size_in_bytes - memory.alias_size_in_bytes < 1024


BAD_HYPERPARAMETERS = [
  (lambda: so.mars_adamw(-0.1), 'learning_rate'),
  (lambda: so.mars_adamw(float('nan')), 'learning_rate'),
  (lambda: so.mars_adamw(0.1, b1=1.0), 'b1'),
  (lambda: so.mars_adamw(0.1, b1=-0.1), 'b1'),
  (lambda: so.mars_adamw(0.1, b2=1.5), 'b2'),
  (lambda: so.mars_adamw(0.1, gamma=-0.1), 'gamma'),
  (lambda: so.mars_adamw(0.1, gamma=float('nan')), 'gamma'),
  (lambda: so.mars_adamw(0.1, max_norm=0.0), 'max_norm'),
  (lambda: so.mars_adamw(0.1, max_norm=-1.0), 'max_norm'),
  (lambda: so.mars_adamw(0.1, weight_decay=-1.0), 'weight_decay'),
  (
    lambda: so.mars_adamw(0.1, adamw_1d=True, betas_1d=(0.9, 1.0)),
    r'betas_1d\[1\]',
  ),
  (lambda: so.storm(-0.1, 0.9), 'learning_rate'),
  (lambda: so.storm(0.1, 1.0), 'beta'),
  (lambda: so.storm(0.1, float('nan')), 'beta'),
  (lambda: so.storm(0.1, 0.9, c0=0.0), 'c0'),
  (lambda: so.recursive_correction(-0.5), 'beta'),
  (lambda: so.recursive_correction(0.5, gamma=-1.0), 'gamma'),
  (lambda: so.clip_by_leaf_norm(0.0), 'max_norm'),
]


@pytest.mark.parametrize('build, name', BAD_HYPERPARAMETERS)
def test_bad_hyperparameters_raise(build, name):
  with pytest.raises(ValueError, match=f'^{name} must be'):
    build()


@pytest.mark.parametrize(
  'build, name',
  [
    (lambda: so.storm(0.1, 'high'), 'beta'),
    (lambda: so.mars_adamw(0.1, gamma='0.1'), 'gamma'),
    (lambda: so.recursive_correction(0.5, gamma=jnp.ones(2)), 'gamma'),
  ],
)
def test_hyperparameters_of_the_wrong_type_raise(build, name):
  with pytest.raises(TypeError, match=f'^{name} must be'):
    build()


def test_update_errors_say_what_to_do():
  params = {'a': jnp.ones(3), 'b': jnp.ones((2, 2))}
  exact = so.recursive_correction(0.9)
  approx = so.recursive_correction(0.9, approx=True)
  with pytest.raises(ValueError, match='needs prev_grads=.*so.paired_grad'):
    exact.update(params, exact.init(params), params)
  with pytest.raises(ValueError, match='needs params'):
    exact.update(params, exact.init(params), prev_grads=params)
  with pytest.raises(ValueError, match='takes no prev_grads.*approx=False'):
    approx.update(params, approx.init(params), params, prev_grads=params)
  with pytest.raises(
    ValueError, match=r"prev_grads has no leaf prev_grads\['b'\]"
  ):
    exact.update(
      params, exact.init(params), params, prev_grads={'a': params['a']}
    )
  bad = {'a': jnp.ones(3), 'b': jnp.ones((2, 3))}
  with pytest.raises(ValueError, match=r"prev_grads\['b'\] has shape \(2, 3\)"):
    exact.update(params, exact.init(params), params, prev_grads=bad)
  with pytest.raises(ValueError, match=r"grads\['b'\] has shape \(2, 3\)"):
    approx.update(bad, approx.init(params))
  masked = so.recursive_correction(0.9, approx=True, mask={'a': True})
  with pytest.raises(ValueError, match=r"mask has no entry for params\['b'\]"):
    masked.update(params, masked.init(params))
  # The aliases raise the same errors from inside their chains.
  with pytest.raises(ValueError, match='needs prev_grads='):
    tx = so.storm(0.1, 0.9)
    tx.update(params, tx.init(params), params)
  with pytest.raises(ValueError, match='takes no prev_grads'):
    tx = so.mars_adamw(0.1)
    tx.update(params, tx.init(params), params, prev_grads=params)
