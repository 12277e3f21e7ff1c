"""Flax integration: NNX and Linen training with SPIDER in a few lines.

``nnx.Optimizer(model, so.spider(...), wrt=nnx.Param)`` and
``optimizer.update(model, grads, prev_grads=prev_grads)`` work as they are,
since NNX forwards keyword arguments to ``tx.update``. This module adds what
Flax users still lack:

- NNX: :func:`prev_params` and :func:`prev_model` (the model at the previous
  parameters), :func:`paired_grad` / :func:`paired_value_and_grad` of a model
  on one batch, and the jitted :func:`nnx_steps`.
- Linen: :class:`TrainState`, whose ``apply_gradients`` forwards
  ``prev_grads`` and which exposes ``prev_params``, and :func:`linen_steps`.
- :func:`spider_loop`: the host-side schedule, an anchor every ``q`` steps.

Import it as ``spider_optax.flax`` (or ``so.flax``); it needs the ``flax``
extra: ``pip install 'spider-optax[flax]'``.
"""

import math
import numbers
from typing import Any, Callable, Iterable, Optional

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from flax.training import train_state

from spider_optax import estimator
from spider_optax import paired


# --------------------------------------------------------------------------
# NNX
# --------------------------------------------------------------------------


def prev_params(optimizer: nnx.Optimizer) -> nnx.State:
  """x_{k-1} of an ``nnx.Optimizer`` built on a SPIDER transformation.

  Returns an ``nnx.State`` of plain arrays, shaped like
  ``nnx.state(model, optimizer.wrt)``.
  """
  return nnx.as_pure(estimator.prev_params(optimizer.opt_state))


def _loss_of_params(loss_fn, model: nnx.Module, optimizer: nnx.Optimizer):
  """(``loss_fn`` as a function of the ``optimizer.wrt`` params, those params)."""
  graphdef, params, rest = nnx.split(model, optimizer.wrt, ...)
  return lambda p, *args: loss_fn(nnx.merge(graphdef, p, rest), *args), params


def _prev_like(params: nnx.State, optimizer: nnx.Optimizer) -> nnx.State:
  """x_{k-1} with the treedef (the Variable types) of ``params``, as
  ``optimizer.update`` expects of grads."""
  return jax.tree.unflatten(jax.tree.structure(params),
                            jax.tree.leaves(prev_params(optimizer)))


def prev_model(model: nnx.Module, optimizer: nnx.Optimizer) -> nnx.Module:
  """A copy of ``model`` at the previous parameters x_{k-1}.

  Only the ``optimizer.wrt`` variables differ; other state (batch statistics,
  RNG counters) is copied from ``model``, so running the copy leaves
  ``model`` as it was.
  """
  copy = nnx.clone(model)
  nnx.update(copy, _prev_like(nnx.state(model, optimizer.wrt), optimizer))
  return copy


def paired_value_and_grad(
    loss_fn: Callable[..., Any],
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    *args: Any,
    has_aux: bool = False,
    vectorized: bool = True,
    split_batch: bool = False,
) -> tuple[Any, ...]:
  """``nnx.value_and_grad(loss_fn)`` at the model's params and at x_{k-1}.

  ``loss_fn(model, *args)`` is evaluated on the same ``args`` (the batch) at
  both points, in one traced computation (see
  :func:`spider_optax.paired_value_and_grad`). Returns
  ``(value, grads), (prev_value, prev_grads)``, grads as ``nnx.State`` of the
  ``optimizer.wrt`` variables, ready for
  ``optimizer.update(model, grads, prev_grads=prev_grads)``.

  ``loss_fn`` reads the model's other state but does not write it back: pass
  dropout keys through ``args`` rather than advancing an ``nnx.Rngs`` inside.
  With ``split_batch=True`` a third output is the variance estimate for
  adaptive anchoring (see :func:`spider_optax.paired_value_and_grad`).
  """
  loss_of_params, params = _loss_of_params(loss_fn, model, optimizer)
  return paired.paired_value_and_grad(
      loss_of_params, has_aux, vectorized=vectorized, split_batch=split_batch)(
          params, _prev_like(params, optimizer), *args)


def paired_grad(
    loss_fn: Callable[..., Any],
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    *args: Any,
    has_aux: bool = False,
    vectorized: bool = True,
    split_batch: bool = False,
) -> tuple[Any, ...]:
  """``nnx.grad(loss_fn)`` at the model's params and at x_{k-1}, one batch.

  Example (inside or outside ``nnx.jit``)::

    grads, prev_grads = so.flax.paired_grad(loss_fn, model, optimizer, x, y)
    optimizer.update(model, grads, prev_grads=prev_grads)

  With ``has_aux=True`` each half is ``(grads, aux)``; with
  ``split_batch=True`` a third output is the variance estimate. See
  :func:`paired_value_and_grad`.
  """
  (value, grads), (prev_value, prev_grads), *variance = paired_value_and_grad(
      loss_fn, model, optimizer, *args, has_aux=has_aux, vectorized=vectorized,
      split_batch=split_batch)
  if has_aux:
    return (grads, value[1]), (prev_grads, prev_value[1])
  return (grads, prev_grads, *variance)


