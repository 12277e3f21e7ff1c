"""MARS-Lion, MARS-M and MARS-Shampoo against float64 references of the
official code (tests/reference_mars.py), against their base optimizers at
gamma = 0, and their errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax._src import test_utils
from optax.contrib import MuonDimensionNumbers

import spider_optax as so
from reference_correction import make_problem
from reference_mars import MarsMember
from reference_mars import newton_schulz
from test_correction import assert_close
from test_correction import DECAY_MASK
from test_correction import run
from test_correction import run_reference
from test_correction import to32

ALL = ('kernel', 'bias', 'scale')
KERNEL = ('kernel',)  # the one 2-D leaf of the test problem
LR = lambda t: 0.05 * 0.5 ** (t / 10)  # = SCHEDULE below, for the reference
SCHEDULE = optax.exponential_decay(0.05, transition_steps=10, decay_rate=0.5)
GAMMA = lambda t: 0.05 + 0.01 * t  # = GAMMA_SCHEDULE below
GAMMA_SCHEDULE = optax.linear_schedule(0.05, 0.45, 40)

# Float32 against float64 over the 40 steps of tests/test_correction.py.
# Lion: its steps are +-lr, exact whatever the rounding, as long as no
# momentum entry comes near 0 (asserted: none under 1e-5). Its float32
# errors are below 1e-6: the params agree to about 1e-6 (lr = 0.01 is exact
# to 1e-9 a step), the gradient's slope is below 10 here, and m takes
# 1 - b1 = 0.05 of it; a sign flip would move an entry by 2 lr = 0.02 and
# fail the comparison. The rest is the rounding of the params and of the
# correction, as for MARS-AdamW (test_correction.ATOL = 2e-5).
# Newton-Schulz amplifies rounding: its polynomial has slope a = 3.4 at 0, so
# five iterations can take a float32 rounding of 6e-8 (relative to the
# normalised matrix, of norm 1) to 3.4**5 * 6e-8 = 3e-5 in an entry of the
# orthogonalised matrix, which a step scales by lr * 0.2 * sqrt(4) = 0.02:
# 6e-7 a step, 2.4e-5 over 40 steps if every step erred the same way, more
# with the params feeding back into the gradients. 1e-4 holds that with room
# to spare; a change to the formulas moves the params by 1e-3 or more (each
# config below was checked to fail on a changed formula).
ATOL_LION, ATOL_MATRIX = 2e-5, 1e-4


LION = {
  # name: (so.mars_lion kwargs, reference kwargs)
  'approx': (dict(learning_rate=0.01), dict(learning_rate=0.01, matrices=ALL)),
  'exact': (
    dict(learning_rate=0.01, approx=False),
    dict(learning_rate=0.01, approx=False, matrices=ALL),
  ),
  'approx_per_tensor_schedules': (
    dict(learning_rate=SCHEDULE, per_tensor_clip=True, gamma=GAMMA_SCHEDULE),
    dict(learning_rate=LR, per_tensor_clip=True, gamma=GAMMA, matrices=ALL),
  ),
  'exact_adamw_1d_decay_mask': (
    dict(
      learning_rate=0.01,
      approx=False,
      b1=0.9,
      max_norm=2.0,
      weight_decay=0.1,
      mask=DECAY_MASK,
      adamw_1d=True,
      betas_1d=(0.8, 0.9),
      eps=1e-3,
      lr_1d=0.03,
      weight_decay_1d=0.05,
    ),
    dict(
      learning_rate=0.01,
      approx=False,
      b1=0.9,
      max_norm=2.0,
      weight_decay=0.1,
      decay_mask=DECAY_MASK,
      matrices=KERNEL,
      betas_1d=(0.8, 0.9),
      eps=1e-3,
      lr_1d=0.03,
      weight_decay_1d=0.05,
    ),
  ),
}

MUON = {
  'approx': (dict(learning_rate=0.05), dict(learning_rate=0.05)),
  'exact': (
    dict(learning_rate=0.05, approx=False),
    dict(learning_rate=0.05, approx=False),
  ),
  'approx_no_clip': (  # the official memory-efficient MARS-M
    dict(learning_rate=0.05, max_norm=None),
    dict(learning_rate=0.05, max_norm=None),
  ),
  'exact_per_tensor_width_scaling': (
    dict(
      learning_rate=0.05,
      approx=False,
      per_tensor_clip=True,
      consistent_rms=None,
    ),
    dict(
      learning_rate=0.05,
      approx=False,
      per_tensor_clip=True,
      consistent_rms=None,
    ),
  ),
  # Large eps and ns_eps, so that where each is added shows in the params.
  'approx_every_option': (
    dict(
      learning_rate=SCHEDULE,
      b1=0.9,
      gamma=GAMMA_SCHEDULE,
      weight_decay=0.1,
      mask=DECAY_MASK,
      max_norm=2.0,
      ns_steps=4,
      ns_eps=0.3,
      consistent_rms=0.3,
      betas_1d=(0.8, 0.9),
      eps=1e-2,
      lr_1d=0.03,
      weight_decay_1d=0.05,
      muon_weight_dimension_numbers={
        'kernel': MuonDimensionNumbers(0, 1),
        'bias': None,
        'scale': None,
      },
    ),
    dict(
      learning_rate=LR,
      b1=0.9,
      gamma=GAMMA,
      weight_decay=0.1,
      decay_mask=DECAY_MASK,
      max_norm=2.0,
      ns_steps=4,
      ns_eps=0.3,
      consistent_rms=0.3,
      betas_1d=(0.8, 0.9),
      eps=1e-2,
      lr_1d=0.03,
      weight_decay_1d=0.05,
    ),
  ),
}

SHAMPOO = {
  'approx': (dict(learning_rate=0.05), dict(learning_rate=0.05)),
  'exact': (
    dict(learning_rate=0.05, approx=False),
    dict(learning_rate=0.05, approx=False),
  ),
  # eps = 0.05: NS(m / (1 - b1), eps) and NS(m, eps) differ in the params.
  'exact_every_option': (
    dict(
      learning_rate=SCHEDULE,
      approx=False,
      b1=0.9,
      gamma=0.1,
      eps=0.05,
      weight_decay=0.1,
      mask=DECAY_MASK,
      max_norm=2.0,
      per_tensor_clip=True,
      betas_1d=(0.8, 0.9),
      lr_1d=0.03,
      weight_decay_1d=0.05,
    ),
    dict(
      learning_rate=LR,
      approx=False,
      b1=0.9,
      gamma=0.1,
      eps=0.05,
      weight_decay=0.1,
      decay_mask=DECAY_MASK,
      max_norm=2.0,
      per_tensor_clip=True,
      betas_1d=(0.8, 0.9),
      lr_1d=0.03,
      weight_decay_1d=0.05,
    ),
  ),
}

MEMBERS = {
  'lion': (so.mars_lion, LION, ATOL_LION),
  'muon': (so.mars_muon, MUON, ATOL_MATRIX),
  'shampoo': (so.mars_shampoo, SHAMPOO, ATOL_MATRIX),
}
CONFIGS = [
  (kind, config) for kind, (_, table, _) in MEMBERS.items() for config in table
]


@pytest.mark.parametrize('jit', [True, False], ids=['jit', 'nojit'])
@pytest.mark.parametrize(
  'kind, config', CONFIGS, ids=[f'{k}-{c}' for k, c in CONFIGS]
)
def test_member_matches_float64_reference_of_the_official_code(
  kind, config, jit
):
  factory, table, atol = MEMBERS[kind]
  kwargs, ref_kwargs = table[config]
  if kind != 'lion':
    ref_kwargs = dict(ref_kwargs, matrices=KERNEL)
  exact = kwargs.get('approx') is False
  params64, data64 = make_problem()
  got, _ = run(factory(**kwargs), to32(params64), data64, exact=exact, jit=jit)
  ref = MarsMember(kind, params64, **ref_kwargs)
  want = run_reference(ref, data64, exact=exact)
  if ref.max_norm is not None:
    assert any(ref.clipped), 'the clip must act for the test to mean much'
  if kind == 'lion':
    assert ref.smallest_m > 1e-5, 'a sign near 0 would make the test flaky'
  moved = max(np.abs(want[-1][k] - params64[k]).max() for k in params64)
  assert moved > 0.1, 'the run must move the params for the test to mean much'
  assert_close(got, want, atol=atol)


def test_newton_schulz_reference_orthogonalises():
  """The reference iteration takes a matrix's singular values near 1."""
  m = np.random.default_rng(0).normal(size=(4, 7))
  s = np.linalg.svd(newton_schulz(m), compute_uv=False)
  assert np.all((s > 0.6) & (s < 1.2)), s


