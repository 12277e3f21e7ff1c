"""Argument checks of the public API: clear errors that say what to do."""

import contextlib
import contextvars
import inspect
import math
import numbers
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import jax
import jax.core
import numpy as np

from spider_optax import _buffers

T = TypeVar('T')


def is_concrete(value: Any) -> bool:
  """True when ``value`` has a value now (not a tracer inside jit/grad)."""
  return not isinstance(value, jax.core.Tracer)


def check_positive(
  name: str, value: T, *, allow_none: bool = False, finite: bool = False
) -> T:
  """``value``, checked to be a number > 0 (``finite``: and not infinity).

  ``allow_none`` lets None through (a dropped clipping term). See
  :func:`check_range` for traced values (use the value returned).
  """
  return check_range(
    name,
    value,
    (lambda x: (x > 0) & (x < np.inf)) if finite else (lambda x: x > 0),
    'positive and finite' if finite else 'positive',
    allow_none=allow_none,
    hint='Pass None to drop this clipping term.' if allow_none else '',
  )


def check_trees_match(
  reference_name: str,
  reference: Any,
  name: str,
  tree: Any,
  *,
  check_dtypes: bool = True,
  hint: str = '',
) -> None:
  """Raises if ``tree`` differs from ``reference`` in structure, shape or dtype.

  The error names the first offending leaf path, e.g.
  ``prev_grads['layer']['kernel'] has shape (3, 4) but grads['layer']['kernel']
  has shape (3, 5)``. Shapes and dtypes are static, so this also works under
  ``jax.jit`` (it runs once, at trace time).
  """
  ref_leaves, ref_def = jax.tree_util.tree_flatten_with_path(reference)
  leaves, tree_def = jax.tree_util.tree_flatten_with_path(tree)
  suffix = f' {hint}' if hint else ''
  if ref_def != tree_def:
    ref_paths = {jax.tree_util.keystr(p) for p, _ in ref_leaves}
    paths = {jax.tree_util.keystr(p) for p, _ in leaves}
    missing = sorted(ref_paths - paths)
    extra = sorted(paths - ref_paths)
    if missing:
      detail = (
        f'{name} has no leaf {name}{missing[0]} that {reference_name} has'
      )
    elif extra:
      detail = f'{name} has a leaf {name}{extra[0]} that {reference_name} lacks'
    else:
      detail = (
        f'{name} has tree structure {tree_def} but {reference_name} '
        f'has {ref_def}'
      )
    raise ValueError(f'{detail}.{suffix}')
  for (path, ref_leaf), (_, leaf) in zip(ref_leaves, leaves):
    key = jax.tree_util.keystr(path)
    ref_shape, shape = np.shape(ref_leaf), np.shape(leaf)
    if ref_shape != shape:
      raise ValueError(
        f'{name}{key} has shape {shape} but {reference_name}{key} has shape '
        f'{ref_shape}.{suffix}'
      )
    ref_dtype, dtype = (
      jax.numpy.result_type(ref_leaf),
      jax.numpy.result_type(leaf),
    )
    if check_dtypes and ref_dtype != dtype:
      raise TypeError(
        f'{name}{key} has dtype {dtype} but {reference_name}{key} has dtype '
        f'{ref_dtype}.{suffix}'
      )


