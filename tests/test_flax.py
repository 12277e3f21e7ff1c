"""so.flax: NNX and Linen training against the plain-optax functional API.

One architecture three ways: an NNX module, a Linen module and a params dict
with a hand-written forward pass (64 -> 32 tanh -> 10, softmax
cross-entropy), trained on scikit-learn's bundled digits (n = 1797, pixels / 16;
nothing is downloaded) with the finite-sum schedule: a full-gradient anchor
every q = 43 steps and recursive steps on minibatches of 43 drawn with
replacement from a seeded NumPy generator.

The step functions are built once at module scope, so that each is compiled
once (per dtype) for the whole file; the three reference runs are a
module-scoped fixture.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx
from sklearn.datasets import load_digits

import spider_optax as so
import spider_optax.flax as sof

Q = 43  # ceil(sqrt(1797)): anchor period
MINIBATCH = 43  # S2 = q (finite-sum preset)
STEPS = 215  # 5 anchor periods
CHECKPOINTS = (10, 50, 200, STEPS)
HP = dict(learning_rate=1.0, c0=0.1, c1=0.05)  # benchmarks/quickstart.py

_digits = load_digits()
X = jnp.asarray(np.asarray(_digits.data, np.float32) / 16.0)
Y = jnp.asarray(_digits.target, jnp.int32)
N = X.shape[0]


# --------------------------------------------------------------------------
# The model, three ways
# --------------------------------------------------------------------------


class NnxMLP(nnx.Module):
  def __init__(self, rngs, param_dtype=jnp.float32):
    self.hidden = nnx.Linear(64, 32, param_dtype=param_dtype, rngs=rngs)
    self.out = nnx.Linear(32, 10, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x):
    return self.out(jnp.tanh(self.hidden(x)))


class LinenMLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = jnp.tanh(nn.Dense(32, name='hidden')(x))
    return nn.Dense(10, name='out')(h)


LINEN_MODEL = LinenMLP()


def logits_fn(params, x):
  h = jnp.tanh(x @ params['hidden']['kernel'] + params['hidden']['bias'])
  return h @ params['out']['kernel'] + params['out']['bias']


def cross_entropy(logits, y):
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


def loss_fn(params, x, y):
  return cross_entropy(logits_fn(params, x), y)


# Jitted references (eager op-by-op dispatch would compile every primitive).
full_loss = jax.jit(loss_fn)
logits_at = jax.jit(logits_fn)
grad_at = jax.jit(jax.grad(loss_fn))


def nnx_loss(model, x, y):
  return cross_entropy(model(x), y)


def linen_loss(params, x, y):
  return cross_entropy(LINEN_MODEL.apply({'params': params}, x), y)


def nnx_params(model):
  """The model's nnx.Param values as a plain nested dict."""
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def initial_params():
  """LeCun-normal kernels and zero biases (seeded NumPy), as a plain dict.

  All runs start from these weights, copied into the NNX model and used as
  the Linen params (the Linen module names its layers 'hidden' and 'out', so
  this dict is its ``variables['params']``). Drawn with NumPy, not by NNX's
  initialisers, because eager JAX random initialisation compiles op by op
  (seconds on a small CPU).
  """
  rng = np.random.default_rng(0)
  dense = lambda fan_in, fan_out: {
    'kernel': jnp.asarray(
      rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in), jnp.float32
    ),
    'bias': jnp.zeros(fan_out, jnp.float32),
  }
  return {'hidden': dense(64, 32), 'out': dense(32, 10)}


def new_nnx(params, tx, param_dtype=jnp.float32):
  """An NNX model holding a copy of ``params``, and an nnx.Optimizer for it."""
  model = nnx.eval_shape(lambda: NnxMLP(nnx.Rngs(0), param_dtype=param_dtype))
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.copy, params))
  nnx.update(model, state)
  return model, nnx.Optimizer(model, tx, wrt=nnx.Param)


def new_linen(params, tx):
  return sof.TrainState.create(apply_fn=LINEN_MODEL.apply, params=params, tx=tx)


def minibatches(seed=0, count=STEPS):
  """Minibatches of 43 indices drawn with replacement, seeded."""
  rng = np.random.default_rng(seed)
  for _ in range(count):
    idx = rng.integers(0, N, MINIBATCH)
    yield X[idx], Y[idx]


