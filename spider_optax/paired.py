"""Gradients at the current and previous parameters on the same minibatch."""

import typing
from collections.abc import Callable
from typing import Any, TypedDict

import jax
import jax.numpy as jnp
import numpy as np

from spider_optax import _checks
from spider_optax.clipping import global_norm

if typing.TYPE_CHECKING:
  from typing_extensions import Unpack


class PairedOptions(TypedDict, total=False):
  """The keyword options of every paired-gradient function.

  See :func:`paired_value_and_grad` for what each does.
  """

  vectorized: bool | None
  split_batch: bool
  microbatches: int


def paired_value_and_grad(
  loss_fn: Callable[..., Any],
  has_aux: bool = False,
  *,
  vectorized: bool | None = None,
  split_batch: bool = False,
  microbatches: int = 1,
) -> Callable[..., tuple[Any, ...]]:
  r"""``jax.value_and_grad(loss_fn)`` at two parameter sets on one batch.

  SPIDER's recursive step needs :math:`\nabla f_{S_2}(x_k)` and
  :math:`\nabla f_{S_2}(x_{k-1})` on the *same* minibatch :math:`S_2` (same
  data, same dropout key). The returned function evaluates both in one traced
  computation:

  .. code-block:: python

    (value, grads), (prev_value, prev_grads) = so.paired_value_and_grad(
        loss_fn)(params, prev_params, *args, **kwargs)

  Each half is exactly what ``jax.value_and_grad(loss_fn, has_aux)`` returns
  at that point; with ``has_aux=True`` the value is ``(loss, aux)``. Only the
  first argument of ``loss_fn`` is differentiated; ``args`` and ``kwargs``
  (the batch, an RNG key) are shared by both points.

  With ``split_batch=True`` the minibatch of :math:`b` samples (every leaf of
  ``args``, along its first axis) is evaluated as two halves, :math:`A` of
  :math:`m = \lfloor b/2 \rfloor` samples and :math:`B` of the rest, at both
  points: the same number of gradient evaluations. The returned values and
  gradients are the halves' weighted means, which for a ``loss_fn`` that
  averages over the batch are those of the whole minibatch (up to rounding).
  A third output estimates the variance that this recursive step adds to the
  SPIDER estimator, :math:`\mathrm{Var}(\bar d)` with
  :math:`\bar d = \nabla f_{S_2}(x_k) - \nabla f_{S_2}(x_{k-1})`:

  .. math::

    \widehat{\mathrm{Var}} = \frac{m (b - m)}{b^2}
      \|\bar d_A - \bar d_B\|^2,

  unbiased for samples drawn independently, since
  :math:`\mathbb{E}\|\bar d_A - \bar d_B\|^2 = \sigma^2 (1/m + 1/(b - m))`
  and :math:`\mathrm{Var}(\bar d) = \sigma^2 / b`, with :math:`\sigma^2` the
  variance of one sample's gradient difference. Pass it to the update as
  ``grad_diff_variance=``; :func:`spider_optax.anchor_due` then anchors on
  the sum of these estimates since the last anchor. It needs a
  ``loss_fn`` that averages over the batch, ``args`` whose leaves all share
  the batch axis first (``kwargs`` are shared, e.g. an RNG key). With
  ``has_aux=True`` the halves' aux outputs are combined as their values
  are: floating-point leaves by the weighted mean (a BatchNorm's running
  statistics: exact for the mean, without the between-halves term for the
  variance), other leaves from the first half (an RNG counter, which both
  halves advanced alike). Every typed PRNG key in ``kwargs``
  (``jax.random.key``) has the half's index folded in, so that the halves
  draw independent dropout masks, as two independent minibatches would:
  with one shared mask the halves' difference would miss the dropout noise,
  and the estimate would read 0 where dropout is the only noise. The two
  points of each half still share theirs. Legacy ``uint32`` keys are refused
  with a hint.

  Examples:
    >>> import jax.numpy as jnp, spider_optax as so
    >>> loss_fn = lambda p, x: jnp.sum((p['w'] * x) ** 2)
    >>> (value, grads), (prev_value, prev_grads) = so.paired_value_and_grad(
    ...     loss_fn)({'w': jnp.array(2.0)}, {'w': jnp.array(1.0)}, 3.0)
    >>> print(value, grads['w'], prev_value, prev_grads['w'])
    36.0 36.0 9.0 18.0

  Args:
    loss_fn: a function ``(params, *args, **kwargs) -> loss`` (or
      ``(loss, aux)`` with ``has_aux=True``), as for ``jax.value_and_grad``.
    has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
    vectorized: evaluate both points with one ``jax.vmap`` over the stacked
      parameter sets (one batched forward/backward, at the cost of stacking
      the two parameter copies and holding both points' activations at
      once), or, when False, as two gradient calls in the same trace. None
      (the default) chooses by the backend when the function is called:
      two calls on CPU, where they were faster in 3 of 4 measured cases
      (an MLP and an LSTM at batch 32 and 256: 1.63-1.92x one gradient +
      clip/SGD against 1.86-2.18x vectorized, and 12-30% less temporary
      memory), and the vmap on GPU and TPU, where one batched launch is
      expected to use the device better at small batches (not measured
      here: ``python -m benchmarks.device`` measures both on the backend
      it runs on). Under FSDP the vmap all-gathers both points' weights at
      once and holds both points' activations, while two calls hold one
      point's at a time (per-device temporaries on an 8-device CPU mesh:
      the MLP 3.9 against 3.4 MB, the LSTM 18.5 against 16.8 MB;
      ``benchmarks/RESULTS.md`` section 6).
    split_batch: also estimate the variance the step adds to the estimator,
      from the two halves of the batch (see above).
    microbatches: gradient accumulation: split the batch (every leaf of
      ``args``, along its first axis, which ``microbatches`` must divide)
      into this many micro-batches and evaluate them one after the other in
      a ``jax.lax.scan``, summing values and gradients in at least float32,
      so that only one micro-batch's activations are alive at a time. The
      result is the micro-batches' mean, which for a ``loss_fn`` that
      averages over the batch is the whole batch's value and gradients, at
      both points, to float32 rounding. Typed PRNG keys in ``kwargs`` get the
      micro-batch's index folded in; with ``has_aux=True`` the aux outputs
      are combined as the halves of ``split_batch`` are (see above). This is
      the
      way to accumulate ``grads`` and ``prev_grads`` together:
      ``optax.MultiSteps`` averages ``grads`` but passes on only the last
      micro-batch's ``prev_grads``.

  Returns:
    A function ``(params, prev_params, *args, **kwargs)`` returning the pair
    ``(value_and_grad at params, value_and_grad at prev_params)``, and with
    ``split_batch`` the float32 variance estimate as a third element.
  """
  value_and_grad = jax.value_and_grad(
    checked_loss(loss_fn, has_aux), has_aux=has_aux
  )

  def one_pair(params, prev_params, *args, **kwargs):
    _checks.check_trees_match(
      'params',
      params,
      'prev_params',
      prev_params,
      hint='Pass so.prev_params(opt_state) of the optimizer that updates '
      'these params.',
    )
    at = lambda p: value_and_grad(p, *args, **kwargs)
    if not (_default_vectorized() if vectorized is None else vectorized):
      return at(params), at(prev_params)
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), params, prev_params)
    both = jax.vmap(at)(stacked)  # args/kwargs are closed over: not mapped.
    return jax.tree.map(lambda x: x[0], both), jax.tree.map(
      lambda x: x[1], both
    )

  _checks.check_count('microbatches', microbatches)
  paired = (
    one_pair if microbatches == 1 else _accumulated(one_pair, microbatches)
  )
  if not split_batch:
    return paired

  def paired_halves(params, prev_params, *args, **kwargs):
    b = _batch_size(args, 'split_batch=True')
    if b < 2:
      raise ValueError(
        f'split_batch=True needs a batch of at least 2 samples, got {b}.'
      )
    m = b // 2
    if m % microbatches or (b - m) % microbatches:
      k = microbatches
      raise ValueError(
        f'split_batch=True with microbatches={k}: each half of the batch of '
        f'{b} samples ({m} and {b - m}) is accumulated over {k} '
        f'micro-batches, so {k} must divide both. Use a batch that is a '
        f'multiple of {2 * k}, fewer microbatches, or drop split_batch=True '
        '(or microbatches=) to keep this batch size.'
      )
    first, second = (
      paired(
        params,
        prev_params,
        *jax.tree.map(half, args),
        **_fold_keys(kwargs, i, 'split_batch=True'),
      )
      for i, half in enumerate((lambda x: x[:m], lambda x: x[m:]))
    )
    mean = lambda u, v: _combine((u, v), (m / b, (b - m) / b))
    # d_A - d_B = (g_A - g'_A) - (g_B - g'_B), in float32 for the norm.
    diff = lambda a, pa, b_, pb: (
      (a.astype(jnp.float32) - pa.astype(jnp.float32))
      - (b_.astype(jnp.float32) - pb.astype(jnp.float32))
    )
    spread = jax.tree.map(
      diff, first[0][1], first[1][1], second[0][1], second[1][1]
    )
    variance = jnp.square(global_norm(spread)) * (m * (b - m) / b**2)
    return mean(first[0], second[0]), mean(first[1], second[1]), variance

  return paired_halves


