"""Bad input, round 2 (issue 23): edges of hyperparameters, dtype arguments,
schedules of the wrong shape, zero-size leaves, integer params given to the
clips and extreme magnitudes, across every public entry point.

The verdict is the same however a value arrives (a Python literal, a NumPy
scalar, injected by ``optax.inject_hyperparams``) and eager or jitted; the
numbers are checked against float64 NumPy references written from the
formulas.
"""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import example
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import spider_optax as so
from verdicts import verdict

PARAMS = {'w': jnp.ones((2, 3)), 'b': jnp.array([1.0, -2.0, 3.0])}
GRADS = {'w': jnp.full((2, 3), 0.5), 'b': jnp.array([0.5, 0.0, -1.0])}


def first_update(tx, grads=GRADS, params=PARAMS, jit=False, **extra):
  update = jax.jit(tx.update) if jit else tx.update
  return update(grads, tx.init(params), params, **extra)[0]


# --------------------------------------------------------------------------
# 1. Hyperparameters at their edges: judged on their float32 value
# --------------------------------------------------------------------------

# (factory, valid keyword arguments, the decay's name).
DECAYS = [
  (so.mars_adamw, dict(learning_rate=0.1), 'b1'),
  (so.mars_adamw, dict(learning_rate=0.1), 'b2'),
  (so.mars_lion, dict(learning_rate=0.1), 'b1'),
  (so.mars_muon, dict(learning_rate=0.1), 'b1'),
  (so.mars_shampoo, dict(learning_rate=0.1), 'b1'),
  (so.storm, dict(learning_rate=0.1, approx=True), 'beta'),
  (so.recursive_correction, dict(approx=True), 'beta'),
  (so.corrected_momentum, dict(gamma=0.1), 'beta'),
  (so.muon.scale_by_adam, {}, 'b2'),
  (so.muon.scale_by_adam_eps_first, {}, 'b2'),
]
DECAY_IDS = [f'{f.__name__}-{name}' for f, _, name in DECAYS]

# Below 1 in float64, 1 in float32 (whose spacing below 1 is 6e-8).
rounds_to_one = st.floats(1 - 2.9e-8, 1.0, exclude_max=True)


@pytest.mark.parametrize('factory, kwargs, name', DECAYS, ids=DECAY_IDS)
@settings(max_examples=3, deadline=None)
@given(value=rounds_to_one)
def test_a_decay_that_float32_rounds_to_one_is_refused_however_given(
  factory, kwargs, name, value
):
  assert np.float32(value) == 1 and value < 1
  message = f'{name} must be a number in [0, 1)'
  for given_as in (value, np.float64(value)):
    error = verdict(factory, **{**kwargs, name: given_as})
    assert error is not None and message in error, error
    assert '1.0 in float32' in error
  # Injected, the same value arrives as the float32 1.0 in the update.
  static = ('ns_steps',) if factory in (so.mars_muon, so.mars_shampoo) else ()
  inject = optax.inject_hyperparams(factory, static_args=static)
  tx = inject(**{**kwargs, name: 0.5})
  state = tx.init(PARAMS)
  state.hyperparams[name] = jnp.asarray(value, jnp.float32)
  error = verdict(jax.jit(tx.update), GRADS, state, PARAMS)
  assert error is not None and message in error, error


@pytest.mark.parametrize('factory, kwargs, name', DECAYS, ids=DECAY_IDS)
def test_the_largest_float32_decay_below_one_is_accepted(factory, kwargs, name):
  value = float(np.nextafter(np.float32(1), np.float32(0)))  # 1 - 6e-8
  tx = factory(**{**kwargs, name: value})
  updates = first_update(tx)
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


@pytest.mark.parametrize(
  'build, name',
  [
    (lambda v: so.spider(0.1, c0=v), 'c0'),
    (lambda v: so.spider(0.1, c0=1.0, c1=v), 'c1'),
    (lambda v: so.spider(0.1, c0=v, lean=True), 'c0'),
    (lambda v: so.relaxed_clip(c0=v), 'c0'),
    (lambda v: so.clip_by_leaf_norm(v), 'max_norm'),
    (lambda v: so.mars_adamw(0.1, max_norm=v), 'max_norm'),
    (lambda v: so.storm(0.1, 0.9, c0=v), 'c0'),
  ],
)
@pytest.mark.parametrize('value', [1e-40, 1e-46, np.float64(5e-324)])
def test_a_threshold_that_float32_flushes_to_zero_is_refused(
  build, name, value
):
  """A clip threshold of 0 would zero every step: refused, as the same value
  injected (a float32 0) is."""
  with pytest.raises(ValueError, match=f'{name} must be positive'):
    build(value)