def trajectories(tx_a, tx_b, steps=30):
  """Both optimizers on the test problem, one gradient per step."""
  params64, data64 = make_problem()
  params = to32(params64)
  return (
    run(tx_a, params, data64, exact=False, steps=steps)[0],
    run(tx_b, params, data64, exact=False, steps=steps)[0],
  )


def assert_trajectories_close(got, want, atol):
  for g, w in zip(got, want):
    test_utils.assert_trees_all_close(g, w, atol=atol, rtol=0.0)


def test_gamma_zero_mars_lion_is_optax_lion_with_one_beta():
  ours, base = trajectories(
    so.mars_lion(0.01, gamma=0.0, max_norm=None, weight_decay=0.1),
    optax.lion(0.01, b1=0.95, b2=0.95, weight_decay=0.1),
  )
  assert_trajectories_close(ours, base, atol=1e-6)


def test_gamma_zero_mars_muon_is_optax_muon_without_nesterov():
  """Equal but for optax's bias correction of the momentum and its AdamW's
  eps placement: both only move eps = 1e-8 relative to the moments."""
  ours, base = trajectories(
    so.mars_muon(0.05, gamma=0.0, max_norm=None, weight_decay=0.1, ns_eps=1e-8),
    optax.contrib.muon(
      0.05,
      beta=0.95,
      eps=1e-8,
      nesterov=False,
      consistent_rms=0.2,
      weight_decay=0.1,
      adam_b1=0.9,
      adam_b2=0.95,
      adam_weight_decay=0.1,
    ),
  )
  assert_trajectories_close(ours, base, atol=ATOL_MATRIX)


