"""A framework-neutral SPIDER training loop.

Anchor and recursive steps on a schedule read from the optimizer state.
"""

import sys
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import chex
import jax

from spider_optax import anchoring
from spider_optax import lookup

Step = Callable[..., tuple[Any, Any]]


def default_opt_state(carry: Any) -> Any:
  """The optimizer state of a carry, as arrays.

  ``carry.opt_state`` (a Flax ``TrainState``), or that of the first element
  of a tuple that has one (a ``(model, nnx.Optimizer)`` pair). Flax NNX
  Variables in it are unwrapped to their values (``nnx.as_pure``), when Flax
  is loaded.
  """
  holders = carry if isinstance(carry, tuple) else (carry,)
  holder = next((h for h in holders if hasattr(h, 'opt_state')), None)
  if holder is None:
    raise ValueError(
      'spider_loop could not find the optimizer state in the carry: pass '
      'opt_state_of=, a function from the carry to its optimizer state.'
    )
  nnx = sys.modules.get('flax.nnx')  # Loaded if the carry holds NNX objects.
  return holder.opt_state if nnx is None else nnx.as_pure(holder.opt_state)


def spider_loop(
  anchor_step: Step,
  recursive_step: Step,
  carry: Any,
  anchor_batches: Iterable[tuple[Any, ...]],
  minibatches: Iterable[tuple[Any, ...]],
  *,
  anchor_period: int,
  num_steps: int,
  error_budget: chex.Numeric | None = None,
  batch_size: int | None = None,
  opt_state_of: Callable[[Any], Any] = default_opt_state,
  start_step: int | None = None,
) -> tuple[Any, list[Any]]:
  """Runs SPIDER updates until the optimizer has taken ``num_steps``.

  Before each update the loop applies :func:`spider_optax.is_anchor_step`:
  an anchor step on the next of ``anchor_batches`` for the first update and
  every ``anchor_period`` updates (or, with ``error_budget``, when the
  recursion's accumulated variance exceeds it, with ``anchor_period`` as a
  cap), otherwise a recursive step on the next of ``minibatches``. The
  schedule starts from the estimator's own counters in the state, so a run
  restored from a checkpoint continues exactly where it left off.

  With a fixed period the counters are read once, at the start, and tracked
  on the host after that, so steps are dispatched asynchronously. Adaptive
  anchoring reads one boolean back from the device per step, and needs an
  optimizer that keeps diagnostics (``so.spider(..., diagnostics=True)``).
  Without ``batch_size`` it sums the split-half variance estimates, which
  needs recursive steps that pass ``grad_diff_variance``
  (``split_batch=True`` in :func:`spider_optax.flax.nnx_steps` and
  :func:`spider_optax.flax.linen_steps`).

  Examples:
    >>> import itertools, jax, jax.numpy as jnp, optax, spider_optax as so
    >>> loss_fn = lambda p, x: jnp.mean((x - p) ** 2)
    >>> data = jax.random.normal(jax.random.key(0), (64,)) + 3.0
    >>> tx = so.spider(0.5)
    >>> @jax.jit
    ... def anchor_step(carry, x):
    ...   p, state = carry
    ...   updates, state = tx.update(jax.grad(loss_fn)(p, x), state, p)
    ...   return (optax.apply_updates(p, updates), state), loss_fn(p, x)
    >>> @jax.jit
    ... def recursive_step(carry, x):
    ...   p, state = carry
    ...   prev = so.prev_params(state)
    ...   grads, prev_grads = so.paired_grad(loss_fn)(p, prev, x)
    ...   updates, state = tx.update(grads, state, p, prev_grads=prev_grads)
    ...   return (optax.apply_updates(p, updates), state), loss_fn(p, x)
    >>> params = jnp.zeros([])
    >>> minibatches = ((data[i : i + 8],) for i in range(0, 64, 8))
    >>> (params, state), losses = so.spider_loop(
    ...     anchor_step, recursive_step, (params, tx.init(params)),
    ...     itertools.repeat((data,)), minibatches,
    ...     anchor_period=4, num_steps=8, opt_state_of=lambda carry: carry[1])
    >>> print(f'{params:.2f} {data.mean():.2f}')
    3.03 3.03

  Args:
    anchor_step: ``step(carry, *batch) -> (carry, loss)`` taking the
      gradient on a large batch (or all the data), e.g. from
      :func:`spider_optax.flax.nnx_steps` or
      :func:`spider_optax.flax.linen_steps`.
    recursive_step: the same for the paired gradients on a minibatch.
    carry: what the steps thread through, e.g. ``(model, optimizer)`` for NNX
      or a ``TrainState`` for Linen.
    anchor_batches: tuples of arguments for anchor steps, e.g.
      ``itertools.repeat((x_all, y_all))`` for the full gradient.
    minibatches: tuples of arguments for recursive steps. They are drawn on
      recursive steps only; for a resume that sees the same data, key them by
      step.
    anchor_period: :math:`q`, a positive int.
    num_steps: the optimizer's update count to stop at.
    error_budget: turns on adaptive anchoring (see
      :func:`spider_optax.anchor_due`); e.g. ``epsilon**2 / 8`` for a target
      gradient norm ``epsilon``.
    batch_size: with ``error_budget``, the minibatch size for the
      minibatch-mean heuristic; None for the split-half estimates.
    opt_state_of: a function from the carry to its optimizer state; the
      default finds ``.opt_state`` on the carry or on an element of it.
    start_step: deprecated: the schedule now starts from the state's own
      update count. If given, it must equal that count.

  Returns:
    The final carry and the per-step losses (device arrays, not yet
    synchronised).

  Raises:
    ValueError: on a bad ``anchor_period``, a ``start_step`` that disagrees
      with the state, or when a batch iterator runs out.
  """
  anchoring.check_anchor_period(anchor_period)
  estimator = lookup.estimator_state(opt_state_of(carry))
  count, since = (
    int(x)
    for x in jax.device_get((estimator.count, estimator.steps_since_anchor))
  )
  if start_step is not None:
    warnings.warn(
      'spider_loop(start_step=) is deprecated: the schedule starts '
      "from the optimizer state's own update count.",
      DeprecationWarning,
      stacklevel=2,
    )
    if start_step != count:
      raise ValueError(
        f'start_step={start_step} but the optimizer state has taken {count} '
        'updates: restore the checkpoint of that step, or drop start_step '
        '(the loop starts from the state).'
      )
  batches = {True: iter(anchor_batches), False: iter(minibatches)}
  steps = {True: anchor_step, False: recursive_step}
  losses = []
  for k in range(count, num_steps):
    if error_budget is None:
      is_anchor = anchoring.period_rule(k, since, anchor_period)
    else:
      is_anchor = anchoring.is_anchor_step(
        opt_state_of(carry),
        anchor_period,
        error_budget=error_budget,
        batch_size=batch_size,
      )
    batch = next(batches[is_anchor], None)
    if batch is None:
      kind = 'anchor_batches' if is_anchor else 'minibatches'
      raise ValueError(f'{kind} ran out at step {k} of {num_steps}.')
    carry, loss = steps[is_anchor](carry, *batch)
    losses.append(loss)
    since = 0 if is_anchor else since + 1
  return carry, losses