def full_data():
  return itertools.repeat((X, Y))


def leaves_close(got, want, **tolerance):
  np.testing.assert_equal(jax.tree.structure(got), jax.tree.structure(want))
  for (path, g), w in zip(
    jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)
  ):
    np.testing.assert_allclose(
      np.asarray(g, np.float64),
      np.asarray(w, np.float64),
      **tolerance,
      err_msg=jax.tree_util.keystr(path),
    )


def max_abs_diff(a, b):
  return max(
    float(jnp.max(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32))))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )


def estimator_state(opt_state):
  """The SpiderEstimatorState inside any optimizer state (pure arrays)."""
  return nnx.as_pure(so.lookup.estimator_state(opt_state))


# --------------------------------------------------------------------------
# Step functions, built (and so compiled) once
# --------------------------------------------------------------------------

TX = so.spider(**HP)


@jax.jit
def functional_anchor(carry, x, y):
  params, state = carry
  loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
  updates, state = TX.update(grads, state, params)
  return (optax.apply_updates(params, updates), state), loss


@jax.jit
def functional_recursive(carry, x, y):
  params, state = carry
  loss = loss_fn(params, x, y)
  grads, prev_grads = so.paired_grad(loss_fn)(
    params, so.prev_params(state), x, y
  )
  updates, state = TX.update(grads, state, params, prev_grads=prev_grads)
  return (optax.apply_updates(params, updates), state), loss


def functional_loop(carry, anchor_batches, batches, num_steps, start_step=0):
  """The schedule written out by hand, for the functional API."""
  losses = []
  for k in range(start_step, num_steps):
    if k % Q == 0:
      carry, loss = functional_anchor(carry, *next(anchor_batches))
    else:
      carry, loss = functional_recursive(carry, *next(batches))
    losses.append(loss)
  return carry, losses


NNX_STEPS = sof.nnx_steps(nnx_loss)
LINEN_STEPS = sof.linen_steps(linen_loss)


def run_segments(api, carry, checkpoints):
  """Runs to each checkpoint in turn (resuming from the state) and records.

  Returns the final carry, the per-step losses (floats) and, per checkpoint,
  the params and previous params as plain dicts.
  """
  batches, anchors = minibatches(), full_data()
  losses, params, prev = [], {}, {}
  start = 0
  for stop in checkpoints:
    if api == 'functional':
      carry, segment = functional_loop(carry, anchors, batches, stop, start)
      params[stop], prev[stop] = carry[0], so.prev_params(carry[1])
    else:
      steps = NNX_STEPS if api == 'nnx' else LINEN_STEPS
      carry, segment = so.spider_loop(
        *steps, carry, anchors, batches, anchor_period=Q, num_steps=stop
      )
      if api == 'nnx':
        model, optimizer = carry
        params[stop] = nnx_params(model)
        prev[stop] = nnx.to_pure_dict(sof.prev_params(optimizer))
      else:
        params[stop], prev[stop] = carry.params, carry.prev_params
    assert len(segment) == stop - start
    losses += [float(loss) for loss in segment]
    start = stop
  return carry, losses, params, prev


@pytest.fixture(scope='module')
def runs():
  """The same 215 steps from the same initial weights, three ways."""
  p0 = initial_params()
  out = {'initial': p0}
  out['functional'] = run_segments('functional', (p0, TX.init(p0)), CHECKPOINTS)
  out['nnx'] = run_segments('nnx', new_nnx(p0, TX), CHECKPOINTS)
  out['linen'] = run_segments('linen', new_linen(p0, TX), CHECKPOINTS)
  return out


# --------------------------------------------------------------------------
# 1. Training on digits
# --------------------------------------------------------------------------


