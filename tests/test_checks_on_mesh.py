"""A check that fails in a step split over devices raises on every device.

On one device the check's callback raises and the step stops with its
message. Split over 8 devices (run under ``jax.set_mesh``, or on an
Explicit mesh), each device runs its own callback: the step stops with the
same message, and no device is left waiting in a collective (which aborts
the process after 40 s). The worker runs in a fresh interpreter with 8 CPU
devices.
"""

import json
import pathlib

import pytest

import workers

WORKER = pathlib.Path(__file__).with_name('checks_on_mesh_worker.py')


@pytest.fixture(scope='module')
def errors(tmp_path_factory):
  out = tmp_path_factory.mktemp('checks_on_mesh') / 'errors.json'
  workers.run_worker(WORKER, '--out', str(out), timeout=600, devices=8)
  return json.loads(out.read_text())


@pytest.mark.parametrize(
  'case, says',
  [
    ('injected_lr_auto_set_mesh', 'learning_rate must be a finite number'),
    ('injected_lr_explicit_set_mesh', 'learning_rate must be a finite number'),
    ('spider_overflow_auto_set_mesh', 'non-finite estimator v_k'),
    ('spider_overflow_explicit', 'non-finite estimator v_k'),
    ('mars_overflow_explicit', 'non-finite corrected gradient c_k'),
  ],
)
def test_a_failing_check_on_a_mesh_raises_its_message(errors, case, says):
  assert errors[case] is not None and says in errors[case], errors[case]