@pytest.mark.parametrize('value', [1e39, 3.5e38, 10**40])
def test_a_learning_rate_that_float32_rounds_to_inf_is_refused(value):
  for factory in (so.spider, so.mars_adamw, lambda lr: so.storm(lr, 0.9)):
    with pytest.raises(ValueError, match='inf in float32'):
      factory(value)


MARS_EPS = [
  lambda eps: so.mars_adamw(0.1, eps=eps),
  lambda eps: so.mars_adamw(0.1, eps=eps, adamw_1d=True),
  lambda eps: so.mars_lion(0.1, eps=eps, adamw_1d=True),
  lambda eps: so.mars_muon(0.1, eps=eps),
  lambda eps: so.mars_shampoo(0.1, eps=eps),
  lambda eps: so.muon.scale_by_adam(eps=eps),
  lambda eps: so.muon.scale_by_adam_eps_first(eps=eps),
]


@pytest.mark.parametrize('build', MARS_EPS)
@pytest.mark.parametrize('jit', [False, True])
def test_eps_zero_gives_a_finite_step_and_zero_where_the_gradient_is(
  build, jit
):
  """optax.adamw(eps=0) gives 0 / 0 = NaN where a gradient entry is 0; here
  the step is Adam's limit: 0 there, and on the first step sign(g) for the
  AdamW leaves (m_hat = g, v_hat = g^2)."""
  grads = {'w': jnp.array([[0.5, 0.0], [-2.0, 0.0]]), 'b': jnp.zeros(3)}
  grads['b'] = grads['b'].at[0].set(-3.0)
  params = {'w': jnp.ones((2, 2)), 'b': jnp.ones(3)}
  for given_as in (0.0, 0, np.float32(0.0)):
    updates = first_update(build(given_as), grads, params, jit=jit)
    for u in jax.tree.leaves(updates):
      assert bool(jnp.all(jnp.isfinite(u))), updates
    np.testing.assert_array_equal(np.asarray(updates['b'])[1:], 0.0)
  # The AdamW on 'b': -lr sign(g) (scale_by_adam alone: +sign(g)).
  expected = -0.1 * np.sign(np.asarray(grads['b']))
  updates = first_update(build(0.0), grads, params, jit=jit)
  got = np.asarray(updates['b'], np.float64)
  if build in MARS_EPS[5:]:
    expected = -expected / 0.1
  np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize(
  'build',
  [
    lambda b: so.mars_adamw(0.1, betas_1d=b),
    lambda b: so.mars_adamw(0.1, betas_1d=b, adamw_1d=True),
    lambda b: so.mars_lion(0.1, betas_1d=b),
    lambda b: so.mars_muon(0.1, betas_1d=b),
    lambda b: so.mars_shampoo(0.1, betas_1d=b),
  ],
)
def test_betas_1d_must_be_a_pair_of_decays_whatever_the_rest(build):
  for bad in ((0.9,), (0.9, 0.95, 0.99), 0.9, 'ab', np.ones(3), None):
    with pytest.raises(TypeError, match='betas_1d must be a pair'):
      build(bad)
  for bad, name in (((0.9, 1.0), r'betas_1d\[1\]'), ((-0.1, 0.9), r'\[0\]')):
    with pytest.raises(ValueError, match=f'{name} must be a number in'):
      build(bad)
  for good in ((0.9, 0.95), [0.9, 0.95], np.array([0.9, 0.95])):
    build(good)


# --------------------------------------------------------------------------
# 2. dtype arguments: floating dtypes or None
# --------------------------------------------------------------------------

DTYPE_ARGS = [
  (lambda d: so.spider(0.1, estimator_dtype=d), 'estimator_dtype'),
  (lambda d: so.spider(0.1, estimator_dtype=d, lean=True), 'estimator_dtype'),
  (lambda d: so.spider(0.1, epsilon=1.0, estimator_dtype=d), 'estimator_dtype'),
  (lambda d: so.spider_estimator(d), 'estimator_dtype'),
  (lambda d: so.storm(0.1, 0.9, mu_dtype=d), 'mu_dtype'),
  (lambda d: so.mars_adamw(0.1, mu_dtype=d), 'mu_dtype'),
  (lambda d: so.mars_lion(0.1, mu_dtype=d), 'mu_dtype'),
  (lambda d: so.mars_muon(0.1, mu_dtype=d), 'mu_dtype'),
  (lambda d: so.mars_muon(0.1, mu_dtype=d, max_norm=None), 'mu_dtype'),
  (lambda d: so.mars_shampoo(0.1, mu_dtype=d), 'mu_dtype'),
  (lambda d: so.recursive_correction(0.9, state_dtype=d), 'state_dtype'),
  (lambda d: so.corrected_momentum(0.9, 0.1, mu_dtype=d), 'mu_dtype'),
  (lambda d: so.muon.scale_by_adam(mu_dtype=d), 'mu_dtype'),
  (lambda d: so.muon.scale_by_adam_eps_first(mu_dtype=d), 'mu_dtype'),
]