def checked_loss(
  loss_fn: Callable[..., Any], has_aux: bool
) -> Callable[..., Any]:
  """``loss_fn``, whose output is checked to fit ``has_aux`` when traced.

  With ``has_aux=True`` it must return a pair ``(loss, aux)``; without, one
  scalar: the message says which flag to change (jax.value_and_grad's own
  errors name neither).
  """

  def checked(*args, **kwargs):
    out = loss_fn(*args, **kwargs)
    pair = isinstance(out, (tuple, list)) and len(out) == 2
    if has_aux and not pair:
      raise TypeError(
        'has_aux=True needs loss_fn to return a pair (loss, aux), got '
        f'{_kind(out)}. Return (loss, aux), or drop has_aux=True for a loss '
        'that returns only the scalar loss.'
      )
    if not has_aux and isinstance(out, (tuple, list)):
      raise TypeError(
        f'loss_fn returned {_kind(out)} where a scalar loss is needed. If it '
        'returns (loss, aux), pass has_aux=True.'
      )
    return out

  return checked


def _kind(value: Any) -> str:
  if isinstance(value, (tuple, list)):
    return f'a {type(value).__name__} of {len(value)}'
  if hasattr(value, 'shape'):
    return f'an array of shape {tuple(value.shape)}'
  return f'a {type(value).__name__}'