@pytest.mark.parametrize('api', ['nnx', 'linen'])
def test_training_reduces_the_full_loss(runs, api):
  p0 = runs['initial']
  carry, losses, params, _ = runs[api]
  initial = float(full_loss(p0, X, Y))
  final = float(full_loss(params[STEPS], X, Y))
  if api == 'nnx':  # the model itself, not only our copy of its params
    assert float(nnx_loss(carry[0], X, Y)) == pytest.approx(final, rel=1e-6)
    assert int(carry[1].step[...]) == STEPS
  else:
    assert float(linen_loss(carry.params, X, Y)) == pytest.approx(
      final, rel=1e-6
    )
    assert int(carry.step) == STEPS
  # Step 0 is an anchor on all the data: its loss is the full initial loss.
  assert losses[0] == pytest.approx(initial, rel=1e-5)
  # A random init of this MLP starts near chance, ln(10) ~ 2.30.
  assert 0.5 * math.log(10) < initial < 1.5 * math.log(10), initial
  # The clipped step moves the weights at most lr * c0 = 0.1 per step, so 215
  # steps (~5 passes' worth of gradient evaluations) are a short run. On CPU
  # it goes 2.30 -> 1.84 (10 steps) -> 0.55 (50) -> 0.120 (200) -> 0.113
  # (215); the quickstart benchmark, with the same hyperparameters, is at
  # ~0.16 after 10 passes. The bar, 0.25, is about a ninth of ln(10) and
  # leaves ~2.2x headroom for other backends, seeds of the float32 rounding
  # and library versions; a run that stalls or diverges, or that only does
  # the first ~30 steps' worth of progress, fails it.
  assert final < 0.25, final


@pytest.mark.parametrize('api', ['functional', 'nnx', 'linen'])
def test_each_step_is_clipped_to_lr_times_c0(runs, api):
  """|x_{k+1} - x_k| = eta_k |v_k| <= lr * c0, checked at the checkpoints."""
  _, _, params, prev = runs[api]
  for stop in CHECKPOINTS:
    step = so.global_norm(jax.tree.map(jnp.subtract, params[stop], prev[stop]))
    assert 0 < float(step) <= HP['learning_rate'] * HP['c0'] * (1 + 1e-5)


# --------------------------------------------------------------------------
# 2. Trajectory equality with the functional API
# --------------------------------------------------------------------------


@pytest.mark.parametrize('api', ['nnx', 'linen'])
def test_trajectory_matches_functional_api(runs, api):
  """Same batches, same initial weights: the same float32 trajectory.

  All three runs do the same float32 arithmetic (the same matmuls on the same
  data, the same vmapped paired gradients, the same optax chain); on CPU they
  agree bit for bit over all 215 steps. Another backend may fuse or reorder
  the NNX/Linen graph differently from the hand-written one, and the
  trajectory amplifies rounding: perturbing the initial weights by 1e-7
  (relative) moves the weights by ~1e-7 at step 10, ~1e-6 at step 50,
  ~3e-6 at 100, ~1e-5 at 150 and 3e-5 to 7e-5 at 200-215 (measured on CPU,
  four perturbations). So the tolerance is atol = 1e-5 up to step 50 (10x
  that growth; one wrong step, e.g. an anchor at the wrong step or the wrong
  x_{k-1}, moves some weights by ~1e-2) and 1e-3 at steps 200 and 215
  (>10x); the tight early checkpoints are the ones that catch logic errors,
  the late ones catch drift. Likewise for the per-step losses: relative
  differences stay < 4e-7 over the first 50 steps and < 1e-4 over all 215.
  """
  _, want_losses, want, want_prev = runs['functional']
  _, got_losses, got, got_prev = runs[api]
  p0 = runs['initial']
  for stop in CHECKPOINTS:
    assert max_abs_diff(want[stop], p0) > 0.05  # the run moved the weights
    atol = 1e-5 if stop <= 50 else 1e-3
    leaves_close(got[stop], want[stop], rtol=0, atol=atol)
    leaves_close(got_prev[stop], want_prev[stop], rtol=0, atol=atol)
  # The losses the step functions return: at the params before each update,
  # on all the data for anchors and on the minibatch otherwise.
  np.testing.assert_allclose(got_losses[:50], want_losses[:50], rtol=1e-5)
  np.testing.assert_allclose(got_losses, want_losses, rtol=1e-3)


def test_the_checkpoints_differ(runs):
  """Sanity check for the test above: the checkpoints are far apart."""
  _, _, params, _ = runs['functional']
  for a, b in zip(CHECKPOINTS, CHECKPOINTS[1:]):
    assert max_abs_diff(params[a], params[b]) > 1e-3


