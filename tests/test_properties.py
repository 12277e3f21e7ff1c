"""Hypothesis property tests of so.spider, so.relaxed_clip and so.paired_grad.

Random nested-dict pytrees (1-4 leaves, rank 0-3, float32 or bfloat16) and
random anchor/recursive sequences are checked against the independent float64
NumPy reference in tests/reference.py. Every tolerance is a rounding-error
bound derived in the comments from the unit roundoff of the dtypes involved,
not a number tuned to make the tests pass.
"""

import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import spider_optax as so

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loops  # noqa: E402  (the tests' SPIDER loop, tests/loops.py)
import reference  # noqa: E402  (float64 NumPy reference, tests/reference.py)

# Unit roundoff u = eps / 2: |fl(a op b) - (a op b)| <= u |a op b|.
U32 = float(jnp.finfo(jnp.float32).eps) / 2  # 2^-24
U16 = float(jnp.finfo(jnp.bfloat16).eps) / 2  # 2^-8
UNIT_ROUNDOFF = {jnp.dtype(jnp.float32): U32, jnp.dtype(jnp.bfloat16): U16}


# --------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------

# Leaf i sits at one of these paths (leaf names are unique and never collide
# with the sub-dict names, so any combination is a valid nested dict).
_PATHS = (
  lambda i: (f'w{i}',),
  lambda i: ('layer', f'w{i}'),
  lambda i: ('layer', 'inner', f'w{i}'),
  lambda i: ('head', f'w{i}'),
)


@st.composite
def tree_specs(draw, dtypes=(jnp.float32, jnp.bfloat16)):
  """(paths, shapes, dtype) of a random nested-dict pytree."""
  n_leaves = draw(st.integers(1, 4))
  paths = [draw(st.sampled_from(_PATHS))(i) for i in range(n_leaves)]
  shapes = [
    tuple(draw(st.lists(st.integers(1, 4), min_size=0, max_size=3)))
    for _ in range(n_leaves)
  ]
  dtype = jnp.dtype(draw(st.sampled_from(dtypes)))
  return paths, shapes, dtype


def log_uniform(lo, hi):
  return st.floats(math.log10(lo), math.log10(hi)).map(lambda e: 10.0**e)


optional_threshold = st.one_of(st.none(), log_uniform(1e-2, 1e2))


def build(spec, arrays):
  """Nested dict of jnp arrays of the spec's dtype from float arrays."""
  paths, _, dtype = spec
  tree = {}
  for path, array in zip(paths, arrays):
    node = tree
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = jnp.asarray(array, dtype)
  return tree


def random_tree(spec, rng, scale=1.0):
  return build(spec, [scale * rng.normal(size=shape) for shape in spec[1]])


def to_flat64(tree):
  """A pytree as reference.py wants it: a flat dict of float64 NumPy arrays.

  The cast is exact: float32 and bfloat16 values are float64 values.
  """
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(p): np.asarray(x, np.float64) for p, x in leaves}


def size(spec):
  return sum(math.prod(shape) for shape in spec[1])


def norm_rel_error(n):
  """Relative error bound of so.global_norm over n elements (float32 sums).

  A float32 sum of n squares has relative error <= (n + 1) u; the square
  root halves it and rounds once more. (n + 2) u covers both.
  """
  return (n + 2) * U32


# --------------------------------------------------------------------------
# so.spider's trajectory against the float64 reference, and state invariants
# --------------------------------------------------------------------------


def bits(x):
  """dtype, shape and raw bytes of an array, for bitwise comparison."""
  x = np.asarray(x)
  return x.dtype, x.shape, x.tobytes()


@st.composite
def spider_runs(draw):
  spec = draw(tree_specs())
  if spec[2] == jnp.bfloat16:
    # bfloat16 params get a float32 estimator (estimator_dtype=jnp.float32):
    # a bfloat16 running sum v + g - g' would round every recursive step
    # (2^-8 relative each time), that error would enter every later step of
    # the epoch through lr * v, and the clip factor would be computed from a
    # rounded v. With a float32 estimator the only bfloat16 rounding left is
    # storing the params after each step, which any bfloat16 training has.
    estimator_dtype = jnp.float32
  else:  # float32 params: the default, an explicit float32, or a narrower one
    estimator_dtype = draw(st.sampled_from([None, jnp.float32, jnp.bfloat16]))
  steps = draw(st.lists(st.booleans(), min_size=4, max_size=10))  # True: anchor
  c0 = draw(optional_threshold)
  c1 = draw(optional_threshold)
  lr = draw(log_uniform(1e-3, 1.0))
  schedule = draw(st.booleans())
  grad_scale = draw(log_uniform(1e-2, 1e2))
  # Params of the size of the steps, so that a wrong step could not hide
  # under the bfloat16 rounding of large params.
  param_scale = lr * grad_scale * draw(log_uniform(0.1, 10.0))
  seed = draw(st.integers(0, 2**32 - 1))
  return (
    spec,
    estimator_dtype,
    steps,
    c0,
    c1,
    lr,
    schedule,
    grad_scale,
    param_scale,
    seed,
  )