@pytest.mark.parametrize('build, name', DTYPE_ARGS)
@pytest.mark.parametrize(
  'dtype',
  [jnp.int32, jnp.uint8, jnp.bool_, np.int64, 'int8', 'bool', jnp.complex64],
)
def test_a_dtype_argument_that_is_not_floating_is_refused(build, name, dtype):
  with pytest.raises(TypeError, match=f'^{name} must be a floating-point'):
    build(dtype)


@pytest.mark.parametrize('build, name', DTYPE_ARGS)
@pytest.mark.parametrize(
  'dtype', [None, jnp.float32, 'float32', jnp.bfloat16, np.dtype('float16')]
)
def test_a_floating_dtype_argument_is_accepted(build, name, dtype):
  del name
  build(dtype)


@pytest.mark.parametrize(
  'factory, kwargs, name',
  [
    (so.storm, dict(learning_rate=0.1, beta=0.9), 'mu_dtype'),
    (so.mars_adamw, dict(learning_rate=0.1), 'mu_dtype'),
    (so.spider, dict(learning_rate=0.1), 'estimator_dtype'),
  ],
)
def test_an_injected_integer_dtype_is_refused(factory, kwargs, name):
  """inject_hyperparams calls jnp.int32 as a schedule: jnp.int32(count)."""
  tx = optax.inject_hyperparams(factory)(**kwargs, **{name: jnp.int32})
  with pytest.raises(TypeError, match=f'^{name} must be a floating-point'):
    tx.init(PARAMS)


# --------------------------------------------------------------------------
# 3. Schedules of the wrong shape
# --------------------------------------------------------------------------

SCHEDULE_ARGS = [
  (lambda s: so.spider(s, c0=1.0), 'learning_rate'),
  (lambda s: so.spider(s, c0=1.0, lean=True), 'learning_rate'),
  (lambda s: so.spider(s, epsilon=1.0), 'learning_rate'),
  (lambda s: so.storm(s, 0.9, approx=True), 'learning_rate'),
  (lambda s: so.mars_adamw(s), 'learning_rate'),
  (lambda s: so.mars_lion(s), 'learning_rate'),
  (lambda s: so.mars_muon(s), 'learning_rate'),
  (lambda s: so.mars_shampoo(s), 'learning_rate'),
  (lambda s: so.mars_adamw(0.1, gamma=s), 'gamma'),
  (lambda s: so.mars_muon(0.1, gamma=s), 'gamma'),
  (lambda s: so.mars_adamw(0.1, weight_decay=s), 'weight_decay'),
  (lambda s: so.mars_adamw(0.1, adamw_1d=True, lr_1d=s), 'lr_1d'),
  (
    lambda s: so.mars_adamw(0.1, adamw_1d=True, weight_decay_1d=s),
    'weight_decay_1d',
  ),
  (lambda s: so.recursive_correction(0.9, gamma=s, approx=True), 'gamma'),
]


@pytest.mark.parametrize('build, name', SCHEDULE_ARGS)
@pytest.mark.parametrize(
  'schedule',
  [lambda: 0.1, lambda a, b: 0.1, lambda *, count: 0.1, lambda **kw: 0.1],
  ids=['no-argument', 'two-arguments', 'keyword-only', 'keywords'],
)
def test_a_schedule_that_cannot_take_the_step_count_is_refused_at_build(
  build, name, schedule
):
  with pytest.raises(TypeError, match=f'^{name} must be a number or a sched'):
    build(schedule)
  with pytest.raises(TypeError, match='a function of the step count'):
    build(schedule)


class _Opaque:
  """A callable whose signature cannot be read."""

  def __init__(self, fn):
    self.fn = fn

  @property
  def __signature__(self):
    raise ValueError('no signature')

  def __call__(self, *args):
    return self.fn(*args)


def _decay(count, scale=0.1):
  return scale * 0.5**count


@pytest.mark.parametrize('build, name', SCHEDULE_ARGS)
def test_schedules_of_every_kind_are_accepted(build, name):
  del name
  for schedule in (
    optax.cosine_decay_schedule(0.1, 10),
    optax.warmup_cosine_decay_schedule(0.0, 0.1, 2, 10),
    functools.partial(_decay, scale=0.05),
    lambda count, *rest: 0.1,
    jax.jit(_decay),
    _Opaque(lambda count: 0.1),  # no readable signature
  ):
    tx = build(schedule)
    for jit in (False, True):
      updates = first_update(tx, jit=jit)
      for u in jax.tree.leaves(updates):
        assert bool(jnp.all(jnp.isfinite(u)))