# --------------------------------------------------------------------------
# 3. prev_params and paired gradients, three ways
# --------------------------------------------------------------------------

FEW_STEPS = 5


def after_a_few_steps():
  """Fresh NNX, Linen and functional runs after FEW_STEPS identical steps."""
  p0 = initial_params()

  def go(api, carry):
    return run_segments(api, carry, (FEW_STEPS,))[0]

  return (
    go('nnx', new_nnx(p0, TX)),
    go('linen', new_linen(p0, TX)),
    go('functional', (p0, TX.init(p0))),
  )


@pytest.fixture
def few():
  return after_a_few_steps()


def test_prev_params_agree(few):
  (model, optimizer), state, (params, opt_state) = few
  want = so.prev_params(opt_state)
  nnx_prev = sof.prev_params(optimizer)
  assert isinstance(nnx_prev, nnx.State)
  leaves_close(nnx.to_pure_dict(nnx_prev), want, rtol=1e-6, atol=1e-7)
  leaves_close(state.prev_params, want, rtol=1e-6, atol=1e-7)
  # so.prev_params also finds the estimator inside the NNX optimizer's state.
  found = nnx.as_pure(so.prev_params(optimizer.opt_state))
  leaves_close(nnx.to_pure_dict(found), want, rtol=1e-6, atol=1e-7)
  # And x_{k-1} is not x_k.
  assert max_abs_diff(params, want) > 1e-3
  leaves_close(nnx_params(model), params, rtol=1e-6, atol=1e-7)


def test_prev_model_is_the_model_at_prev_params(few):
  (model, optimizer), _, (params, opt_state) = few
  before = nnx_params(model)
  prev = sof.prev_model(model, optimizer)
  np.testing.assert_allclose(
    prev(X[:64]),
    logits_at(so.prev_params(opt_state), X[:64]),
    rtol=1e-5,
    atol=1e-6,
  )
  np.testing.assert_allclose(
    model(X[:64]), logits_at(params, X[:64]), rtol=1e-5, atol=1e-6
  )
  leaves_close(nnx_params(model), before, rtol=0, atol=0)  # model untouched
  # The copy's params are its own: writing them leaves the model and the
  # optimizer's x_{k-1} alone.
  prev.hidden.kernel[...] = jnp.zeros_like(prev.hidden.kernel[...])
  leaves_close(nnx_params(model), before, rtol=0, atol=0)
  leaves_close(
    nnx.to_pure_dict(sof.prev_params(optimizer)),
    so.prev_params(opt_state),
    rtol=1e-6,
    atol=1e-7,
  )


class WithBatchNorm(nnx.Module):
  def __init__(self):
    self.linear = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    self.norm = nnx.BatchNorm(2, rngs=nnx.Rngs(0))

  def __call__(self, x):
    return self.norm(self.linear(x))


def test_prev_model_copies_the_other_state():
  model = WithBatchNorm()
  optimizer = nnx.Optimizer(model, so.spider(0.1), wrt=nnx.Param)
  mean = jnp.array(model.norm.mean[...])
  prev = sof.prev_model(model, optimizer)
  prev(jnp.ones((4, 3)))  # training mode: updates prev's running statistics
  assert not np.allclose(prev.norm.mean[...], mean)
  np.testing.assert_array_equal(model.norm.mean[...], mean)


@nnx.jit
def all_paired_grads(model, optimizer, state, params, opt_state, x, y):
  """Every API's paired gradients, vmapped and not, in one compile."""
  return {
    f'{api}_{vectorized}': paired
    for vectorized in (True, False)
    for api, paired in (
      (
        'functional',
        so.paired_grad(loss_fn, vectorized=vectorized)(
          params, so.prev_params(opt_state), x, y
        ),
      ),
      (
        'nnx',
        sof.paired_grad(nnx_loss, vectorized=vectorized)(
          model, optimizer, x, y
        ),
      ),
      (
        'linen',
        so.paired_grad(linen_loss, vectorized=vectorized)(
          state.params, state.prev_params, x, y
        ),
      ),
    )
  }


