"""The README's Python code blocks run as printed."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / 'README.md'
BLOCKS = re.findall(r'```python\n(.*?)```', README.read_text(), re.DOTALL)


def test_readme_has_python_blocks():
  assert len(BLOCKS) >= 4


@pytest.mark.parametrize('index', range(len(BLOCKS)))
def test_readme_block_runs(index):
  exec(compile(BLOCKS[index], f'README.md block {index}', 'exec'), {})


def test_readme_set_up_commands_match_ci():
  """Exactly two set-up commands; CI runs the test one."""
  commands = re.findall(r'```bash\n(.*?)\n```', README.read_text(), re.DOTALL)
  assert len(commands) == 2
  ci = (README.parent / '.ci' / 'run').read_text()
  assert commands[1].strip() in ci


def test_flax_diff_is_the_real_change_and_small():
  """The README's diff is the difference of its two Flax loops, and small."""
  import difflib

  text = README.read_text()
  section = text[text.index('## From your Flax loop to SPIDER') :]
  before, after = re.findall(r'```python\n(.*?)```', section, re.DOTALL)[:2]
  shown = re.search(r'```diff\n(.*?)```', section, re.DOTALL).group(1)
  real = ''.join(
    list(
      difflib.unified_diff(before.splitlines(True), after.splitlines(True), n=1)
    )[2:]
  )
  assert shown == real
  added = [
    line
    for line in real.splitlines()
    if line.startswith('+') and line[1:].strip()
  ]
  assert len(added) <= 10