def nnx_steps(
    loss_fn: Callable[..., Any], *, split_batch: bool = False,
) -> tuple[Callable, Callable]:
  """Jitted ``(anchor_step, recursive_step)`` for an NNX model.

  Both have the signature ``step((model, optimizer), *batch) ->
  ((model, optimizer), loss)`` and update the model and optimizer in place
  (and return them, for :func:`spider_loop`). The anchor step takes the
  gradient of ``loss_fn(model, *batch)`` on a large batch (or all the data),
  the recursive step the paired gradients on a minibatch. The loss returned is
  at the current params, before the update.

  ``loss_fn`` must not write model state (BatchNorm in training mode, Dropout
  drawing from the model's own ``nnx.Rngs``): the two points are evaluated
  from one snapshot of it. Pass dropout keys in the batch instead.

  With ``split_batch=True`` the recursive step evaluates the minibatch as two
  halves and passes the variance estimate to the update
  (``grad_diff_variance``), for adaptive anchoring with
  :func:`spider_loop` (``error_budget`` without ``batch_size``). The
  optimizer must keep diagnostics, and ``loss_fn`` average over the batch.
  """

  @nnx.jit
  def anchor(model, optimizer, *batch):
    loss_of_params, params = _loss_of_params(loss_fn, model, optimizer)
    loss, grads = jax.value_and_grad(loss_of_params)(params, *batch)
    optimizer.update(model, grads)
    return loss

  @nnx.jit
  def recursive(model, optimizer, *batch):
    (loss, grads), (_, prev_grads), *variance = paired_value_and_grad(
        loss_fn, model, optimizer, *batch, split_batch=split_batch)
    optimizer.update(model, grads, prev_grads=prev_grads,
                     **_variance_arg(variance))
    return loss

  def anchor_step(carry, *batch):
    return carry, anchor(*carry, *batch)

  def recursive_step(carry, *batch):
    return carry, recursive(*carry, *batch)

  return anchor_step, recursive_step


# --------------------------------------------------------------------------
# Linen
# --------------------------------------------------------------------------


class TrainState(train_state.TrainState):
  """``flax.training.train_state.TrainState`` for SPIDER.

  ``apply_gradients(grads=..., prev_grads=...)`` is a recursive step;
  without ``prev_grads`` an anchor step. ``prev_params`` is x_{k-1}.

  Example::

    state = so.flax.TrainState.create(
        apply_fn=model.apply, params=variables['params'], tx=so.spider(0.1, 1.0))
    state = state.apply_gradients(grads=jax.grad(loss_fn)(state.params, data))
    grads, prev_grads = so.paired_grad(loss_fn)(
        state.params, state.prev_params, batch)
    state = state.apply_gradients(grads=grads, prev_grads=prev_grads)
  """

  @classmethod
  def create(cls, *, apply_fn, params, tx, **kwargs):
    """Like Flax's, with ``step`` an int32 array rather than a Python int,
    so that a state restored from a checkpoint keeps the same types."""
    state = super().create(apply_fn=apply_fn, params=params, tx=tx, **kwargs)
    return state.replace(step=jnp.zeros([], jnp.int32))

  def apply_gradients(self, *, grads, prev_grads=None,
                      grad_diff_variance=None, **kwargs):
    extra = {} if prev_grads is None else {'prev_grads': prev_grads}
    if grad_diff_variance is not None:
      extra['grad_diff_variance'] = grad_diff_variance
    updates, opt_state = self.tx.update(grads, self.opt_state, self.params,
                                        **extra)
    return self.replace(
        step=self.step + 1,
        params=optax.apply_updates(self.params, updates),
        opt_state=opt_state,
        **kwargs,
    )

  @property
  def prev_params(self):
    """x_{k-1}: the params of the last ``apply_gradients``."""
    return estimator.prev_params(self.opt_state)


def linen_steps(
    loss_fn: Callable[..., Any], *, split_batch: bool = False,
) -> tuple[Callable, Callable]:
  """Jitted ``(anchor_step, recursive_step)`` for a Linen :class:`TrainState`.

  ``loss_fn(params, *batch)`` is the loss (typically calling
  ``state.apply_fn({'params': params}, ...)`` or ``model.apply``). Both steps
  have the signature ``step(state, *batch) -> (state, loss)``; the loss is at
  the current params, before the update. ``split_batch`` as in
  :func:`nnx_steps`.
  """

  @jax.jit
  def anchor_step(state, *batch):
    loss, grads = jax.value_and_grad(loss_fn)(state.params, *batch)
    return state.apply_gradients(grads=grads), loss

  @jax.jit
  def recursive_step(state, *batch):
    (loss, grads), (_, prev_grads), *variance = paired.paired_value_and_grad(
        loss_fn, split_batch=split_batch)(state.params, state.prev_params,
                                          *batch)
    return state.apply_gradients(grads=grads, prev_grads=prev_grads,
                                 **_variance_arg(variance)), loss

  return anchor_step, recursive_step