@settings(max_examples=25, deadline=None)
@given(spider_runs())
def test_spider_trajectory_and_state_match_float64_reference(run):
  (
    spec,
    estimator_dtype,
    steps,
    c0,
    c1,
    lr,
    schedule,
    grad_scale,
    param_scale,
    seed,
  ) = run
  rng = np.random.default_rng(seed)
  learning_rate = (lambda k: lr / (1.0 + 0.5 * k)) if schedule else lr
  tx = so.spider(learning_rate, c0, c1, estimator_dtype=estimator_dtype)

  params = random_tree(spec, rng, param_scale)
  grad_pairs = [
    (
      random_tree(spec, rng, grad_scale),  # prev_grads: unused
      random_tree(spec, rng, grad_scale),
    )  # by anchors
    for _ in steps
  ]
  out = loops.run_spider(
    tx,
    params,
    grad_pairs,
    schedule=steps,
    trace=lambda params, state, updates: (params, state),
  )
  state = tx.init(params)
  ref = reference.Spider(to_flat64(params), learning_rate, c0, c1)
  estimate_dtype = jnp.dtype(estimator_dtype or spec[2])
  est = state[0]
  assert isinstance(est, so.SpiderEstimatorState)
  assert int(est.count) == 0 and int(est.steps_since_anchor) == 0
  for leaf in jax.tree.leaves(est.estimate):
    assert leaf.dtype == estimate_dtype
    np.testing.assert_array_equal(np.asarray(leaf, np.float64), 0.0)
  assert jax.tree.map(bits, so.prev_params(state)) == jax.tree.map(bits, params)

  # Rounding-error bound, tracked along the reference trajectory (first
  # order in the unit roundoffs).
  n = size(spec)
  u_param = UNIT_ROUNDOFF[spec[2]]
  u_est = UNIT_ROUNDOFF[estimate_dtype]
  u_cast = u_est if u_est > u_param else 0.0  # grads -> estimator dtype
  # Relative error of the package's clip factor: the float32 norm (squared in
  # the c1 term) and the divisions.
  factor_rel = 2 * norm_rel_error(n) + 3 * U32
  est_err = 0.0  # bound on ||v_pkg - v_ref||_2
  param_err = 0.0  # bound on ||x_pkg - x_ref||_2
  since_anchor = 0
  for k, (anchor, (grads, prev_grads), (new_params, state)) in enumerate(
    zip(steps, grad_pairs, out.trace)
  ):
    g64, pg64 = to_flat64(grads), to_flat64(prev_grads)
    old_params, params = params, new_params
    x_ref = ref.step(g64) if anchor else ref.step(g64, pg64)

    # State invariants.
    est = state[0]
    since_anchor = 0 if anchor or k == 0 else since_anchor + 1  # a first
    # recursive step has nothing to correct and acts as an anchor
    assert est.count.dtype == jnp.int32 and int(est.count) == k + 1
    assert est.steps_since_anchor.dtype == jnp.int32
    assert int(est.steps_since_anchor) == since_anchor
    for leaf in jax.tree.leaves(est.estimate):
      assert leaf.dtype == estimate_dtype
    if since_anchor == 0:  # v = grads in the estimator dtype, bit for bit
      # (NumPy's ml_dtypes cast rounds to nearest even, as XLA does.)
      assert jax.tree.map(bits, est.estimate) == jax.tree.map(
        lambda g: bits(np.asarray(g).astype(estimate_dtype)), grads
      )
    # x_{k-1} of the next step: exactly the params given to this update.
    assert jax.tree.map(bits, so.prev_params(state)) == jax.tree.map(
      bits, old_params
    )
    assert all(leaf.dtype == spec[2] for leaf in jax.tree.leaves(params))

    # Trajectory.
    v_norm = reference.global_norm(ref.v)
    if since_anchor == 0:
      est_err = u_cast * reference.global_norm(g64)
    else:  # casts of g and g', then v + (g - g'): two roundings
      diff = {key: g64[key] - pg64[key] for key in g64}
      est_err += u_cast * (
        reference.global_norm(g64) + reference.global_norm(pg64)
      ) + u_est * (reference.global_norm(diff) + v_norm)
    lr_k = learning_rate(k) if schedule else lr
    step_len = lr_k * reference.clip_factor(v_norm, c0, c1) * v_norm
    # The Jacobian of u -> phi(||u||) u, phi = min(1, c0/r, c1/r^2), has norm
    # phi(||u||) (phi tangentially; the radial derivative of r phi(r) is 1, 0
    # or -c1/r^2), and phi decreases, so over the ball of radius est_err
    # around v it is at most phi(||v|| - est_err): the estimator's error
    # reaches the step scaled by lr times that. The factor's rounding, two
    # roundings of the update in the estimator dtype (clip, learning rate) and
    # the float32 learning rate add relative errors; storing x_{k+1} rounds in
    # float32 (p + u) and then in the params' dtype.
    lipschitz = reference.clip_factor(max(v_norm - est_err, 0.0), c0, c1)
    param_err += (
      lr_k * lipschitz * est_err
      + step_len * (factor_rel + 2 * u_est + 2 * U32)
      + (U32 + u_param) * reference.global_norm(x_ref)
    )
    x_pkg = to_flat64(params)
    error = reference.global_norm(
      {key: x_pkg[key] - x_ref[key] for key in x_ref}
    )
    # Factor 2: slack for the second-order terms the bound leaves out.
    assert error <= 2 * param_err + 1e-30, (k, error, param_err)