@pytest.mark.parametrize('build, name', SCHEDULE_ARGS)
def test_an_unreadable_schedule_of_the_wrong_shape_is_named_when_called(
  build, name
):
  tx = build(_Opaque(lambda: 0.1))
  for jit in (False, True):
    with pytest.raises(TypeError, match=f'^{name}: calling the schedule'):
      first_update(tx, jit=jit)


# --------------------------------------------------------------------------
# 6. Zero-size leaves
# --------------------------------------------------------------------------

EMPTY = {
  'e': jnp.zeros((0,)),
  'm': jnp.zeros((3, 0)),
  'z': jnp.zeros((0, 4)),
  'k': jnp.zeros((2, 0, 3)),
}

# (name, factory, needs prev_grads)
ZERO_SIZE = [
  ('spider', lambda: so.spider(0.1, c0=1.0, c1=2.0), False),
  ('spider-recursive', lambda: so.spider(0.1, c0=1.0), True),
  ('spider-epsilon', lambda: so.spider(0.1, c0=1.0, epsilon=1.0), True),
  ('spider-lean', lambda: so.spider(0.1, c0=1.0, lean=True), True),
  ('spider_estimator', lambda: so.spider_estimator(), True),
  ('storm-approx', lambda: so.storm(0.1, 0.9, c0=1.0, approx=True), False),
  ('storm-exact', lambda: so.storm(0.1, 0.9, c0=1.0, c1=3.0), True),
  ('mars_adamw', lambda: so.mars_adamw(0.1), False),
  ('mars_adamw-exact', lambda: so.mars_adamw(0.1, approx=False), True),
  (
    'mars_adamw-per-tensor-1d',
    lambda: so.mars_adamw(0.1, per_tensor_clip=True, adamw_1d=True),
    False,
  ),
  ('mars_lion', lambda: so.mars_lion(0.1, adamw_1d=True), False),
  ('mars_lion-exact', lambda: so.mars_lion(0.1, approx=False), True),
  ('mars_muon', lambda: so.mars_muon(0.1), False),
  ('mars_muon-one-buffer', lambda: so.mars_muon(0.1, max_norm=None), False),
  ('mars_muon-exact', lambda: so.mars_muon(0.1, approx=False), True),
  (
    'mars_muon-per-tensor',
    lambda: so.mars_muon(0.1, per_tensor_clip=True, consistent_rms=None),
    False,
  ),
  ('mars_shampoo', lambda: so.mars_shampoo(0.1), False),
  ('mars_shampoo-exact', lambda: so.mars_shampoo(0.1, approx=False), True),
  ('recursive_correction', lambda: so.recursive_correction(0.9), True),
  ('corrected_momentum', lambda: so.corrected_momentum(0.9, 0.1), False),
  ('relaxed_clip', lambda: so.relaxed_clip(1.0, 2.0), False),
  ('clip_by_leaf_norm', lambda: so.clip_by_leaf_norm(1.0), False),
  (
    'keep_prev_params',
    lambda: optax.chain(so.keep_prev_params(), so.storm(0.1, 0.9, c0=1.0)),
    True,
  ),
]


def _steps(tx, params, jit, needs_prev):
  """Three updates with varying gradients (and prev_grads where taken)."""
  update = jax.jit(tx.update) if jit else tx.update
  state = tx.init(params)
  out = []
  for k in range(3):
    grads = jax.tree.map(lambda p, k=k: (k + 1.0) * p - 0.5 * k, params)
    extra = {}
    if needs_prev:
      extra['prev_grads'] = jax.tree.map(lambda g: 0.9 * g + 0.1, grads)
    updates, state = update(grads, state, params, **extra)
    out.append(updates)
    params = optax.apply_updates(params, updates)
  return out


@pytest.mark.parametrize('name, factory, needs_prev', ZERO_SIZE)
@pytest.mark.parametrize('jit', [False, True])
def test_an_empty_leaf_passes_through_and_leaves_the_others_unchanged(
  name, factory, needs_prev, jit
):
  del name
  full = {
    'w': jnp.arange(6.0).reshape(2, 3) / 7 - 0.3,
    'b': jnp.array([0.5, -1.0, 0.25]),
  }
  with_empty = {**full, **EMPTY}
  got = _steps(factory(), with_empty, jit, needs_prev)
  want = _steps(factory(), full, jit, needs_prev)
  for g, w in zip(got, want):
    for key, leaf in EMPTY.items():
      assert g[key].shape == leaf.shape and g[key].dtype == leaf.dtype
    for key in full:
      np.testing.assert_allclose(g[key], w[key], rtol=1e-6, atol=1e-7)


