"""The MARS family as optax aliases: MARS-AdamW, -Lion, -M (Muon), -Shampoo.

Each is a chain of small pieces: :func:`recursive_correction` first (the
variance-reduced gradient :math:`c_k`), then the clip, then the base
optimizer's direction, then the decoupled weight decay and the learning
rate. Leaves that the base optimizer does not take (vectors for the matrix
members; by choice for the others) go to AdamW on the raw gradient.
"""

from collections.abc import Callable
from typing import Any, cast, Literal

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import DTypeLike

from spider_optax import _buffers
from spider_optax import _checks
from spider_optax import _guard
from spider_optax import _masks
from spider_optax import muon
from spider_optax.clipping import clip_by_leaf_norm
from spider_optax.clipping import relaxed_clip
from spider_optax.correction import corrected_momentum
from spider_optax.correction import recursive_correction

Mask = Any | Callable[[optax.Params], Any] | None
AdamWLeaves = Literal['below_2d', 'not_2d']
_DEFAULT_NS_COEFFS = (3.4445, -4.7750, 2.0315)


def _clip(
  max_norm: chex.Numeric | None, per_tensor_clip: bool
) -> optax.GradientTransformation:
  """The clip of :math:`c_k`: by the global norm, per leaf, or none."""
  if max_norm is None:
    return optax.identity()
  max_norm = _checks.check_positive('max_norm', max_norm)
  # relaxed_clip(max_norm) is optax.clip_by_global_norm(max_norm) written as
  # one scalar factor, which XLA fuses into what follows: optax's version
  # left c_k squared and clipped as extra parameter-sized arrays (1.4x).
  return (
    clip_by_leaf_norm(max_norm) if per_tensor_clip else relaxed_clip(max_norm)
  )


def _betas(name: str, betas: Any) -> tuple[Any, Any]:
  """``betas`` as a checked pair of decays."""
  if isinstance(betas, np.ndarray | jax.Array) and np.shape(betas) == (2,):
    betas = tuple(betas)
  if not isinstance(betas, tuple | list) or len(betas) != 2:
    raise TypeError(
      f'{name} must be a pair (b1, b2) of numbers in [0, 1), got {betas!r}.'
    )
  return (
    _checks.check_decay(f'{name}[0]', betas[0]),
    _checks.check_decay(f'{name}[1]', betas[1]),
  )


def _adamw_fallback(
  adamw_1d: bool,
  adamw_leaves: AdamWLeaves,
  betas_1d: Any,
  eps: Any,
  mu_dtype: DTypeLike | None,
) -> tuple[Callable[[optax.Params], Any] | None, optax.GradientTransformation]:
  """Which leaves keep the member's update, and plain AdamW for the others.

  ``betas_1d`` is checked also where no leaf takes it (``adamw_1d=False``):
  one verdict for a value however the rest is configured.
  """
  b1_1d, b2_1d = _betas('betas_1d', betas_1d)
  rule = _rank_rule(adamw_leaves)
  if not adamw_1d:
    return None, optax.identity()
  return rule, muon.scale_by_adam(b1_1d, b2_1d, eps, mu_dtype=mu_dtype)


def _scale_by_lion(
  b1: chex.Numeric, mu_dtype: DTypeLike | None
) -> optax.GradientTransformation:
  r"""``optax.scale_by_lion(b1, b2=b1)``, also for gradients near 1e-38.

  The sign of :math:`\beta_1 m + (1 - \beta_1) c`; where that sum is 0
  although :math:`c` or :math:`m` is not (a product below float32's
  smallest normal number, flushed to 0: a silent zero step), the sign of
  :math:`c + \beta_1 / (1 - \beta_1) m`, the same number over
  :math:`1 - \beta_1`.
  """
  ratio = b1 / (1.0 - b1)

  def init_fn(params):
    return optax.ScaleByLionState(
      count=jnp.zeros([], jnp.int32),
      mu=jax.tree.map(lambda p: _buffers.zeros_like(p, mu_dtype), params),
    )

  def update_fn(updates, state, params=None):
    del params

    def sign(c, m):
      x = (1.0 - b1) * c + b1 * m
      return jnp.where(x != 0, jnp.sign(x), jnp.sign(c + ratio * m))

    signs = jax.tree.map(sign, updates, state.mu)
    mu = optax.tree.update_moment(updates, state.mu, b1, 1)
    return signs, optax.ScaleByLionState(
      count=optax.safe_increment(state.count),
      mu=optax.tree.cast_like(mu, state.mu),
    )

  return optax.GradientTransformation(init_fn, update_fn)


def _rank_rule(adamw_leaves: AdamWLeaves) -> Callable[[optax.Params], Any]:
  """Which leaves keep the MARS update when the others go to AdamW."""
  if adamw_leaves == 'below_2d':
    return lambda tree: jax.tree.map(lambda x: x.ndim >= 2, tree)
  if adamw_leaves == 'not_2d':
    return lambda tree: jax.tree.map(lambda x: x.ndim == 2, tree)
  raise ValueError(
    "adamw_leaves must be 'below_2d' (leaves of fewer than 2 dimensions go "
    "to AdamW) or 'not_2d' (every leaf that is not 2-D, the official rule), "
    f'got {adamw_leaves!r}.'
  )


