"""Loads a script of benchmarks/ (not a package) as a module, for the tests."""

import importlib.util
import pathlib

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / 'benchmarks'


def load_benchmark(name: str):
  """The module of ``benchmarks/{name}.py``, e.g. ``load_benchmark('train')``."""
  spec = importlib.util.spec_from_file_location(
      f'bench_{name}', BENCHMARKS / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def run_quick(name: str, tmp_path_factory):
  """``benchmarks/{name}.py --quick`` writing into a fresh temporary folder:
  returns (results, the JSON file's path, the folder of its plots)."""
  tmp = tmp_path_factory.mktemp(name)
  out = tmp / f'{name}.json'
  results = load_benchmark(name).main(
      ['--quick', '--no-progress', '--out', str(out), '--plot-dir', str(tmp)])
  return results, out, tmp