def test_paired_gradients_agree(few):
  """At x_k and x_{k-1}: each API's paired gradients are jax.grad at each."""
  (model, optimizer), state, (params, opt_state) = few
  x, y = next(minibatches(seed=7))
  want = grad_at(params, x, y), grad_at(so.prev_params(opt_state), x, y)
  assert max_abs_diff(*want) > 1e-4  # the two points' gradients differ
  got = all_paired_grads(model, optimizer, state, params, opt_state, x, y)
  assert len(got) == 6
  for name, pair in got.items():
    if name.startswith('nnx'):
      assert all(isinstance(g, nnx.State) for g in pair), name
      pair = tuple(nnx.to_pure_dict(g) for g in pair)
    for g, w in zip(pair, want):
      leaves_close(g, w, rtol=1e-5, atol=1e-7)


def test_nnx_paired_value_and_grad_with_aux(few):
  """Eagerly (outside nnx.jit), with an auxiliary output."""
  (model, optimizer), _, (params, opt_state) = few
  x, y = next(minibatches(seed=8))

  def loss_with_aux(model, x, y):
    logits = model(x)
    return cross_entropy(logits, y), jnp.mean(jnp.argmax(logits, -1) == y)

  (value, grads), (prev_value, prev_grads) = sof.paired_value_and_grad(
    loss_with_aux, has_aux=True
  )(model, optimizer, x, y)
  prev = so.prev_params(opt_state)
  for (loss, acc), g, p in (
    (value, grads, params),
    (prev_value, prev_grads, prev),
  ):
    np.testing.assert_allclose(loss, full_loss(p, x, y), rtol=1e-5)
    np.testing.assert_allclose(
      acc, jnp.mean(jnp.argmax(logits_at(p, x), -1) == y)
    )
    leaves_close(nnx.to_pure_dict(g), grad_at(p, x, y), rtol=1e-5, atol=1e-7)
  (g_aux, acc), (pg_aux, prev_acc) = sof.paired_grad(
    loss_with_aux, has_aux=True
  )(model, optimizer, x, y)
  assert acc == value[1] and prev_acc == prev_value[1]
  leaves_close(g_aux, grads, rtol=0, atol=0)
  leaves_close(pg_aux, prev_grads, rtol=0, atol=0)


@nnx.jit
def nnx_jitted_recursive_step(model, optimizer, x, y):
  grads, prev_grads = sof.paired_grad(nnx_loss)(model, optimizer, x, y)
  optimizer.update(model, grads, prev_grads=prev_grads)
  return grads, prev_grads


def test_paired_grad_under_nnx_jit_feeds_optimizer_update(few):
  """A hand-written recursive step with a plain nnx.Optimizer and so.spider."""
  (model, optimizer), _, (params, opt_state) = few
  x, y = next(minibatches(seed=9))
  prev = so.prev_params(opt_state)
  want_grads = grad_at(params, x, y), grad_at(prev, x, y)
  (want_params, want_state), _ = functional_recursive((params, opt_state), x, y)
  step = int(optimizer.step[...])

  grads, prev_grads = nnx_jitted_recursive_step(model, optimizer, x, y)
  assert isinstance(grads, nnx.State) and isinstance(prev_grads, nnx.State)
  for g, w in zip((grads, prev_grads), want_grads):
    leaves_close(nnx.to_pure_dict(g), w, rtol=1e-5, atol=1e-7)
  assert int(optimizer.step[...]) == step + 1
  leaves_close(nnx_params(model), want_params, rtol=1e-5, atol=1e-6)
  leaves_close(
    nnx.to_pure_dict(sof.prev_params(optimizer)), params, rtol=1e-6, atol=1e-7
  )  # x_{k-1} is now the old x_k
  got_state = estimator_state(optimizer.opt_state)
  assert int(got_state.steps_since_anchor) == FEW_STEPS  # recursive, not anchor
  leaves_close(
    nnx.to_pure_dict(got_state.estimate),
    estimator_state(want_state).estimate,
    rtol=1e-5,
    atol=1e-7,
  )


# --------------------------------------------------------------------------
# 4. Mixed precision: bfloat16 params, float32 estimator
# --------------------------------------------------------------------------

BF16_STEPS = 3 * Q


