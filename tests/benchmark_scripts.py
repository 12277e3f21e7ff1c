"""The benchmarks package (``benchmarks/``), for the tests."""

import importlib
import pathlib
import sys
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # pytest puts tests/, not the root, on the path
  sys.path.insert(0, str(ROOT))

SCRIPTS = (
  'quickstart',
  'overhead',
  'complexity',
  'train',
  'smoothness',
  'family',
  'check_cost',
)


def load_benchmark(name: str) -> Any:
  """The module ``benchmarks.{name}``, e.g. ``load_benchmark('train')``."""
  return importlib.import_module(f'benchmarks.{name}')


def run_quick(
  name: str, tmp_path_factory: Any, *options: str
) -> tuple[dict[str, Any], pathlib.Path, pathlib.Path]:
  """``benchmarks.{name} --quick`` writing into a fresh temporary folder:
  returns (results, the JSON file's path, the folder of its plots)."""
  tmp = tmp_path_factory.mktemp(name)
  out = tmp / f'{name}.json'
  results = load_benchmark(name).main(
    [
      '--quick',
      '--no-progress',
      '--out',
      str(out),
      '--plot-dir',
      str(tmp),
      *options,
    ]
  )
  return results, out, tmp