def error_if(pred: Any, message: str, *values: Any, result: T) -> T:
  """``result``, unless the boolean ``pred`` is True: then ``ValueError``.

  The message is ``message.format(*values)``. A concrete ``pred`` is checked
  now and ``result`` returned as it is. A traced one (inside ``jax.jit``,
  e.g. a hyperparameter under ``optax.inject_hyperparams``) is checked when
  the computation runs: the computation stops with this ``ValueError``
  (wrapped in JAX's runtime error) when its result is read, the same verdict
  as eagerly, one step later in time. The returned ``result`` then depends
  on the check (each leaf plus a zero XLA cannot fold away), so the caller
  must use it in place of ``result``: a check nothing depends on is dropped.
  Each leaf keeps its dtype and weak type.

  The callback is a ``jax.pure_callback`` in the branch taken only when the
  check fails, as in equinox's ``error_if``: a valid step pays one scalar
  branch. ``jax.debug.callback`` (an effect) would take the step off
  ``jax.jit``'s fast C++ dispatch path, which cost 0.25 ms to 2 ms per call
  on CPU (``benchmarks/RESULTS.md`` section 6).
  :func:`jax.experimental.checkify` would need every caller to wrap its step.
  """
  if is_concrete(pred) and all(is_concrete(v) for v in values):
    if np.any(pred):
      raise ValueError(message.format(*values))
    return result

  def raise_if(pred, *values):
    if np.any(pred):
      raise ValueError(message.format(*values))
    return np.zeros((), zero_dtype)

  # The float type of a Python 0.0 (float64 under jax.enable_x64): both
  # branches of the cond below must agree with it.
  zero_dtype = jax.numpy.result_type(float)

  # The check returns a weakly typed float32 zero (a Python 0.0 in the
  # passing branch): adding it keeps the checked value's dtype and weak type,
  # so a weakly typed learning rate does not turn bfloat16 updates into
  # float32 ones. Under jax.vmap (a grid of hyperparameters) it takes the
  # whole batch at once: a batched branch is a select, which would run the
  # callback on every step and lane.
  def branch(pred, *values):
    return jax.lax.cond(
      jax.numpy.any(pred),
      lambda: jax.pure_callback(
        raise_if,
        jax.ShapeDtypeStruct((), zero_dtype, weak_type=True),
        pred,
        *values,
      ),
      lambda: 0.0,
    )

  @jax.custom_batching.custom_vmap
  def check(pred, *values):
    return _on_every_device(branch, pred, *values, like=result)

  @check.def_vmap
  def _(axis_size, in_batched, pred, *values):
    del axis_size, in_batched
    return check(pred, *values), False

  # A check has no gradient: under jax.grad (meta-gradients through an
  # update) its inputs are constants, and the result's gradient passes by.
  zero = check(*jax.lax.stop_gradient((pred, *values)))
  return jax.tree.map(lambda x: _plus(x, zero), result)


def _mesh_of(x: Any) -> Any:
  """The mesh in ``x``'s type (an Explicit mesh's arrays), or None."""
  try:
    return jax.typeof(x).sharding.mesh
  except (AttributeError, TypeError):
    return None