def _check_bf16_run(params_before, params_after, opt_state, losses):
  for p in jax.tree.leaves(params_after):
    assert p.dtype == jnp.bfloat16
    assert bool(jnp.all(jnp.isfinite(p)))
  est = estimator_state(opt_state)
  for v in jax.tree.leaves(est.estimate):
    assert v.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(v)))
  for p in jax.tree.leaves(est.prev_params):
    assert p.dtype == jnp.bfloat16
  assert all(math.isfinite(loss) for loss in losses)
  # Full float32 loss of the bf16 weights, at the start and at the end.
  to32 = lambda t: jax.tree.map(lambda a: a.astype(jnp.float32), t)
  initial = float(full_loss(to32(params_before), X, Y))
  final = float(full_loss(to32(params_after), X, Y))
  # On CPU the bf16 runs go from 2.297 to 0.1435 in 129 steps, the float32
  # run to 0.141: bf16 weights cost little here, because a step moves each
  # weight by ~1e-3 to 1e-2, above bf16's spacing (2^-8 relative) for most
  # weights. 0.3 (~2x what both reach, an eighth of the start) fails a run
  # whose bf16 updates are rounded away or that diverges.
  assert final < 0.3, (initial, final)
  # The per-step losses also fall: the mean of the last period's minibatch
  # losses (0.16 on CPU) against the first period's (1.41).
  first, last = np.mean(losses[1:Q]), np.mean(losses[-Q + 1 :])
  assert last < 0.3 * first, (first, last)
  return initial, final


def test_bfloat16_nnx_end_to_end():
  before = jax.tree.map(lambda a: a.astype(jnp.bfloat16), initial_params())
  tx = so.spider(**HP, estimator_dtype=jnp.float32)
  model, optimizer = new_nnx(before, tx, param_dtype=jnp.bfloat16)
  assert model.hidden.kernel[...].dtype == jnp.bfloat16
  (model, optimizer), losses = so.spider_loop(
    *sof.nnx_steps(nnx_loss),
    (model, optimizer),
    full_data(),
    minibatches(),
    anchor_period=Q,
    num_steps=BF16_STEPS,
  )
  assert sof.prev_params(optimizer)['hidden']['kernel'].dtype == jnp.bfloat16
  _check_bf16_run(
    before,
    nnx_params(model),
    optimizer.opt_state,
    [float(loss) for loss in losses],
  )


def test_bfloat16_linen_end_to_end():
  params = jax.tree.map(lambda a: a.astype(jnp.bfloat16), initial_params())
  tx = so.spider(**HP, estimator_dtype=jnp.float32)
  state, losses = so.spider_loop(
    *sof.linen_steps(linen_loss),
    new_linen(params, tx),
    full_data(),
    minibatches(),
    anchor_period=Q,
    num_steps=BF16_STEPS,
  )
  assert int(state.step) == BF16_STEPS
  _check_bf16_run(
    params, state.params, state.opt_state, [float(loss) for loss in losses]
  )


# --------------------------------------------------------------------------
# 5. TrainState
# --------------------------------------------------------------------------


def _toy_state(lr=0.5):
  params = {'w': jnp.array([1.0, -2.0, 3.0]), 'b': jnp.array(0.5)}
  return sof.TrainState.create(
    apply_fn=None, params=params, tx=so.spider(lr)
  )  # no clipping: x -= lr * v


def _tree(w, b):
  return {'w': jnp.asarray(w, jnp.float32), 'b': jnp.asarray(b, jnp.float32)}


