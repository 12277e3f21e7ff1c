"""A character transformer in Flax NNX, trained with MARS-M (so.mars_muon).

MARS-M is Muon on a clipped, variance-reduced gradient: the member of the
family our paired-seed study recommends for deep nets (benchmarks/RESULTS.md,
section 5). Muon takes the weight matrices, including the 3-D query, key,
value and output kernels of ``nnx.MultiHeadAttention``; embeddings, biases,
norms and the output head take AdamW. In its default approx mode MARS-M needs
one gradient per step, so the loop is an ordinary ``nnx.Optimizer`` loop.

The text is Python's own help topics (``pydoc_data.topics``): nothing to
download. Run (from the repository root)::

  python examples/nnx_transformer_mars_m.py [--steps 200] [--batch 16]
"""

import argparse
import functools
from pydoc_data import topics

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import spider_optax as so

CONTEXT = 64  # characters the model sees; a window is CONTEXT + 1 of them


class Block(nnx.Module):
  """Pre-LayerNorm: causal self-attention, then a 4x MLP."""

  def __init__(self, d: int, heads: int, rngs: nnx.Rngs):
    self.ln1 = nnx.LayerNorm(d, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(heads, d, decode=False, rngs=rngs)
    self.ln2 = nnx.LayerNorm(d, rngs=rngs)
    self.up = nnx.Linear(d, 4 * d, rngs=rngs)
    self.down = nnx.Linear(4 * d, d, rngs=rngs)

  def __call__(self, h, mask):
    """(batch, length, d) -> (batch, length, d)."""
    h = h + self.attn(self.ln1(h), mask=mask)
    return h + self.down(jax.nn.gelu(self.up(self.ln2(h))))


class CharTransformer(nnx.Module):
  """Token and position embeddings, the blocks, a final norm and a head."""

  def __init__(self, vocab: int, d: int, layers: int, *, rngs: nnx.Rngs):
    small = nnx.initializers.normal(0.02)
    self.embed = nnx.Embed(vocab, d, embedding_init=small, rngs=rngs)
    self.pos = nnx.Param(small(rngs.params(), (CONTEXT, d)))
    self.blocks = nnx.List([Block(d, 4, rngs) for _ in range(layers)])
    self.ln_f = nnx.LayerNorm(d, rngs=rngs)
    self.head = nnx.Linear(d, vocab, rngs=rngs)

  def __call__(self, tokens):
    """(batch, length) ids -> (batch, length, vocab) logits."""
    mask = nnx.make_causal_mask(tokens)
    h = self.embed(tokens) + self.pos[: tokens.shape[1]]
    for block in self.blocks:
      h = block(h, mask)
    return self.head(self.ln_f(h))


def loss_fn(model, windows):
  """Mean next-character cross-entropy, in nats."""
  logits = model(windows[:, :-1])
  labels = windows[:, 1:]
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def load_text():
  """Python's help topics as int32 ids (whitespace collapsed), and the vocab."""
  text = ' '.join(
    ' '.join(topics.topics[k].split()) for k in sorted(topics.topics)
  )
  vocab = sorted(set(text))
  ids = np.searchsorted(np.array(vocab), np.array(list(text))).astype(np.int32)
  return ids, vocab


def windows_at(ids, starts):
  """The windows of CONTEXT + 1 ids that begin at ``starts``."""
  return jnp.asarray(ids[np.asarray(starts)[:, None] + np.arange(CONTEXT + 1)])


def main(argv=None):
  """Trains, printing the losses; returns the final ones (and at init)."""
  parser = argparse.ArgumentParser(
    description='An NNX character transformer trained with MARS-M.'
  )
  parser.add_argument('--steps', type=int, default=200)
  parser.add_argument('--batch', type=int, default=16, help='windows per step')
  parser.add_argument('--d', type=int, default=64, help='model width')
  parser.add_argument('--layers', type=int, default=2)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)

  ids, vocab = load_text()
  cut = int(0.9 * len(ids))  # 90% to train on, 10% held out
  train, val = ids[:cut], ids[cut:]
  val_windows = windows_at(val, np.arange(0, len(val) - CONTEXT, CONTEXT + 1))
  # As many train windows, evenly spaced: one compiled evaluation for both.
  spaced = np.linspace(0, cut - CONTEXT - 1, len(val_windows), dtype=int)
  train_windows = windows_at(train, spaced)

  model = CharTransformer(
    len(vocab), args.d, args.layers, rngs=nnx.Rngs(args.seed)
  )
  # What our study tuned for MARS-M on this task (2 layers, d 64, 200 steps
  # of 16 windows; benchmarks/family.py, the tuned config in
  # benchmarks/results/family.json): a peak learning rate of 0.0226
  # (0.016 * sqrt(2)), b1 = 0.9, and the defaults gamma = 0.025 and the clip
  # at global norm 1; 5% linear warmup from 0, then cosine decay to 0.
  schedule = optax.warmup_cosine_decay_schedule(
    0.0, 0.0226, max(1, round(0.05 * args.steps)), args.steps
  )
  # Muon on the Linear kernels and the attention kernels (3-D, read as
  # matrices); AdamW on embeddings, biases, norms and the output head.
  matrices = functools.partial(so.flax.muon_weight_matrices, exclude=['head'])
  tx = so.mars_muon(schedule, b1=0.9, muon_weight_dimension_numbers=matrices)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer, windows):
    loss, grads = nnx.value_and_grad(loss_fn)(model, windows)
    optimizer.update(model, grads)  # approx mode: one gradient, as Muon
    return loss

  evaluate = nnx.jit(loss_fn)
  rng = np.random.default_rng(args.seed)
  initial = float(evaluate(model, val_windows))
  print(
    f'{len(ids)} characters, {len(vocab)} symbols; validation loss at '
    f'init {initial:.3f} on {len(val_windows)} windows'
  )
  for step in range(args.steps):
    starts = rng.integers(0, cut - CONTEXT, args.batch)
    train_step(model, optimizer, windows_at(train, starts))
    if (step + 1) % max(1, args.steps // 4) == 0 or step + 1 == args.steps:
      train_loss = float(evaluate(model, train_windows))
      val_loss = float(evaluate(model, val_windows))
      print(
        f'step {step + 1:4d}: train loss {train_loss:.3f}, '
        f'validation loss {val_loss:.3f}'
      )
  print(f'final validation loss {val_loss:.3f} nats')
  return {
    'initial_val_loss': initial,
    'train_loss': train_loss,
    'val_loss': val_loss,
  }


if __name__ == '__main__':
  main()
