"""The recursive gradient correction of STORM and MARS, as optax pieces."""

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
from jax.typing import DTypeLike

from spider_optax import _arrays
from spider_optax import _buffers
from spider_optax import _checks
from spider_optax import _masks
from spider_optax import previous


class RecursiveCorrectionState(NamedTuple):
  """State of :func:`recursive_correction`.

  Attributes:
    correction_count: number of updates taken so far (int32). Not named
      ``count``, so that ``optax.tree_utils.tree_get(state, 'count')`` reads
      the one step count of the optimizer it sits in front of (Adam's in
      ``so.mars_adamw``), as on its optax counterpart.
    prev_params: exact mode: the params :math:`x_k` passed to the last update,
      i.e. the previous parameters :math:`x_{k-1}` of the next step, read with
      :func:`spider_optax.prev_params`; equal to the initial params before
      the first update. None in approx mode.
    prev_grads: approx mode: the gradient :math:`g_k` passed to the last
      update, the :math:`g'_{k+1}` of the next step; zeros before the first
      update; ``optax.MaskedNode()`` for the leaves that ``mask`` leaves
      uncorrected (nothing is kept for them). None in exact mode.
  """

  correction_count: chex.Array
  prev_params: optax.Params | None
  prev_grads: optax.Updates | None


@_arrays.scalar_leaves
def recursive_correction(
  beta: chex.Numeric,
  gamma: optax.ScalarOrSchedule = 1.0,
  *,
  approx: bool = False,
  mask: Any | Callable[[optax.Params], Any] | None = None,
  state_dtype: DTypeLike | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""The recursive gradient correction of STORM and MARS.

  Replaces the gradient :math:`g_k` by the corrected gradient

  .. math::

    c_k = g_k + \gamma \frac{\beta}{1 - \beta} (g_k - g'_k),

  where :math:`g'_k` is, in exact mode, the gradient at the previous params
  :math:`x_{k-1}` on the *same* minibatch as :math:`g_k` (two gradients per
  step), and in approx mode (``approx=True``) the previous step's gradient
  :math:`g_{k-1}`, kept in the state (one gradient per step). A moving average
  :math:`m_k = \beta m_{k-1} + (1 - \beta) c_k` of it (``optax.ema(beta,
  debias=False)``, or Adam's first moment) is, for :math:`\gamma = 1`,
  STORM's estimator :math:`m_k = g_k + \beta (m_{k-1} - g'_k)`; MARS takes
  a small :math:`\gamma` (0.025). :math:`\gamma = 0` gives :math:`c_k = g_k`.

  The first update has no previous step: it takes :math:`g'_0 = 0` in both
  modes, so :math:`c_0 = (1 + \gamma \beta / (1 - \beta)) g_0`. This is what
  the official MARS code does (its previous gradient starts at zeros), and
  with the moving average started at :math:`m_{-1} = 0` it gives STORM's
  :math:`m_0 = g_0`. In exact mode the first ``prev_grads`` is ignored.

  Exact mode needs ``update(grads, state, params, prev_grads=prev_grads)``,
  with ``prev_grads`` from ``so.paired_grad(loss_fn)(params,
  so.prev_params(state), batch)``; approx mode takes ``update(grads, state)``.
  It must come first in a chain, so that it sees raw gradients. The emitted
  :math:`c_k` has the dtype of ``grads``, or ``state_dtype`` where that is
  wider; the correction is computed in at least float32.

  Examples:
    >>> import jax.numpy as jnp, spider_optax as so
    >>> tx = so.recursive_correction(beta=0.5, approx=True)
    >>> state = tx.init({'w': jnp.zeros(2)})
    >>> c, state = tx.update({'w': jnp.array([1.0, 2.0])}, state)
    >>> print(c['w'])  # g'_0 = 0: c_0 = 2 g_0
    [2. 4.]
    >>> c, state = tx.update({'w': jnp.array([3.0, 2.0])}, state)
    >>> print(c['w'])  # g_1 + (g_1 - g_0)
    [5. 2.]

  Args:
    beta: the momentum :math:`\beta \in [0, 1)` of the moving average that
      follows.
    gamma: the scale :math:`\gamma \geq 0` of the correction, or an optax
      schedule of it (:math:`\gamma_k`, evaluated at the update count
      :math:`k = 0, 1, \ldots`).
    approx: use the previous step's gradient for :math:`g'_k` (one gradient
      per step) instead of ``prev_grads``.
    mask: what :func:`optax.masked` takes: a tree of bools with the
      structure of the params or a prefix of it, or a callable that returns
      one from the gradients; leaves where it is False pass through
      uncorrected (:math:`c_k = g_k`). None corrects every leaf. Anything
      else (string labels, bool arrays, traced bools) is refused, naming
      the leaf.
      Under ``optax.inject_hyperparams`` a callable mask must be named in
      ``static_args``.
    state_dtype: dtype of the kept gradient (approx mode) and of the emitted
      :math:`c_k` where wider than the gradients', e.g. ``jnp.float32`` for
      bfloat16 params, so that the moving average after it gets :math:`c_k`
      unrounded. ``None`` keeps the gradient in the params' dtype and emits
      the gradients'. The previous params (exact mode) are kept in the params'
      own dtype. Under ``optax.inject_hyperparams`` it may be given as it
      is.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs` with a
    :class:`RecursiveCorrectionState`.

  References:
    Cutkosky, Orabona, `Momentum-Based Variance Reduction in Non-Convex SGD
    <https://arxiv.org/abs/1905.10018>`_, NeurIPS 2019.

    Yuan, Liu, Wu, Zhou, Gu, `MARS: Unleashing the Power of Variance
    Reduction for Training Large Models <https://arxiv.org/abs/2411.10438>`_,
    ICML 2025.
  """
  beta = _checks.check_decay('beta', beta)
  gamma = _checks.nonnegative_schedule('gamma', gamma)
  state_dtype = _checks.as_dtype('state_dtype', state_dtype)
  name = f'recursive_correction(approx={approx})'

  def mask_of(tree):
    return _masks.resolve(mask, tree)

  def kept(tree, mask_tree, keep):
    # Approx mode keeps g_{k-1} only where it corrects: MaskedNode elsewhere
    # (MARS's AdamW leaves, an embedding among them, cost no buffer).
    return jax.tree.map(
      lambda x, m: keep(x) if m else optax.MaskedNode(), tree, mask_tree
    )

  def init_fn(params):
    _checks.check_float_params(name, params)
    return RecursiveCorrectionState(
      correction_count=jnp.zeros([], jnp.int32),
      # A buffer of its own: loops that donate params and state together
      # must not donate one buffer twice.
      prev_params=None if approx else jax.tree.map(_buffers.copy, params),
      prev_grads=kept(
        params,
        mask_of(params),
        lambda p: _buffers.zeros_like(p, state_dtype),
      )
      if approx
      else None,
    )

  def update_fn(updates, state, params=None, *, prev_grads=None, **extra_args):
    del extra_args
    _checks.check_state(state, RecursiveCorrectionState, name)
    prev_grads = previous.masked_like(prev_grads, updates)
    if approx:
      if prev_grads is not None:
        raise ValueError(
          f"{name} takes no prev_grads: it uses the previous step's "
          'gradient kept in its state. Drop prev_grads=, or build it with '
          'approx=False to use gradients at so.prev_params(state).'
        )
      mask_tree = mask_of(updates)
      _checks.check_trees_match(
        'the params given to init',
        state.prev_grads,
        'grads',
        kept(updates, mask_tree, lambda g: g),
        check_dtypes=False,
        hint='If the params changed, rebuild the state with tx.init(params).',
      )
      g_prime = state.prev_grads
    else:
      if params is None:
        raise ValueError(
          f'{name} needs params: call tx.update(grads, state, params, '
          'prev_grads=prev_grads) so that it can keep the previous '
          'parameters.'
        )
      if prev_grads is None:
        raise ValueError(
          f'{name} needs prev_grads= on every update: the gradients at '
          'so.prev_params(state) on the same minibatch, e.g. grads, '
          'prev_grads = so.paired_grad(loss_fn)(params, '
          'so.prev_params(state), batch). Or build it with approx=True.'
        )
      _checks.check_trees_match('params', params, 'grads', updates)
      _checks.check_state_matches(
        'state.prev_params', state.prev_params, params, check_dtypes=True
      )
      _checks.check_trees_match(
        'grads', updates, 'prev_grads', prev_grads, hint=_checks.PREV_GRADS_HINT
      )
      g_prime = prev_grads
      mask_tree = mask_of(updates)
    started = state.correction_count > 0  # g'_0 = 0: there is no previous step.
    gamma_k = gamma(state.correction_count) if callable(gamma) else gamma
    scale = gamma_k * beta / (1 - beta)

    def correct(g, g_prev, corrected):
      out_dtype = (
        g.dtype
        if state_dtype is None
        else jnp.promote_types(g.dtype, state_dtype)
      )
      if not corrected:  # g_prev may be a MaskedNode: nothing kept
        return g.astype(out_dtype)
      dtype = jnp.promote_types(
        jnp.promote_types(out_dtype, g_prev.dtype), jnp.float32
      )
      g_wide = g.astype(dtype)
      g_prev = jnp.where(started, g_prev.astype(dtype), 0)
      c = g_wide + scale * (g_wide - g_prev)
      return c.astype(out_dtype)

    corrected = jax.tree.map(correct, updates, g_prime, mask_tree)
    new_state = RecursiveCorrectionState(
      correction_count=jnp.asarray(
        optax.safe_increment(state.correction_count)
      ),
      prev_params=None
      if approx
      else jax.tree.map(_buffers.overwrite, state.prev_params, params),
      # Read above, so its donated buffer is reused without an overwrite.
      prev_grads=jax.tree.map(
        lambda g, old, m: g.astype(old.dtype) if m else old,
        updates,
        state.prev_grads,
        mask_tree,
      )
      if approx
      else None,
    )
    return corrected, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)  # pyright: ignore[reportArgumentType]


class CorrectedMomentumState(NamedTuple):
  """State of :func:`corrected_momentum`.

  Attributes:
    correction_count: number of updates taken so far (int32); not ``count``,
      as in :class:`RecursiveCorrectionState`.
    buffer: :math:`b_k`, the one parameter-sized array it keeps (zeros
      before the first update).
  """

  correction_count: chex.Array
  buffer: optax.Updates


@_arrays.scalar_leaves
def corrected_momentum(
  beta: chex.Numeric,
  gamma: chex.Numeric,
  *,
  mu_dtype: DTypeLike | None = None,
) -> optax.GradientTransformation:
  r"""The momentum of the approx, unclipped corrected gradient, in one buffer.

  The momentum :math:`m_k = \beta m_{k-1} + (1 - \beta) c_k` of
  :func:`recursive_correction` ``(beta, gamma, approx=True)``, with
  :math:`c_k = g_k + \gamma \frac{\beta}{1-\beta}(g_k - g_{k-1})`, needs
  :math:`m` and :math:`g_{k-1}`. The same sequence comes from one buffer:

  .. math::

    b_k = \beta b_{k-1} + (1 - \gamma)(1 - \beta) g_k, \quad
    m_k = \gamma g_k + b_k

  (both sides satisfy :math:`m_k - \beta m_{k-1} = (1 - \beta + \gamma\beta)
  g_k - \gamma\beta g_{k-1}` from :math:`m_0 = (1 - \beta + \gamma\beta)
  g_0`). It is the memory-efficient MARS-M of the official code
  (``mars_m_efficient.py``, whose buffer is :math:`b_k / \beta`), for a
  constant :math:`\gamma` and no clip of :math:`c_k`.

  Examples:
    >>> import jax.numpy as jnp, optax, spider_optax as so
    >>> one = so.corrected_momentum(0.5, 0.2)
    >>> two = optax.chain(so.recursive_correction(0.5, 0.2, approx=True),
    ...                   optax.ema(0.5, debias=False))
    >>> g = {'w': jnp.array([1.0, -2.0])}
    >>> s1, s2 = one.init(g), two.init(g)
    >>> for k in range(3):
    ...   g = {'w': g['w'] * 0.5 + 1.0}
    ...   m1, s1 = one.update(g, s1)
    ...   m2, s2 = two.update(g, s2)
    >>> print(m1['w'], m2['w'])  # the same momentum
    [1.625 1.1  ] [1.625 1.1  ]

  Args:
    beta: :math:`\beta \in [0, 1)`.
    gamma: :math:`\gamma \geq 0`, a constant.
    mu_dtype: dtype of the buffer; None: the params'.

  Returns:
    A :class:`optax.GradientTransformation` with a
    :class:`CorrectedMomentumState`.

  References:
    Liu, Yuan, Gu, `MARS-M: When Variance Reduction Meets Matrices
    <https://arxiv.org/abs/2510.21800>`_, 2025.
  """
  beta = _checks.check_decay('beta', beta)
  gamma = _checks.check_nonnegative('gamma', gamma)
  mu_dtype = _checks.as_dtype('mu_dtype', mu_dtype)
  name = 'corrected_momentum'

  def init_fn(params):
    _checks.check_float_params(name, params)
    return CorrectedMomentumState(
      correction_count=jnp.zeros([], jnp.int32),
      buffer=jax.tree.map(lambda p: _buffers.zeros_like(p, mu_dtype), params),
    )

  def update_fn(updates, state, params=None):
    del params
    _checks.check_state(state, CorrectedMomentumState, name)
    _checks.check_trees_match(
      'the params given to init',
      state.buffer,
      'grads',
      updates,
      check_dtypes=False,
      hint='If the params changed, rebuild the state with tx.init(params).',
    )
    rate = (1 - gamma) * (1 - beta)
    buffer = jax.tree.map(
      lambda b, g: (beta * b + rate * g).astype(b.dtype), state.buffer, updates
    )
    momentum = jax.tree.map(
      lambda g, b: gamma * g + b.astype(jnp.promote_types(b.dtype, g.dtype)),
      updates,
      buffer,
    )
    return momentum, CorrectedMomentumState(
      correction_count=jnp.asarray(
        optax.safe_increment(state.correction_count)
      ),
      buffer=buffer,
    )

  return optax.GradientTransformation(init_fn, update_fn)