def _on_every_device(fn: Callable[..., T], *args: Any, like: Any = ()) -> T:
  """``fn(*args)``, run by each device of the current mesh.

  The mesh: the one set with ``jax.set_mesh``, or an Explicit mesh named
  by the types of ``args`` or of the leaves of ``like``. A callback in a
  computation split over devices runs on one of them, and the others wait
  for its result: where it raises, they wait in that collective until XLA
  aborts the process. Under a mesh each device runs its own
  (``jax.shard_map`` over every axis, the arguments replicated), so that
  every device raises. Without one (an Auto mesh used without
  ``jax.set_mesh``), ``fn(*args)`` as it is.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:  # an Explicit mesh's arrays carry it in their types
    meshes = [_mesh_of(x) for x in (*args, *jax.tree.leaves(like))]
    mesh = next((m for m in meshes if m is not None and not m.empty), mesh)
  if mesh.empty or mesh.size == 1:
    return fn(*args)
  spec = jax.sharding.PartitionSpec()
  return jax.shard_map(
    fn,
    mesh=mesh,
    in_specs=tuple(spec for _ in args),
    out_specs=spec,
    check_vma=False,
  )(*args)


def _plus(x: Any, zero: jax.Array) -> jax.Array:
  """``x`` plus a weakly typed float ``zero``: same value, dtype, weak type.

  Integers add ``zero != 0`` (False), booleans xor it.
  """
  x = jax.numpy.asarray(x)
  if jax.numpy.issubdtype(x.dtype, jax.numpy.inexact):
    return x + zero
  if x.dtype == np.bool_:
    return x ^ (zero != 0)
  return x + (zero != 0)  # a bool promotes to x's integer type


def is_function(value: Any) -> bool:
  """True for a callable that is not a number (NumPy scalars are callable)."""
  return callable(value) and not hasattr(value, 'dtype')


def check_range(
  name: str,
  value: Any,
  in_range: Callable[[Any], Any],
  expected: str,
  *,
  allow_none: bool = False,
  schedule: bool = False,
  hint: str = '',
) -> Any:
  """The one check of a numeric hyperparameter: the same verdict eager and jit.

  Returns ``value``; a traced one made to depend on its check
  (:func:`error_if`), which the caller must use in its place.

  Args:
    name: the argument's name, for the message.
    value: a Python or NumPy number, a scalar array, or a tracer.
    in_range: ``x -> bool``, written with operators that work on floats and
      arrays alike (``(x >= 0) & (x < 1)``); False for NaN.
    expected: what a valid value is, e.g. ``'a number in [0, 1)'``.
    allow_none: None is valid (an optional term).
    schedule: a callable is valid (an optax schedule); its values are checked
      where it is evaluated (:func:`checked_schedule`).
    hint: appended to the message.

  Raises:
    TypeError: for what is not a real number (strings, callables where no
      schedule is taken, complex numbers, arrays of more than one element).
    ValueError: for a concrete number out of range, at once; for a traced one
      (under ``jax.jit``), when the computation runs (:func:`error_if`).
  """
  if value is None:
    if allow_none:
      return value
    raise TypeError(f'{name} must be {expected}, got None.')
  if is_function(value):
    if schedule:
      check_schedule(name, value)
      return value
    raise TypeError(
      f'{name} must be {expected}, got the callable {value!r}: only '
      'learning rates and weight decays take schedules.'
    )
  dtype = getattr(value, 'dtype', None)
  if isinstance(value, (bool, np.bool_)) or (
    dtype is not None and dtype == np.bool_
  ):
    raise TypeError(f'{name} must be {expected}, got the bool {value!r}.')
  if dtype is not None:
    if (
      np.ndim(value) != 0
      or not jax.numpy.issubdtype(dtype, jax.numpy.integer)
      and not jax.numpy.issubdtype(dtype, jax.numpy.floating)
    ):
      raise TypeError(
        f'{name} must be {expected}, a real scalar, got an array of shape '
        f'{np.shape(value)} and dtype {dtype}.'
      )
  elif not isinstance(value, numbers.Real):
    raise TypeError(f'{name} must be {expected}, got {value!r}.')
  suffix = f' {hint}' if hint else ''
  if is_concrete(value):
    number = as_float(value)
    used = as_float32(number)
    if not (in_range(number) and in_range(used)):
      detail = ''
      if not (used == number or math.isnan(number)):
        flushed = (
          ', which flushes numbers below 1.2e-38 to 0' if not used else ''
        )
        detail = f' ({used!r} {IN_FLOAT32}{flushed})'
      raise ValueError(
        f'{name} must be {expected}, got {value!r}{detail}.{suffix}'
      )
    return value
  # A float32 value is judged as the step uses it (a denormal flushed to
  # 0: XLA's comparisons do not flush it); a wider one also as it is.
  valid = in_range(traced_float32(value))
  if jax.numpy.finfo(jax.numpy.result_type(value, np.float32)).bits > 32:
    valid = valid & in_range(value)
  return error_if(
    ~valid,
    f'{name} must be {expected}, got {{}} (a traced value, e.g. from '
    f'optax.inject_hyperparams or a schedule; judged on its float32 '
    f'value).{suffix}',
    value,
    result=value,
  )


IN_FLOAT32 = 'in float32, the precision the step computes it in'


def as_float(value: Any) -> float:
  """A concrete real scalar as a Python float (a huge int: +-inf)."""
  try:
    return float(value)
  except OverflowError:
    return math.copysign(math.inf, value)


def as_float32(number: float) -> float:
  """``number`` as the step uses it: rounded to float32, denormals flushed.

  One verdict for a hyperparameter however it arrives: a Python literal is
  judged on the value that an injected one (a float32 array) has. XLA on
  CPU flushes float32 numbers below the smallest normal (1.2e-38) to 0.
  """
  with np.errstate(over='ignore'):
    used = float(np.float32(number))
  return 0.0 if abs(used) < np.finfo(np.float32).tiny else used


def traced_float32(value: Any) -> Any:
  """:func:`as_float32` of a traced value."""
  used = jax.numpy.asarray(value).astype(jax.numpy.float32)
  tiny = np.finfo(np.float32).tiny
  return jax.numpy.where(jax.numpy.abs(used) < tiny, 0.0, used)


SCHEDULE = (
  'a schedule is a function of the step count that returns a number, e.g. '
  'optax.cosine_decay_schedule(0.1, 1000) or lambda count: 0.1 * 0.99**count'
)


def check_schedule(name: str, schedule: Any) -> None:
  """Raises TypeError where ``schedule`` cannot be called with a step count.

  Decided on ``inspect.signature``; a callable whose signature cannot be
  read (a builtin, a NumPy ufunc) is accepted, and checked where it is
  called (:func:`call_schedule`).
  """
  try:
    signature = inspect.signature(schedule)
  except (TypeError, ValueError):
    return
  try:
    signature.bind(0)
  except TypeError:
    raise TypeError(
      f'{name} must be a number or a schedule, got the callable '
      f'{schedule!r} with signature {signature}, which cannot be called with '
      f'the step count alone: {SCHEDULE}.'
    ) from None


def call_schedule(name: str, schedule: Any, count: Any) -> Any:
  """``schedule(count)``; a TypeError of the call names ``name``."""
  try:
    return schedule(count)
  except TypeError as error:
    raise TypeError(
      f'{name}: calling the schedule {schedule!r} with the step count raised '
      f'TypeError ({error}): {SCHEDULE}.'
    ) from error


def checked_schedule(
  name: str, schedule: Any, in_range: Callable[[Any], Any], expected: str
) -> Any:
  """``schedule`` whose every value is checked by :func:`check_range`."""
  if not is_function(schedule):
    return schedule
  check_schedule(name, schedule)

  def checked(count):
    value = call_schedule(name, schedule, count)
    return check_range(name, value, in_range, expected)

  return checked


def as_number(value: Any) -> float | None:
  """``value`` as a float when it is a concrete real scalar, else None."""
  try:
    return float(value) if np.ndim(value) == 0 else None
  except (TypeError, ValueError):
    return None


def check_decay(name: str, value: T) -> T:
  """``value``, checked to be in [0, 1) (see :func:`check_range`)."""
  return check_range(
    name, value, lambda x: (x >= 0) & (x < 1), 'a number in [0, 1)'
  )


NONNEGATIVE = 'a finite number >= 0'


def nonnegative(x: Any) -> Any:
  """``0 <= x < inf`` for floats and arrays alike (False for NaN)."""
  return (x >= 0) & (x < np.inf)


def check_nonnegative(name: str, value: T) -> T:
  """``value``, checked to be finite and >= 0 (see :func:`check_range`)."""
  return check_range(name, value, nonnegative, NONNEGATIVE)


def nonnegative_schedule(name: str, value: Any) -> Any:
  """A finite number >= 0 or an optax schedule of such, checked.

  Returns ``value``, a schedule wrapped so that each of its values is
  checked where it is evaluated (a schedule that turns negative or NaN would
  otherwise step uphill or poison the params in silence).
  """
  value = check_range(name, value, nonnegative, NONNEGATIVE, schedule=True)
  return checked_schedule(name, value, nonnegative, NONNEGATIVE)


def as_dtype(name: str, value: Any) -> Any:
  """``value`` as a canonical dtype (None stays None).

  Takes a dtype, a dtype's name (``'float32'``) or a scalar type
  (``jnp.float32``). Under ``optax.inject_hyperparams``, which calls every
  callable argument as a schedule, ``jnp.float32`` arrives as
  ``jnp.float32(count)``: a scalar array (or tracer) whose dtype is the one
  meant, so a floating-point scalar array gives its dtype.
  """
  if value is None:
    return None
  expected = (
    f'{name} must be a floating-point dtype such as jnp.float32 or '
    "'float32', or None (the params' dtype)"
  )
  dtype = getattr(value, 'dtype', None)
  try:
    if dtype is not None and np.ndim(value) == 0:
      dtype = jax.dtypes.canonicalize_dtype(dtype)
    else:
      dtype = jax.dtypes.canonicalize_dtype(value)
  except TypeError:
    raise TypeError(f'{expected}, got {value!r}.') from None
  if not jax.numpy.issubdtype(dtype, jax.numpy.floating):
    raise TypeError(
      f'{expected}, got {value!r} (dtype {dtype}): a state of that dtype '
      'would hold the moments truncated or rounded to bools.'
    )
  return dtype


PREV_GRADS_HINT = (
  'prev_grads must be the gradients of the same loss on the same minibatch '
  'at so.prev_params(state), e.g. from so.paired_grad(loss_fn).'
)

RESTORE_HINT = (
  'A state restored from a checkpoint without a target is plain dicts and '
  'lists: restore it onto a target built from tx.init, e.g. jax.tree.map('
  'orbax.checkpoint.utils.to_shape_dtype_struct, fresh_state).'
)


def check_float_params(what: str, params: Any) -> None:
  """Raises TypeError for a params leaf that is not floating point.

  An update to integer or bool params is truncated to 0 by
  ``optax.apply_updates``: training would stop in silence.
  """
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    if not hasattr(leaf, 'dtype') and not isinstance(leaf, numbers.Number):
      continue  # e.g. optax's params placeholder in optax.tree.map_params
    dtype = jax.numpy.result_type(leaf)
    if not jax.numpy.issubdtype(dtype, jax.numpy.inexact):
      raise TypeError(
        f'{what} got params{jax.tree_util.keystr(path)} of dtype {dtype}: '
        'its updates would be truncated to 0. Train floating-point params '
        '(e.g. x.astype(jnp.float32)), or keep the leaf out of this '
        'optimizer (optax.masked, or optax.set_to_zero in an '
        'optax.partition).'
      )


def check_state(state: Any, kind: type, what: str) -> None:
  """Raises TypeError unless ``state`` is a ``kind`` (a NamedTuple class).

  The usual cause is a checkpoint restored without a target, whose states are
  plain dicts and lists; the message says so.
  """
  if not isinstance(state, kind):
    raise TypeError(
      f'{what} got a state of type {type(state).__name__} where it needs '
      f'the {kind.__name__} that its init returned. {RESTORE_HINT}'
    )


def check_state_matches(
  state_name: str,
  state_tree: Any,
  params: Any,
  *,
  check_dtypes: bool,
) -> None:
  """Raises if a parameter-shaped part of a state differs from ``params``.

  A state built for other params (structure, shapes or dtypes) would otherwise
  fail with a raw ``lax`` error or, for larger shapes, broadcast silently.
  """
  check_trees_match(
    'params',
    params,
    state_name,
    state_tree,
    check_dtypes=check_dtypes,
    hint='The optimizer state was built for other params: rebuild the state '
    'with tx.init(params).',
  )


def check_count(name: str, value: Any) -> None:
  """Raises ValueError unless ``value`` is a positive int (NumPy ints too)."""
  if (
    isinstance(value, bool)
    or not isinstance(value, numbers.Integral)
    or value <= 0
  ):
    raise ValueError(f'{name} must be a positive int, got {value!r}.')


def largest_magnitude(tree: Any) -> Any:
  """The largest :math:`|x|` over the floating entries of ``tree``.

  float32 (float64 under ``jax.enable_x64``): NaN where an entry is NaN,
  else inf where one is infinite; 0 for a tree without floating entries
  (or with empty ones). One max-reduction per leaf: a single read of it.
  """
  largest = jax.numpy.zeros([], jax.numpy.result_type(float))
  for x in jax.tree.leaves(tree):
    if jax.numpy.issubdtype(jax.numpy.result_type(x), jax.numpy.inexact):
      x = jax.numpy.abs(jax.numpy.asarray(x))
      # jnp.max and jnp.maximum propagate NaN.
      largest = jax.numpy.maximum(
        largest, jax.numpy.max(x, initial=0).astype(largest.dtype)
      )
  return largest


def all_finite(tree: Any) -> Any:
  """Whether every floating entry of ``tree`` is finite (a bool scalar)."""
  return jax.numpy.isfinite(largest_magnitude(tree))


def _braces(text: str) -> str:
  """``text`` with its braces doubled, for ``str.format``."""
  return text.replace('{', '{{').replace('}', '}}')


# True while so.apply_if_finite traces its inner update: an overflow there
# is a non-finite step it counts and skips, not an error.
_COUNTED_AS_NOT_FINITE = contextvars.ContextVar('counted', default=False)


@contextlib.contextmanager
def overflow_counted() -> Iterator[None]:
  """Within: :func:`overflow_error` gives NaN steps instead of errors."""
  token = _COUNTED_AS_NOT_FINITE.set(True)
  try:
    yield
  finally:
    _COUNTED_AS_NOT_FINITE.reset(token)


def overflow_error(overflowed: Any, message: str, *, result: T) -> T:
  """:func:`error_if`; under :func:`overflow_counted`, NaN where it fails.

  So that ``so.apply_if_finite`` counts and skips an overflowed step (a
  silent zero step would be finite) instead of stopping the run.
  """
  if _COUNTED_AS_NOT_FINITE.get():
    nan = lambda x: jax.numpy.where(overflowed, jax.numpy.nan, x).astype(
      x.dtype
    )
    return jax.tree.map(
      lambda x: (
        nan(x) if jax.numpy.issubdtype(x.dtype, jax.numpy.inexact) else x
      ),
      result,
    )
  return error_if(overflowed, message, result=result)


def overflow_check(
  bad: Any,
  inputs: Any,
  result: T,
  what: str,
  formula: str,
  *,
  wider: str = 'mu_dtype',
  made: Any = None,
) -> T:
  """``result``, or an error where finite inputs overflowed into it.

  ``bad``: some entry of ``made`` (``result`` unless given: what the step
  computes from ``inputs``) is not finite. The overflow: an infinite entry
  of ``made``, none NaN (NaN comes from NaN input, or from an input that
  was already infinite), and every input finite. Both are read only where
  ``bad`` is True: a valid step pays for ``bad`` and one scalar branch.
  """
  made = result if made is None else made

  def overflowed():
    return jax.numpy.isposinf(largest_magnitude(made)) & all_finite(inputs)

  overflowed = _buffers.cond(bad, overflowed, lambda: jax.numpy.asarray(False))
  dtypes = sorted(
    {str(jax.numpy.result_type(x)) for x in jax.tree.leaves(made)}
  )
  return overflow_error(
    overflowed,
    # (error_if formats the message: literal braces doubled)
    f'{what}: finite gradients gave a non-finite {_braces(formula)}: it '
    f'exceeds the range of {" and ".join(dtypes)} (gradients near its '
    'largest number). Scale the loss down, clip the raw gradients before '
    f'the optimizer (optax.clip_by_global_norm), or keep the state wider '
    f'({wider}=jnp.float32 for float16 or bfloat16 params).',
    result=result,
  )


def overflow_checked(
  tx: Any, what: str, formula: str, *, wider: str = 'mu_dtype'
) -> Any:
  """``tx`` whose update raises where finite gradients give a non-finite one.

  For a correction whose output can exceed the range of its dtype although
  every input is finite: ``c_k = g_k + s (g_k - g'_k)`` of float32 gradients
  near 3e38 (or float16 ones near 6e4) is inf, and the clip after it turns
  inf into NaN. Non-finite gradients pass as they are (so that
  ``so.apply_if_finite`` skips the step). A ``ValueError`` eagerly, the same
  message at run time under jit (:func:`error_if`). ``wider`` names the
  argument that widens the state.

  The verdict is read off the sum of squares of the output, the very sum a
  clip after ``tx`` computes for its norm: XLA computes it once for both,
  and the check costs no pass of its own where a clip follows. (Where that
  sum is inf or NaN, the output and inputs are read once more.)
  """
  import optax

  # (imported here: clipping's own checks import this module)
  from spider_optax.clipping import sum_of_squares

  tx = optax.with_extra_args_support(tx)

  def update_fn(updates, state, params=None, **extra_args):
    out, new_state = tx.update(updates, state, params, **extra_args)
    check = lambda result: overflow_check(
      ~jax.numpy.isfinite(sum_of_squares(out)),
      (updates, extra_args.get('prev_grads')),
      result,
      what,
      formula,
      wider=wider,
      made=out,
    )
    if _COUNTED_AS_NOT_FINITE.get():
      return check(out), new_state  # NaN for so.apply_if_finite to count
    # Tied to the state's scalars (its step count): the error stops the
    # step all the same, and the output stays the array a clip's norm reads.
    # (A jitted step that drops the new state drops the check with it.)
    leaves, treedef = jax.tree.flatten(new_state)
    scalars = [i for i, x in enumerate(leaves) if not jax.numpy.ndim(x)]
    if not scalars:
      return check(out), new_state
    checked = check([leaves[i] for i in scalars])
    for i, x in zip(scalars, checked, strict=True):
      leaves[i] = x
    return out, jax.tree.unflatten(treedef, leaves)

  return optax.GradientTransformationExtraArgs(tx.init, update_fn)