def _mars(
  learning_rate: optax.ScalarOrSchedule,
  direction: optax.GradientTransformation,
  *,
  b1: chex.Numeric,
  gamma: optax.ScalarOrSchedule,
  approx: bool,
  mu_dtype: DTypeLike | None,
  weight_decay: optax.ScalarOrSchedule,
  mask: Mask,
  fallback: optax.GradientTransformation | None = None,
  is_main: Callable[[optax.Params], Any] | None = None,
  lr_1d: optax.ScalarOrSchedule | None = None,
  weight_decay_1d: optax.ScalarOrSchedule | None = None,
  correct: bool = True,
  name: str = 'MARS',
) -> optax.GradientTransformationExtraArgs:
  """The chain every member is: correction, direction, decay, learning rate.

  With ``fallback``, the leaves where ``is_main`` is False skip the
  correction and take ``fallback`` (on the raw gradient) in place of
  ``direction``, with ``lr_1d`` and ``weight_decay_1d`` where given.
  ``correct=False``: ``direction`` corrects the gradient itself.
  """
  learning_rate = _checks.nonnegative_schedule('learning_rate', learning_rate)
  weight_decay = _checks.nonnegative_schedule('weight_decay', weight_decay)
  mask = _masks.checked(mask)  # what optax.masked takes, refused otherwise
  tail = lambda lr, wd: optax.chain(
    optax.add_decayed_weights(wd, mask), optax.scale_by_learning_rate(lr)
  )
  if fallback is None or is_main is None:
    body = optax.chain(direction, tail(learning_rate, weight_decay))
  else:
    labels = lambda tree: jax.tree.map(
      lambda main: 'mars' if main else 'adamw', is_main(tree)
    )
    if lr_1d is None and weight_decay_1d is None:
      body = optax.chain(
        optax.partition({'mars': direction, 'adamw': fallback}, labels),
        tail(learning_rate, weight_decay),
      )
    else:
      lr_1d = (
        learning_rate
        if lr_1d is None
        else _checks.nonnegative_schedule('lr_1d', lr_1d)
      )
      weight_decay_1d = (
        weight_decay
        if weight_decay_1d is None
        else _checks.nonnegative_schedule('weight_decay_1d', weight_decay_1d)
      )
      body = optax.partition(
        {
          'mars': optax.chain(direction, tail(learning_rate, weight_decay)),
          'adamw': optax.chain(fallback, tail(lr_1d, weight_decay_1d)),
        },
        labels,
      )
  if not correct:
    return optax.with_extra_args_support(body)
  return optax.chain(
    _checks.overflow_checked(
      recursive_correction(
        b1, gamma, approx=approx, mask=is_main, state_dtype=mu_dtype
      ),
      name,
      "corrected gradient c_k = g_k + gamma b1 / (1 - b1) (g_k - g'_k)",
    ),
    body,
  )