def test_the_norm_of_empty_leaves_is_zero():
  for norm in (so.global_norm, jax.jit(so.global_norm)):
    assert float(norm(EMPTY)) == 0.0
    assert float(norm({'e': jnp.zeros((0,), jnp.bfloat16)})) == 0.0
    np.testing.assert_allclose(
      float(norm({**EMPTY, 'a': jnp.array([3e30, 4e30])})), 5e30, rtol=1e-6
    )


# --------------------------------------------------------------------------
# 7. Integer params given to the clips
# --------------------------------------------------------------------------


@pytest.mark.parametrize('dtype', [jnp.int32, jnp.uint8, jnp.bool_])
@pytest.mark.parametrize(
  'tx', [so.clip_by_leaf_norm(1.0), so.relaxed_clip(1.0)], ids=['leaf', 'rel']
)
def test_the_clips_refuse_integer_params_naming_the_leaf(tx, dtype):
  params = {'a': jnp.ones(2), 'b': {'k': jnp.ones(3, dtype)}}
  with pytest.raises(TypeError, match=r"params\['b'\]\['k'\] of dtype"):
    tx.init(params)


# --------------------------------------------------------------------------
# 8. Extreme magnitudes
# --------------------------------------------------------------------------

DTYPES = ['float16', 'bfloat16', 'float32', 'float64']


def _dtype_context(dtype):
  return jax.enable_x64(dtype == 'float64')


def _flush(x, dtype):
  """XLA on CPU flushes float32 denormals (bfloat16's too, computed in
  float32) to 0."""
  if dtype in ('bfloat16', 'float32'):
    return np.where(np.abs(x) < np.finfo(np.float32).tiny, 0.0, x)
  return x


def _leaf(values, shape, scale, dtype):
  n = math.prod(shape)
  x = np.resize(np.asarray(values, np.float64), n).reshape(shape) * scale
  return jnp.asarray(x, dtype)


magnitude_cases = dict(
  dtype=st.sampled_from(DTYPES),
  # 10**log10_scale times numbers in [-1, 1]: from 1e-38 to 3e38 (capped at
  # the dtype's largest number).
  log10_scale=st.floats(-38.0, 38.5),
  values=st.lists(
    st.one_of(st.just(0.0), st.floats(-1.0, 1.0)), min_size=1, max_size=6
  ),
  shape=st.sampled_from([(3,), (2, 3), (0,), (3, 0), (2, 0, 2)]),
)


EDGES = [
  ('float32', 37.0, [0.6, -0.8, 0.0], (3,)),
  ('float32', 38.5, [1.0, -1.0, 0.5], (2, 3)),
  ('float32', 30.0, [0.3, 0.4], (3, 0)),
  ('bfloat16', 38.0, [0.9, 0.0, -0.2], (3,)),
  ('float32', -38.0, [1.0, 0.5], (3,)),
  ('float16', 4.8, [1.0, -0.7, 0.0], (2, 2)),
  ('float16', 0.0, [1.0, 0.001, 0.0], (3,)),  # (1 - b2) c^2 underflows
  ('float64', 38.5, [1.0, -1.0, 0.0], (3,)),
  ('float32', 0.0, [1.175494351e-38], (3,)),  # (1 - b1) c flushed to 0
  ('bfloat16', 0.0, [1.175494351e-38], (3,)),
]


def edges(test):
  """The magnitudes where the old code failed, always among the examples."""
  for dtype, log10_scale, values, shape in EDGES:
    test = example(
      dtype=dtype, log10_scale=log10_scale, values=values, shape=shape
    )(test)
  return test


def _scale(log10_scale, dtype):
  top = float(jnp.finfo(dtype).max)
  return min(10.0**log10_scale, top)