def test_correction_and_clip_in_front_of_optax_adamw_is_mars_adamw():
  """The README's general pattern, with AdamW as the base: so.mars_adamw."""
  pattern = optax.chain(
    so.recursive_correction(beta=0.95, gamma=0.025, approx=True),
    so.relaxed_clip(1.0),
    optax.adamw(0.05, b1=0.95, b2=0.99, weight_decay=0.1),
  )
  ours, alias = trajectories(pattern, so.mars_adamw(0.05, weight_decay=0.1))
  assert_trajectories_close(ours, alias, atol=1e-6)


def test_mars_shampoo_is_mars_muon_with_its_scaling_on_the_matrices():
  """On matrices alone the two aliases are one rule with ns_eps = eps (1-b1)."""
  params64, data64 = make_problem()
  params = {'kernel': jnp.asarray(params64['kernel'], jnp.float32)}
  data = {k: v for k, v in data64.items()}
  data['z'] = data['z'] * 0 + params64['scale']  # the quartic term is 0
  data['y'] = data['y'] - params64['bias']  # fold the bias into the targets

  def loss(p, batch):
    r = batch['x'] @ p['kernel'] - batch['y']
    return jnp.mean(0.5 * jnp.sum(r**2, axis=1))

  def trajectory(tx):
    state, p, out = tx.init(params), params, []
    for i in range(20):
      batch = {
        k: jnp.asarray(v[i : i + 8], jnp.float32) for k, v in data.items()
      }
      updates, state = tx.update(jax.grad(loss)(p, batch), state, p)
      p = optax.apply_updates(p, updates)
      out.append(p)
    return out

  eps = 0.05
  shampoo = trajectory(so.mars_shampoo(0.05, eps=eps))
  muon = trajectory(
    so.mars_muon(0.05, consistent_rms=None, ns_eps=eps * (1 - 0.95))
  )
  assert_trajectories_close(shampoo, muon, atol=1e-6)
  differs = trajectory(so.mars_muon(0.05, consistent_rms=None, ns_eps=eps))
  assert np.abs(differs[-1]['kernel'] - shampoo[-1]['kernel']).max() > 1e-4


@pytest.mark.parametrize('factory', [so.mars_adamw, so.mars_lion])
def test_adamw_leaves_not_2d_sends_conv_kernels_to_adamw(factory):
  """The official rule: every leaf that is not 2-D takes plain AdamW."""
  key = jax.random.split(jax.random.key(0), 3)
  params = {
    'conv': jax.random.normal(key[0], (3, 3, 2, 4)),
    'w': jax.random.normal(key[1], (2, 4)),
  }
  grads = [
    jax.tree.map(lambda x, k=k: x * (1.0 + 0.1 * k), params) for k in range(3)
  ]

  def conv_updates(tx, tree):
    state, out = tx.init(tree), []
    for g in grads:
      updates, state = tx.update({k: g[k] for k in tree}, state, tree)
      out.append(updates['conv'])
    return out

  adamw = conv_updates(
    optax.adamw(0.1, b1=0.9, b2=0.95, weight_decay=0.0),
    {'conv': params['conv']},
  )
  for rule, goes_to_adamw in (('not_2d', True), ('below_2d', False)):
    tx = factory(0.1, adamw_1d=True, adamw_leaves=rule)
    ours = conv_updates(tx, params)
    same = all(np.allclose(a, b, atol=1e-6) for a, b in zip(ours, adamw))
    assert same == goes_to_adamw, rule


@pytest.mark.parametrize('factory', [so.mars_lion, so.mars_muon])
def test_eager_updates_compile_once(factory):
  params = {'w': jnp.ones((3, 4)), 'b': jnp.ones(4)}
  grads = jax.tree.map(lambda x: 0.1 * x, params)
  tx = factory(0.1, lr_1d=optax.linear_schedule(0.1, 0.0, 10))
  state = tx.init(params)
  for _ in range(2):
    _, state = tx.update(grads, state, params)
  with test_utils.log_compilations() as compilations:
    _, state = tx.update(grads, state, params)
  assert not compilations, compilations