def test_train_state_anchor_then_recursive():
  lr = 0.5
  state = _toy_state(lr)
  x0 = state.params
  assert int(state.step) == 0
  leaves_close(state.prev_params, x0, rtol=0, atol=0)  # before any update

  g0 = _tree([0.1, 0.2, -0.3], 0.4)
  state = state.apply_gradients(grads=g0)  # anchor: v = g
  est = estimator_state(state.opt_state)
  leaves_close(est.estimate, g0, rtol=0, atol=0)
  assert int(est.steps_since_anchor) == 0 and int(state.step) == 1
  leaves_close(state.prev_params, x0, rtol=0, atol=0)
  x1 = jax.tree.map(lambda x, v: x - lr * v, x0, g0)
  leaves_close(state.params, x1, rtol=1e-7, atol=1e-7)

  g1, pg1 = _tree([1.0, 0.0, 2.0], -1.0), _tree([0.5, 0.5, 0.5], 0.25)
  state = state.apply_gradients(grads=g1, prev_grads=pg1)  # v += g - g'
  v1 = jax.tree.map(lambda v, g, pg: v + g - pg, g0, g1, pg1)
  est = estimator_state(state.opt_state)
  leaves_close(est.estimate, v1, rtol=1e-7, atol=1e-7)
  assert int(est.steps_since_anchor) == 1 and int(state.step) == 2
  leaves_close(state.prev_params, x1, rtol=0, atol=0)
  x2 = jax.tree.map(lambda x, v: x - lr * v, x1, v1)
  leaves_close(state.params, x2, rtol=1e-6, atol=1e-7)

  state = state.apply_gradients(grads=g1)  # a new anchor resets v to g
  est = estimator_state(state.opt_state)
  leaves_close(est.estimate, g1, rtol=0, atol=0)
  assert int(est.steps_since_anchor) == 0 and int(state.step) == 3
  leaves_close(state.prev_params, x2, rtol=0, atol=0)


def test_train_state_apply_gradients_under_jit():
  state = _toy_state()
  g, pg = _tree([1.0, 2.0, 3.0], 1.0), _tree([0.0, 1.0, 0.0], 2.0)
  eager = state.apply_gradients(grads=g).apply_gradients(grads=g, prev_grads=pg)
  jit_anchor = jax.jit(lambda s, g: s.apply_gradients(grads=g))
  jit_recursive = jax.jit(
    lambda s, g, pg: s.apply_gradients(grads=g, prev_grads=pg)
  )
  jitted = jit_recursive(jit_anchor(state, g), g, pg)
  leaves_close(jitted.params, eager.params, rtol=1e-6, atol=1e-7)
  leaves_close(jitted.prev_params, eager.prev_params, rtol=0, atol=0)
  assert int(jitted.step) == int(eager.step) == 2


def test_train_state_without_an_estimator():
  state = sof.TrainState.create(
    apply_fn=None, params={'w': jnp.ones(2)}, tx=optax.sgd(0.1)
  )
  with pytest.raises(ValueError, match='keeps no previous parameters'):
    _ = state.prev_params


# --------------------------------------------------------------------------
# 6. Deprecated names keep working
# --------------------------------------------------------------------------


def test_deprecated_flax_spider_loop_forwards(few):
  (model, optimizer), _, _ = few
  with pytest.warns(DeprecationWarning, match='use so.spider_loop'):
    _, losses = sof.spider_loop(
      *NNX_STEPS,
      (model, optimizer),
      full_data(),
      minibatches(),
      anchor_period=Q,
      num_steps=int(optimizer.opt_state[0].count) + 2,
    )
  assert len(losses) == 2


def test_deprecated_direct_paired_grad_call(few):
  (model, optimizer), _, _ = few
  x, y = next(minibatches(seed=3))
  want = sof.paired_grad(nnx_loss)(model, optimizer, x, y)
  with pytest.warns(DeprecationWarning, match=r'paired_grad\(loss_fn\)\(model'):
    got = sof.paired_grad(nnx_loss, model, optimizer, x, y)
  leaves_close(got, want, atol=0)
  with pytest.warns(DeprecationWarning, match='paired_value_and_grad'):
    got = sof.paired_value_and_grad(nnx_loss, model, optimizer, x, y)
  leaves_close(
    got, sof.paired_value_and_grad(nnx_loss)(model, optimizer, x, y), atol=0
  )


# --------------------------------------------------------------------------
# 7. Adaptive anchoring in spider_loop
# --------------------------------------------------------------------------

ADAPTIVE_STEPS = 60
BUDGETS = {'heuristic': 2e-4, 'split': 1e-3}


def recording(steps, kinds):
  """The step functions of ``steps``, noting which kind ran at each step."""
  anchor, recursive = steps

  def note(kind, step):
    def wrapped(carry, *batch):
      kinds.append(kind)
      return step(carry, *batch)

    return wrapped

  return note('anchor', anchor), note('recursive', recursive)