@settings(max_examples=40, deadline=None)
@given(**magnitude_cases)
@edges
def test_the_clipped_step_is_right_at_every_magnitude(
  dtype, log10_scale, values, shape
):
  """relaxed_clip, spider's step (lean too) and clip_by_leaf_norm against
  float64: finite, the same eager and jitted, never a silent zero step."""
  with _dtype_context(dtype):
    scale = _scale(log10_scale, dtype)
    tree = {
      'a': _leaf(values, shape, scale, dtype),
      'b': _leaf(values[::-1], (2,), scale / 3, dtype),
    }
    x = {k: _flush(np.asarray(v, np.float64), dtype) for k, v in tree.items()}
    norm = math.sqrt(sum(float(np.sum(v**2)) for v in x.values()))
    factor = 1.0 if norm == 0 else min(1.0, 1.0 / norm, 2.0 / norm / norm)
    tiny = float(jnp.finfo(dtype).tiny)
    rtol = 1e-5 if dtype in ('float32', 'float64') else 2e-2
    txs = [(so.relaxed_clip(1.0, 2.0), 1), (so.spider(1.0, 1.0, 2.0), -1)]
    if dtype in ('float32', 'float64'):  # (lean refuses 16-bit params)
      txs.append((so.spider(1.0, 1.0, 2.0, lean=True), -1))
    for tx, sign in txs:
      eager = first_update(tx, tree, tree)
      jitted = first_update(tx, tree, tree, jit=True)
      for key, want in x.items():
        e, j = (
          np.asarray(eager[key], np.float64),
          np.asarray(jitted[key], np.float64),
        )
        assert eager[key].dtype == tree[key].dtype
        assert np.all(np.isfinite(e)), e
        np.testing.assert_allclose(e, j, rtol=rtol, atol=tiny)
        np.testing.assert_allclose(
          e, sign * want * factor, rtol=rtol, atol=4 * tiny
        )
    # Per leaf.
    tx = so.clip_by_leaf_norm(1.0)
    for jit in (False, True):
      out = first_update(tx, tree, tree, jit=jit)
      for key, want in x.items():
        n = float(np.linalg.norm(want))
        f = 1.0 if n <= 1.0 else 1.0 / n
        got = np.asarray(out[key], np.float64)
        np.testing.assert_allclose(got, want * f, rtol=rtol, atol=4 * tiny)


@settings(max_examples=30, deadline=None)
@given(**magnitude_cases)
@edges
def test_global_norm_at_every_magnitude_and_dtype(
  dtype, log10_scale, values, shape
):
  with _dtype_context(dtype):
    scale = _scale(log10_scale, dtype)
    tree = {'a': _leaf(values, shape, scale, dtype)}
    want = float(
      np.linalg.norm(_flush(np.asarray(tree['a'], np.float64), dtype))
    )
    rtol = 1e-5 if dtype in ('float32', 'float64') else 1e-2
    top = float(jnp.finfo(jnp.promote_types(dtype, jnp.float32)).max)
    for norm in (so.global_norm, jax.jit(so.global_norm)):
      got = float(norm(tree))
      if want > top * 1.001:  # beyond the range of the norm's dtype
        assert got == math.inf
      elif want < top * 0.999:
        np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-300)


# (name, factory, growth of the corrected gradient on the first step, the
# float64 reference of the first update from the gradient g).
def _adam_first(c, lr, eps):
  return -lr * c / (np.abs(c) + eps)


def _clipped(tree, max_norm):
  norm = math.sqrt(sum(float(np.sum(v**2)) for v in tree.values()))
  f = 1.0 if norm <= max_norm else max_norm / norm
  return {k: v * f for k, v in tree.items()}


MEMBERS = [
  (
    'mars_adamw',
    lambda: so.mars_adamw(0.1),
    1 + 0.025 * 0.95 / 0.05,
    lambda g: {
      k: _adam_first(v, 0.1, 1e-8)
      for k, v in _clipped(
        {k: v * (1 + 0.025 * 19) for k, v in g.items()}, 1.0
      ).items()
    },
  ),
  (
    'mars_lion',
    lambda: so.mars_lion(0.1),
    1 + 0.025 * 0.95 / 0.05,
    lambda g: {k: -0.1 * np.sign(v) for k, v in g.items()},
  ),
  (
    'storm',
    lambda: so.storm(0.1, 0.9, c0=1.0, approx=True),
    10.0,
    lambda g: {k: -0.1 * v for k, v in _clipped(g, 1.0).items()},
  ),
]


@pytest.mark.parametrize(
  'name, factory, growth, reference', MEMBERS, ids=[m[0] for m in MEMBERS]
)
@settings(max_examples=25, deadline=None)
@given(**magnitude_cases)
@edges
def test_mars_and_storm_at_every_magnitude_step_right_or_say_what_overflowed(
  name, factory, growth, reference, dtype, log10_scale, values, shape
):
  """Zero gradient entries included: no NaN (float16's eps of 1e-8 is 0)."""
  del name
  with _dtype_context(dtype):
    scale = _scale(log10_scale, dtype)
    grads = {
      'a': _leaf(values, shape, scale, dtype),
      'b': _leaf(values[::-1], (2,), scale / 3, dtype),
    }
    params = jax.tree.map(jnp.ones_like, grads)
    g = {k: _flush(np.asarray(v, np.float64), dtype) for k, v in grads.items()}
    largest = max(
      (float(np.max(np.abs(v))) for v in g.values() if v.size), default=0.0
    )
    top = float(jnp.finfo(dtype).max)
    tx = factory()
    results = [verdict(first_update, tx, grads, params, jit=j) for j in (0, 1)]
    if largest * growth > top * 1.01:
      for error in results:
        assert error is not None and 'exceeds the range' in error, error
      return
    if largest * growth > top * 0.99:
      return  # at the edge either verdict is right
    assert results == [None, None], results
    eager = first_update(tx, grads, params)
    jitted = first_update(tx, grads, params, jit=True)
    want = reference(g)
    rtol = 1e-4 if dtype in ('float32', 'float64') else 3e-2
    for key in g:
      e = np.asarray(eager[key], np.float64)
      assert np.all(np.isfinite(e)), e
      np.testing.assert_allclose(
        e, np.asarray(jitted[key], np.float64), rtol=rtol, atol=1e-6
      )
      np.testing.assert_allclose(e, want[key], rtol=rtol, atol=2e-3)