@_guard.public
def mars_adamw(
  learning_rate: optax.ScalarOrSchedule,
  *,
  b1: chex.Numeric = 0.95,
  b2: chex.Numeric = 0.99,
  gamma: optax.ScalarOrSchedule = 0.025,
  eps: chex.Numeric = 1e-8,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  mask: Mask = None,
  max_norm: chex.Numeric = 1.0,
  approx: bool = True,
  per_tensor_clip: bool = False,
  adamw_1d: bool = False,
  adamw_leaves: AdamWLeaves = 'below_2d',
  betas_1d: tuple[float, float] = (0.9, 0.95),
  lr_1d: optax.ScalarOrSchedule | None = None,
  weight_decay_1d: optax.ScalarOrSchedule | None = None,
  mu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""MARS-AdamW: AdamW on a clipped, variance-reduced gradient (Yuan et al.).

  .. math::

    c_k &= g_k + \gamma \frac{\beta_1}{1 - \beta_1} (g_k - g'_k) \\
    \tilde c_k &= c_k \min(1, \text{max\_norm} / \|c_k\|) \\
    m_k &= \beta_1 m_{k-1} + (1 - \beta_1) \tilde c_k, \quad
    v_k = \beta_2 v_{k-1} + (1 - \beta_2) \tilde c_k^2 \\
    x_{k+1} &= x_k - \eta_k \left(\frac{m_k / (1 - \beta_1^{k+1})}
      {\sqrt{v_k / (1 - \beta_2^{k+1})} + \epsilon} + \lambda x_k\right)

  with :math:`g'_k` the gradient at :math:`x_{k-1}` on the same minibatch
  (exact, ``approx=False``) or the previous step's gradient (approx, the
  default: one gradient per step). It is ``optax.chain(``
  :func:`recursive_correction` ``(b1, gamma),`` :func:`relaxed_clip`
  ``(max_norm)`` (that is, ``optax.clip_by_global_norm(max_norm)``)``,
  optax.scale_by_adam(b1, b2, eps), optax.add_decayed_weights(
  weight_decay, mask), optax.scale_by_learning_rate(learning_rate))``: both
  Adam moments are built from :math:`\tilde c_k`, and ``gamma=0`` is AdamW
  after a global-norm clip. Exact mode takes
  ``update(grads, state, params, prev_grads=prev_grads)`` with ``prev_grads``
  from ``so.paired_grad(loss_fn)(params, so.prev_params(state), batch)``.

  As in the official code (``mars.py`` in AGI-Arena/MARS): the first step
  has no previous gradient and takes :math:`g'_0 = 0` in both modes (that
  code's ``last_grad`` starts at zeros, also in its exact mode), so
  :math:`c_0 = (1 + \gamma\beta_1/(1-\beta_1)) g_0`; Adam's bias corrections
  are those of AdamW (``optax.scale_by_adam``), and the weight decay is
  decoupled and scaled by the learning rate. Where the defaults differ from
  the official ones: the official code clips each tensor on its own
  (``per_tensor_clip=True`` here; the JAX ports, and the default here, clip
  by the global norm), and its ``optimize_1d=False`` (its default) sends
  every tensor that is not 2-D to plain AdamW on the raw gradient with
  ``betas_1d``, ``lr_1d=3e-3`` and ``weight_decay_1d=0.1``: here that is
  ``adamw_1d=True, adamw_leaves='not_2d'``. ``adamw_leaves='below_2d'`` (the
  default) sends only biases and norm scales (fewer than 2 dimensions), so
  that convolution kernels stay with MARS. The official ``lr_1d`` is a
  constant ratio ``lr_1d / lr`` to the main learning rate; give
  ``lr_1d`` here as that ratio times the main schedule to reproduce it. Its
  GPT-2 scripts also clip the raw gradients by global norm 1 before the
  optimizer.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, spider_optax as so
    >>> scales = jax.random.uniform(jax.random.key(0), (300, 16, 2))
    >>> b_min = jnp.array([1.0, -1.0])
    >>> loss_fn = lambda p, s: jnp.mean(jnp.sum((s * (p['b'] - b_min)) ** 2, 1))
    >>> params = {'b': jnp.zeros(2)}
    >>> tx = so.mars_adamw(optax.cosine_decay_schedule(0.1, 300))
    >>> state = tx.init(params)
    >>> for s in scales:  # one gradient per step: AdamW's cost
    ...   grads = jax.grad(loss_fn)(params, s)
    ...   updates, state = tx.update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> print(params['b'].round(2))
    [ 1. -1.]

  Args:
    learning_rate: a float >= 0 or an optax schedule (0 is allowed, e.g.
      where a warmup starts or a decay ends).
    b1: :math:`\beta_1 \in [0, 1)`, of the correction and the first moment.
    b2: :math:`\beta_2 \in [0, 1)`, of the second moment.
    gamma: the scale :math:`\gamma \geq 0` of the correction, or an optax
      schedule of it.
    eps: added to the denominator, as in :func:`optax.adamw`.
    weight_decay: the decoupled weight decay :math:`\lambda \geq 0`.
    mask: where to apply the weight decay, as in :func:`optax.adamw`: a tree
      of bools like the params or a callable returning one (under
      ``optax.inject_hyperparams`` name a callable in ``static_args``).
    max_norm: the norm :math:`c_k` is clipped to (> 0).
    approx: use the previous step's gradient for :math:`g'_k` (one gradient
      per step); False takes ``prev_grads=`` (two per step).
    per_tensor_clip: clip each leaf to ``max_norm`` on its own, as the
      official code does, instead of the whole tree.
    adamw_1d: send the leaves that ``adamw_leaves`` names to plain AdamW
      (no correction, no clip), as the official code's default does.
    adamw_leaves: which leaves ``adamw_1d`` sends: ``'below_2d'``, those of
      fewer than 2 dimensions; ``'not_2d'``, every leaf that is not exactly
      2-D (the official rule: convolution kernels too).
    betas_1d: ``(b1, b2)`` of that AdamW (the official defaults).
    lr_1d: the learning rate (or schedule) of that AdamW; None: the same as
      the others'.
    weight_decay_1d: its decoupled weight decay; None: ``weight_decay``.
      It applies where ``mask`` is True, as ``weight_decay`` does.
    mu_dtype: dtype of the first moment, the kept gradient (approx) and
      :math:`c_k`, e.g. ``jnp.float32`` for bfloat16 params; ``None`` uses
      the params' (the gradients' for :math:`c_k`).
      Under ``optax.inject_hyperparams`` it may be given as it is.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs`. It works under
    ``optax.inject_hyperparams`` (``learning_rate``, ``b1``, ``b2``,
    ``gamma``, ``eps``, ``weight_decay``, ``max_norm`` injectable) and
    :func:`spider_optax.apply_if_finite`.

  References:
    Yuan, Liu, Wu, Zhou, Gu, `MARS: Unleashing the Power of Variance
    Reduction for Training Large Models <https://arxiv.org/abs/2411.10438>`_,
    ICML 2025.

    Loshchilov, Hutter, `Decoupled Weight Decay Regularization
    <https://arxiv.org/abs/1711.05101>`_, ICLR 2019.
  """
  b1 = _checks.check_decay('b1', b1)
  b2 = _checks.check_decay('b2', b2)
  eps = _checks.check_nonnegative('eps', eps)
  mu_dtype = _checks.as_dtype('mu_dtype', mu_dtype)
  is_main, fallback = _adamw_fallback(
    adamw_1d, adamw_leaves, betas_1d, eps, mu_dtype
  )
  return _mars(
    learning_rate,
    optax.chain(
      _clip(max_norm, per_tensor_clip),
      # The clip bounds every entry of c~_k by max_norm: Adam need not
      # check its squares for overflow where max_norm**2 fits.
      muon.scale_by_adam(
        b1, b2, eps, mu_dtype=mu_dtype, input_norm_bound=max_norm
      ),
    ),
    b1=b1,
    name='so.mars_adamw',
    gamma=gamma,
    approx=approx,
    mu_dtype=mu_dtype,
    weight_decay=weight_decay,
    mask=mask,
    fallback=fallback,
    is_main=is_main,
    lr_1d=lr_1d,
    weight_decay_1d=weight_decay_1d,
  )


@_guard.public
def mars_lion(
  learning_rate: optax.ScalarOrSchedule,
  *,
  b1: chex.Numeric = 0.95,
  gamma: optax.ScalarOrSchedule = 0.025,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  mask: Mask = None,
  max_norm: chex.Numeric = 1.0,
  approx: bool = True,
  per_tensor_clip: bool = False,
  adamw_1d: bool = False,
  adamw_leaves: AdamWLeaves = 'not_2d',
  betas_1d: tuple[float, float] = (0.9, 0.95),
  eps: chex.Numeric = 1e-8,
  lr_1d: optax.ScalarOrSchedule | None = None,
  weight_decay_1d: optax.ScalarOrSchedule | None = None,
  mu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""MARS-Lion: the sign of a momentum of the clipped, corrected gradient.

  .. math::

    c_k &= g_k + \gamma \frac{\beta_1}{1 - \beta_1} (g_k - g'_k), \quad
    \tilde c_k = c_k \min(1, \text{max\_norm} / \|c_k\|) \\
    m_k &= \beta_1 m_{k-1} + (1 - \beta_1) \tilde c_k \\
    x_{k+1} &= x_k - \eta_k \left(\mathrm{sign}(m_k) + \lambda x_k\right)

  with :math:`g'_k` as in :func:`mars_adamw` (approx, the default: the
  previous step's gradient; exact: the gradient at :math:`x_{k-1}` on the
  same minibatch, ``prev_grads=``). The official rule has one :math:`\beta`:
  the sign of the new momentum is ``optax.scale_by_lion(b1, b2=b1)``, whose
  update is :math:`\mathrm{sign}(\beta_1 m_{k-1} + (1 - \beta_1) \tilde
  c_k)` and whose momentum is the same sum. So it is ``optax.chain(``
  :func:`recursive_correction` ``(b1, gamma),`` :func:`relaxed_clip`
  ``(max_norm), optax.scale_by_lion(b1, b1), optax.add_decayed_weights(
  weight_decay, mask), optax.scale_by_learning_rate(learning_rate))``, and
  ``gamma=0`` is ``optax.lion(b1=b1, b2=b1)`` after a global-norm clip.
  Lion's steps have entries :math:`\pm\eta`: its learning rate is typically
  3-10x smaller than AdamW's.

  As the official code (``mars.py``, ``mars_type='mars-lion'``): no bias
  correction, :math:`g'_0 = 0`, decoupled weight decay times the learning
  rate. Where the defaults differ from the official ones: it clips each
  tensor on its own to norm 1 (``per_tensor_clip=True``), and sends every
  tensor that is not 2-D to AdamW on the raw gradient with ``betas_1d``,
  ``eps``, ``lr_1d=3e-3`` and ``weight_decay_1d=0.1`` (``adamw_1d=True``
  here, which sends the leaves that are not 2-D by default); here every
  leaf takes MARS-Lion unless ``adamw_1d=True``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, spider_optax as so
    >>> w_min = jnp.array([[1.0, -1.0], [0.5, 2.0]])
    >>> def loss_fn(params, noise):  # a noisy bowl, minimum at w_min
    ...   w = params['w']
    ...   return jnp.sum((w - w_min) ** 2) + jnp.sum(noise * w)
    >>> noise = 0.1 * jax.random.normal(jax.random.key(0), (400, 2, 2))
    >>> params = {'w': jnp.zeros((2, 2))}
    >>> tx = so.mars_lion(optax.cosine_decay_schedule(0.02, 400))
    >>> state = tx.init(params)
    >>> for n in noise:  # one gradient per step, as Lion
    ...   grads = jax.grad(loss_fn)(params, n)
    ...   updates, state = tx.update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> print(params['w'].round(1))
    [[ 1.  -1. ]
     [ 0.5  2. ]]

  Args:
    learning_rate: a float >= 0 or an optax schedule.
    b1: :math:`\beta_1 \in [0, 1)`, of the correction and the momentum.
    gamma: the scale :math:`\gamma \geq 0` of the correction, or an optax
      schedule of it.
    weight_decay: the decoupled weight decay :math:`\lambda \geq 0`.
    mask: where to apply the weight decay, as in :func:`optax.lion`.
    max_norm: the norm :math:`c_k` is clipped to (> 0).
    approx: one gradient per step (True) or ``prev_grads=`` (False).
    per_tensor_clip: clip each leaf on its own, as the official code does.
    adamw_1d: send the leaves that ``adamw_leaves`` names to plain AdamW on
      the raw gradient (the official ``optimize_1d=False``).
    adamw_leaves: ``'not_2d'`` (the official rule: every leaf that is not
      exactly 2-D) or ``'below_2d'`` (those of fewer than 2 dimensions).
    betas_1d: ``(b1, b2)`` of that AdamW.
    eps: that AdamW's :math:`\epsilon`.
    lr_1d: that AdamW's learning rate (or schedule); None: ``learning_rate``.
    weight_decay_1d: that AdamW's weight decay; None: ``weight_decay``.
    mu_dtype: dtype of the momentum, the kept gradient (approx) and
      :math:`c_k`; ``None`` uses the params'.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs`. It works under
    ``optax.inject_hyperparams`` and :func:`spider_optax.apply_if_finite`.

  References:
    Yuan, Liu, Wu, Zhou, Gu, `MARS: Unleashing the Power of Variance
    Reduction for Training Large Models <https://arxiv.org/abs/2411.10438>`_,
    ICML 2025.

    Chen et al., `Symbolic Discovery of Optimization Algorithms
    <https://arxiv.org/abs/2302.06675>`_, NeurIPS 2023.
  """
  b1 = _checks.check_decay('b1', b1)
  eps = _checks.check_nonnegative('eps', eps)
  mu_dtype = _checks.as_dtype('mu_dtype', mu_dtype)
  is_main, fallback = _adamw_fallback(
    adamw_1d, adamw_leaves, betas_1d, eps, mu_dtype
  )
  return _mars(
    learning_rate,
    optax.chain(
      _clip(max_norm, per_tensor_clip),
      _scale_by_lion(b1, mu_dtype),
    ),
    b1=b1,
    name='so.mars_lion',
    gamma=gamma,
    approx=approx,
    mu_dtype=mu_dtype,
    weight_decay=weight_decay,
    mask=mask,
    fallback=fallback,
    is_main=is_main,
    lr_1d=lr_1d,
    weight_decay_1d=weight_decay_1d,
  )


def _matrix_member(
  learning_rate: optax.ScalarOrSchedule,
  *,
  fallback: optax.GradientTransformation,
  b1: chex.Numeric,
  gamma: optax.ScalarOrSchedule,
  weight_decay: optax.ScalarOrSchedule,
  mask: Mask,
  max_norm: chex.Numeric | None,
  approx: bool,
  per_tensor_clip: bool,
  ns_coeffs: tuple[float, float, float],
  ns_steps: int,
  ns_eps: chex.Numeric,
  consistent_rms: chex.Numeric | None,
  muon_weight_dimension_numbers: muon.DimensionNumbers,
  lr_1d: optax.ScalarOrSchedule | None,
  weight_decay_1d: optax.ScalarOrSchedule | None,
  mu_dtype: DTypeLike | None,
  name: str,
) -> optax.GradientTransformationExtraArgs:
  """MARS-M and MARS-Shampoo: orthogonalised momentum of the clipped c_k."""
  dims = muon_weight_dimension_numbers
  # Approx, unclipped, a constant gamma: the official memory-efficient
  # MARS-M, the same momentum from one buffer instead of m and g_{k-1}.
  one_buffer = approx and max_norm is None and not _checks.is_function(gamma)
  momentum = (
    [
      _checks.overflow_checked(
        corrected_momentum(b1, cast(chex.Numeric, gamma), mu_dtype=mu_dtype),
        name,
        'momentum m_k = gamma g_k + b_k',
      )
    ]
    if one_buffer
    else [
      _clip(max_norm, per_tensor_clip),
      # m_k = b1 m_{k-1} + (1 - b1) c_k, with no bias correction and no
      # Nesterov step, as the official MARS-M: optax.contrib.scale_by_muon
      # corrects its momentum's bias (which moves eps relative to it) and
      # takes a Nesterov step by default.
      optax.ema(b1, debias=False, accumulator_dtype=mu_dtype),
    ]
  )
  return _mars(
    learning_rate,
    optax.chain(
      *momentum,
      muon.orthogonalize(ns_coeffs, ns_steps, ns_eps, dims),
      muon.scale_by_matrix_shape(consistent_rms, dims),
    ),
    correct=not one_buffer,
    name=name,
    b1=b1,
    gamma=gamma,
    approx=approx,
    mu_dtype=mu_dtype,
    weight_decay=weight_decay,
    mask=mask,
    fallback=fallback,
    is_main=muon.is_matrix(dims),
    lr_1d=lr_1d,
    weight_decay_1d=weight_decay_1d,
  )


@_guard.public
def mars_muon(
  learning_rate: optax.ScalarOrSchedule,
  *,
  b1: chex.Numeric = 0.95,
  gamma: optax.ScalarOrSchedule = 0.025,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  mask: Mask = None,
  max_norm: chex.Numeric | None = 1.0,
  approx: bool = True,
  per_tensor_clip: bool = False,
  ns_coeffs: tuple[float, float, float] = _DEFAULT_NS_COEFFS,
  ns_steps: int = 5,
  ns_eps: chex.Numeric = 1e-7,
  consistent_rms: chex.Numeric | None = 0.2,
  muon_weight_dimension_numbers: muon.DimensionNumbers = None,
  betas_1d: tuple[float, float] = (0.9, 0.95),
  eps: chex.Numeric = 1e-8,
  lr_1d: optax.ScalarOrSchedule | None = None,
  weight_decay_1d: optax.ScalarOrSchedule | None = None,
  mu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""MARS-M: Muon on a clipped, variance-reduced gradient (Liu, Yuan, Gu).

  For each weight matrix :math:`X` (:math:`A \times B`):

  .. math::

    C_k &= G_k + \gamma \frac{\beta_1}{1 - \beta_1} (G_k - G'_k), \quad
    \tilde C_k = C_k \min(1, \text{max\_norm} / \|C_k\|) \\
    M_k &= \beta_1 M_{k-1} + (1 - \beta_1) \tilde C_k \\
    X_{k+1} &= X_k - \eta_k \left(\rho \sqrt{\max(A, B)}\,
      \mathrm{NS}(M_k) + \lambda X_k\right)

  where NS is the quintic Newton-Schulz orthogonalisation
  (:func:`spider_optax.muon.orthogonalize`: ``ns_steps`` iterations with
  ``ns_coeffs`` on :math:`M / (\|M\|_F + \text{ns\_eps})`) and
  :math:`\rho` = ``consistent_rms`` (Moonlight's scaling; ``None`` gives
  ``optax.contrib.muon``'s :math:`\sqrt{\max(1, B/A)}` for a ``(fan_in,
  fan_out)`` kernel). :math:`G'_k` is the previous step's gradient (approx,
  the default) or the gradient at :math:`x_{k-1}` on the same minibatch
  (exact: ``prev_grads=``). It is ``optax.chain(``
  :func:`recursive_correction` ``(b1, gamma),`` the clip ``,
  optax.ema(b1, debias=False),`` NS, the shape scaling``,
  optax.add_decayed_weights(weight_decay, mask),
  optax.scale_by_learning_rate(learning_rate))`` on the matrices; the other
  leaves take AdamW on the raw gradient (:math:`\epsilon` added before the
  bias corrections, :func:`spider_optax.muon.scale_by_adam_eps_first`) with
  ``betas_1d``, the same learning rate, decay and mask (or ``lr_1d``,
  ``weight_decay_1d``). ``gamma=0`` and ``max_norm=None`` is
  ``optax.contrib.muon(nesterov=False, consistent_rms=...)`` without its
  momentum's bias correction.

  Which leaves are matrices: by default the 2-D ones, read as ``(fan_in,
  fan_out)`` kernels; ``muon_weight_dimension_numbers`` chooses otherwise as
  in ``optax.contrib.muon``: a tree like the params of
  ``optax.contrib.MuonDimensionNumbers`` (None for a leaf that goes to
  AdamW), or a callable returning one. Embeddings and output heads usually
  go to AdamW. For Flax models, :func:`spider_optax.flax.muon_weight_matrices`
  builds that tree: it reads attention kernels (3-D) as matrices and leaves
  biases, norms and embeddings to AdamW.

  As the official code (``MARS_M/optimizers/mars_m.py``, arXiv 2510.21800):
  momentum without bias correction or Nesterov, :math:`G'_0 = 0`,
  :math:`\rho = 0.2`, decoupled weight decay times the learning rate on
  every leaf. ``max_norm=None`` (no clip) with ``approx=True`` and a
  constant ``gamma`` is its memory-efficient variant
  (``mars_m_efficient.py``): the same momentum from one buffer per matrix
  instead of two (:func:`spider_optax.corrected_momentum`), Muon's memory.
  Where the defaults differ from the official ones: it clips each matrix on
  its own (``per_tensor_clip=True`` here), decays weights by
  ``weight_decay=0.1``, and runs Newton-Schulz in bfloat16; here the clip
  is by the global norm of the matrices, the decay 0, and Newton-Schulz
  runs in the momentum's dtype (float32 for float32 params, or
  ``mu_dtype``).

  Examples:
    >>> import jax, jax.numpy as jnp, optax, spider_optax as so
    >>> w_min = jnp.array([[1.0, -1.0, 0.5], [0.5, 2.0, 1.0]])
    >>> b_min = jnp.array([0.5, -0.5, 1.0])
    >>> def loss_fn(params, noise):  # a noisy bowl, minimum at w_min, b_min
    ...   return (jnp.sum((params['w'] - w_min) ** 2)
    ...           + jnp.sum((params['b'] - b_min) ** 2)
    ...           + jnp.sum(noise * params['w']))
    >>> noise = 0.1 * jax.random.normal(jax.random.key(0), (400, 2, 3))
    >>> params = {'w': jnp.zeros((2, 3)), 'b': jnp.zeros(3)}
    >>> tx = so.mars_muon(optax.cosine_decay_schedule(0.05, 400))
    >>> state = tx.init(params)  # 'w' takes Muon, 'b' AdamW
    >>> for n in noise:  # one gradient per step, as Muon
    ...   grads = jax.grad(loss_fn)(params, n)
    ...   updates, state = tx.update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> print(params['w'].round(1), params['b'].round(1))
    [[ 1.  -1.   0.5]
     [ 0.5  2.   1. ]] [ 0.5 -0.5  1. ]

  Args:
    learning_rate: a float >= 0 or an optax schedule.
    b1: :math:`\beta_1 \in [0, 1)`, of the correction and the momentum.
    gamma: the scale :math:`\gamma \geq 0` of the correction, or an optax
      schedule of it.
    weight_decay: the decoupled weight decay :math:`\lambda \geq 0`.
    mask: where to apply the weight decay: a tree of bools like the params
      or a callable returning one.
    max_norm: the norm :math:`C_k` is clipped to (> 0), or None for no clip.
      The clip covers the matrices (the other leaves take AdamW on the raw
      gradient).
    approx: one gradient per step (True) or ``prev_grads=`` (False).
    per_tensor_clip: clip each matrix on its own, as the official code does.
    ns_coeffs: the Newton-Schulz coefficients :math:`(a, b, c)`.
    ns_steps: the number of Newton-Schulz iterations (not injectable).
    ns_eps: added to the Frobenius norm before the iteration.
    consistent_rms: :math:`\rho > 0`, or None for the width scaling.
    muon_weight_dimension_numbers: which leaves are matrices, and how to
      read them (see above); None: the 2-D leaves.
    betas_1d: ``(b1, b2)`` of the AdamW of the other leaves.
    eps: that AdamW's :math:`\epsilon`.
    lr_1d: that AdamW's learning rate (or schedule); None: ``learning_rate``.
    weight_decay_1d: that AdamW's weight decay; None: ``weight_decay``.
    mu_dtype: dtype of the momenta, the kept gradient (approx) and
      :math:`C_k`; ``None`` uses the params'.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs`. It works under
    ``optax.inject_hyperparams`` (with ``ns_steps``, and a callable
    ``muon_weight_dimension_numbers``, in ``static_args``: inject_hyperparams
    calls every other callable as a schedule) and
    :func:`spider_optax.apply_if_finite`.

  References:
    Liu, Yuan, Gu, `MARS-M: When Variance Reduction Meets Matrices
    <https://arxiv.org/abs/2510.21800>`_, 2025.

    Yuan, Liu, Wu, Zhou, Gu, `MARS: Unleashing the Power of Variance
    Reduction for Training Large Models <https://arxiv.org/abs/2411.10438>`_,
    ICML 2025.

    Liu et al., `Muon is Scalable for LLM Training
    <https://arxiv.org/abs/2502.16982>`_, 2025.
  """
  b1 = _checks.check_decay('b1', b1)
  mu_dtype = _checks.as_dtype('mu_dtype', mu_dtype)
  betas_1d = _betas('betas_1d', betas_1d)
  return _matrix_member(
    learning_rate,
    name='so.mars_muon',
    fallback=muon.scale_by_adam_eps_first(*betas_1d, eps, mu_dtype),
    b1=b1,
    gamma=gamma,
    weight_decay=weight_decay,
    mask=mask,
    max_norm=max_norm,
    approx=approx,
    per_tensor_clip=per_tensor_clip,
    ns_coeffs=ns_coeffs,
    ns_steps=ns_steps,
    ns_eps=ns_eps,
    consistent_rms=consistent_rms,
    muon_weight_dimension_numbers=muon_weight_dimension_numbers,
    lr_1d=lr_1d,
    weight_decay_1d=weight_decay_1d,
    mu_dtype=mu_dtype,
  )


@_guard.public
def mars_shampoo(
  learning_rate: optax.ScalarOrSchedule,
  *,
  b1: chex.Numeric = 0.95,
  gamma: optax.ScalarOrSchedule = 0.025,
  eps: chex.Numeric = 1e-8,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  mask: Mask = None,
  max_norm: chex.Numeric | None = 1.0,
  approx: bool = True,
  per_tensor_clip: bool = False,
  ns_steps: int = 5,
  muon_weight_dimension_numbers: muon.DimensionNumbers = None,
  betas_1d: tuple[float, float] = (0.9, 0.95),
  lr_1d: optax.ScalarOrSchedule | None = None,
  weight_decay_1d: optax.ScalarOrSchedule | None = None,
  mu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""MARS-Shampoo: the official MARS code's Shampoo member (Yuan et al.).

  For each weight matrix :math:`X` of ``fan_in`` by ``fan_out``:

  .. math::

    M_k &= \beta_1 M_{k-1} + (1 - \beta_1) \tilde C_k \\
    X_{k+1} &= X_k - \eta_k \left(\sqrt{\max(1, \mathrm{fan\_out} /
      \mathrm{fan\_in})}\; \mathrm{NS}_\epsilon\!\left(\frac{M_k}{1 -
      \beta_1}\right) + \lambda X_k\right)

  with :math:`\tilde C_k` the clipped corrected gradient of
  :func:`mars_muon` and :math:`\mathrm{NS}_\epsilon` the Newton-Schulz
  orthogonalisation of :math:`M / (\|M\|_F + \epsilon)`. Since
  :math:`\mathrm{NS}_\epsilon(M / (1 - \beta_1)) = \mathrm{NS}_{\epsilon (1 -
  \beta_1)}(M)`, it is exactly ``so.mars_muon(consistent_rms=None,
  ns_eps=eps * (1 - b1))`` on the matrices; it differs from it in the AdamW
  of the other leaves, which adds :math:`\epsilon` after the bias
  corrections (``optax.scale_by_adam``, as the official ``mars.py`` does;
  MARS-M's code adds it before).

  As the official code (``mars.py``, ``mars_type='mars-shampoo'``,
  ``optimize_1d=False``): no bias correction, :math:`G'_0 = 0`, decoupled
  weight decay times the learning rate, the leaves that are not 2-D to
  AdamW on the raw gradient. Where the defaults differ from the official
  ones: it clips each tensor on its own to norm 1 (``per_tensor_clip=True``
  here), gives that AdamW ``lr_1d=3e-3`` and ``weight_decay_1d=0.1``, and
  runs Newton-Schulz in bfloat16. Its ``optimize_1d=True`` (MARS-AdamW on
  the other leaves) is not offered here.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, spider_optax as so
    >>> w_min = jnp.array([[1.0, -1.0], [0.5, 2.0]])
    >>> loss_fn = lambda p: jnp.sum((p['w'] - w_min) ** 2)
    >>> params = {'w': jnp.zeros((2, 2))}
    >>> tx = so.mars_shampoo(optax.cosine_decay_schedule(0.05, 300))
    >>> state = tx.init(params)
    >>> for _ in range(300):
    ...   updates, state = tx.update(jax.grad(loss_fn)(params), state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> print(params['w'].round(1))
    [[ 1.  -1. ]
     [ 0.5  2. ]]

  Args:
    learning_rate: a float >= 0 or an optax schedule.
    b1: :math:`\beta_1 \in [0, 1)`, of the correction and the momentum.
    gamma: the scale :math:`\gamma \geq 0` of the correction, or a schedule.
    eps: :math:`\epsilon`, of the orthogonalisation and of the AdamW.
    weight_decay: the decoupled weight decay :math:`\lambda \geq 0`.
    mask: where to apply the weight decay.
    max_norm: the norm :math:`C_k` is clipped to (> 0), or None.
    approx: one gradient per step (True) or ``prev_grads=`` (False).
    per_tensor_clip: clip each matrix on its own, as the official code does.
    ns_steps: the number of Newton-Schulz iterations (not injectable).
    muon_weight_dimension_numbers: which leaves are matrices, as in
      :func:`mars_muon`; None: the 2-D leaves (the official rule).
    betas_1d: ``(b1, b2)`` of the AdamW of the other leaves.
    lr_1d: that AdamW's learning rate (or schedule); None: ``learning_rate``.
    weight_decay_1d: that AdamW's weight decay; None: ``weight_decay``.
    mu_dtype: dtype of the momenta, the kept gradient (approx) and
      :math:`C_k`; ``None`` uses the params'.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs`.

  References:
    Yuan, Liu, Wu, Zhou, Gu, `MARS: Unleashing the Power of Variance
    Reduction for Training Large Models <https://arxiv.org/abs/2411.10438>`_,
    ICML 2025.

    Gupta, Koren, Singer, `Shampoo: Preconditioned Stochastic Tensor
    Optimization <https://arxiv.org/abs/1802.09568>`_, ICML 2018.
  """
  b1 = _checks.check_decay('b1', b1)
  eps = _checks.check_nonnegative('eps', eps)
  mu_dtype = _checks.as_dtype('mu_dtype', mu_dtype)
  betas_1d = _betas('betas_1d', betas_1d)
  return _matrix_member(
    learning_rate,
    name='so.mars_shampoo',
    fallback=muon.scale_by_adam(*betas_1d, eps, mu_dtype=mu_dtype),
    b1=b1,
    gamma=gamma,
    weight_decay=weight_decay,
    mask=mask,
    max_norm=max_norm,
    approx=approx,
    per_tensor_clip=per_tensor_clip,
    ns_coeffs=_DEFAULT_NS_COEFFS,
    ns_steps=ns_steps,
    ns_eps=eps * (1 - b1),
    consistent_rms=None,
    muon_weight_dimension_numbers=muon_weight_dimension_numbers,
    lr_1d=lr_1d,
    weight_decay_1d=weight_decay_1d,
    mu_dtype=mu_dtype,
  )
