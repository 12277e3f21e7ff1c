"""The SPIDER optimizer with a clipped learning rate, as one optax alias."""

from typing import Optional

import chex
import optax

from spider_optax import _checks
from spider_optax.autoclip import auto_clip_spider
from spider_optax.clipping import relaxed_clip
from spider_optax.estimator import spider_estimator


def spider(
    learning_rate: optax.ScalarOrSchedule,
    c0: Optional[chex.Numeric] = None,
    c1: Optional[chex.Numeric] = None,
    *,
    estimator_dtype: Optional[chex.ArrayDType] = None,
    diagnostics: Optional[bool] = None,
    epsilon: Optional[float] = None,
    fit_learning_rate: bool = False,
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
    >>> def loss_fn(params, batch):  # least squares, minimum 0 at w = [1 2 3]
    ...   return jnp.mean((batch @ (params['w'] - jnp.array([1., 2., 3.]))) ** 2)
    >>> batches = jax.random.normal(jax.random.key(0), (100, 8, 3))
    >>> params = {'w': jnp.zeros(3)}
    >>> tx = so.spider(learning_rate=0.2, c0=1.0, c1=10.0)
    >>> state = tx.init(params)
    >>> for k, batch in enumerate(batches):
    ...   if k % 10 == 0:  # anchor: a big batch or the full gradient
    ...     updates, state = tx.update(
    ...         jax.grad(loss_fn)(params, batches.reshape(-1, 3)), state, params)
    ...   else:  # recursive: one minibatch at both points
    ...     grads, prev_grads = so.paired_grad(loss_fn)(
    ...         params, so.prev_params(state), batch)
    ...     updates, state = tx.update(
    ...         grads, state, params, prev_grads=prev_grads)
    ...   params = optax.apply_updates(params, updates)
    >>> print(params['w'].round(2))
    [1. 2. 3.]

  Args:
    learning_rate: a positive float or an optax schedule.
    c0: norm threshold of the clipping (> 0), or None to drop that term.
    c1: squared-norm threshold of the clipping (> 0), or None to drop it.
    estimator_dtype: dtype of the estimator state, e.g. ``jnp.float32`` for
      bfloat16 params; ``None`` uses the params' dtype. Under
      ``optax.inject_hyperparams``, which takes every callable for a schedule,
      pass it as a string (``'float32'``) or name it in ``static_args``.
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
  if epsilon is None and fit_learning_rate:
    raise ValueError(
        'fit_learning_rate=True sets the learning rate from the (L0, L1) fit '
        'of automatic clipping: pass epsilon= (the target gradient norm) too.')
  if epsilon is not None:
    if diagnostics is False:
      raise ValueError(
          'epsilon= (automatic clipping) fits the thresholds to the '
          'diagnostics the estimator measures: drop diagnostics=False.')
    return auto_clip_spider(
        learning_rate, epsilon, c0=c0, c1=c1,
        fit_learning_rate=fit_learning_rate, estimator_dtype=estimator_dtype)
  _checks.check_positive('learning_rate', learning_rate)
  return optax.chain(
      spider_estimator(estimator_dtype, diagnostics=bool(diagnostics)),
      relaxed_clip(c0, c1),
      optax.scale_by_learning_rate(learning_rate),
  )