def functional_adaptive(params, tx, budget, period, rule):
  """The adaptive rule written out with the functional API."""
  state, kinds, batches = tx.init(params), [], minibatches()
  grad = jax.jit(jax.grad(loss_fn))
  split = rule == 'split'
  paired = jax.jit(so.paired_grad(loss_fn, split_batch=split))
  batch_size = None if split else MINIBATCH
  for _ in range(ADAPTIVE_STEPS):
    if so.is_anchor_step(
      state, period, error_budget=budget, batch_size=batch_size
    ):
      kinds.append('anchor')
      updates, state = tx.update(grad(params, X, Y), state, params)
    else:
      kinds.append('recursive')
      grads, prev_grads, *variance = paired(
        params, so.prev_params(state), *next(batches)
      )
      updates, state = tx.update(
        grads,
        state,
        params,
        prev_grads=prev_grads,
        grad_diff_variance=variance[0] if split else None,
      )
    params = optax.apply_updates(params, updates)
  return params, kinds


NNX_SPLIT_STEPS = sof.nnx_steps(nnx_loss, split_batch=True)
LINEN_SPLIT_STEPS = sof.linen_steps(linen_loss, split_batch=True)


@pytest.mark.parametrize('api', ['nnx', 'linen'])
@pytest.mark.parametrize('period', [10**6, 7])
@pytest.mark.parametrize('rule', ['heuristic', 'split'])
def test_spider_loop_adaptive_anchoring(api, period, rule):
  tx = so.spider(**HP, diagnostics=True)
  budget = BUDGETS[rule]
  want_params, want = functional_adaptive(
    initial_params(), tx, budget, period, rule
  )
  kinds = []
  split = rule == 'split'
  if api == 'nnx':
    steps = recording(NNX_SPLIT_STEPS if split else NNX_STEPS, kinds)
    carry = new_nnx(initial_params(), tx)
  else:
    steps = recording(LINEN_SPLIT_STEPS if split else LINEN_STEPS, kinds)
    carry = new_linen(initial_params(), tx)
  carry, losses = so.spider_loop(
    *steps,
    carry,
    full_data(),
    minibatches(),
    anchor_period=period,
    num_steps=ADAPTIVE_STEPS,
    error_budget=budget,
    batch_size=None if split else MINIBATCH,
  )
  assert kinds == want
  # The budget binds: anchors come at uneven intervals, more than the first.
  gaps = np.diff([k for k, kind in enumerate(kinds) if kind == 'anchor'])
  assert len(gaps) >= 2 and len(set(gaps)) > 1, kinds
  if period < ADAPTIVE_STEPS:
    assert gaps.max() <= period
  got = nnx_params(carry[0]) if api == 'nnx' else carry.params
  leaves_close(got, want_params, atol=1e-5)


def test_spider_loop_adaptive_needs_split_batches_or_batch_size():
  tx = so.spider(**HP, diagnostics=True)
  with pytest.raises(ValueError, match='brought none: pass grad_diff_variance'):
    so.spider_loop(
      *LINEN_STEPS,
      new_linen(initial_params(), tx),
      full_data(),
      minibatches(),
      anchor_period=5,
      num_steps=3,
      error_budget=1.0,
    )
  with pytest.raises(ValueError, match='diagnostics=True'):
    so.spider_loop(
      *LINEN_STEPS,
      new_linen(initial_params(), TX),
      full_data(),
      minibatches(),
      anchor_period=5,
      num_steps=2,
      error_budget=1.0,
      batch_size=4,
    )


def test_nnx_split_batch_matches_the_functional_split(few):
  """so.flax.paired_grad(split_batch=True): the functional split's grads and
  variance, as nnx.State."""
  (model, optimizer), _, (params, opt_state) = few
  x, y = next(minibatches(seed=9))
  want = so.paired_grad(loss_fn, split_batch=True)(
    params, so.prev_params(opt_state), x, y
  )
  grads, prev_grads, variance = sof.paired_grad(nnx_loss, split_batch=True)(
    model, optimizer, x, y
  )
  assert isinstance(grads, nnx.State) and isinstance(prev_grads, nnx.State)
  for g, w in zip((grads, prev_grads), want[:2]):
    leaves_close(nnx.to_pure_dict(g), w, rtol=1e-5, atol=1e-7)
  assert float(variance) > 0
  np.testing.assert_allclose(variance, want[2], rtol=1e-4)
