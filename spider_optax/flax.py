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
- :func:`spider_optax.spider_loop` runs these steps on a schedule.
- :func:`muon_weight_matrices`: which leaves of a model are weight matrices,
  for :func:`spider_optax.mars_muon`.

Import it as ``spider_optax.flax`` (or ``so.flax``); it needs the ``flax``
extra: ``pip install 'spider-optax[flax]'``.
"""

import typing
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from flax.training import train_state
from optax.contrib import MuonDimensionNumbers

from spider_optax import lookup
from spider_optax import loop
from spider_optax import paired

if typing.TYPE_CHECKING:
  from typing_extensions import Unpack

# --------------------------------------------------------------------------
# NNX
# --------------------------------------------------------------------------


def prev_params(
  optimizer: nnx.Optimizer, model: nnx.Module | None = None
) -> Any:
  """x_{k-1} of an ``nnx.Optimizer`` built on a SPIDER transformation.

  Returns an ``nnx.State`` of plain arrays, shaped like
  ``nnx.state(model, optimizer.wrt)``. With ``so.spider(..., lean=True)``
  pass the ``model``: the previous point is rebuilt from its params.
  """
  if not isinstance(optimizer, nnx.Optimizer) and isinstance(
    model, nnx.Optimizer
  ):
    raise TypeError(
      'so.flax.prev_params(optimizer, model) takes the nnx.Optimizer first, '
      'then the model: they are swapped.'
    )
  _check_pair('prev_params', optimizer=optimizer, model=model)
  params = None if model is None else nnx.state(model, optimizer.wrt)
  return _prev_pure(optimizer, params)


def _check_pair(name: str, *, model: Any, optimizer: Any) -> None:
  """TypeError unless the model and optimizer are what they should be.

  ``model`` an nnx.Module (or None), ``optimizer`` an nnx.Optimizer; the
  message says when the two are swapped.
  """
  if isinstance(model, nnx.Optimizer) and isinstance(optimizer, nnx.Module):
    raise TypeError(
      f'so.flax.{name} takes (model, optimizer): the model and the optimizer '
      'are swapped.'
    )
  if not isinstance(optimizer, nnx.Optimizer):
    raise TypeError(
      f'so.flax.{name} needs an nnx.Optimizer, e.g. nnx.Optimizer(model, '
      f'so.spider(...), wrt=nnx.Param), got {type(optimizer).__name__}.'
    )
  if model is not None and not isinstance(model, nnx.Module):
    raise TypeError(
      f'so.flax.{name} needs the nnx.Module that the optimizer updates, got '
      f'{type(model).__name__}.'
    )


def _prev_pure(optimizer: nnx.Optimizer, params: nnx.State | None) -> Any:
  """x_{k-1} as plain arrays, rebuilt from ``params`` for a lean state."""
  pure = None if params is None else nnx.as_pure(params)
  try:
    return lookup.prev_params(nnx.as_pure(optimizer.opt_state), pure)
  except lookup._NoPrevParamsError:
    raise lookup._NoPrevParamsError(
      'This nnx.Optimizer keeps no previous parameters, so there is no '
      'second point for a paired gradient. Build it on a paired-gradient '
      'optimizer, e.g. '
      'nnx.Optimizer(model, so.spider(...), wrt=nnx.Param) (or so.storm, '
      'so.mars_adamw(..., approx=False)); a one-gradient optimizer (plain '
      'optax, or MARS in approx mode) takes nnx.grad(loss_fn)(model) '
      'instead.'
    ) from None


def _loss_of_params(
  loss_fn: Callable[..., Any],
  model: nnx.Module,
  optimizer: nnx.Optimizer,
  has_aux: bool,
) -> tuple[Callable[..., Any], Any]:
  """``loss_fn`` as a function of the ``optimizer.wrt`` params, and those.

  The function returns ``(loss, (aux, state))``: ``aux`` is ``loss_fn``'s
  (None without ``has_aux``) and ``state`` the model's other state after the
  call (BatchNorm statistics, RNG counters), as plain arrays. Every call
  starts from the same snapshot of that state, so both points of a paired
  evaluation see the same dropout masks; write the ``state`` of x_k back
  with :func:`_write_back` so that the running statistics and the RNG
  streams advance once per step. (The snapshot is plain arrays, merged into
  fresh Variables inside each trace: Flax refuses writes to Variables made
  at another trace level.)
  """
  graphdef, params, rest = nnx.split(model, optimizer.wrt, ...)
  rest = nnx.as_pure(rest)

  checked = paired.checked_loss(loss_fn, has_aux)

  def loss_of_params(p, *args, **kwargs):
    copy = nnx.merge(graphdef, p, rest)
    out = checked(copy, *args, **kwargs)
    loss, aux = out if has_aux else (out, None)
    return loss, (aux, nnx.as_pure(nnx.split(copy, optimizer.wrt, ...)[2]))

  return loss_of_params, params


def _write_back(model: nnx.Module, value: Any, has_aux: bool) -> Any:
  """Writes x_k's model state into ``model``; returns ``loss_fn``'s value."""
  loss, (aux, state) = value
  nnx.update(model, state)
  return (loss, aux) if has_aux else loss


def _prev_like(params: nnx.State, optimizer: nnx.Optimizer) -> nnx.State:
  """x_{k-1} with the treedef (the Variable types) of ``params``.

  As ``optimizer.update`` expects of grads.
  """
  return jax.tree.unflatten(
    jax.tree.structure(params),
    jax.tree.leaves(_prev_pure(optimizer, params)),
  )


def prev_model(model: nnx.Module, optimizer: nnx.Optimizer) -> nnx.Module:
  """A copy of ``model`` at the previous parameters x_{k-1}.

  Only the ``optimizer.wrt`` variables differ; other state (batch statistics,
  RNG counters) is copied from ``model``, so running the copy leaves
  ``model`` as it was.
  """
  _check_pair('prev_model', model=model, optimizer=optimizer)
  copy = nnx.clone(model)
  nnx.update(copy, _prev_like(nnx.state(model, optimizer.wrt), optimizer))
  return copy


def paired_value_and_grad(
  loss_fn: Callable[..., Any],
  has_aux: Any = False,
  *args: Any,
  **options: 'Unpack[paired.PairedOptions]',
) -> Any:
  """``nnx.value_and_grad(loss_fn)`` at the model's params and at x_{k-1}.

  The NNX form of :func:`spider_optax.paired_value_and_grad`, with the same
  calling convention: it returns a function

  .. code-block:: python

    (value, grads), (prev_value, prev_grads) = so.flax.paired_value_and_grad(
        loss_fn)(model, optimizer, *args, **kwargs)

  that evaluates ``loss_fn(model, *args, **kwargs)`` on the same ``args``
  (the batch) at both points, in one traced computation. Grads are
  ``nnx.State`` of the ``optimizer.wrt`` variables, ready for
  ``optimizer.update(model, grads, prev_grads=prev_grads)``.

  The model's other state (BatchNorm statistics, RNG counters) is read from
  one snapshot at both points, so that Dropout draws the same masks there,
  and written back once, from x_k's evaluation. With ``split_batch=True`` a
  third output is the variance estimate for adaptive anchoring, and typed
  PRNG keys in ``kwargs`` get each half's index folded in (see
  :func:`spider_optax.paired_value_and_grad`).

  The old form ``paired_value_and_grad(loss_fn, model, optimizer, *args)``
  still works, with a ``DeprecationWarning``.
  """
  return _nnx_form(
    False,
    'paired_value_and_grad',
    loss_fn,
    has_aux,
    args,
    options,
  )


def paired_grad(
  loss_fn: Callable[..., Any],
  has_aux: Any = False,
  *args: Any,
  **options: 'Unpack[paired.PairedOptions]',
) -> Any:
  """``nnx.grad(loss_fn)`` at the model's params and at x_{k-1}, one batch.

  The NNX form of :func:`spider_optax.paired_grad` (inside or outside
  ``nnx.jit``)::

    grads, prev_grads = so.flax.paired_grad(loss_fn)(model, optimizer, x, y)
    optimizer.update(model, grads, prev_grads=prev_grads)

  With ``has_aux=True`` each half is ``(grads, aux)``; with
  ``split_batch=True`` a third output is the variance estimate. See
  :func:`paired_value_and_grad`; the old direct form
  ``paired_grad(loss_fn, model, optimizer, *args)`` is deprecated.
  """
  return _nnx_form(True, 'paired_grad', loss_fn, has_aux, args, options)


def _nnx_form(
  grads_only: bool,
  name: str,
  loss_fn: Callable[..., Any],
  has_aux: Any,
  args: tuple[Any, ...],
  options: Any,
) -> Any:
  """:func:`spider_optax.paired_value_and_grad` on an NNX model.

  Or :func:`spider_optax.paired_grad` with ``grads_only``. ``has_aux`` an
  ``nnx.Module`` is the deprecated direct call
  ``name(loss_fn, model, optimizer, *batch)``, evaluated at once.
  """
  if isinstance(has_aux, nnx.Module):
    _warn_direct_call(name)
    model, optimizer, *batch = has_aux, *args
    return _nnx_form(grads_only, name, loss_fn, False, (), options)(
      model, optimizer, *batch
    )

  def on_model(model, optimizer, *batch, **kwargs):
    _check_pair(f'{name}(loss_fn)', model=model, optimizer=optimizer)
    loss_of_params, params = _loss_of_params(loss_fn, model, optimizer, has_aux)
    (value, grads), (prev_value, prev_grads), *variance = (
      paired.paired_value_and_grad(loss_of_params, True, **options)(
        params, _prev_like(params, optimizer), *batch, **kwargs
      )
    )
    value = _write_back(model, value, has_aux)
    prev_value = (prev_value[0], prev_value[1][0]) if has_aux else prev_value[0]
    out = (value, grads), (prev_value, prev_grads), *variance
    return paired.grads_of(out, has_aux) if grads_only else out

  return on_model


def _warn_direct_call(name: str) -> None:
  warnings.warn(
    f'so.flax.{name}(loss_fn, model, optimizer, *args) is deprecated: call '
    f'so.flax.{name}(loss_fn)(model, optimizer, *batch), the convention of '
    f'so.{name}.',
    DeprecationWarning,
    stacklevel=4,
  )


def nnx_steps(
  loss_fn: Callable[..., Any],
  *,
  has_aux: bool = False,
  split_batch: bool = False,
) -> tuple[Callable, Callable]:
  """Jitted ``(anchor_step, recursive_step)`` for an NNX model.

  Both have the signature ``step((model, optimizer), *batch, **kwargs) ->
  ((model, optimizer), loss)`` and update the model and optimizer in place
  (and return them, for :func:`spider_optax.spider_loop`). The anchor step
  takes the gradient of ``loss_fn(model, *batch, **kwargs)`` on a large batch
  (or all the data), the recursive step the paired gradients on a minibatch.
  The loss returned is at the current params, before the update; with
  ``has_aux=True`` it is ``(loss, aux)``, as ``loss_fn`` returns.

  The model's own state works as written: BatchNorm in training mode
  normalises each point with the batch's statistics at that point, and the
  running statistics are updated once per step, from x_k; Dropout drawing
  from the model's ``nnx.Rngs`` draws the same masks at both points, and the
  stream advances once per step. (Augmentation: draw it once per step,
  outside ``loss_fn``, and pass the augmented batch, so that both points see
  the same samples.)

  With ``split_batch=True`` the recursive step evaluates the minibatch as two
  halves and passes the variance estimate to the update
  (``grad_diff_variance``), for adaptive anchoring with
  :func:`spider_optax.spider_loop` (``error_budget`` without
  ``batch_size``). The optimizer must keep diagnostics, and ``loss_fn``
  average over the batch.
  """

  @nnx.jit
  def anchor(model, optimizer, *batch, **kwargs):
    loss_of_params, params = _loss_of_params(loss_fn, model, optimizer, has_aux)
    value, grads = jax.value_and_grad(loss_of_params, has_aux=True)(
      params, *batch, **kwargs
    )
    optimizer.update(model, grads)
    return _write_back(model, value, has_aux)

  @nnx.jit
  def recursive(model, optimizer, *batch, **kwargs):
    (loss, grads), (_, prev_grads), *variance = paired_value_and_grad(
      loss_fn, has_aux, split_batch=split_batch
    )(model, optimizer, *batch, **kwargs)
    optimizer.update(
      model, grads, prev_grads=prev_grads, **_variance_arg(variance)
    )
    return loss

  def anchor_step(carry, *batch, **kwargs):
    return carry, anchor(*carry, *batch, **kwargs)

  def recursive_step(carry, *batch, **kwargs):
    return carry, recursive(*carry, *batch, **kwargs)

  return anchor_step, recursive_step


# --------------------------------------------------------------------------
# Linen
# --------------------------------------------------------------------------


class TrainState(train_state.TrainState):
  """``flax.training.train_state.TrainState`` for SPIDER.

  ``apply_gradients(grads=..., prev_grads=...)`` is a recursive step;
  without ``prev_grads`` an anchor step. ``prev_params`` is x_{k-1}.
  ``batch_stats`` holds a model's mutable BatchNorm statistics (None
  without), as in Flax's own examples; :func:`linen_steps` updates it.

  Example::

    tx = so.spider(0.1, 1.0)
    state = so.flax.TrainState.create(
        apply_fn=model.apply, params=variables['params'], tx=tx)
    state = state.apply_gradients(grads=jax.grad(loss_fn)(state.params, data))
    grads, prev_grads = so.paired_grad(loss_fn)(
        state.params, state.prev_params, batch)
    state = state.apply_gradients(grads=grads, prev_grads=prev_grads)
  """

  batch_stats: Any = None

  @classmethod
  def create(cls, *, apply_fn, params, tx, **kwargs):
    """Like Flax's, with ``step`` an int32 array rather than a Python int.

    So that a state restored from a checkpoint keeps the same types.
    """
    state = super().create(apply_fn=apply_fn, params=params, tx=tx, **kwargs)
    return state.replace(step=jnp.zeros([], jnp.int32))

  def apply_gradients(
    self, *, grads, prev_grads=None, grad_diff_variance=None, **kwargs
  ):
    """One update: a recursive step with ``prev_grads``, else an anchor step.

    Args:
      grads: the gradients at ``self.params``.
      prev_grads: the gradients at ``self.prev_params`` on the same
        minibatch, for a recursive step.
      grad_diff_variance: the split-half variance estimate, for adaptive
        anchoring.
      **kwargs: other fields to replace, as in Flax's ``apply_gradients``.

    Returns:
      The state after the update, ``step`` one higher.
    """
    extra = {} if prev_grads is None else {'prev_grads': prev_grads}
    if grad_diff_variance is not None:
      extra['grad_diff_variance'] = grad_diff_variance
    updates, opt_state = self.tx.update(
      grads, self.opt_state, self.params, **extra
    )
    return self.replace(
      step=self.step + 1,
      params=optax.apply_updates(self.params, updates),
      opt_state=opt_state,
      **kwargs,
    )

  @property
  def prev_params(self):
    """The previous params x_{k-1}, those of the last ``apply_gradients``.

    (Rebuilt from ``params`` with ``so.spider(..., lean=True)``.)
    """
    return lookup.prev_params(self.opt_state, self.params)


def linen_steps(
  loss_fn: Callable[..., Any],
  *,
  has_aux: bool = False,
  split_batch: bool = False,
) -> tuple[Callable, Callable]:
  """Jitted ``(anchor_step, recursive_step)`` for a Linen :class:`TrainState`.

  Both have the signature ``step(state, *batch, **kwargs) -> (state,
  loss)``; the loss is at the current params, before the update, and with
  ``has_aux=True`` it is ``(loss, aux)``. ``split_batch`` and ``kwargs``
  (e.g. a dropout key, the same at both points) as in :func:`nnx_steps`.

  ``loss_fn(params, *batch, **kwargs)`` returns the loss, or ``(loss, aux)``
  with ``has_aux``. A state with ``batch_stats`` (BatchNorm in training
  mode) calls ``loss_fn(params, batch_stats, *batch, **kwargs)`` instead,
  which returns ``(loss, new_batch_stats)``, or ``(loss, (new_batch_stats,
  aux))`` with ``has_aux``. Both points of a paired step start from the
  state's ``batch_stats`` and normalise with their own batch statistics;
  the state keeps x_k's ``new_batch_stats``, so the running statistics move
  once per step:

  .. code-block:: python

    def loss_fn(params, batch_stats, x, y, dropout_key):
      logits, updates = model.apply(
          {'params': params, 'batch_stats': batch_stats}, x, train=True,
          mutable=['batch_stats'], rngs={'dropout': dropout_key})
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return loss, updates['batch_stats']

    state = so.flax.TrainState.create(
        apply_fn=model.apply, params=variables['params'],
        batch_stats=variables['batch_stats'], tx=so.mars_adamw(1e-3,
        approx=False))
    anchor_step, recursive_step = so.flax.linen_steps(loss_fn)
    state, loss = recursive_step(state, x, y, dropout_key)
  """

  def of_params(state):
    """``loss_fn`` as ``(params, *batch) -> (loss, (aux, batch_stats))``."""
    stats = state.batch_stats

    def loss_of_params(params, *batch, **kwargs):
      if stats is None:
        out = loss_fn(params, *batch, **kwargs)
        loss, aux = out if has_aux else (out, None)
        return loss, (aux, None)
      loss, rest = loss_fn(params, stats, *batch, **kwargs)
      new_stats, aux = rest if has_aux else (rest, None)
      return loss, (aux, new_stats)

    return loss_of_params

  def finish(state, value):
    """The state with x_k's batch statistics, and what the step returns."""
    loss, (aux, new_stats) = value
    if new_stats is not None:
      state = state.replace(batch_stats=new_stats)
    return state, ((loss, aux) if has_aux else loss)

  @jax.jit
  def anchor_step(state, *batch, **kwargs):
    value, grads = jax.value_and_grad(of_params(state), has_aux=True)(
      state.params, *batch, **kwargs
    )
    return finish(state.apply_gradients(grads=grads), value)

  @jax.jit
  def recursive_step(state, *batch, **kwargs):
    (value, grads), (_, prev_grads), *variance = paired.paired_value_and_grad(
      of_params(state), True, split_batch=split_batch
    )(state.params, state.prev_params, *batch, **kwargs)
    state = state.apply_gradients(
      grads=grads, prev_grads=prev_grads, **_variance_arg(variance)
    )
    return finish(state, value)

  return anchor_step, recursive_step


