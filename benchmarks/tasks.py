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

The stochastic problems of ``complexity.py``, whose samples are drawn rather
than stored: :data:`WELLS` and :data:`RAMP` (online, :class:`Problem`) and
the cosh finite sum (:func:`cosh_loss`, :func:`cosh_data`).
"""

import math
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

Params = Any
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
  return [{'w': jnp.asarray(rng.standard_normal((m, k), np.float32)
                            / np.sqrt(m, dtype=np.float32)),
           'b': jnp.zeros(k)} for m, k in zip(sizes[:-1], sizes[1:])]


def mlp_logits(
    params: list[dict[str, jax.Array]], x: jax.Array, *,
    activation: Callable[[jax.Array], jax.Array] = jnp.tanh,
) -> jax.Array:
  for layer in params[:-1]:
    x = activation(x @ layer['w'] + layer['b'])
  return x @ params[-1]['w'] + params[-1]['b']


def mlp_loss(
    params: list[dict[str, jax.Array]], x: jax.Array, y: jax.Array, *,
    activation: Callable[[jax.Array], jax.Array] = jnp.tanh, l2: float = L2,
) -> jax.Array:
  """Mean cross-entropy over the batch plus (l2/2) * ||weights||^2."""
  logits = mlp_logits(params, x, activation=activation)
  loss = jnp.mean(
      optax.softmax_cross_entropy_with_integer_labels(logits, y))
  if l2:
    loss = loss + 0.5 * l2 * sum(jnp.sum(p['w'] ** 2) for p in params)
  return loss


def digits_task(seed: int) -> Task:
  """sklearn digits and the MLP 64-32-10 (tanh), init from ``seed``."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  x = jnp.asarray(np.asarray(digits.data, np.float32) / 16.0)
  y = jnp.asarray(digits.target, jnp.int32)
  return Task(mlp_loss, mlp_init(seed, (x.shape[1], HIDDEN, 10)), (x, y),
              f'sklearn digits, MLP 64-{HIDDEN}-10 tanh, L2={L2}')


# ---------------------------------------------------------------- charlm ---

def load_text() -> str:
  """English prose bundled with Python: the pydoc help topics."""
  from pydoc_data import topics  # pylint: disable=g-import-not-at-top
  text = ' '.join(topics.topics[k] for k in sorted(topics.topics))
  text = re.sub(r'\s+', ' ', text)
  return ''.join(c if ord(c) < 128 else '?' for c in text)


def lstm_init(seed: int, vocab: int, embed: int, hidden: int) -> Params:
  rng = np.random.default_rng(seed)
  normal = lambda shape, scale: jnp.asarray(
      rng.standard_normal(shape, np.float32) * np.float32(scale))
  b = np.zeros(4 * hidden, np.float32)
  b[hidden:2 * hidden] = 1.0  # forget-gate bias 1
  return dict(
      embed=normal((vocab, embed), 1.0 / math.sqrt(embed)),
      lstm=dict(w=normal((embed + hidden, 4 * hidden),
                         1.0 / math.sqrt(embed + hidden)), b=jnp.asarray(b)),
      out=dict(w=normal((hidden, vocab), 1.0 / math.sqrt(hidden)),
               b=jnp.zeros(vocab)))


def lstm_loss(params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean next-character cross-entropy; x, y are (batch, seq_len) ints."""
  hidden = params['lstm']['w'].shape[1] // 4
  emb = params['embed'][x]  # (B, T, E)

  def cell(carry, e_t):
    h, c = carry
    z = (jnp.concatenate([e_t, h], -1) @ params['lstm']['w']
         + params['lstm']['b'])
    i, f, g, o = jnp.split(z, 4, -1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (h, c), h

  zeros = jnp.zeros((x.shape[0], hidden), emb.dtype)
  _, hs = jax.lax.scan(cell, (zeros, zeros), jnp.swapaxes(emb, 0, 1))
  logits = hs @ params['out']['w'] + params['out']['b']  # (T, B, V)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, y.T)
  return jnp.mean(ce)


def charlm_task(seed: int, n: int, *, seq_len: int = 32, embed: int = 16,
                hidden: int = 64) -> Task:
  """The char LSTM on the first n windows of the pydoc text."""
  text = load_text()
  vocab = sorted(set(text))
  need = n * (seq_len + 1)
  if len(text) < need:
    raise ValueError(f'only {len(text)} characters of text, need {need}')
  ids = np.array([vocab.index(c) for c in text[:need]], np.int32)
  windows = ids.reshape(n, seq_len + 1)
  return Task(
      lstm_loss, lstm_init(seed, len(vocab), embed, hidden),
      (jnp.asarray(windows[:, :-1]), jnp.asarray(windows[:, 1:])),
      f'char LSTM (vocab {len(vocab)}, embed {embed}, hidden {hidden}, '
      f'seq_len {seq_len}) on pydoc_data.topics, {n} windows ({need} '
      'characters)')


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
WELLS = Problem('wells', 4, 2.0, 11.0, phi_wells,
                lambda eps: jnp.array([2.0, 1.6, 0.3, -0.25], jnp.float32),
                'wells: sum_j (x_j^2-1)^4/8 (fixed, non-convex)')
RAMP = Problem('ramp', 2, 1.0, 3.0, phi_ramp,
               lambda eps: jnp.stack([0.5 / eps, 1.5]).astype(jnp.float32),
               'ramp: slope 2 eps over 1/(2 eps) + x_2^4/4 (eps-scaled)')


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


def minibatch(problem: Problem, normals: jax.Array, size: Any,
              eps: Any) -> tuple[jax.Array, jax.Array, Any]:
  """The minibatch mean of ``size`` samples' noise, drawn directly.

  F is linear in (s, z), so a minibatch gradient depends on the samples only
  through their means, which are exactly N(0, TAU^2/size) and
  N(0, SIGMA^2/(d size) I): one draw costs O(d) whatever the batch size, and
  the oracle count is still ``size``.
  """
  size = jnp.asarray(size, jnp.float32)
  return (normals[0] * (TAU / jnp.sqrt(size)),
          normals[1] * (SIGMA / jnp.sqrt(problem.d * size)), eps)


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
  return (jnp.asarray(np.concatenate([s, -s]), jnp.float32),
          jnp.asarray(np.concatenate([z, -z]), jnp.float32))
