"""The benchmarks' problems: data, models and losses.

Finite sums f(x) = (1/n) sum_i f_i(x) on data that ships with a package or
with Python (nothing is downloaded), as :class:`Task`:

- :func:`digits_task`: scikit-learn's digits (n = 1797 images, pixels scaled
  to [0, 1]) and an MLP 64 -> 32 tanh -> 10, softmax cross-entropy plus
  (L2/2) ||weights||^2.
- :func:`charlm_task`: a character-level LSTM language model on the help
  texts of ``pydoc_data.topics`` (whitespace collapsed, non-ASCII mapped to
  ``?``), cut into n non-overlapping windows of ``seq_len + 1`` characters;
  one window is one sample (mean next-character cross-entropy).

Deep nets with a held-out split, for the study (``family.py``) and the
quickstart, as :class:`DeepTask`:

- :func:`transformer_task`: a pre-LayerNorm character transformer (pure
  JAX) on :func:`pydoc_text`, split 90/10 by position; a sample is a window
  of 65 characters at any position of the train text.
- :func:`cnn_task`: a CNN with BatchNorm and dropout on the digits, an
  80/20 stratified split.

The stochastic problems of ``complexity.py``, whose samples are drawn rather
than stored: :data:`WELLS` and :data:`RAMP` (online, :class:`Problem`) and
the cosh finite sum (:func:`cosh_loss`, :func:`cosh_data`).
"""

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

Params = Any
ModelState = Any
Loss = Callable[..., jax.Array]


class Task(NamedTuple):
  """A finite-sum training problem.

  Attributes:
    loss_fn: ``loss_fn(params, x, y)``, the mean loss over the rows of a batch.
    params: the initial params.
    data: ``(x, y)``, the n samples.
    description: one line for tables and plots.
  """

  loss_fn: Loss
  params: Params
  data: tuple[jax.Array, jax.Array]
  description: str

  @property
  def n(self) -> int:
    return int(self.data[0].shape[0])


# ---------------------------------------------------------------- digits ---

HIDDEN = 32
L2 = 1e-4


def mlp_init(seed: int, sizes: tuple[int, ...]) -> list[dict[str, jax.Array]]:
  """LeCun-normal weights, zero biases: layers ``sizes[i] -> sizes[i+1]``."""
  rng = np.random.default_rng(seed)
  return [
    {
      'w': jnp.asarray(
        rng.standard_normal((m, k), np.float32) / np.sqrt(m, dtype=np.float32)
      ),
      'b': jnp.zeros(k),
    }
    for m, k in zip(sizes[:-1], sizes[1:])
  ]


def mlp_logits(
  params: list[dict[str, jax.Array]],
  x: jax.Array,
  *,
  activation: Callable[[jax.Array], jax.Array] = jnp.tanh,
) -> jax.Array:
  for layer in params[:-1]:
    x = activation(x @ layer['w'] + layer['b'])
  return x @ params[-1]['w'] + params[-1]['b']


def mlp_loss(
  params: list[dict[str, jax.Array]],
  x: jax.Array,
  y: jax.Array,
  *,
  activation: Callable[[jax.Array], jax.Array] = jnp.tanh,
  l2: float = L2,
) -> jax.Array:
  """Mean cross-entropy over the batch plus (l2/2) * ||weights||^2."""
  logits = mlp_logits(params, x, activation=activation)
  loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
  if l2:
    loss = loss + 0.5 * l2 * sum(jnp.sum(p['w'] ** 2) for p in params)
  return loss


