"""Subprocess worker for tests/test_multiprocess.py: SPIDER over two processes.

Not a test module: tests/test_multiprocess.py starts it as two processes that
form one JAX runtime with ``jax.distributed`` (CPU collectives through gloo),
each with 2 CPU devices, so that the global mesh spans 4 devices on 2 hosts::

  python multiprocess_worker.py --out DIR --coordinator 127.0.0.1:PORT \\
      --num-processes 2 --process-id I

and once more without ``--coordinator``, as the single-process, single-device
reference. It runs tests/sharding_worker.py's problem (anchors and recursive
steps of SPIDER on a small MLP) with the README's jitted steps,
data-parallel, on two layouts of the global mesh: ``dp`` (params replicated)
and ``fsdp`` (params, and with them the estimator's state, split over the 4
devices of both processes). Each process writes ``process<I>.npz``: the
params after every step (gathered to every process) and the shape of the
estimator's shards on its devices; the reference writes ``single.npz`` with
the float32 and float64 single-device runs.

Exits with :data:`UNSUPPORTED` when this JAX cannot do CPU collectives
through gloo, so that the test can tell that from a failure.
"""

import argparse
import os
import sys

import numpy as np

UNSUPPORTED = 77
LAYOUTS = ('dp', 'fsdp')
INIT_TIMEOUT_S = 60  # For the processes to find each other.


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', required=True)
  parser.add_argument('--coordinator', help='HOST:PORT of process 0')
  parser.add_argument('--num-processes', type=int, default=1)
  parser.add_argument('--process-id', type=int, default=0)
  args = parser.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  # Next to this file; the problem and the runs are the sharding test's.
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import jax

  import sharding_worker as problem

  params, data = problem.make_problem()
  if args.coordinator is None:
    np.savez(
      os.path.join(args.out, 'single.npz'),
      single=problem.run_single(params, data),
      float64=problem.run_single(params, data, np.float64),
    )
    return 0

  try:  # Before any computation: the CPU client is built with it.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  except Exception as e:  # pylint: disable=broad-except
    print(f'no gloo CPU collectives in this JAX: {e!r}', file=sys.stderr)
    return UNSUPPORTED
  jax.distributed.initialize(
    coordinator_address=args.coordinator,
    num_processes=args.num_processes,
    process_id=args.process_id,
    initialization_timeout=INIT_TIMEOUT_S,
  )
  try:
    return run_distributed(args, problem, params, data)
  finally:
    jax.distributed.shutdown()


def run_distributed(args, problem, params, data) -> int:
  import jax
  from jax.experimental import multihost_utils

  assert jax.process_count() == args.num_processes, jax.process_count()
  assert jax.device_count() == 2 * args.num_processes, jax.devices()
  assert jax.local_device_count() == 2, jax.local_devices()

  # Every process holds the whole data set and the initial params and
  # contributes the shards its own devices hold; with data too big for one
  # host, jax.make_array_from_process_local_data takes each host's part.
  put = lambda a, sharding: jax.make_array_from_callback(
    a.shape, sharding, lambda index: a[index]
  )
  # Params split over both processes come back with an all-gather, which
  # every process runs at the same point of the same loop.
  gather = lambda p: multihost_utils.process_allgather(p, tiled=True)
  results = {
    'process_count': jax.process_count(),
    'device_count': jax.device_count(),
  }
  for name in LAYOUTS:
    trajectory, report = problem.run_layout(
      name, params, data, put=put, get_params=gather
    )
    results[name] = trajectory
    for leaf, e in report['after_run'].items():
      for field in ('params', 'estimate', 'prev_params'):
        results[f'{name}_{field}_shard_shape_{leaf}'] = np.array(
          e[field + '_shard_shape']
        )
      results[f'{name}_equivalent_{leaf}'] = np.array(
        e['estimate_equivalent'] and e['prev_params_equivalent']
      )
  np.savez(os.path.join(args.out, f'process{args.process_id}.npz'), **results)
  return 0


if __name__ == '__main__':
  sys.exit(main())