def _variance_arg(variance: list[jax.Array]) -> dict[str, jax.Array]:
  """The update's ``grad_diff_variance`` keyword, if a split batch gave one."""
  return {'grad_diff_variance': variance[0]} if variance else {}


# --------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------


def spider_loop(*args: Any, **kwargs: Any) -> tuple[Any, list[Any]]:
  """Deprecated: :func:`spider_optax.spider_loop`, which needs no Flax."""
  warnings.warn(
    'so.flax.spider_loop is deprecated: use so.spider_loop.',
    DeprecationWarning,
    stacklevel=2,
  )
  return loop.spider_loop(*args, **kwargs)


# --------------------------------------------------------------------------
# Weight matrices, for so.mars_muon and optax.contrib.muon
# --------------------------------------------------------------------------

# nnx.MultiHeadAttention's and Linen's MultiHeadDotProductAttention's
# projections: query/key/value kernels (in, heads, head_dim), out kernels
# (heads, head_dim, out).
_IN_PROJECTIONS = frozenset({'query', 'key', 'value'})


def _names(path: tuple[Any, ...]) -> list[str]:
  """The dict keys and attribute names of a leaf's path, less NNX's .value."""
  names = []
  for key in path:
    if isinstance(key, jax.tree_util.GetAttrKey):
      if key.name != 'value':  # an nnx.Variable's, not a module's
        names.append(key.name)
    elif isinstance(getattr(key, 'key', None), str):
      names.append(key.key)
  return names