# --------------------------------------------------------------------------
# so.relaxed_clip against the float64 factor
# --------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
  tree_specs(),
  optional_threshold,
  optional_threshold,
  log_uniform(1e-3, 1e3),
  log_uniform(1e-3, 1.0),
  st.integers(0, 2**32 - 1),
)
def test_relaxed_clip_and_step_length_match_float64_factor(
  spec, c0, c1, scale, lr, seed
):
  rng = np.random.default_rng(seed)
  updates = random_tree(spec, rng, scale)
  params = random_tree(spec, rng)
  clip = so.relaxed_clip(c0, c1)
  tx = so.spider(lr, c0, c1)

  @jax.jit
  def run(updates, params):
    clipped = clip.update(updates, clip.init(updates))[0]
    step = tx.update(updates, tx.init(params), params)[0]  # anchor: v = updates
    by_optax = (
      optax.clip_by_global_norm(c0).update(updates, ())[0]
      if c0 is not None
      else updates
    )
    return clipped, step, by_optax

  clipped, step, by_optax = run(updates, params)
  for tree in (clipped, step):
    assert jax.tree.structure(tree) == jax.tree.structure(updates)
    for leaf in jax.tree.leaves(tree):
      assert leaf.dtype == spec[2]

  u64 = to_flat64(updates)
  v = reference.global_norm(u64)
  factor = reference.clip_factor(v, c0, c1)
  # Output = dtype(u * factor32): the factor's relative error plus one
  # rounding to the output dtype, elementwise.
  rel = 2 * norm_rel_error(size(spec)) + 3 * U32 + UNIT_ROUNDOFF[spec[2]]
  for key, out in to_flat64(clipped).items():
    expected = factor * u64[key]
    np.testing.assert_array_less(
      np.abs(out - expected), 1.01 * rel * np.abs(expected) + 1e-37, err_msg=key
    )

  # With c1 = None it is optax.clip_by_global_norm(c0), within the rounding
  # of both. optax computes in the input dtype: the norm ((n + 2) u), c0
  # rounded to the dtype, a division and a product (3 u more).
  if c1 is None:
    rel_optax = (size(spec) + 5) * UNIT_ROUNDOFF[spec[2]]
    b64 = to_flat64(by_optax)
    for key, out in to_flat64(clipped).items():
      np.testing.assert_array_less(
        np.abs(out - b64[key]),
        1.01 * (rel + rel_optax) * np.abs(factor * u64[key]) + 1e-37,
      )

  # Step length lr * min(||v||, c0, c1/||v||): below each of the three bounds
  # and equal to the smallest.
  length = reference.global_norm(to_flat64(step))
  bounds = [lr * v]
  if c0 is not None:
    bounds.append(lr * c0)
  if c1 is not None:
    bounds.append(lr * c1 / v)
  # Factor rounding plus two roundings of the update in its dtype (clip, then
  # the learning rate) and the float32 learning rate.
  rel = 2 * norm_rel_error(size(spec)) + 4 * U32 + 2 * UNIT_ROUNDOFF[spec[2]]
  assert length <= min(bounds) * (1 + rel)
  assert length >= min(bounds) * (1 - rel)


