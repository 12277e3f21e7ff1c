"""so.flax.muon_weight_matrices: Flax models' weight matrices for MARS-M.

An attention kernel read through its dimension numbers must get exactly the
update of the same kernel reshaped to the 2-D matrix it stands for; biases,
norms, embeddings and excluded modules go to AdamW.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx
from optax.contrib import MuonDimensionNumbers

import spider_optax as so

IN, HEADS, HEAD_DIM, VOCAB = 8, 2, 4, 11


class Block(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.embed = nnx.Embed(VOCAB, IN, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(
      num_heads=HEADS, in_features=IN, decode=False, rngs=rngs
    )
    self.norm = nnx.LayerNorm(IN, rngs=rngs)
    self.conv = nnx.Conv(IN, IN, (3,), rngs=rngs)
    self.head = nnx.Linear(IN, VOCAB, rngs=rngs)

  def __call__(self, tokens):
    x = self.embed(tokens)
    x = x + self.attn(self.norm(x))
    return self.head(self.conv(x))


def loss_fn(model, tokens):
  logits = model(tokens[:, :-1])
  return optax.softmax_cross_entropy_with_integer_labels(
    logits, tokens[:, 1:]
  ).mean()


def tokens(seed, batch=4, length=9):
  return jax.random.randint(jax.random.key(seed), (batch, length), 0, VOCAB)


def plain(tree):
  """An nnx.State as a nested dict of arrays."""
  return nnx.to_pure_dict(tree) if isinstance(tree, nnx.State) else tree


def test_nnx_block_dimension_numbers():
  params = nnx.state(Block(nnx.Rngs(0)), nnx.Param)
  dims = plain(so.flax.muon_weight_matrices(params, exclude=['head']))
  attn = dims['attn']
  for name in ('query', 'key', 'value'):
    assert attn[name]['kernel'] == MuonDimensionNumbers(0, (1, 2))
    assert attn[name]['bias'] is None  # 2-D (heads, head_dim): not a matrix
  assert attn['out']['kernel'] == MuonDimensionNumbers((0, 1), 2)
  assert dims['conv']['kernel'] == MuonDimensionNumbers((0, 1), 2)
  for leaf in (
    dims['embed']['embedding'],
    dims['norm']['scale'],
    dims['conv']['bias'],
    dims['head']['kernel'],
    dims['head']['bias'],
  ):
    assert leaf is None
  head = plain(so.flax.muon_weight_matrices(params))['head']['kernel']
  assert head == MuonDimensionNumbers(0, 1)


def test_linen_attention_and_dense_dimension_numbers():
  class Model(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.MultiHeadDotProductAttention(num_heads=HEADS)(x)
      return nn.Dense(3)(x)

  params = Model().init(jax.random.key(0), jnp.ones((1, 5, IN)))['params']
  dims = so.flax.muon_weight_matrices(params)
  attn = dims['MultiHeadDotProductAttention_0']
  assert attn['query']['kernel'] == MuonDimensionNumbers(0, (1, 2))
  assert attn['out']['kernel'] == MuonDimensionNumbers((0, 1), 2)
  assert attn['query']['bias'] is None
  assert dims['Dense_0']['kernel'] == MuonDimensionNumbers(0, 1)
  assert dims['Dense_0']['bias'] is None


def as_matrices(tree):
  """Each attention and conv kernel reshaped to the matrix it stands for."""
  out = jax.tree.map(lambda x: x, tree)
  for name in ('query', 'key', 'value'):
    out['attn'][name]['kernel'] = tree['attn'][name]['kernel'].reshape(IN, -1)
  out['attn']['out']['kernel'] = tree['attn']['out']['kernel'].reshape(-1, IN)
  out['conv']['kernel'] = tree['conv']['kernel'].reshape(-1, IN)
  return out


@pytest.mark.parametrize('consistent_rms', [0.2, None])
def test_attention_kernels_update_as_the_matrices_they_stand_for(
  consistent_rms,
):
  """Two steps on the NNX block's params, against the same optimizer on the
  params with every 3-D kernel reshaped to 2-D (default: 2-D leaves)."""
  model = Block(nnx.Rngs(0))
  params = plain(nnx.state(model, nnx.Param))
  grads = [plain(nnx.grad(loss_fn)(model, tokens(seed))) for seed in range(2)]
  helper = functools.partial(so.flax.muon_weight_matrices, exclude=['head'])
  ours = so.mars_muon(
    0.1, consistent_rms=consistent_rms, muon_weight_dimension_numbers=helper
  )
  reference = so.mars_muon(
    0.1,
    consistent_rms=consistent_rms,
    muon_weight_dimension_numbers=lambda tree: jax.tree_util.tree_map_with_path(
      lambda path, x: (
        MuonDimensionNumbers()
        if x.ndim == 2
        and jax.tree_util.keystr(path).endswith("['kernel']")
        and 'head' not in jax.tree_util.keystr(path)
        else None
      ),
      tree,
    ),
  )
  state, ref_state = ours.init(params), reference.init(as_matrices(params))
  for g in grads:
    updates, state = ours.update(g, state, params)
    ref_updates, ref_state = reference.update(
      as_matrices(g), ref_state, as_matrices(params)
    )
    jax.tree.map(
      functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-7),
      as_matrices(updates),
      ref_updates,
    )


def test_nnx_optimizer_trains_with_mars_muon():
  """MARS-M inside nnx.Optimizer with the helper, as a user writes it: the
  loss on a fixed batch falls well below its start."""
  model = Block(nnx.Rngs(0))
  helper = functools.partial(so.flax.muon_weight_matrices, exclude=['head'])
  optimizer = nnx.Optimizer(
    model,
    so.mars_muon(0.02, muon_weight_dimension_numbers=helper),
    wrt=nnx.Param,
  )
  batch = tokens(0, batch=8)

  @nnx.jit
  def step(model, optimizer, batch):
    loss, grads = nnx.value_and_grad(loss_fn)(model, batch)
    optimizer.update(model, grads)
    return loss

  first = float(step(model, optimizer, batch))
  for _ in range(40):
    last = float(step(model, optimizer, batch))
  assert last < 0.5 * first, (first, last)
