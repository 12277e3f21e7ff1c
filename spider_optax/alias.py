"""The optimizers as optax aliases: SPIDER, STORM and MARS.

Each is a chain of small pieces.
"""

from collections.abc import Callable
from typing import Any

import chex
import jax
import optax
from jax.typing import DTypeLike

from spider_optax import _checks
from spider_optax.autoclip import auto_clip_spider
from spider_optax.clipping import clip_by_leaf_norm
from spider_optax.clipping import relaxed_clip
from spider_optax.correction import recursive_correction
from spider_optax.estimator import spider_estimator
from spider_optax.lean import lean_spider


def spider(
  learning_rate: optax.ScalarOrSchedule,
  c0: chex.Numeric | None = None,
  c1: chex.Numeric | None = None,
  *,
  estimator_dtype: DTypeLike | None = None,
  diagnostics: bool | None = None,
  epsilon: float | None = None,
  fit_learning_rate: bool = False,
  lean: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""SPIDER with the (L0, L1) clipped learning rate (Reisizadeh et al., 2023).

  .. math::

    v_k &= \begin{cases}
      \nabla f_{S_1}(x_k) & k \bmod q = 0 \text{ (anchor)} \\
      v_{k-1} + \nabla f_{S_2}(x_k) - \nabla f_{S_2}(x_{k-1}) & \text{otherwise}
    \end{cases} \\
    \eta_k &= \mathrm{lr} \cdot \min\left(1, \frac{c_0}{\|v_k\|},
      \frac{c_1}{\|v_k\|^2}\right) \\
    x_{k+1} &= x_k - \eta_k v_k

  It is ``optax.chain(spider_estimator(), relaxed_clip(c0, c1),
  optax.scale_by_learning_rate(learning_rate))``. With ``c0 = c1 = None`` it is
  SARAH/SPIDER with a constant step; with only ``c0`` SPIDER-SFO's normalised
  step; with both the (L0, L1) rule. :mod:`spider_optax.theory` gives values
  for ``learning_rate``, ``c0``, ``c1`` and the anchor period ``q``.

  Anchor steps are calls without ``prev_grads``; recursive steps pass the
  gradients at :func:`prev_params` on the same minibatch:

  Examples:
    >>> import jax, jax.numpy as jnp, optax, spider_optax as so
    >>> w_min = jnp.array([1.0, 2.0, 3.0])
    >>> def loss_fn(params, batch):  # least squares, minimum 0 at w_min
    ...   return jnp.mean((batch @ (params['w'] - w_min)) ** 2)
    >>> batches = jax.random.normal(jax.random.key(0), (100, 8, 3))
    >>> params = {'w': jnp.zeros(3)}
    >>> tx = so.spider(learning_rate=0.2, c0=1.0, c1=10.0)
    >>> state = tx.init(params)
    >>> for k, batch in enumerate(batches):
    ...   if k % 10 == 0:  # anchor: a big batch or the full gradient
    ...     grads = jax.grad(loss_fn)(params, batches.reshape(-1, 3))
    ...     updates, state = tx.update(grads, state, params)
    ...   else:  # recursive: one minibatch at both points
    ...     grads, prev_grads = so.paired_grad(loss_fn)(
    ...         params, so.prev_params(state), batch)
    ...     updates, state = tx.update(
    ...         grads, state, params, prev_grads=prev_grads)
    ...   params = optax.apply_updates(params, updates)
    >>> print(params['w'].round(2))
    [1. 2. 3.]

  Args:
    learning_rate: a float >= 0 or an optax schedule (0 is allowed, e.g.
      where a warmup starts or a decay ends).
    c0: norm threshold of the clipping (> 0), or None to drop that term.
    c1: squared-norm threshold of the clipping (> 0), or None to drop it.
    estimator_dtype: dtype of the estimator state, e.g. ``jnp.float32`` for
      bfloat16 params; ``None`` uses the params' dtype. Under
      ``optax.inject_hyperparams`` it may be given as it is (the dtype's
      scalar type, a string, or named in ``static_args``).
    diagnostics: keep the local smoothness and norms of each update in the
      state, read with :func:`spider_optax.diagnostics`. ``None`` (the
      default) keeps them only with ``epsilon``, which needs them.
    epsilon: a target gradient norm; turns on automatic clipping. Then ``c0``
      and ``c1`` are set every step from a running fit of (L0, L1) to the
      smoothness the estimator measures along its own steps, as
      :math:`c_i = \epsilon / (4 \eta L_i)` (the step caps of
      :func:`spider_optax.theory.online`); ``c0`` and ``c1`` given here are
      used only until the fit has enough samples. A larger ``epsilon`` allows
      longer steps. The fit uses the last 256 recursive steps
      (:func:`spider_optax.autoclip.auto_clip_spider` takes other windows).
      Diagnostics are kept, and the fit, thresholds and learning rate are in
      the state (:class:`spider_optax.autoclip.AutoClipState`), around the
      same chain state as without ``epsilon``.
    fit_learning_rate: with ``epsilon``, also set the learning rate to
      :math:`1/(4 L_0)` once the fit is ready (``learning_rate`` before). It
      needs ``epsilon``.
    lean: keep one parameter-sized array of state (:math:`v`) instead of two,
      rebuilding :math:`x_{k-1}` from the current params and the last step:
      ``so.prev_params(state, params)``. Its contract (params changed only by
      these updates, float32 or wider) and what it checks:
      :func:`spider_optax.lean.lean_spider`. No diagnostics or ``epsilon``.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs`. It works under
    ``optax.inject_hyperparams`` (``learning_rate``, ``c0`` and ``c1``
    injectable) and :func:`spider_optax.apply_if_finite`.

  References:
    Reisizadeh, Li, Das, Jadbabaie, `Variance-reduced Clipping for Non-convex
    Optimization <https://arxiv.org/abs/2303.00883>`_, 2023.

    Fang, Li, Lin, Zhang, `SPIDER: Near-Optimal Non-Convex Optimization via
    Stochastic Path Integrated Differential Estimator
    <https://arxiv.org/abs/1807.01695>`_, NeurIPS 2018.
  """
  if lean:
    if epsilon is not None or diagnostics:
      raise ValueError(
        'lean=True keeps no diagnostics, which epsilon= and diagnostics=True '
        'need: use lean=False for those.'
      )
    return lean_spider(learning_rate, c0, c1, estimator_dtype=estimator_dtype)
  if epsilon is None and fit_learning_rate:
    raise ValueError(
      'fit_learning_rate=True sets the learning rate from the (L0, L1) fit '
      'of automatic clipping: pass epsilon= (the target gradient norm) too.'
    )
  if epsilon is not None:
    if diagnostics is False:
      raise ValueError(
        'epsilon= (automatic clipping) fits the thresholds to the '
        'diagnostics the estimator measures: drop diagnostics=False.'
      )
    return auto_clip_spider(
      learning_rate,
      epsilon,
      c0=c0,
      c1=c1,
      fit_learning_rate=fit_learning_rate,
      estimator_dtype=estimator_dtype,
    )
  learning_rate = _checks.nonnegative_schedule('learning_rate', learning_rate)
  return optax.chain(
    spider_estimator(estimator_dtype, diagnostics=bool(diagnostics)),
    relaxed_clip(c0, c1),
    optax.scale_by_learning_rate(learning_rate),
  )


def mars_adamw(
  learning_rate: optax.ScalarOrSchedule,
  *,
  b1: chex.Numeric = 0.95,
  b2: chex.Numeric = 0.99,
  gamma: chex.Numeric = 0.025,
  eps: chex.Numeric = 1e-8,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  mask: Any | Callable[[optax.Params], Any] | None = None,
  max_norm: chex.Numeric = 1.0,
  approx: bool = True,
  per_tensor_clip: bool = False,
  adamw_1d: bool = False,
  betas_1d: tuple[float, float] = (0.9, 0.95),
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
  decoupled and scaled by the learning rate. The official code clips each
  tensor on its own (``per_tensor_clip=True`` here); the JAX ports clip by
  the global norm (the default here). Its ``optimize_1d=False`` (its default)
  sends the tensors that are not 2-D to plain AdamW on the raw gradient;
  ``adamw_1d=True`` here sends those with fewer than 2 dimensions (biases,
  norm scales; conv kernels stay with MARS) to AdamW with ``betas_1d``, the
  same learning rate and the same weight decay and ``mask`` (the official
  code gives them their own ``lr_1d`` and ``weight_decay_1d``). Its GPT-2
  scripts also clip the raw gradients by global norm 1 before the optimizer.

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
    gamma: the scale :math:`\gamma \geq 0` of the correction.
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
    adamw_1d: send the leaves with fewer than 2 dimensions to plain AdamW
      (no correction, no clip), as the official code's default does.
    betas_1d: ``(b1, b2)`` of that AdamW (the official defaults).
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
  learning_rate = _checks.nonnegative_schedule('learning_rate', learning_rate)
  b1 = _checks.check_decay('b1', b1)
  b2 = _checks.check_decay('b2', b2)
  gamma = _checks.check_nonnegative('gamma', gamma)
  eps = _checks.check_nonnegative('eps', eps)
  weight_decay = _checks.nonnegative_schedule('weight_decay', weight_decay)
  max_norm = _checks.check_positive('max_norm', max_norm)
  if adamw_1d:
    betas_1d = (
      _checks.check_decay('betas_1d[0]', betas_1d[0]),
      _checks.check_decay('betas_1d[1]', betas_1d[1]),
    )
  mu_dtype = _checks.as_dtype('mu_dtype', mu_dtype)
  # relaxed_clip(max_norm) is optax.clip_by_global_norm(max_norm) written as
  # one scalar factor, which XLA fuses into Adam's moments: optax's version
  # left c_k squared and clipped as extra parameter-sized arrays (1.4x).
  clip = (
    clip_by_leaf_norm(max_norm) if per_tensor_clip else relaxed_clip(max_norm)
  )
  direction = optax.chain(
    clip, optax.scale_by_adam(b1, b2, eps, mu_dtype=mu_dtype)
  )
  matrices = None
  if adamw_1d:  # Leaves of >= 2 dimensions get MARS, the rest plain AdamW.
    matrices = lambda tree: jax.tree.map(lambda x: x.ndim >= 2, tree)
    labels = lambda tree: jax.tree.map(
      lambda x: 'mars' if x.ndim >= 2 else 'adamw', tree
    )
    direction = optax.partition(
      {
        'mars': direction,
        'adamw': optax.scale_by_adam(*betas_1d, eps, mu_dtype=mu_dtype),
      },
      labels,
    )
  return optax.chain(
    recursive_correction(
      b1, gamma, approx=approx, mask=matrices, state_dtype=mu_dtype
    ),
    direction,
    optax.add_decayed_weights(weight_decay, mask),
    optax.scale_by_learning_rate(learning_rate),
  )


def storm(
  learning_rate: optax.ScalarOrSchedule,
  beta: chex.Numeric,
  c0: chex.Numeric | None = None,
  c1: chex.Numeric | None = None,
  *,
  approx: bool = False,
  mu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""STORM's recursive momentum (Cutkosky & Orabona) with a clipped step.

  .. math::

    m_k &= g_k + \beta (m_{k-1} - g'_k), \quad m_0 = g_0 \\
    x_{k+1} &= x_k - \eta_k \min\left(1, \frac{c_0}{\|m_k\|},
      \frac{c_1}{\|m_k\|^2}\right) m_k

  with :math:`g'_k` the gradient at :math:`x_{k-1}` on the same minibatch as
  :math:`g_k` (exact, the default: two gradients per step, as in the paper)
  or, with ``approx=True``, the previous step's gradient (one per step).
  :math:`\beta = 1 - a` in the paper's notation, here constant. It is
  ``optax.chain(`` :func:`recursive_correction` ``(beta, gamma=1),
  optax.ema(beta, debias=False),`` :func:`relaxed_clip` ``(c0, c1),
  optax.scale_by_learning_rate(learning_rate))``: the moving average of the
  corrected gradient is STORM's estimator, and the first step (no previous
  gradient, :math:`g'_0 = 0`) gives :math:`m_0 = g_0`. ``c0 = c1 = None``
  is plain STORM with the step :math:`\eta_k m_k`.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, spider_optax as so
    >>> def loss_fn(params, noise):  # a noisy bowl, minimum at x = 2
    ...   x = params['x']
    ...   return jnp.sum((x - 2.0) ** 2) + jnp.mean(noise) * x[0]
    >>> batches = 0.1 * jax.random.normal(jax.random.key(1), (100, 8))
    >>> params = {'x': jnp.zeros(2)}
    >>> tx = so.storm(learning_rate=0.1, beta=0.9, c0=1.0)
    >>> state = tx.init(params)
    >>> for batch in batches:  # one minibatch at both points
    ...   grads, prev_grads = so.paired_grad(loss_fn)(
    ...       params, so.prev_params(state), batch)
    ...   updates, state = tx.update(grads, state, params,
    ...                              prev_grads=prev_grads)
    ...   params = optax.apply_updates(params, updates)
    >>> print(params['x'].round(1))
    [2. 2.]

  Args:
    learning_rate: a float >= 0 or an optax schedule (0 is allowed, e.g.
      where a warmup starts or a decay ends).
    beta: the momentum :math:`\beta \in [0, 1)`.
    c0: norm threshold of the clipping (> 0), or None to drop that term.
    c1: squared-norm threshold of the clipping (> 0), or None to drop it.
    approx: use the previous step's gradient for :math:`g'_k` instead of
      ``prev_grads=``.
    mu_dtype: dtype of the momentum, the kept gradient (approx) and the
      corrected gradient, e.g. ``jnp.float32`` for bfloat16 params, so that
      :math:`m_k` accumulates unrounded; ``None`` uses the params'. Under
      ``optax.inject_hyperparams`` it may be given as it is.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs`. It works under
    ``optax.inject_hyperparams`` (``learning_rate``, ``beta``, ``c0``, ``c1``
    injectable) and :func:`spider_optax.apply_if_finite`.

  References:
    Cutkosky, Orabona, `Momentum-Based Variance Reduction in Non-Convex SGD
    <https://arxiv.org/abs/1905.10018>`_, NeurIPS 2019.

    Reisizadeh, Li, Das, Jadbabaie, `Variance-reduced Clipping for Non-convex
    Optimization <https://arxiv.org/abs/2303.00883>`_, 2023.
  """
  learning_rate = _checks.nonnegative_schedule('learning_rate', learning_rate)
  beta = _checks.check_decay('beta', beta)
  mu_dtype = _checks.as_dtype('mu_dtype', mu_dtype)
  return optax.chain(
    recursive_correction(beta, 1.0, approx=approx, state_dtype=mu_dtype),
    optax.ema(beta, debias=False, accumulator_dtype=mu_dtype),
    relaxed_clip(c0, c1),
    optax.scale_by_learning_rate(learning_rate),
  )