@settings(max_examples=12, deadline=None)
@given(tree_specs(), optional_threshold, optional_threshold)
def test_zero_updates_stay_exactly_zero(spec, c0, c1):
  zeros = build(spec, [np.zeros(shape) for shape in spec[1]])
  params = random_tree(spec, np.random.default_rng(0))
  clip = so.relaxed_clip(c0, c1)
  tx = so.spider(0.1, c0, c1)

  @jax.jit
  def run(zeros, params):
    clipped = clip.update(zeros, clip.init(zeros))[0]
    updates = tx.update(zeros, tx.init(params), params)[0]  # zero anchor
    return clipped, updates, optax.apply_updates(params, updates)

  clipped, updates, new_params = run(zeros, params)
  for leaf in jax.tree.leaves(clipped) + jax.tree.leaves(updates):
    assert not np.any(np.isnan(np.asarray(leaf, np.float64)))
    np.testing.assert_array_equal(np.asarray(leaf, np.float64), 0.0)
  for leaf in jax.tree.leaves(clipped):
    assert leaf.dtype == spec[2]
  assert jax.tree.map(bits, new_params) == jax.tree.map(bits, params)


# --------------------------------------------------------------------------
# so.paired_grad
# --------------------------------------------------------------------------


def loss_fn(params, batch, *, offset=0.0):
  """Sum over leaves and entries of  w tanh(p) + s/2 (p - offset)^2."""
  return sum(
    jnp.sum(batch['w'] * jnp.tanh(p) + 0.5 * batch['s'] * (p - offset) ** 2)
    for p in jax.tree.leaves(params)
  )


def loss_grad_np(flat_params, w, s, offset):
  """Float64 gradient of loss_fn by hand: w (1 - tanh^2 p) + s (p - offset)."""
  return {
    k: w * (1.0 - np.tanh(p) ** 2) + s * (p - offset)
    for k, p in flat_params.items()
  }


@settings(max_examples=20, deadline=None)
@given(tree_specs(), st.booleans(), st.booleans(), st.integers(0, 2**32 - 1))
def test_paired_grad_equals_two_grads(spec, vectorized, has_aux, seed):
  rng = np.random.default_rng(seed)
  params, prev_params = random_tree(spec, rng), random_tree(spec, rng)
  batch = {
    'w': jnp.asarray(rng.normal(), spec[2]),
    's': jnp.asarray(rng.uniform(0.5, 2.0), spec[2]),
  }
  offset = jnp.asarray(rng.normal(), spec[2])  # a keyword argument, shared
  fn = (
    (lambda p, b, offset: (loss_fn(p, b, offset=offset), {'p': p, 'b': b}))
    if has_aux
    else loss_fn
  )
  single = jax.grad(fn, has_aux=has_aux)

  @jax.jit
  def run(params, prev_params, batch, offset):
    paired = so.paired_grad(fn, has_aux=has_aux, vectorized=vectorized)
    return (
      paired(params, prev_params, batch, offset=offset),
      (
        single(params, batch, offset=offset),
        single(prev_params, batch, offset=offset),
      ),
    )

  (first, second), expected = run(params, prev_params, batch, offset)
  if has_aux:  # aux comes back as from jax.grad, for each point
    for (_, aux), (_, want_aux) in zip((first, second), expected):
      assert jax.tree.map(bits, aux) == jax.tree.map(bits, want_aux)
    assert jax.tree.map(bits, first[1]['p']) == jax.tree.map(bits, params)
    assert jax.tree.map(bits, second[1]['p']) == jax.tree.map(bits, prev_params)
    first, second = first[0], second[0]
    expected = tuple(e[0] for e in expected)

  u = UNIT_ROUNDOFF[spec[2]]
  w, s, off = float(batch['w']), float(batch['s']), float(offset)
  for got, want, at in zip((first, second), expected, (params, prev_params)):
    assert jax.tree.structure(got) == jax.tree.structure(at)
    at64 = to_flat64(at)
    want64 = loss_grad_np(at64, w, s, off)
    for (key, g), ref_g in zip(to_flat64(got).items(), jax.tree.leaves(want)):
      ref_g = np.asarray(ref_g, np.float64)
      # The gradient w (1 - tanh^2 p) + s (p - offset) may cancel, so errors
      # are relative to the magnitudes of its terms, not to its value.
      magnitude = abs(w) + s * (np.abs(at64[key]) + abs(off))
      # Two separate jax.grad calls: the same ops, up to a few units in the
      # last place if XLA fuses the batched and the single computation
      # differently.
      np.testing.assert_array_less(
        np.abs(g - ref_g), 4 * u * magnitude + 1e-30, err_msg=key
      )
      # And the hand-written float64 gradient, at the dtype's accuracy (tanh,
      # its square, two products and two sums: a handful of roundings).
      np.testing.assert_array_less(
        np.abs(g - want64[key]), 16 * u * magnitude + 1e-30, err_msg=key
      )
    for g, ref_g in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      assert g.dtype == ref_g.dtype == spec[2] and g.shape == ref_g.shape
