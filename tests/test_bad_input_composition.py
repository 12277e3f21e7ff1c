"""Bad input, round 2: masks, composition mistakes, wrappers under
``optax.inject_hyperparams``, scalar params and ambiguous readers.

Each case asserts the verdict the README's "What happens with bad input"
table states: an error naming the argument or leaf and saying what to do,
the same eager and under ``jax.jit``, or the correct result.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import spider_optax as so
from verdicts import verdict

PARAMS = {'w': jnp.array([1.0, -2.0, 3.0]), 'b': jnp.array([0.5, 0.25])}
GRADS = jax.tree.map(lambda x: 0.1 * x + 0.01, PARAMS)


def both(fn, *args):
  """The verdicts of ``fn(*args)`` eager and under jit (args traced)."""
  return verdict(fn, *args), verdict(jax.jit(fn), *args)


# --------------------------------------------------------------- masks ---

# Every public entry point that takes a mask, as (name, tx of a mask).
MASKED = [
  (
    'recursive_correction',
    lambda mask: so.recursive_correction(0.9, approx=True, mask=mask),
  ),
  # The weight-decay mask of the MARS members (optax.adamw's mask=).
  ('mars_adamw', lambda mask: so.mars_adamw(0.1, weight_decay=0.5, mask=mask)),
  (
    'mars_adamw_1d',
    lambda mask: so.mars_adamw(0.1, weight_decay=0.5, mask=mask, adamw_1d=True),
  ),
  ('mars_lion', lambda mask: so.mars_lion(0.1, weight_decay=0.5, mask=mask)),
  ('mars_muon', lambda mask: so.mars_muon(0.1, weight_decay=0.5, mask=mask)),
]


def _update(tx, grads=GRADS, params=PARAMS):
  return tx.update(grads, tx.init(params), params)[0]


BAD_MASKS = [
  ({'w': True}, r"mask has no entry for params\['b'\]"),
  ({'w': True, 'b': False, 'z': True}, r"mask\['z'\] has no params leaf"),
  (
    {'w': 'decay', 'b': 'none'},
    r"mask\['b'\] is the string 'none'.*"
    'optax.partition',
  ),
  (
    {'w': np.array([True, False, True]), 'b': True},
    r"mask\['w'\] is a bool array of shape \(3,\)",
  ),
  ({'w': 1, 'b': True}, r"mask\['w'\] is 1 of type int"),
  ({'w': None, 'b': True}, r"mask has no entry for params\['w'\]"),
  (
    lambda p: jax.tree.map(lambda _: jnp.bool_(True), p),
    r"mask\['b'\] is a JAX array, which is traced under jax.jit",
  ),
]


@pytest.mark.parametrize('name,make', MASKED, ids=[m[0] for m in MASKED])
@pytest.mark.parametrize('mask,message', BAD_MASKS)
def test_bad_masks_are_refused_naming_the_leaf(name, make, mask, message):
  tx = make(mask)
  eager, jitted = both(lambda g: _update(tx, g), GRADS)
  assert eager is not None and jitted is not None
  assert re.search(message, eager), eager
  assert re.search(message, jitted), jitted


@pytest.mark.parametrize('name,make', MASKED, ids=[m[0] for m in MASKED])
def test_masks_mean_what_optax_masked_means(name, make):
  """A prefix mask, NumPy bools and a callable of shapes give the update of
  the same mask as a full tree of Python bools: False leaves untouched."""
  params = {'w': {'a': jnp.ones(2), 'c': jnp.ones(1)}, 'b': jnp.ones(3)}
  grads = jax.tree.map(lambda x: 0.3 * x, params)
  full = {'w': {'a': True, 'c': True}, 'b': False}
  want = jax.jit(lambda g: _update(make(full), g, params))(grads)
  for mask in (
    {'w': True, 'b': False},
    {'w': np.bool_(True), 'b': np.bool_(False)},
    lambda p: {'w': jax.tree.map(lambda x: True, p['w']), 'b': False},
  ):
    for run in (lambda f: f, jax.jit):
      got = run(lambda g, mask=mask: _update(make(mask), g, params))(grads)
      jax.tree.map(np.testing.assert_array_equal, got, want)
  if name == 'recursive_correction':  # False: the gradient passes as it is
    np.testing.assert_array_equal(want['b'], grads['b'])


# ------------------------------------------------- composition mistakes ---


def _lean_loop(tx, steps=3):
  params, state = PARAMS, tx.init(PARAMS)

  @jax.jit
  def step(params, state):
    prev = so.prev_params(state, params)
    grads, prev_grads = (
      jax.tree.map(lambda x: 0.1 * x, t) for t in (params, prev)
    )
    updates, state = tx.update(grads, state, params, prev_grads=prev_grads)
    return optax.apply_updates(params, updates), state

  for _ in range(steps):
    params, state = step(params, state)
  return params


LEAN = so.spider(0.1, c0=1.0, lean=True)
IN_GROUPS = {
  'masked': optax.masked(LEAN, {'w': True, 'b': False}),
  'partition': optax.partition(
    {'a': LEAN, 'z': optax.set_to_zero()}, {'w': 'a', 'b': 'z'}
  ),
}


@pytest.mark.parametrize('where', list(IN_GROUPS))
def test_lean_inside_a_partition_says_what_to_do(where):
  message = verdict(_lean_loop, IN_GROUPS[where])
  assert 'so.spider(..., lean=True) sits inside optax.masked' in message
  assert 'so.keep_prev_params()' in message and 'lean=False' in message


@pytest.mark.parametrize('where', list(IN_GROUPS))
def test_lean_inside_a_partition_with_keep_prev_params_equals_not_lean(where):
  """With so.keep_prev_params() outside, the lean group runs, and the run
  equals the same chain with lean=False."""
  got = _lean_loop(optax.chain(so.keep_prev_params(), IN_GROUPS[where]))
  plain = so.spider(0.1, c0=1.0)
  group = {
    'masked': optax.masked(plain, {'w': True, 'b': False}),
    'partition': optax.partition(
      {'a': plain, 'z': optax.set_to_zero()}, {'w': 'a', 'b': 'z'}
    ),
  }[where]
  want = _lean_loop(optax.chain(so.keep_prev_params(), group))
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, want
  )


def test_lean_inside_apply_if_finite_skips_and_resumes():
  """A skipped step (NaN gradients) keeps the lean state; the next step
  rebuilds x_{k-1} from the unchanged params, as without the skip."""
  tx = so.apply_if_finite(so.spider(0.1, c0=1.0, lean=True), 3)

  @jax.jit
  def step(params, state, scale):
    prev = so.prev_params(state, params)
    grads = jax.tree.map(lambda x: scale * (0.1 * x + 0.01), params)
    prev_grads = jax.tree.map(lambda x: 0.1 * x + 0.01, prev)
    updates, state = tx.update(grads, state, params, prev_grads=prev_grads)
    return optax.apply_updates(params, updates), state

  def run(scales):
    params, state = PARAMS, tx.init(PARAMS)
    for s in scales:
      params, state = step(params, state, s)
    return params, state

  skipped, state = run([1.0, jnp.nan, 1.0, 1.0])
  clean, _ = run([1.0, 1.0, 1.0])
  assert int(state.total_notfinite) == 1
  jax.tree.map(np.testing.assert_array_equal, skipped, clean)


@pytest.mark.parametrize(
  'loss,has_aux,message',
  [
    (
      lambda p: jnp.sum(p['w'] ** 2),
      True,
      'has_aux=True needs loss_fn to '
      r'return a pair \(loss, aux\), got an array of shape \(\)',
    ),
    (
      lambda p: (jnp.sum(p['w'] ** 2), 1.0),
      False,
      'loss_fn returned a tuple '
      r'of 2 where a scalar loss is needed. If it returns \(loss, aux\), pass '
      'has_aux=True',
    ),
    (lambda p: (jnp.sum(p['w']), 1.0, 2.0), True, 'got a tuple of 3'),
  ],
)
def test_has_aux_that_does_not_fit_the_loss(loss, has_aux, message):
  for fn in (so.paired_grad, so.paired_value_and_grad):
    eager, jitted = both(fn(loss, has_aux=has_aux), PARAMS, PARAMS)
    assert re.search(message, eager), eager
    assert re.search(message, jitted), jitted


@given(k=st.integers(2, 6), b=st.integers(2, 24))
@settings(max_examples=25, deadline=None)
def test_split_batch_with_microbatches_says_which_to_drop(k, b):
  """Each half is accumulated over k micro-batches: k must divide both
  halves, and the message says so (not a half's size as if it were the
  batch's)."""
  loss = lambda p, x: jnp.sum(p['w'] * jnp.mean(x, 0))
  fn = so.paired_grad(loss, microbatches=k, split_batch=True)
  message = verdict(fn, PARAMS, PARAMS, jnp.ones((b, 3)))
  halves_divide = (b // 2) % k == 0 and (b - b // 2) % k == 0
  if halves_divide:
    assert message is None
  else:
    assert f'split_batch=True with microbatches={k}' in message
    assert f'batch of {b} samples' in message
    assert 'drop split_batch=True' in message


def _nnx():
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
  return model, jnp.ones((4, 3)), lambda m, x: jnp.mean(m(x) ** 2)


def test_flax_helpers_say_when_model_and_optimizer_are_swapped():
  model, x, loss = _nnx()
  opt = nnx.Optimizer(model, so.spider(0.1, c0=1.0), wrt=nnx.Param)
  for call in (
    lambda: so.flax.paired_grad(loss)(opt, model, x),
    lambda: so.flax.paired_value_and_grad(loss)(opt, model, x),
    lambda: so.flax.prev_model(opt, model),
    lambda: so.flax.prev_params(model, opt),
  ):
    with pytest.raises(TypeError, match='swapped'):
      call()


def test_flax_helpers_on_an_optimizer_without_paired_state():
  model, x, loss = _nnx()
  opt = nnx.Optimizer(model, optax.adam(0.1), wrt=nnx.Param)
  for call in (
    lambda: so.flax.paired_grad(loss)(model, opt, x),
    lambda: so.flax.prev_params(opt),
  ):
    with pytest.raises(
      ValueError, match='This nnx.Optimizer keeps no previous'
    ):
      call()


def test_flax_has_aux_that_does_not_fit():
  model, x, loss = _nnx()
  opt = nnx.Optimizer(model, so.spider(0.1, c0=1.0), wrt=nnx.Param)
  with pytest.raises(TypeError, match='has_aux=True needs loss_fn to return'):
    so.flax.paired_grad(loss, has_aux=True)(model, opt, x)


# ----------------------------------- wrappers under inject_hyperparams ---


def test_apply_if_finite_under_inject_hyperparams_as_optax_takes_it():
  """optax.apply_if_finite takes an injected max_consecutive_errors (an
  int32 array); so does ours, and checks it when the step runs."""
  params = {'w': jnp.array([1.0])}
  grads = {'w': jnp.array([jnp.nan])}
  for errors in (0, 2):
    ours = optax.inject_hyperparams(so.apply_if_finite)(
      optax.sgd(0.1), max_consecutive_errors=errors
    )
    theirs = optax.inject_hyperparams(optax.apply_if_finite)(
      optax.sgd(0.1), max_consecutive_errors=errors
    )
    for tx in (ours, theirs):
      state = tx.init(params)
      for _ in range(2):
        updates, state = jax.jit(tx.update)(grads, state, params)
      gave_up = bool(jnp.isnan(updates['w'][0]))
      assert gave_up == (errors == 0)
  bad = optax.inject_hyperparams(so.apply_if_finite)(
    optax.sgd(0.1), max_consecutive_errors=2
  )
  state = bad.init(params)
  state.hyperparams['max_consecutive_errors'] = jnp.asarray(-1)
  message = verdict(jax.jit(bad.update), grads, state, params)
  assert 'max_consecutive_errors must be an int >= 0' in message


@pytest.mark.parametrize('bad', [1.5, True, 'three', np.array([1, 2])])
def test_apply_if_finite_refuses_what_is_not_an_int(bad):
  with pytest.raises(TypeError, match='max_consecutive_errors must be an int'):
    so.apply_if_finite(optax.sgd(0.1), bad)


def test_apply_if_finite_counts_nan_params():
  """NaN params are a non-finite step: counted, and not kept as x_{k-1}."""
  tx = so.apply_if_finite(so.spider(0.1, c0=1.0), 3)
  state = tx.init(PARAMS)
  _, state = tx.update(GRADS, state, PARAMS)
  nan_params = jax.tree.map(lambda x: x.at[0].set(jnp.nan), PARAMS)
  updates, state = jax.jit(tx.update)(
    GRADS, state, nan_params, prev_grads=GRADS
  )
  assert int(state.total_notfinite) == 1
  jax.tree.map(np.testing.assert_array_equal, so.prev_params(state), PARAMS)
  assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(updates))


# ------------------------------------------ scalar params, readers ---

SCALAR_PARAMS = {'w': 1.5, 'v': jnp.array([1.0, -1.0])}
SCALAR_GRADS = {'w': 0.5, 'v': jnp.array([0.25, 0.5])}
# (name, tx, whether update takes prev_grads)
SCALAR_CASES = [
  ('keep_prev_params', so.keep_prev_params(), False),
  ('corrected_momentum', so.corrected_momentum(0.9, 0.1), False),
  ('recursive_correction', so.recursive_correction(0.9, approx=True), False),
  ('recursive_correction_exact', so.recursive_correction(0.9), True),
  ('apply_if_finite', so.apply_if_finite(optax.sgd(0.1), 2), False),
  ('spider', so.spider(0.1, c0=1.0), True),
  ('spider_lean', so.spider(0.1, c0=1.0, lean=True), True),
  ('spider_estimator', so.spider_estimator(), True),
  ('storm', so.storm(0.1, 0.9), True),
  ('mars_adamw', so.mars_adamw(0.1), False),
  ('mars_adamw_exact', so.mars_adamw(0.1, approx=False), True),
  ('mars_lion', so.mars_lion(0.1), False),
  ('mars_muon', so.mars_muon(0.1), False),
  ('clip_by_leaf_norm', so.clip_by_leaf_norm(1.0), False),
  ('relaxed_clip', so.relaxed_clip(1.0), False),
]


@pytest.mark.parametrize(
  'name,tx,paired', SCALAR_CASES, ids=[c[0] for c in SCALAR_CASES]
)
def test_python_float_params_as_optax_takes_them(name, tx, paired):
  """A Python float leaf gives the update of the same leaf as a scalar
  array, eager and under jit."""
  as_array = jax.tree.map(jnp.asarray, SCALAR_PARAMS)
  grads = jax.tree.map(jnp.asarray, SCALAR_GRADS)
  extra = lambda g: {'prev_grads': g} if paired else {}

  def two_steps(params, grads_in):
    state = tx.init(params)
    u, state = tx.update(grads_in, state, params, **extra(grads_in))
    params = optax.apply_updates(params, u)
    return tx.update(grads_in, state, params, **extra(grads_in))[0]

  want = two_steps(as_array, grads)
  got = two_steps(SCALAR_PARAMS, SCALAR_GRADS)
  jax.tree.map(np.testing.assert_allclose, got, want)


def test_prev_params_refuses_two_estimators_of_one_leaf():
  state = (
    so.spider(0.1).init(PARAMS),
    so.storm(0.1, 0.9).init(PARAMS),
  )
  with pytest.raises(
    ValueError,
    match=r'2 paired-gradient estimators that '
    r"each keep the previous params of params\['b'\]",
  ):
    so.prev_params(state)
  # Complementary groups, and so.keep_prev_params over them, are one model.
  tx = optax.chain(
    so.keep_prev_params(),
    optax.partition(
      {'a': so.spider(0.1), 'z': so.spider(0.1)}, {'w': 'a', 'b': 'z'}
    ),
  )
  got = so.prev_params(tx.init(PARAMS))
  jax.tree.map(np.testing.assert_array_equal, got, PARAMS)


# (our optimizer, its optax counterpart in the same configuration)
COUNTERPARTS = [
  ('mars_adamw', so.mars_adamw(0.1), optax.adamw(0.1)),
  ('mars_adamw_exact', so.mars_adamw(0.1, approx=False), optax.adamw(0.1)),
  ('mars_lion', so.mars_lion(0.1), optax.lion(0.1)),
  (
    'storm',
    so.storm(0.1, 0.9),
    optax.chain(
      optax.ema(0.9, debias=False), optax.scale_by_learning_rate(0.1)
    ),
  ),
]


@pytest.mark.parametrize(
  'name,ours,theirs', COUNTERPARTS, ids=[c[0] for c in COUNTERPARTS]
)
def test_tree_get_count_answers_as_on_the_optax_counterpart(name, ours, theirs):
  """The step count read with tree_get is there exactly where it is on the
  optax counterpart, and counts the updates."""
  extra = {'prev_grads': GRADS} if name in ('mars_adamw_exact', 'storm') else {}
  count = lambda s: optax.tree_utils.tree_get(s, 'count', None)
  for tx, kw in ((ours, extra), (theirs, {})):
    state = tx.init(PARAMS)
    for _ in range(3):
      _, state = tx.update(GRADS, state, PARAMS, **kw)
    if tx is ours:
      got = count(state)
    else:
      want = count(state)
  assert (got is None) == (want is None)
  if want is not None:
    assert int(got) == int(want) == 3


def test_global_norm_of_python_floats():
  assert float(so.global_norm({'w': 3.0, 'v': jnp.array([4.0])})) == 5.0


STATES = {
  'mars_adamw': lambda: so.mars_adamw(0.1),
  'mars_adamw_1d': lambda: so.mars_adamw(0.1, adamw_1d=True),
  'mars_lion': lambda: so.mars_lion(0.1),
  'mars_muon': lambda: so.mars_muon(0.1),
  'spider': lambda: so.spider(0.1, c0=1.0),
  'spider_lean': lambda: so.spider(0.1, c0=1.0, lean=True),
  'storm': lambda: so.storm(0.1, 0.9),
  'storm_approx': lambda: so.storm(0.1, 0.9, approx=True),
}
MATRICES = {'k': jnp.ones((4, 3)), 'b': jnp.zeros(3)}


@pytest.mark.parametrize('made_by', list(STATES))
@pytest.mark.parametrize('used_by', list(STATES))
def test_a_state_of_another_configuration_says_rebuild(made_by, used_by):
  """A state made by one optimizer or configuration, fed to another: an
  error that says to rebuild it (never an AttributeError from inside a
  chain, never a silent run), eager and under jit."""
  if made_by == used_by:
    return
  state = STATES[made_by]().init(MATRICES)
  tx = STATES[used_by]()
  grads = jax.tree.map(lambda x: x + 0.1, MATRICES)
  exact = used_by in ('spider', 'spider_lean', 'storm')
  extra = {'prev_grads': grads} if exact else {}
  for update in (tx.update, jax.jit(tx.update)):
    with pytest.raises(
      (TypeError, ValueError), match=r'rebuild the state with tx.init\(params\)'
    ):
      update(grads, state, MATRICES, **extra)