def digits_task(seed: int) -> Task:
  """sklearn digits and the MLP 64-32-10 (tanh), init from ``seed``."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

  digits = load_digits()
  x = jnp.asarray(np.asarray(digits.data, np.float32) / 16.0)
  y = jnp.asarray(digits.target, jnp.int32)
  return Task(
    mlp_loss,
    mlp_init(seed, (x.shape[1], HIDDEN, 10)),
    (x, y),
    f'sklearn digits, MLP 64-{HIDDEN}-10 tanh, L2={L2}',
  )


# ---------------------------------------------------------------- charlm ---


def pydoc_text() -> str:
  """The pydoc help topics, whitespace collapsed (433k characters)."""
  from pydoc_data import topics  # pylint: disable=g-import-not-at-top

  return ' '.join(
    ' '.join(topics.topics[k].split()) for k in sorted(topics.topics)
  )


def load_text() -> str:
  """:func:`pydoc_text` in ASCII, other characters mapped to ``?``."""
  return ''.join(c if ord(c) < 128 else '?' for c in pydoc_text())


def lstm_init(seed: int, vocab: int, embed: int, hidden: int) -> Params:
  rng = np.random.default_rng(seed)
  normal = lambda shape, scale: jnp.asarray(
    rng.standard_normal(shape, np.float32) * np.float32(scale)
  )
  b = np.zeros(4 * hidden, np.float32)
  b[hidden : 2 * hidden] = 1.0  # forget-gate bias 1
  return dict(
    embed=normal((vocab, embed), 1.0 / math.sqrt(embed)),
    lstm=dict(
      w=normal((embed + hidden, 4 * hidden), 1.0 / math.sqrt(embed + hidden)),
      b=jnp.asarray(b),
    ),
    out=dict(
      w=normal((hidden, vocab), 1.0 / math.sqrt(hidden)), b=jnp.zeros(vocab)
    ),
  )


def lstm_loss(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean next-character cross-entropy; x, y are (batch, seq_len) ints."""
  hidden = params['lstm']['w'].shape[1] // 4
  emb = params['embed'][x]  # (B, T, E)

  def cell(carry, e_t):
    h, c = carry
    z = (
      jnp.concatenate([e_t, h], -1) @ params['lstm']['w'] + params['lstm']['b']
    )
    i, f, g, o = jnp.split(z, 4, -1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (h, c), h

  zeros = jnp.zeros((x.shape[0], hidden), emb.dtype)
  _, hs = jax.lax.scan(cell, (zeros, zeros), jnp.swapaxes(emb, 0, 1))
  logits = hs @ params['out']['w'] + params['out']['b']  # (T, B, V)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, y.T)
  return jnp.mean(ce)


def charlm_task(
  seed: int, n: int, *, seq_len: int = 32, embed: int = 16, hidden: int = 64
) -> Task:
  """The char LSTM on the first n windows of the pydoc text."""
  text = load_text()
  vocab = sorted(set(text))
  need = n * (seq_len + 1)
  if len(text) < need:
    raise ValueError(f'only {len(text)} characters of text, need {need}')
  ids = np.array([vocab.index(c) for c in text[:need]], np.int32)
  windows = ids.reshape(n, seq_len + 1)
  return Task(
    lstm_loss,
    lstm_init(seed, len(vocab), embed, hidden),
    (jnp.asarray(windows[:, :-1]), jnp.asarray(windows[:, 1:])),
    f'char LSTM (vocab {len(vocab)}, embed {embed}, hidden {hidden}, '
    f'seq_len {seq_len}) on pydoc_data.topics, {n} windows ({need} '
    'characters)',
  )


# ------------------------------------------- online problems (complexity) ---

SIGMA = 1.0  # additive noise of one sample: E||z||^2 = SIGMA^2
TAU = 0.5  # multiplicative noise of one sample: s_j ~ N(0, TAU^2)


class Problem(NamedTuple):
  r"""f(x) = sum_j phi_j(x; eps), sampled as F(x; s, z).

  A sample is F(x; s, z) = sum_j phi_j(x) (1 + s_j) + <z, x> with
  s_j ~ N(0, TAU^2), which is multiplicative and survives the paired
  difference grad F(x) - grad F(y) = (phi'(x) - phi'(y))(1 + s), and
  z ~ N(0, (SIGMA^2/d) I), which is additive (the anchor noise) and cancels
  in it. So f = E F = sum_j phi_j, with f* = 0.
  """

  name: str
  d: int
  L0: float
  L1: float
  phi: Callable[[jax.Array, jax.Array], jax.Array]  # (x, eps) -> (d,) terms
  x0: Callable[[jax.Array], jax.Array]  # eps -> (d,) float32
  title: str


def phi_wells(x: jax.Array, eps: jax.Array) -> jax.Array:
  """(x_j^2 - 1)^4 / 8 in every coordinate (a fixed function of x).

  Its stationary points have every coordinate in {-1, 0, 1}. The minima are
  flat (phi ~ 2 (u -+ 1)^4, Hessian 0, not strongly convex), and 0 is a
  local maximum, so the mixed points are saddles. (L0, L1) = (2, 11): with
  w = u^2, phi' = u (w - 1)^3 and phi'' = (w - 1)^2 (7w - 1). On |u| <= 1,
  |phi''| <= 2: for w <= 3/7, |7w - 1| <= 2 and (1 - w)^2 <= 1; for
  3/7 <= w <= 1, (1 - w)^2 <= 16/49 and 7w - 1 <= 6. For w >= 1, put
  t = w - 1: phi'' = 7t^3 + 6t^2 <= 2 + 11t^3 (by AM-GM,
  t^2 <= (2t^3 + 1)/3), and |phi'| = sqrt(w) t^3 >= t^3. The Hessian is
  diagonal, so ||hess f|| = max_j |phi''(x_j)| <= 2 + 11 ||grad f||.
  """
  del eps
  return (x * x - 1) ** 4 / 8


def phi_ramp(x: jax.Array, eps: jax.Array) -> jax.Array:
  """2 eps (sqrt(u^2 + 4 eps^2) - 2 eps) and w^4 / 4 (scaled with eps).

  From x0 = (1/(2 eps), 3/2), coordinate 1 has slope 2 eps (just above the
  target) over a length 1/(2 eps) (a gap of 1), into a basin of curvature 1;
  coordinate 2 is a flat quartic. The only stationary point is (0, 0), with
  Hessian diag(1, 0), which is degenerate. (L0, L1) = (1, 3): phi_1'' <= 1,
  and 3w^2 <= 4/9 + 3|w|^3. The function is convex; what matters is the
  scaling with eps, which is how worst-case (lower-bound) instances are
  built. The gradient stays near eps along a path of length ~1/eps, so a
  step of length ~eps/L0 needs ~eps^-2 steps, and the noise in the basin
  (sigma at curvature 1) holds a constant-step SGD to lr ~ eps^2/sigma^2:
  the sources of the bounds' eps^-3 for SPIDER (eps^-2 steps at ~sigma/eps
  calls each) and eps^-4 for SGD (1/(lr eps^2) steps).
  """
  u, w = x[0], x[1]
  ramp = 2 * eps * (jnp.sqrt(u * u + 4 * eps * eps) - 2 * eps)
  return jnp.stack([ramp, w**4 / 4])


# x0 = (2, 1.6, 0.3, -0.25) puts one coordinate far out, where
# ||grad f(x0)|| = 54 and the Hessian is 243 (0 at the minima): a constant
# step that is stable at x0 is far too short later, which is what clipping
# fixes. Two coordinates start on the concave side of the barrier at 0.
WELLS = Problem(
  'wells',
  4,
  2.0,
  11.0,
  phi_wells,
  lambda eps: jnp.array([2.0, 1.6, 0.3, -0.25], jnp.float32),
  'wells: sum_j (x_j^2-1)^4/8 (fixed, non-convex)',
)
RAMP = Problem(
  'ramp',
  2,
  1.0,
  3.0,
  phi_ramp,
  lambda eps: jnp.stack([0.5 / eps, 1.5]).astype(jnp.float32),
  'ramp: slope 2 eps over 1/(2 eps) + x_2^4/4 (eps-scaled)',
)


def f_value(problem: Problem, x: jax.Array, eps: Any) -> jax.Array:
  return jnp.sum(problem.phi(x, eps))


def true_grad_norm(problem: Problem, x: jax.Array, eps: Any) -> jax.Array:
  """||grad f(x)||: exact, for stopping rules only (not an oracle call)."""
  return jnp.linalg.norm(jax.grad(lambda y: f_value(problem, y, eps))(x))


def sample_loss(problem: Problem) -> Loss:
  """F(x; batch), batch = (mean s, mean z, eps) of a minibatch."""

  def loss(x, batch):
    s, z, eps = batch
    return jnp.sum(problem.phi(x, eps) * (1 + s) + z * x)

  return loss


def minibatch(
  problem: Problem, normals: jax.Array, size: Any, eps: Any
) -> tuple[jax.Array, jax.Array, Any]:
  """The minibatch mean of ``size`` samples' noise, drawn directly.

  F is linear in (s, z), so a minibatch gradient depends on the samples only
  through their means, which are exactly N(0, TAU^2/size) and
  N(0, SIGMA^2/(d size) I): one draw costs O(d) whatever the batch size, and
  the oracle count is still ``size``.
  """
  size = jnp.asarray(size, jnp.float32)
  return (
    normals[0] * (TAU / jnp.sqrt(size)),
    normals[1] * (SIGMA / jnp.sqrt(problem.d * size)),
    eps,
  )


# -------------------------------------------- cosh finite sum (complexity) ---

COSH_D = 5
COSH_SIGMA = 1.0
COSH_L0, COSH_L1 = 3.0, 1.5


def cosh_grad_norm(x: jax.Array) -> jax.Array:
  return jnp.linalg.norm(2 * jnp.sinh(x))


def cosh_loss(x: jax.Array, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
  """Mean of f_i(x) = sum_j 2 cosh(x_j)(1 + s_ij) + <z_i, x> over the rows."""
  s, z = batch
  return jnp.mean(jnp.sum(2 * jnp.cosh(x) * (1 + s) + z * x, axis=-1))


def cosh_x0() -> jax.Array:
  return jnp.linspace(2.0, 3.0, COSH_D, dtype=jnp.float32)


def cosh_data(n: int, seed: int = 0) -> tuple[jax.Array, jax.Array]:
  """n samples (s, z) in antithetic pairs, so that f = sum_j 2 cosh(x_j)."""
  rng = np.random.default_rng(seed)
  s = rng.uniform(-0.5, 0.5, size=(n // 2, COSH_D))
  z = rng.normal(size=(n // 2, COSH_D)) * (COSH_SIGMA / math.sqrt(COSH_D))
  return (
    jnp.asarray(np.concatenate([s, -s]), jnp.float32),
    jnp.asarray(np.concatenate([z, -z]), jnp.float32),
  )


# ------------------------------------------------- deep nets (family.py) ---

CONTEXT = 64  # the transformer's context: a sample is CONTEXT + 1 characters
EVAL_WINDOWS = 256  # fixed windows of each split for the transformer's losses


class DeepTask(NamedTuple):
  """A training problem with a held-out split.

  Attributes:
    name: its key in the results.
    description: one line for tables and plots.
    init: ``seed -> (params, model_state)``.
    loss: ``loss(params, model_state, batch, *, key) -> (loss, model_state)``,
      the mean training loss over the batch and the new model state (the
      running BatchNorm statistics, or ``{}``).
    take: ``take(data, ids) -> batch``: the samples ``ids`` (traced).
    data: the arrays ``take`` reads.
    evaluate: ``(params, model_state) -> {'train_loss', 'val_loss'}``,
      jitted, in evaluation mode.
    n_train: the number of samples to draw from.
    matrices: ``params -> tree`` of ``optax.contrib.MuonDimensionNumbers``
      for the hidden weight matrices and None for every other leaf (for
      Muon-type optimizers' ``muon_weight_dimension_numbers``), or None
      (flat params).
  """

  name: str
  description: str
  init: Callable[[int], tuple[Params, ModelState]]
  loss: Callable[..., tuple[jax.Array, ModelState]]
  take: Callable[[Any, jax.Array], Any]
  data: Any
  evaluate: Callable[[Params, ModelState], dict[str, jax.Array]]
  n_train: int
  matrices: Callable[[Params], Any] | None = None


def encode(text: str) -> tuple[np.ndarray, str]:
  """The text as int32 ids into its sorted alphabet, and the alphabet."""
  alphabet = ''.join(sorted(set(text)))
  codes = np.frombuffer(text.encode('utf-32-le'), np.uint32)
  table = np.frombuffer(alphabet.encode('utf-32-le'), np.uint32)
  return np.searchsorted(table, codes).astype(np.int32), alphabet


def _normal(
  rng: np.random.Generator, *shape: int, scale: float = 1.0
) -> np.ndarray:
  """N(0, scale^2) float32 (NumPy: no XLA compilation per shape)."""
  return rng.standard_normal(shape, np.float32) * np.float32(scale)


def _dense(
  rng: np.random.Generator, fan_in: int, fan_out: int, gain: float = 1.0
) -> np.ndarray:
  return _normal(rng, fan_in, fan_out, scale=gain / np.sqrt(fan_in))


def _norm_params(d: int) -> dict[str, np.ndarray]:
  return {'scale': np.ones(d, np.float32), 'bias': np.zeros(d, np.float32)}


def flattened(
  init: Callable[[int], tuple[Params, ModelState]],
  loss: Callable[..., tuple[jax.Array, ModelState]],
) -> tuple[
  Callable[[int], tuple[jax.Array, ModelState]],
  Callable[..., tuple[jax.Array, ModelState]],
]:
  """``init`` and ``loss`` on the params as one flat float32 vector.

  For optimizers that are elementwise or use the global norm (not Muon-type
  ones, which need the matrices: ``flat=False``), a flat vector changes none
  of their updates (but the summation order of
  the norm); with one leaf in place of tens, XLA compiles an update 10-20x
  faster and runs it about 3x faster on a 2-core CPU.
  """
  unravel = ravel_pytree(init(0)[0])[1]

  def flat_init(seed):
    params, model_state = init(seed)
    return ravel_pytree(params)[0], model_state

  def flat_loss(params, model_state, batch, *, key=None):
    return loss(unravel(params), model_state, batch, key=key)

  return flat_init, flat_loss


def _layer_norm(x: jax.Array, p: dict[str, jax.Array]) -> jax.Array:
  mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + 1e-5) * p['scale'] + p['bias']


def transformer_init(
  seed: int, vocab: int, *, d: int = 64, layers: int = 2, context: int = CONTEXT
) -> Params:
  """GPT-2 style init: N(0, 0.02) embeddings, 1/sqrt(fan_in) dense weights,
  residual projections scaled down by sqrt(2 layers)."""
  rng = np.random.default_rng(seed)
  depth = 1 / np.sqrt(2 * layers)
  return {
    'embed': _normal(rng, vocab, d, scale=0.02),
    'pos': _normal(rng, context, d, scale=0.02),
    'layers': [
      {
        'ln1': _norm_params(d),
        'qkv': _dense(rng, d, 3 * d),
        'proj': _dense(rng, d, d, depth),
        'ln2': _norm_params(d),
        'w1': _dense(rng, d, 4 * d),
        'b1': np.zeros(4 * d, np.float32),
        'w2': _dense(rng, 4 * d, d, depth),
        'b2': np.zeros(d, np.float32),
      }
      for _ in range(layers)
    ],
    'ln_f': _norm_params(d),
    'head': _dense(rng, d, vocab),
  }


def _attention(h: jax.Array, layer: Params, heads: int) -> jax.Array:
  batch, length, _ = h.shape
  qkv = (_layer_norm(h, layer['ln1']) @ layer['qkv']).reshape(
    batch, length, 3 * heads, -1
  )
  q, k, v = jnp.split(qkv, 3, axis=2)
  scores = jnp.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(q.shape[-1])
  causal = jnp.tril(jnp.ones((length, length), bool))
  weights = jax.nn.softmax(jnp.where(causal, scores, -1e9), axis=-1)
  out = jnp.einsum('bhqk,bkhd->bqhd', weights, v).reshape(batch, length, -1)
  return out @ layer['proj']


def transformer_logits(
  params: Params, tokens: jax.Array, *, heads: int = 4
) -> jax.Array:
  """Pre-LayerNorm causal transformer: (batch, length) ids -> logits."""
  vocab = params['embed'].shape[0]
  # A one-hot product, not a gather: its gradient is a matmul, not a
  # scatter-add (faster on CPU).
  h = jax.nn.one_hot(tokens, vocab) @ params['embed']
  h = h + params['pos'][: tokens.shape[1]]
  for layer in params['layers']:
    h = h + _attention(h, layer, heads)
    hidden = jax.nn.gelu(
      _layer_norm(h, layer['ln2']) @ layer['w1'] + layer['b1']
    )
    h = h + hidden @ layer['w2'] + layer['b2']
  return _layer_norm(h, params['ln_f']) @ params['head']


def lm_loss(
  params: Params,
  model_state: ModelState,
  windows: jax.Array,
  *,
  key: jax.Array | None = None,
) -> tuple[jax.Array, ModelState]:
  """Mean next-character cross-entropy over windows of CONTEXT + 1 ids."""
  del key  # no dropout
  logits = transformer_logits(params, windows[:, :-1])
  return optax.softmax_cross_entropy_with_integer_labels(
    logits, windows[:, 1:]
  ).mean(), model_state


def take_windows(ids: jax.Array, starts: jax.Array) -> jax.Array:
  """The windows of CONTEXT + 1 ids that begin at ``starts``."""
  return ids[starts[:, None] + jnp.arange(CONTEXT + 1)]


def _hidden_matrices(names: tuple[str, ...]) -> Callable[[Params], Any]:
  """``matrices`` of a task: the 2-D leaves under keys ``names``, each a
  matrix (in, out); None for every other leaf."""
  dims = optax.contrib.MuonDimensionNumbers

  def matrices(params):
    def one(path, x):
      keys = {getattr(k, 'key', None) for k in path}
      if x.ndim >= 2 and keys & set(names):
        return dims(tuple(range(x.ndim - 1)), x.ndim - 1)
      return None

    return jax.tree_util.tree_map_with_path(one, params)

  return matrices


def transformer_task(
  *, layers: int = 2, d: int = 64, flat: bool = True, whole_split: bool = False
) -> DeepTask:
  """The character transformer on the pydoc text, split 90/10.

  Args:
    layers: transformer blocks.
    d: the model width (4 heads).
    flat: the params as one flat vector (:func:`flattened`); else the tree,
      with ``matrices`` giving its hidden weight matrices (attention and MLP;
      not the embeddings or the head).
    whole_split: the validation loss on every non-overlapping window of the
      validation text (666 windows, 42.6k predicted characters), not
      :data:`EVAL_WINDOWS` fixed ones.
  """
  ids, alphabet = encode(pydoc_text())
  cut = int(0.9 * len(ids))
  train, val = jnp.asarray(ids[:cut]), jnp.asarray(ids[cut:])
  n_starts = cut - CONTEXT  # a window may start anywhere in the train text
  fixed = lambda size: jnp.asarray(
    np.linspace(0, size - CONTEXT - 1, EVAL_WINDOWS).astype(np.int32)
  )
  train_windows = take_windows(train, fixed(cut))
  val_starts = (
    jnp.arange(0, len(ids) - cut - CONTEXT, CONTEXT + 1)
    if whole_split
    else fixed(len(ids) - cut)
  )
  val_windows = take_windows(val, val_starts)
  init = lambda seed: (
    transformer_init(seed, len(alphabet), d=d, layers=layers),
    {},
  )
  loss_fn = lm_loss
  if flat:
    init, loss_fn = flattened(init, lm_loss)

  @jax.jit
  def evaluate(params, model_state):
    loss = lambda w: loss_fn(params, model_state, w)[0]
    return {'train_loss': loss(train_windows), 'val_loss': loss(val_windows)}

  return DeepTask(
    'transformer',
    f'char transformer ({layers} layers, d {d}, 4 heads, context {CONTEXT}) '
    f'on pydoc_data.topics ({len(ids)} characters, {len(alphabet)} symbols, '
    f'90/10 split; losses on {val_windows.shape[0]} windows of the '
    f'validation split, {EVAL_WINDOWS} of the train split)',
    init,
    loss_fn,
    take_windows,
    train,
    evaluate,
    n_starts,
    None if flat else _hidden_matrices(('qkv', 'proj', 'w1', 'w2')),
  )


def cnn_init(seed: int) -> tuple[Params, ModelState]:
  """Two 3x3 convolutions (16, 32 channels) with BatchNorm, a dense head."""
  rng = np.random.default_rng(seed)
  params = {  # conv kernels HWIO, 1/sqrt(fan_in)
    'conv1': _normal(rng, 3, 3, 1, 16, scale=1 / 3),
    'bn1': _norm_params(16),
    'conv2': _normal(rng, 3, 3, 16, 32, scale=1 / 12),
    'bn2': _norm_params(32),
    'dense': _dense(rng, 4 * 4 * 32, 10),
    'bias': np.zeros(10, np.float32),
  }
  stats = {
    name: {'mean': jnp.zeros(c), 'var': jnp.ones(c)}
    for name, c in (('bn1', 16), ('bn2', 32))
  }
  return params, stats


def _conv(x: jax.Array, w: jax.Array, stride: int) -> jax.Array:
  return jax.lax.conv_general_dilated(
    x, w, (stride, stride), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )


def cnn_apply(
  params: Params,
  stats: ModelState,
  images: jax.Array,
  *,
  key: jax.Array | None,
  rate: float = 0.3,
  momentum: float = 0.9,
) -> tuple[jax.Array, ModelState]:
  """Logits and the running statistics.

  With a dropout ``key`` (training mode) BatchNorm normalises by the batch's
  statistics and the running ones move towards them; without one
  (evaluation) it uses the running statistics, which it returns unchanged.
  """
  new_stats = {}
  h = images.reshape(-1, 8, 8, 1)
  for conv, bn, stride in (('conv1', 'bn1', 1), ('conv2', 'bn2', 2)):
    h = _conv(h, params[conv], stride)
    if key is None:
      mean, var = stats[bn]['mean'], stats[bn]['var']
    else:
      mean, var = h.mean((0, 1, 2)), h.var((0, 1, 2))
    new_stats[bn] = jax.tree.map(
      lambda old, new: momentum * old + (1 - momentum) * new,
      stats[bn],
      {'mean': mean, 'var': var},
    )
    h = jax.nn.relu(
      (h - mean) * jax.lax.rsqrt(var + 1e-5) * params[bn]['scale']
      + params[bn]['bias']
    )
  h = h.reshape(h.shape[0], -1)
  if key is None:
    return h @ params['dense'] + params['bias'], stats
  keep = jax.random.bernoulli(key, 1 - rate, h.shape)
  h = jnp.where(keep, h / (1 - rate), 0.0)
  return h @ params['dense'] + params['bias'], new_stats


def cnn_loss(
  params: Params,
  stats: ModelState,
  batch: tuple[jax.Array, jax.Array],
  *,
  key: jax.Array | None = None,
) -> tuple[jax.Array, ModelState]:
  """Mean cross-entropy and the new running statistics (training mode with
  a key, evaluation mode without)."""
  images, labels = batch
  logits, new_stats = cnn_apply(params, stats, images, key=key)
  return optax.softmax_cross_entropy_with_integer_labels(
    logits, labels
  ).mean(), new_stats


def cnn_task(*, test_size: float = 0.2, flat: bool = True) -> DeepTask:
  """The CNN on sklearn's digits, a stratified train/test split (seed 0);
  ``flat`` as in :func:`transformer_task` (the matrices: both convolution
  kernels, as window * in by out)."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  from sklearn.model_selection import train_test_split  # pylint: disable=g-import-not-at-top

  digits = load_digits()
  x = np.asarray(digits.data, np.float32) / 16.0
  y = np.asarray(digits.target, np.int32)
  x_train, x_test, y_train, y_test = (
    jnp.asarray(a)
    for a in train_test_split(
      x, y, test_size=test_size, stratify=y, random_state=0
    )
  )
  n = int(x_train.shape[0])
  init, loss_fn = (
    flattened(cnn_init, cnn_loss) if flat else (cnn_init, cnn_loss)
  )

  @jax.jit
  def evaluate(params, stats):
    loss = lambda xs, ys: loss_fn(params, stats, (xs, ys))[0]
    return {
      'train_loss': loss(x_train, y_train),
      'val_loss': loss(x_test, y_test),
    }

  return DeepTask(
    'cnn',
    f'CNN (conv 16, conv 32 stride 2, BatchNorm, dropout 0.3) on sklearn '
    f'digits, {n} train / {x_test.shape[0]} test (stratified)',
    init,
    loss_fn,
    lambda data, idx: (data[0][idx], data[1][idx]),
    (x_train, y_train),
    evaluate,
    n,
    None if flat else _hidden_matrices(('conv1', 'conv2')),
  )
