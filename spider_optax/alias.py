"""The optimizers as optax aliases: SPIDER and STORM (MARS: mars.py).

Each is a chain of small pieces.
"""

import chex
import optax
from jax.typing import DTypeLike

from spider_optax import _checks
from spider_optax import _guard
from spider_optax.autoclip import auto_clip_spider
from spider_optax.clipping import relaxed_clip
from spider_optax.correction import recursive_correction
from spider_optax.estimator import spider_estimator
from spider_optax.lean import lean_spider


@_guard.public
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


@_guard.public
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
    _checks.overflow_checked(
      recursive_correction(beta, 1.0, approx=approx, state_dtype=mu_dtype),
      'so.storm',
      "corrected gradient c_k = g_k + beta / (1 - beta) (g_k - g'_k)",
    ),
    optax.ema(beta, debias=False, accumulator_dtype=mu_dtype),
    relaxed_clip(c0, c1),
    optax.scale_by_learning_rate(learning_rate),
  )