def muon_weight_matrices(params: Any, *, exclude: Sequence[str] = ()) -> Any:
  """The weight matrices of a Flax model, as Muon's dimension numbers.

  For ``muon_weight_dimension_numbers=`` of :func:`spider_optax.mars_muon`,
  :func:`spider_optax.mars_shampoo` and ``optax.contrib.muon``: a tree like
  ``params`` (NNX's ``nnx.State`` or Linen's params dict) with an
  ``optax.contrib.MuonDimensionNumbers`` for each weight matrix and None for
  every other leaf, which then goes to AdamW:

  - a ``kernel`` of ``nnx.Linear`` / ``nn.Dense``, ``(in, out)``: reduction
    axis 0, output axis 1;
  - the ``query``, ``key`` and ``value`` kernels of ``nnx.MultiHeadAttention``
    / ``nn.MultiHeadDotProductAttention``, ``(in, heads, head_dim)``:
    reduction axis 0, output axes (1, 2), one matrix of ``in`` by
    ``heads * head_dim``; their ``out`` kernel, ``(heads, head_dim, out)``:
    reduction axes (0, 1), output axis 2;
  - a convolution kernel, ``(*window, in, out)``: the output axis last, the
    others reduced (the kernel as a matrix of ``window * in`` by ``out``);
  - None for biases (also the 2-D q/k/v biases, ``(heads, head_dim)``),
    norm scales, embeddings (``embedding`` is not a ``kernel``) and every
    leaf under a module named in ``exclude`` (an output head, say).

  Pass it as it is (it is called with the params) or call it on the params.

  Examples:
    >>> import functools, spider_optax as so
    >>> from flax import nnx
    >>> class Block(nnx.Module):
    ...   def __init__(self, rngs):
    ...     self.attn = nnx.MultiHeadAttention(
    ...         num_heads=2, in_features=8, decode=False, rngs=rngs)
    ...     self.head = nnx.Linear(8, 4, rngs=rngs)
    >>> params = nnx.state(Block(nnx.Rngs(0)), nnx.Param)
    >>> dims = so.flax.muon_weight_matrices(params, exclude=['head'])
    >>> print(dims['attn']['query']['kernel'].get_value())
    MuonDimensionNumbers(reduction_axis=0, output_axis=(1, 2))
    >>> print(dims['attn']['query']['bias'].get_value(),
    ...       dims['head']['kernel'].get_value())
    None None
    >>> model = Block(nnx.Rngs(0))
    >>> optimizer = nnx.Optimizer(
    ...     model,
    ...     so.mars_muon(1e-3, muon_weight_dimension_numbers=functools.partial(
    ...         so.flax.muon_weight_matrices, exclude=['head'])),
    ...     wrt=nnx.Param)

  Args:
    params: the model's params (or updates: only their paths and shapes
      count).
    exclude: module names whose leaves are not matrices for Muon.

  Returns:
    A tree of ``MuonDimensionNumbers`` and None with the structure of
    ``params``.
  """
  excluded = frozenset(exclude)

  def dims(path, x):
    names = _names(path)
    if not names or names[-1] != 'kernel' or x.ndim < 2:
      return None
    if excluded.intersection(names[:-1]):
      return None
    parent = names[-2] if len(names) > 1 else ''
    if x.ndim == 3 and parent in _IN_PROJECTIONS:
      return MuonDimensionNumbers(0, (1, 2))
    if x.ndim == 3 and parent == 'out':
      return MuonDimensionNumbers((0, 1), 2)
    if x.ndim == 2:
      return MuonDimensionNumbers(0, 1)
    return MuonDimensionNumbers(tuple(range(x.ndim - 1)), x.ndim - 1)

  return jax.tree_util.tree_map_with_path(dims, params)