SPIDERS = {
  'plain': lambda: so.spider(1.0, c0=1.0),
  'unclipped': lambda: so.spider(1.0),
  'diagnostics': lambda: so.spider(1.0, c0=1.0, diagnostics=True),
  'auto-clip': lambda: so.spider(1.0, epsilon=0.1),
  'lean': lambda: so.spider(1.0, c0=1.0, lean=True),
}


@pytest.mark.parametrize('name', SPIDERS)
@pytest.mark.parametrize('jit', [False, True])
def test_spider_says_its_estimator_overflowed_instead_of_nan(name, jit):
  """v + g - g' of finite float32 entries near 3e38 is inf: an error that
  names the estimator, eager and jitted; a finite step just below."""
  tx = SPIDERS[name]()
  update = jax.jit(tx.update) if jit else tx.update
  params = {'w': jnp.ones(3)}
  g = {'w': jnp.array([3e38, 1.0, 0.0])}
  updates, state = update(g, tx.init(params), params)  # an anchor: v = g
  params = optax.apply_updates(params, updates)
  error = verdict(
    update, g, state, params, prev_grads={'w': jnp.array([-3e38, 1, 0])}
  )
  assert error is not None and 'estimator v_k' in error, error
  assert 'exceeds the range of float32' in error, error
  # v + g - g' = 3e38 + 0: a finite step.
  updates, _ = update(g, state, params, prev_grads=g)
  assert bool(jnp.all(jnp.isfinite(updates['w'])))


@pytest.mark.parametrize('name', SPIDERS)
@pytest.mark.parametrize('jit', [False, True])
def test_an_estimator_poisoned_by_nan_is_not_called_an_overflow(name, jit):
  """optax.apply_if_finite does not see prev_grads: a NaN one enters v, and
  the next steps' v stays NaN with finite gradients. That is NaN input, not
  an overflow of finite gradients: it passes as NaN, as in optax."""
  tx = SPIDERS[name]()
  update = jax.jit(tx.update) if jit else tx.update
  params = {'w': jnp.ones(3)}
  g = {'w': jnp.array([1.0, 0.5, 0.0])}
  _, state = update(g, tx.init(params), params)
  _, state = update(g, state, params, prev_grads={'w': g['w'] * jnp.nan})
  assert verdict(update, g, state, params, prev_grads=g) is None
  updates, _ = update(g, state, params, prev_grads=g)
  assert not bool(jnp.any(jnp.isfinite(updates['w'])))


@pytest.mark.parametrize('jit', [False, True])
def test_the_lean_step_and_rebuilt_point_are_right_near_float32s_top(jit):
  """s = lr c0 / |v| is a denormal from |v| = 8.5e37 on: the step and
  x_{k-1} are computed without it, against float64."""
  tx = so.spider(0.5, c0=1.0, lean=True)
  update = jax.jit(tx.update) if jit else tx.update
  params = {'w': jnp.array([1.0, 2.0, 3.0]), 'b': jnp.array([-1.0])}
  g = {'w': jnp.array([2e38, -1e38, 0.0]), 'b': jnp.array([1e38])}
  updates, state = update(g, tx.init(params), params)
  flat = np.concatenate([np.asarray(g[k], np.float64) for k in ('w', 'b')])
  for key in g:
    want = -0.5 * np.asarray(g[key], np.float64) / np.linalg.norm(flat)
    np.testing.assert_allclose(updates[key], want, rtol=1e-6, atol=1e-30)
  new = optax.apply_updates(params, updates)
  prev = so.prev_params(state, new)
  for key in params:
    np.testing.assert_allclose(prev[key], params[key], rtol=1e-6, atol=1e-6)


