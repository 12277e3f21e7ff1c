"""Checkpointing mid-epoch with orbax: a resumed run is bit-identical.

Issue 3, item 4. SPIDER's state between anchors is more than the params: the
estimator v_k and the previous params x_{k-1} decide the next step. A
checkpoint taken at a step that is not a multiple of the anchor period q must
carry them, and a run restored from it in a new process must continue exactly
as if it had never stopped.

The protocol, for the Linen ``so.flax.TrainState`` and for an NNX model with
``nnx.Optimizer`` (tests/checkpoint_worker.py does the training):

- process 1: run A, steps 0..N-1 uninterrupted; run B, steps 0..K0-1 from a
  fresh start, then an orbax checkpoint of B's whole training state.
- process 2 (a fresh interpreter): run C restores the checkpoint into freshly
  built objects and runs steps K0..N-1; run C' restores the params only, with
  a fresh optimizer state, and runs the same steps.

A and C must agree bit for bit (every leaf, every dtype, every loss), C's
restored estimator state must equal B's at save time, and C' must differ
from A: that shows the optimizer state in the checkpoint matters.
"""

import os
import pathlib

import numpy as np
import pytest

import workers

pytest.importorskip('flax')
pytest.importorskip('orbax.checkpoint')
pytest.importorskip('sklearn')

_WORKER = pathlib.Path(__file__).resolve().with_name('checkpoint_worker.py')

APIS = ('linen', 'nnx')
Q = 5  # Anchor period.
K0 = 13  # Checkpoint before step 13: not a multiple of Q, so mid-epoch.
NUM_STEPS = 23  # Two more anchors (15, 20) after the restart.
TIMEOUT_S = 300  # Per process; each takes ~15 s on 2 CPU cores.

ESTIMATOR_FIELDS = ('count', 'steps_since_anchor', 'estimate', 'prev_params')


def _run_worker(phase, out, ckpt, data):
  workers.run_worker(
    _WORKER,
    phase,
    '--out',
    str(out),
    '--ckpt',
    str(ckpt),
    '--data',
    str(data),
    '--q',
    str(Q),
    '--k0',
    str(K0),
    '--steps',
    str(NUM_STEPS),
    timeout=TIMEOUT_S,
    what=f'{phase} worker',
  )


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """Runs both processes once; returns the directory of their outputs."""
  import importlib.util

  spec = importlib.util.spec_from_file_location('checkpoint_worker', _WORKER)
  worker = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(worker)

  tmp = tmp_path_factory.mktemp('checkpoint')
  out, ckpt, data = tmp / 'out', tmp / 'ckpt', tmp / 'digits.npz'
  worker.save_digits(data)
  _run_worker('save', out, ckpt, data)
  for api in APIS:  # Process 1 is gone; only the checkpoint on disk is left.
    assert (ckpt / api).is_dir(), sorted(os.listdir(ckpt))
  _run_worker('resume', out, ckpt, data)
  return out


def _load(out, name):
  with np.load(out / f'{name}.npz') as data:
    return dict(data)


def _assert_bitwise_equal(actual, expected, what):
  assert sorted(actual) == sorted(expected), what
  for key in expected:
    assert actual[key].dtype == expected[key].dtype, (what, key)
    assert actual[key].shape == expected[key].shape, (what, key)
    assert np.array_equal(actual[key], expected[key]), (
      f'{what}: leaf {key} differs, max abs diff '
      f'{np.max(np.abs(actual[key] - expected[key]))}'
    )


def _field(flat, name):
  """The leaves of one SpiderEstimatorState field in a flattened dict."""
  return {k: v for k, v in flat.items() if k.startswith(f"['{name}']")}


def test_checkpoint_is_mid_epoch():
  assert K0 % Q not in (0, 1) and K0 > Q and NUM_STEPS > K0 + Q


@pytest.mark.parametrize('api', APIS)
def test_saved_estimator_state_is_mid_epoch(runs, api):
  est = _load(runs, f'{api}_B_estimator')
  for name in ESTIMATOR_FIELDS:
    assert _field(est, name), (api, name, sorted(est))
  # K0 updates taken, the last one (step K0 - 1) (K0 - 1) % Q after an anchor.
  assert est["['count']"] == K0
  assert est["['steps_since_anchor']"] == (K0 - 1) % Q > 0
  assert (
    est["['count']"].dtype == est["['steps_since_anchor']"].dtype == (np.int32)
  )
  # Mid-epoch, x_{k-1} is not the current params and v_k is not zero: losing
  # either would change the next step.
  params = _load(runs, f'{api}_B_params')
  prev = {
    k[len("['prev_params']") :]: v
    for k, v in _field(est, 'prev_params').items()
  }
  _assert_bitwise_equal(  # Same tree: x_{k-1} is shaped like the params.
    {k: np.zeros_like(v) for k, v in prev.items()},
    {k: np.zeros_like(v) for k, v in params.items()},
    api,
  )
  assert not all(np.array_equal(prev[k], params[k]) for k in params)
  assert any(np.any(v != 0) for v in _field(est, 'estimate').values())


@pytest.mark.parametrize('api', APIS)
def test_restored_state_equals_saved_state(runs, api):
  _assert_bitwise_equal(
    _load(runs, f'{api}_C_estimator'),
    _load(runs, f'{api}_B_estimator'),
    f'{api}: restored estimator state',
  )
  _assert_bitwise_equal(
    _load(runs, f'{api}_C_restored_params'),
    _load(runs, f'{api}_B_params'),
    f'{api}: restored params',
  )


@pytest.mark.parametrize('api', APIS)
def test_resumed_run_is_bit_identical_to_uninterrupted_run(runs, api):
  a, c = _load(runs, f'{api}_A_params'), _load(runs, f'{api}_C_params')
  _assert_bitwise_equal(c, a, f'{api}: final params, resumed vs uninterrupted')
  losses_a = np.load(runs / f'{api}_A_losses.npy')
  losses_c = np.load(runs / f'{api}_C_losses.npy')
  assert losses_a.shape == (NUM_STEPS,) and losses_c.shape == (NUM_STEPS - K0,)
  assert losses_c.dtype == losses_a.dtype
  np.testing.assert_array_equal(losses_c, losses_a[K0:])
  # The run trained at all, so that agreement is not vacuous.
  assert losses_a[-1] < 0.6 * losses_a[0], losses_a
  b = _load(runs, f'{api}_B_params')
  assert not any(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize('api', APIS)
def test_resuming_without_optimizer_state_differs(runs, api):
  """The optimizer state in the checkpoint matters: params alone diverge."""
  a = _load(runs, f'{api}_A_params')
  c_prime = _load(runs, f'{api}_Cprime_params')
  assert sorted(c_prime) == sorted(a)
  assert not any(np.array_equal(c_prime[k], a[k]) for k in a), api
