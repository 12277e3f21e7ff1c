"""States that do not fit: restored without a target, or built for other
params. Every entry point says what happened and what to do."""

import jax
import jax.numpy as jnp
import optax
import orbax.checkpoint as ocp
import pytest

import spider_optax as so

PARAMS = {'layer': {'kernel': jnp.ones((2, 3)), 'bias': jnp.zeros(3)}}
GRADS = jax.tree.map(jnp.ones_like, PARAMS)

# (name, transformation, whether update takes prev_grads)
TRANSFORMATIONS = [
  ('spider', so.spider(0.1, c0=1.0), False),
  ('spider_autoclip', so.spider(0.1, epsilon=1.0), False),
  ('mars_approx', so.mars_adamw(0.1), False),
  ('mars_exact', so.mars_adamw(0.1, approx=False), True),
  ('storm', so.storm(0.1, 0.9), True),
  ('apply_if_finite', so.apply_if_finite(so.spider(0.1), 3), False),
  ('relaxed_clip', optax.with_extra_args_support(so.relaxed_clip(1.0)), False),
]


def _restored_without_target(state, path):
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(path, state)
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(path)


@pytest.mark.parametrize(
  'name,tx,exact', TRANSFORMATIONS, ids=[t[0] for t in TRANSFORMATIONS]
)
def test_update_with_a_state_restored_without_target(name, tx, exact, tmp_path):
  restored = _restored_without_target(tx.init(PARAMS), tmp_path / name)
  assert not isinstance(restored, tuple)  # orbax gave plain containers
  extra = {'prev_grads': GRADS} if exact else {}
  for update in (tx.update, jax.jit(tx.update)):
    with pytest.raises(
      TypeError, match='restore it onto a target built from tx.init'
    ):
      update(GRADS, restored, PARAMS, **extra)


def test_readers_with_a_state_restored_without_target(tmp_path):
  tx = so.spider(0.1, diagnostics=True)
  restored = _restored_without_target(tx.init(PARAMS), tmp_path / 'state')
  for read in (
    so.prev_params,
    so.diagnostics,
    lambda s: so.is_anchor_step(s, 3),
  ):
    with pytest.raises(
      ValueError, match='restore it onto a target built from tx.init'
    ):
      read(restored)


OTHER_PARAMS = {
  'shape': {'layer': {'kernel': jnp.ones((4, 3)), 'bias': jnp.zeros(3)}},
  'structure': {'layer': {'kernel': jnp.ones((2, 3))}},
  'dtype': {
    'layer': {
      'kernel': jnp.ones((2, 3), jnp.bfloat16),
      'bias': jnp.zeros(3, jnp.bfloat16),
    }
  },
}


@pytest.mark.parametrize('kind', list(OTHER_PARAMS))
@pytest.mark.parametrize(
  'name,tx,exact', TRANSFORMATIONS[:5], ids=[t[0] for t in TRANSFORMATIONS[:5]]
)
def test_state_built_for_other_params(kind, name, tx, exact):
  """A larger state used to broadcast the params silently; now it raises."""
  state = tx.init(OTHER_PARAMS[kind])
  extra = {'prev_grads': GRADS} if exact else {}
  if kind == 'dtype' and name == 'mars_approx':
    pytest.skip('approx MARS keeps only gradients: their dtype may differ')
  for update in (tx.update, jax.jit(tx.update)):
    with pytest.raises(
      (ValueError, TypeError), match=r'rebuild the state with tx.init\(params\)'
    ):
      update(GRADS, state, PARAMS, **extra)