ADAMS = {
  'mars_adamw': lambda: so.mars_adamw(0.1, max_norm=None),
  'mars_adamw-1d': lambda: so.mars_adamw(0.1, adamw_1d=True),
  'mars_muon-1d': lambda: so.mars_muon(0.1, max_norm=None),
  'scale_by_adam': lambda: so.muon.scale_by_adam(0.9, 0.999, 1e-8),
  # An injected max_norm is traced: the clip bounds nothing known.
  'mars_adamw-injected-max-norm': lambda: optax.inject_hyperparams(
    so.mars_adamw
  )(learning_rate=0.1, max_norm=1e30),
  # A bound whose square does not fit float32 leaves the check in.
  'scale_by_adam-loose-bound': lambda: so.muon.scale_by_adam(
    0.9, 0.999, 1e-8, input_norm_bound=1e20
  ),
}


@pytest.mark.parametrize('name', ADAMS)
@pytest.mark.parametrize('jit', [False, True])
def test_adam_says_its_second_moment_overflowed_instead_of_a_zero_step(
  name, jit
):
  """(1 - b2) g^2 of a finite float32 gradient from about 1.8e19 (raw, or
  corrected and not clipped) is inf and the step m / sqrt(v) a silent 0:
  an error; the right step, -lr sign(g) (or Adam's ratio 1), just below."""
  params = {'b': jnp.ones(3)}  # 1-D: the AdamW leaves of the fallbacks
  for value, overflows in ((1e17, False), (1e21, True)):
    g = {'b': jnp.array([value, -1.0, 0.0])}
    tx = ADAMS[name]()
    update = jax.jit(tx.update) if jit else tx.update
    error = verdict(update, g, tx.init(params), params)
    if overflows:
      assert error is not None and 'second moment' in error, error
    else:
      assert error is None, error
      updates, _ = update(g, tx.init(params), params)
      # (scale_by_adam: no lr, no sign)
      want = 1.0 if name.startswith('scale_by_adam') else -0.1
      np.testing.assert_allclose(updates['b'][0], want, rtol=1e-4)


OVERFLOWS = {
  # (builder, the second step's grads and prev_grads, after a first step).
  'spider': (lambda: so.spider(1.0, c0=1.0), 3e38, -3e38),
  'spider-lean': (lambda: so.spider(1.0, c0=1.0, lean=True), 3e38, -3e38),
  'storm': (lambda: so.storm(0.1, 0.9, c0=1.0), 3e38, -3e38),
  'mars_adamw': (lambda: so.mars_adamw(0.1, approx=False), 3e38, -3e38),
  'adam-square': (
    lambda: so.mars_adamw(0.1, max_norm=None, approx=False),
    1e21,
    1e21,
  ),
}


@pytest.mark.parametrize('name', OVERFLOWS)
def test_apply_if_finite_skips_and_counts_what_would_raise(name):
  """Inside so.apply_if_finite an overflow (or Adam's silent zero step) is a
  non-finite step: skipped and counted, the run goes on."""
  build, g, g_prime = OVERFLOWS[name]
  tx = so.apply_if_finite(build(), max_consecutive_errors=3)
  params = {'w': jnp.ones(3)}
  state = tx.init(params)
  small = {'w': jnp.array([1.0, 0.5, 0.0])}
  _, state = tx.update(small, state, params, prev_grads=small)
  for jit in (False, True):
    update = jax.jit(tx.update) if jit else tx.update
    updates, after = update(
      {'w': jnp.array([g, 1.0, 0.0])},
      state,
      params,
      prev_grads={'w': jnp.array([g_prime, 1.0, 0.0])},
    )
    assert not bool(after.last_finite)
    assert int(after.total_notfinite) == 1
    np.testing.assert_array_equal(updates['w'], 0.0)
    chex.assert_trees_all_equal(after.inner_state, state.inner_state)


@pytest.mark.parametrize(
  'build',
  [
    lambda: so.mars_shampoo(0.1, eps=0.0),
    lambda: so.mars_muon(0.1, ns_eps=0.0),
    lambda: so.mars_muon(0.1, ns_eps=0.0, max_norm=None),
    lambda: so.muon.orthogonalize(eps=0.0),
  ],
)
@pytest.mark.parametrize('dtype', ['float32', 'float16'])
def test_a_zero_matrix_orthogonalises_to_zero_even_with_eps_zero(build, dtype):
  """0 / (0 + eps) is 0 / 0 with eps = 0 (and float16's eps of 1e-7 is a
  denormal): a frozen layer's zero gradient gives a zero step."""
  params = {'w': jnp.ones((2, 3), dtype), 'v': jnp.ones((3, 2), dtype)}
  grads = {'w': jnp.zeros((2, 3), dtype), 'v': jnp.eye(3, 2, dtype=dtype)}
  for jit in (False, True):
    updates = first_update(build(), grads, params, jit=jit)
    np.testing.assert_array_equal(np.asarray(updates['w']), 0.0)
    assert bool(jnp.all(jnp.isfinite(updates['v'])))
    assert float(jnp.max(jnp.abs(updates['v']))) > 0