def _default_vectorized() -> bool:
  """Whether ``vectorized=None`` vmaps the two points on this backend.

  False on CPU, True elsewhere (see :func:`paired_value_and_grad`).
  """
  return jax.default_backend() != 'cpu'


def _is_float(x: Any) -> bool:
  return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _combine(parts: tuple[Any, ...], weights: tuple[float, ...]) -> Any:
  """The parts' weighted mean, leaf by leaf; non-float leaves from the first.

  The one rule by which split halves and micro-batches make one batch's
  values, gradients and aux outputs (a BatchNorm's running statistics are
  floats, an RNG counter or key is not: all parts advanced it alike).
  """

  def leaf(*xs):
    if not _is_float(xs[0]):
      return xs[0]
    total = sum(
      w * x.astype(jnp.promote_types(x.dtype, jnp.float32))
      for w, x in zip(weights, xs)
    )
    return jnp.asarray(total).astype(xs[0].dtype)

  return jax.tree.map(leaf, *parts)


def _accumulated(paired: Callable[..., Any], k: int) -> Callable[..., Any]:
  """``paired`` over ``k`` micro-batches in a scan.

  Combined as by :func:`_combine` with equal weights, summing float leaves
  as it goes.
  """

  def accumulated(params, prev_params, *args, **kwargs):
    b = _batch_size(args, f'microbatches={k}')
    if b % k:
      raise ValueError(f'microbatches={k} must divide the batch size, {b}.')
    chunks = jax.tree.map(lambda x: x.reshape(k, b // k, *x.shape[1:]), args)
    step = lambda i, chunk: jax.tree.flatten(
      paired(
        params,
        prev_params,
        *chunk,
        **_fold_keys(kwargs, i, f'microbatches={k}'),
      )
    )[0]
    shapes = jax.eval_shape(step, 0, jax.tree.map(lambda x: x[0], chunks))
    floats = [_is_float(x) for x in shapes]
    wide = lambda x: jnp.promote_types(x.dtype, jnp.float32)
    zeros = [jnp.zeros(x.shape, wide(x)) for x, f in zip(shapes, floats) if f]

    def body(total, xs):
      leaves = step(*xs)
      summed = [x for x, f in zip(leaves, floats) if f]
      others = [x for x, f in zip(leaves, floats) if not f]
      return [t + x.astype(t.dtype) for t, x in zip(total, summed)], others

    total, others = jax.lax.scan(body, zeros, (jnp.arange(k), chunks))
    total, others = iter(total), iter(others)
    leaves = [
      (next(total) / k).astype(x.dtype) if f else next(others)[0]
      for x, f in zip(shapes, floats)
    ]
    treedef = jax.tree.structure(
      jax.eval_shape(
        lambda c: paired(params, prev_params, *c, **kwargs),
        jax.tree.map(lambda x: x[0], chunks),
      )
    )
    return jax.tree.unflatten(treedef, leaves)

  return accumulated


def _fold_keys(
  kwargs: dict[str, Any], index: Any, option: str
) -> dict[str, Any]:
  """``kwargs`` with ``index`` folded into every PRNG key.

  So that the parts of a split batch (two halves, or micro-batches) draw
  independent dropout masks, as separate minibatches would; each part's two
  points still share theirs.
  """

  def fold(path, x):
    dtype = getattr(x, 'dtype', None)
    if dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key):
      return jax.random.fold_in(x, index)
    if dtype == jnp.uint32 and np.shape(x) == (2,):
      raise TypeError(
        f'{option} draws each part of the batch its own randomness by '
        f'folding its index into every PRNG key of the keyword arguments, '
        f'but kwargs{jax.tree_util.keystr(path)} looks like a legacy uint32 '
        f'key: pass a typed key (jax.random.key(seed), or '
        f'jax.random.wrap_key_data(key)).'
      )
    return x

  return jax.tree_util.tree_map_with_path(fold, kwargs)


def _batch_size(args: tuple[Any, ...], option: str) -> int:
  """The shared first-axis length of every leaf of ``args``."""
  leaves = jax.tree_util.tree_leaves_with_path(args)
  if not leaves:
    raise ValueError(
      f'{option} needs the batch as positional arguments after '
      'the two parameter sets.'
    )
  sizes = {
    jax.tree_util.keystr(p): (np.shape(x)[0] if np.ndim(x) else None)
    for p, x in leaves
  }
  first_path, b = next(iter(sizes.items()))
  for path, size in sizes.items():
    if size != b or size is None:
      axis = 'no first axis' if size is None else f'first axis {size}'
      raise ValueError(
        f'{option} splits every leaf of the batch along its first axis, '
        f'but args{path} has {axis} and args{first_path} has {b}. Pass '
        f'shared values (an RNG key) as keyword arguments.'
      )
  assert b is not None  # the loop raised for leaves without a first axis
  return b


def paired_grad(
  loss_fn: Callable[..., Any],
  has_aux: bool = False,
  **options: 'Unpack[PairedOptions]',
) -> Callable[..., tuple[Any, ...]]:
  r"""``jax.grad(loss_fn)`` at two parameter sets on one batch.

  .. code-block:: python

    grads, prev_grads = so.paired_grad(loss_fn)(
        params, so.prev_params(opt_state), batch)
    updates, opt_state = tx.update(
        grads, opt_state, params, prev_grads=prev_grads)

  With ``has_aux=True`` each half is ``(grads, aux)``, as ``jax.grad``
  returns. With ``split_batch=True`` it returns
  ``grads, prev_grads, grad_diff_variance``, the last for adaptive anchoring:

  .. code-block:: python

    grads, prev_grads, variance = so.paired_grad(loss_fn, split_batch=True)(
        params, so.prev_params(opt_state), batch)
    updates, opt_state = tx.update(grads, opt_state, params,
                                   prev_grads=prev_grads,
                                   grad_diff_variance=variance)

  See :func:`paired_value_and_grad` for the arguments and ``options``.

  Examples:
    >>> import jax.numpy as jnp, spider_optax as so
    >>> loss_fn = lambda p, x: jnp.sum((p['w'] * x) ** 2)
    >>> grads, prev_grads = so.paired_grad(loss_fn)(
    ...     {'w': jnp.array(2.0)}, {'w': jnp.array(1.0)}, 3.0)
    >>> print(grads['w'], prev_grads['w'])
    36.0 18.0
  """
  paired = paired_value_and_grad(loss_fn, has_aux, **options)

  return lambda *args, **kwargs: grads_of(paired(*args, **kwargs), has_aux)


def grads_of(values_and_grads: tuple[Any, ...], has_aux: bool) -> tuple:
  """:func:`paired_grad`'s outputs from :func:`paired_value_and_grad`'s."""
  (value, grads), (prev_value, prev_grads), *variance = values_and_grads
  if has_aux:
    return (grads, value[1]), (prev_grads, prev_value[1]), *variance
  return (grads, prev_grads, *variance)