BAD = [
  (lambda: so.mars_lion(0.1, b1=1.0), ValueError, '^b1 must be'),
  (lambda: so.mars_lion(0.1, gamma=-1.0), ValueError, '^gamma must be'),
  (lambda: so.mars_lion(0.1, max_norm=0.0), ValueError, '^max_norm must be'),
  (
    lambda: so.mars_lion(0.1, adamw_1d=True, betas_1d=(0.9,)),
    TypeError,
    '^betas_1d must be a pair',
  ),
  (
    lambda: so.mars_lion(0.1, adamw_1d=True, adamw_leaves='ndim<2'),
    ValueError,
    "^adamw_leaves must be 'below_2d'",
  ),
  (lambda: so.mars_muon(0.1, ns_steps=0), ValueError, '^ns_steps must be'),
  (lambda: so.mars_muon(0.1, ns_eps=-1.0), ValueError, '^ns_eps must be'),
  (
    lambda: so.mars_muon(0.1, ns_coeffs=(1.0, 2.0)),
    ValueError,
    '^ns_coeffs must be three',
  ),
  (
    lambda: so.mars_muon(0.1, consistent_rms=0.0),
    ValueError,
    '^consistent_rms must be',
  ),
  (
    lambda: so.mars_muon(0.1, betas_1d=(0.9, 1.0)),
    ValueError,
    r'^betas_1d\[1\] must be',
  ),
  (lambda: so.mars_shampoo(0.1, eps=-1.0), ValueError, '^eps must be'),
  (
    lambda: so.mars_adamw(0.1, lr_1d=-1.0, adamw_1d=True),
    ValueError,
    '^lr_1d must be',
  ),
  (
    lambda: so.mars_muon(0.1, weight_decay_1d=-1.0),
    ValueError,
    '^weight_decay_1d must be',
  ),
]


@pytest.mark.parametrize('build, error, match', BAD)
def test_bad_hyperparameters_raise_naming_the_argument(build, error, match):
  with pytest.raises(error, match=match):
    build()


def test_dimension_numbers_for_a_vector_name_the_leaf():
  params = {'w': jnp.ones((3, 4)), 'b': jnp.ones(4)}
  tx = so.mars_muon(
    0.1,
    muon_weight_dimension_numbers={
      'w': MuonDimensionNumbers(),
      'b': MuonDimensionNumbers(),
    },
  )
  with pytest.raises(ValueError, match=r"leaf \['b'\] of shape \(4,\)"):
    tx.init(params)


def test_dimension_numbers_of_the_wrong_structure_say_what_is_expected():
  params = {'w': jnp.ones((3, 4)), 'b': jnp.ones(4)}
  tx = so.mars_muon(
    0.1, muon_weight_dimension_numbers={'w': MuonDimensionNumbers()}
  )
  with pytest.raises(ValueError, match='tree with the structure of the params'):
    tx.init(params)


def state_floats(tx, params):
  """The floats of the state's param-sized arrays (not its scalars)."""
  state = tx.init(params)
  return sum(
    x.size
    for x in jax.tree.leaves(state)
    if jnp.issubdtype(x.dtype, jnp.floating) and x.size >= 20
  )


def test_memory_efficient_mars_m_keeps_one_buffer_per_matrix():
  """Approx, no clip, constant gamma: Muon's memory (one momentum per matrix)
  and AdamW's two moments on the vector; the clipped form keeps g_{k-1}
  too. The vector never gets a kept gradient."""
  params = {'w': jnp.ones((30, 20)), 'b': jnp.ones(20)}
  muon = optax.contrib.muon(0.1, nesterov=False, consistent_rms=0.2)
  efficient = state_floats(so.mars_muon(0.1, max_norm=None), params)
  clipped = state_floats(so.mars_muon(0.1), params)
  assert efficient == state_floats(muon, params) == 600 + 2 * 20
  assert clipped == efficient + 600  # g_{k-1} of w: the matrix alone


@pytest.mark.parametrize('gamma', [0.0, 0.1, 0.9])
@pytest.mark.parametrize('beta', [0.0, 0.5, 0.95])
def test_corrected_momentum_is_the_two_buffer_momentum(beta, gamma):
  two = optax.chain(
    so.recursive_correction(beta, gamma, approx=True),
    optax.ema(beta, debias=False),
  )
  one = so.corrected_momentum(beta, gamma)
  rng = np.random.default_rng(0)
  grads = [{'w': jnp.asarray(rng.normal(size=(3, 2)))} for _ in range(6)]
  s1, s2 = one.init(grads[0]), two.init(grads[0])
  for g in grads:
    m1, s1 = one.update(g, s1)
    m2, s2 = two.update(g, s2)
    np.testing.assert_allclose(m1['w'], m2['w'], rtol=1e-5, atol=1e-6)
