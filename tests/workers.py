"""Fresh interpreters for the tests whose JAX must start another way.

JAX fixes its backend and device count when it starts, so a test that needs
8 CPU devices, or several processes, runs a worker script in a new
interpreter on the CPU, with the repository on its path.
"""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def worker_env(devices: int | None = None) -> dict[str, str]:
  """This process's environment for a CPU worker with ``devices`` devices."""
  env = dict(os.environ)
  env['JAX_PLATFORMS'] = 'cpu'
  if devices is not None:
    env['XLA_FLAGS'] = ' '.join(
      filter(
        None,
        [
          env.get('XLA_FLAGS'),
          f'--xla_force_host_platform_device_count={devices}',
        ],
      )
    )
  env['PYTHONPATH'] = os.pathsep.join(
    [str(ROOT)] + ([env['PYTHONPATH']] if env.get('PYTHONPATH') else [])
  )
  return env


def run_worker(
  script: pathlib.Path,
  *args: str,
  timeout: float,
  devices: int | None = None,
  ok: tuple[int, ...] = (0,),
  what: str = 'worker',
) -> subprocess.CompletedProcess:
  """Runs ``script`` to completion; asserts its exit code is one of ``ok``,
  showing the ends of its output otherwise."""
  proc = subprocess.run(
    [sys.executable, str(script), *args],
    env=worker_env(devices),
    capture_output=True,
    text=True,
    timeout=timeout,
    cwd=str(ROOT),
  )
  assert proc.returncode in ok, (
    f'{what} failed ({proc.returncode}):\n'
    f'--- stdout ---\n{proc.stdout[-5000:]}\n'
    f'--- stderr ---\n{proc.stderr[-10000:]}'
  )
  return proc