def _variance_arg(variance: list[jax.Array]) -> dict[str, jax.Array]:
  """The update's ``grad_diff_variance`` keyword, if a split batch gave one."""
  return {'grad_diff_variance': variance[0]} if variance else {}


# --------------------------------------------------------------------------
# The schedule
# --------------------------------------------------------------------------


def _opt_state(carry: Any) -> Any:
  """The optimizer state in a ``(model, optimizer)`` or TrainState carry."""
  if isinstance(carry, tuple):
    return next(c for c in carry if isinstance(c, nnx.Optimizer)).opt_state
  return carry.opt_state


def spider_loop(
    anchor_step: Callable,
    recursive_step: Callable,
    carry: Any,
    anchor_batches: Iterable[tuple],
    minibatches: Iterable[tuple],
    *,
    anchor_period: int,
    num_steps: int,
    start_step: int = 0,
    error_budget: Optional[float] = None,
    batch_size: Optional[int] = None,
) -> tuple[Any, list[jax.Array]]:
  """Runs SPIDER steps ``start_step, ..., num_steps - 1``.

  Step ``k`` is an anchor step on the next of ``anchor_batches`` when
  ``k % anchor_period == 0``, otherwise a recursive step on the next of
  ``minibatches``. The schedule lives on the host: nothing is read back from
  the device to decide it, so steps are dispatched asynchronously.

  With ``error_budget``, anchoring is adaptive: the first step is an anchor,
  and after that a step is an anchor when :func:`spider_optax.anchor_due`
  says the recursion's accumulated error exceeds the budget, or when
  ``anchor_period`` steps have passed since the last anchor (a cap). This
  reads one boolean back from the device per step, and needs an optimizer
  built with ``diagnostics=True`` (or ``epsilon=``). Without ``batch_size``
  it sums the split-half variance estimates, which needs steps built with
  ``split_batch=True``; with ``batch_size`` it uses the minibatch-mean
  heuristic (see :func:`spider_optax.anchor_due`).

  Args:
    anchor_step, recursive_step: from :func:`nnx_steps` or
      :func:`linen_steps` (any ``step(carry, *batch) -> (carry, loss)``).
    carry: ``(model, optimizer)`` for NNX, a :class:`TrainState` for Linen.
    anchor_batches: tuples of arguments for the anchor step, e.g.
      ``itertools.repeat((x_all, y_all))`` for the full gradient.
    minibatches: tuples of arguments for recursive steps.
    anchor_period: ``q``.
    num_steps: the step index to stop at (exclusive).
    start_step: where a resumed run starts (e.g. the step of a checkpoint),
      so that the anchor schedule continues where it left off. Minibatches
      are drawn on recursive steps only; for a resume that sees the same
      data, key them by step:
      ``(batch_at(k) for k in range(start_step, num_steps) if k % q)``.
      With ``error_budget`` the schedule continues from the restored state.
    error_budget: turns on adaptive anchoring (see above); e.g.
      ``epsilon**2 / 8`` for a target gradient norm ``epsilon``.
    batch_size: with ``error_budget``, the minibatch size of recursive steps
      for the minibatch-mean heuristic; None for the split-half estimates.

  Returns:
    The final carry and the list of per-step losses (device arrays, not yet
    synchronised).
  """
  if (isinstance(anchor_period, bool)
      or not isinstance(anchor_period, numbers.Integral) or anchor_period <= 0):
    raise ValueError(f'anchor_period must be a positive int, got {anchor_period!r}.')
  batches = {True: iter(anchor_batches), False: iter(minibatches)}
  steps = {True: anchor_step, False: recursive_step}
  losses = []
  for k in range(start_step, num_steps):
    if error_budget is None:
      is_anchor = k % anchor_period == 0
    else:
      state = nnx.as_pure(_opt_state(carry))
      last = estimator.estimator_state(state)
      count, since, due, variance = jax.device_get((  # One read per step.
          last.count, last.steps_since_anchor,
          estimator.anchor_due(state, error_budget, batch_size),
          last.diagnostics.accumulated_variance))
      if batch_size is None and since > 0 and math.isnan(variance):
        raise ValueError(
            'Adaptive anchoring without batch_size sums the variance '
            'estimates of split batches, but a recursive step brought none: '
            'build the steps with split_batch=True, or pass batch_size for '
            'the minibatch-mean heuristic.')
      is_anchor = bool(count == 0 or since + 1 >= anchor_period or due)
    batch = next(batches[is_anchor], None)
    if batch is None:
      kind = 'anchor_batches' if is_anchor else 'minibatches'
      raise ValueError(f'{kind} ran out at step {k} of {num_steps}.')
    carry, loss = steps[is_anchor](carry, *batch)
    losses.append(loss)
  return carry, losses

