"""so.spider_loop and so.is_anchor_step: the schedule, read from the state."""

import itertools
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

import spider_optax as so

TX = so.spider(0.1)
X = {'w': jnp.zeros(2)}
G = {'w': jnp.ones(2)}


def counting_steps():
  """Steps that record (kind, step index, batch) and take a real update.

  The carry is ``(k, opt_state)``: the loop reads the schedule from the
  optimizer state, so each step must really update it.
  """
  calls = []

  def anchor(carry, *batch):
    k, state = carry
    calls.append(('anchor', k, batch))
    return (k + 1, TX.update(G, state, X)[1]), -k

  def recursive(carry, *batch):
    k, state = carry
    calls.append(('recursive', k, batch))
    return (k + 1, TX.update(G, state, X, prev_grads=G)[1]), k

  return anchor, recursive, calls


def fresh():
  return (0, TX.init(X))


def run(anchor, recursive, carry, anchors, batches, **kwargs):
  return so.spider_loop(
    anchor,
    recursive,
    carry,
    anchors,
    batches,
    opt_state_of=lambda c: c[1],
    **kwargs,
  )


def numbered(tag):
  return ((tag, i) for i in itertools.count())


def run_numbered(anchor, recursive, carry, **kwargs):
  """``run`` on fresh numbered anchor batches and minibatches."""
  return run(anchor, recursive, carry, numbered('A'), numbered('m'), **kwargs)


def advanced(steps, q):
  """A carry after ``steps`` updates of the schedule with period ``q``."""
  anchor, recursive, _ = counting_steps()
  carry, _ = run_numbered(
    anchor,
    recursive,
    fresh(),
    anchor_period=q,
    num_steps=steps,
  )
  return carry


@pytest.mark.parametrize(
  'q,start,stop',
  [
    (1, 0, 5),
    (5, 0, 23),
    (43, 0, 100),
    (5, 7, 23),
    (4, 8, 13),
    (3, 0, 0),
    (3, 5, 5),
  ],
)
def test_anchors_exactly_every_q_steps(q, start, stop):
  carry = advanced(start, q)
  anchor, recursive, calls = counting_steps()
  anchors, batches = numbered('A'), numbered('m')
  carry, losses = run(
    anchor, recursive, carry, anchors, batches, anchor_period=q, num_steps=stop
  )
  steps = range(start, stop)
  assert carry[0] == stop and len(losses) == len(steps)
  assert int(carry[1][0].count) == stop
  assert [c[1] for c in calls] == list(steps)  # step k sees carry k
  want_kinds = ['anchor' if k % q == 0 else 'recursive' for k in steps]
  assert [c[0] for c in calls] == want_kinds
  assert losses == [-k if k % q == 0 else k for k in steps]
  # Each kind takes its own batches, in order, and no more than it uses.
  n_anchor = want_kinds.count('anchor')
  assert [c[2] for c in calls if c[0] == 'anchor'] == [
    ('A', i) for i in range(n_anchor)
  ]
  assert [c[2] for c in calls if c[0] == 'recursive'] == [
    ('m', i) for i in range(len(steps) - n_anchor)
  ]
  assert next(anchors) == ('A', n_anchor)
  assert next(batches) == ('m', len(steps) - n_anchor)


def test_resumed_run_equals_one_run():
  """A run split anywhere continues the schedule from the state's counters."""
  q, stop = 6, 40
  anchor, recursive, whole = counting_steps()
  run_numbered(
    anchor,
    recursive,
    fresh(),
    anchor_period=q,
    num_steps=stop,
  )
  for split in (1, 6, 7, 13, 39):
    anchor, recursive, parts = counting_steps()
    anchors, batches = numbered('A'), numbered('m')
    carry, first = run(
      anchor,
      recursive,
      fresh(),
      anchors,
      batches,
      anchor_period=q,
      num_steps=split,
    )
    carry, second = run(
      anchor,
      recursive,
      carry,
      anchors,
      batches,
      anchor_period=q,
      num_steps=stop,
    )
    assert parts == whole, split
    assert len(first) + len(second) == stop


def test_start_step_that_disagrees_with_the_state_is_an_error():
  """The old loop trusted start_step and shifted the schedule silently."""
  carry = advanced(7, 5)
  anchor, recursive, calls = counting_steps()
  with pytest.warns(DeprecationWarning, match='start_step'):
    with pytest.raises(
      ValueError,
      match='start_step=5 but the optimizer state has taken 7 updates',
    ):
      run_numbered(
        anchor,
        recursive,
        carry,
        anchor_period=5,
        num_steps=10,
        start_step=5,
      )
  assert not calls
  with pytest.warns(DeprecationWarning, match='start_step'):
    run_numbered(
      anchor,
      recursive,
      carry,
      anchor_period=5,
      num_steps=11,
      start_step=7,
    )
  assert [c[0] for c in calls] == ['recursive'] * 3 + ['anchor']


def test_unpacks_batch_tuples():
  anchor, recursive, calls = counting_steps()
  run(
    anchor,
    recursive,
    fresh(),
    [('x', 'y')],
    [(1, 2, 3)] * 2,
    anchor_period=3,
    num_steps=3,
  )
  assert [c[2] for c in calls] == [('x', 'y'), (1, 2, 3), (1, 2, 3)]


def test_runs_out_of_batches():
  anchor, recursive, _ = counting_steps()
  with pytest.raises(ValueError, match='minibatches ran out at step 3 of 5'):
    run(
      anchor, recursive, fresh(), [()], [()] * 2, anchor_period=5, num_steps=5
    )


def test_accepts_a_numpy_integer_anchor_period():
  anchor, recursive, calls = counting_steps()
  run_numbered(
    anchor,
    recursive,
    fresh(),
    anchor_period=np.int64(3),
    num_steps=6,
  )
  assert [c[0] for c in calls] == ['anchor', 'recursive', 'recursive'] * 2


@pytest.mark.parametrize('q', [0, -1, 2.0, 2.5, '3', None, True])
def test_rejects_a_bad_anchor_period(q):
  anchor, recursive, calls = counting_steps()
  with pytest.raises(ValueError, match='anchor_period'):
    run_numbered(
      anchor,
      recursive,
      fresh(),
      anchor_period=q,
      num_steps=10,
    )
  with pytest.raises(ValueError, match='anchor_period'):
    so.is_anchor_step(fresh()[1], q)
  assert not calls


def test_finds_the_state_in_a_train_state_like_carry():
  class Carry:
    opt_state = TX.init(X)

  assert so.is_anchor_step(Carry.opt_state, 3)
  with pytest.raises(ValueError, match='opt_state_of='):
    so.spider_loop(
      *counting_steps()[:2], 0, [()], [()], anchor_period=2, num_steps=1
    )
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # no deprecation on the plain call
    so.spider_loop(
      lambda c: (c, 0.0), None, Carry(), [()], [], anchor_period=2, num_steps=1
    )


@pytest.mark.parametrize('q', [1, 2, 5])
def test_is_anchor_step_follows_the_counters(q):
  state, kinds = TX.init(X), []
  for _ in range(12):
    is_anchor = so.is_anchor_step(state, q)
    kinds.append(is_anchor)
    extra = {} if is_anchor else {'prev_grads': G}
    _, state = TX.update(G, state, X, **extra)
  assert kinds == [k % q == 0 for k in range(12)]
