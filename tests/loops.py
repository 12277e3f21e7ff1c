"""The tests' one SPIDER loop: anchor and recursive steps on a schedule.

An anchor step is ``tx.update(grads, state, params)`` with the gradient of a
(large) batch; a recursive step takes the gradients at ``params`` and at
``so.prev_params(state, params)`` on the same minibatch from
``so.paired_grad`` and passes ``prev_grads=`` (and, with ``split_batch``,
``grad_diff_variance=``).

A batch is the tuple of positional arguments that follow the params in
``loss_fn(params, *batch)``, as for ``so.spider_loop``. With ``loss_fn=None``
the gradients are given instead: each batch is ``(grads, prev_grads)``, or
``(grads, prev_grads, grad_diff_variance)``, and an anchor uses ``grads`` only.
"""

import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import jax
import optax

import spider_optax as so

Trace = Callable[[Any, Any, Any], Any]


class SpiderRun(NamedTuple):
  """What :func:`run_spider` returns."""

  params: Any  # after the last step
  state: Any  # after the last step
  trace: list  # trace(params, state, updates) after each step; [] without
  anchors: list  # True where the step was an anchor, one per step


def anchor_step(tx, loss_fn=None):
  """``(params, state, *batch) -> (params, state, updates)`` of an anchor."""

  def step(params, state, *batch):
    grads = batch[0] if loss_fn is None else jax.grad(loss_fn)(params, *batch)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, updates

  return step


def recursive_step(tx, loss_fn=None, *, split_batch=False):
  """``(params, state, *batch) -> (params, state, updates)`` of a recursive
  step: paired gradients on ``batch``, and with ``split_batch`` the
  split-half variance estimate passed as ``grad_diff_variance``."""
  paired = (
    (lambda params, prev_params, *given: given)
    if loss_fn is None
    else (so.paired_grad(loss_fn, split_batch=split_batch))
  )

  def step(params, state, *batch):
    prev = so.prev_params(state, params)
    grads, prev_grads, *variance = paired(params, prev, *batch)
    extra = {'grad_diff_variance': variance[0]} if variance else {}
    updates, state = tx.update(
      grads, state, params, prev_grads=prev_grads, **extra
    )
    return optax.apply_updates(params, updates), state, updates

  return step


def run_spider(
  tx: optax.GradientTransformation,
  params: Any,
  batches: Iterable[tuple[Any, ...]],
  *,
  loss_fn: Callable[..., Any] | None = None,
  anchor_period: int | None = None,
  schedule: Sequence[bool] | None = None,
  anchor_batches: Iterable[tuple[Any, ...]] | None = None,
  error_budget: float | None = None,
  batch_size: int | None = None,
  split_batch: bool = False,
  jit: bool = True,
  trace: Trace | None = None,
) -> SpiderRun:
  """Runs ``tx`` from ``params`` (and ``tx.init(params)``), one step a batch.

  Args:
    tx: the optimizer.
    params: the initial params.
    batches: one per step, consumed by every step, anchors included; the loop
      stops when they run out.
    loss_fn: ``loss_fn(params, *batch)``; None: the batches are the gradients
      (see the module docstring).
    anchor_period: the schedule as ``so.is_anchor_step(state, anchor_period,
      error_budget=, batch_size=)`` decides it before each step (the first
      step, then every ``anchor_period``, or adaptively with
      ``error_budget``).
    schedule: or the kind of every step (True: anchor), taken as given; it
      reads nothing from the device, so the loop may run inside ``jax.jit``
      or ``jax.vmap`` (with ``jit=False``).
    anchor_batches: where an anchor takes its gradient; None: on its step's
      batch.
    error_budget: adaptive anchoring, with ``anchor_period`` as the cap.
    batch_size: with ``error_budget``, see ``so.anchor_due``.
    split_batch: recursive steps pass the split-half ``grad_diff_variance``.
    jit: jit each kind of step (one compilation each).
    trace: ``trace(params, state, updates)``, called inside the (jitted)
      step after the update; its values make ``SpiderRun.trace``.

  Returns:
    A :class:`SpiderRun`.
  """
  if (anchor_period is None) == (schedule is None):
    raise ValueError('give one of anchor_period and schedule')

  def compiled(step):
    """``step`` with the trace's record as third output, jitted if jit."""

    def fn(params, state, *batch):
      params, state, updates = step(params, state, *batch)
      return params, state, trace(params, state, updates) if trace else None

    return jax.jit(fn) if jit else fn

  steps = {
    True: compiled(anchor_step(tx, loss_fn)),
    False: compiled(recursive_step(tx, loss_fn, split_batch=split_batch)),
  }
  anchor_batches = None if anchor_batches is None else iter(anchor_batches)
  state = tx.init(params)
  records, anchors = [], []
  kinds = itertools.repeat(None) if schedule is None else schedule
  for kind, batch in zip(kinds, batches, strict=schedule is not None):
    if anchor_period is None:
      anchor = bool(kind)
    else:
      anchor = so.is_anchor_step(
        state, anchor_period, error_budget=error_budget, batch_size=batch_size
      )
    if anchor and anchor_batches is not None:
      batch = next(anchor_batches)
    params, state, record = steps[anchor](params, state, *batch)
    anchors.append(anchor)
    if trace:
      records.append(record)
  return SpiderRun(params, state, records, anchors)
