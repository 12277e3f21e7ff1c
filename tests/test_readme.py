"""The README's Python code blocks run as printed.

tests/test_docs_pages.py runs the user guide's blocks, checks that every
fence of the README and the guide names its language, and that their links
lead somewhere.
"""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / 'README.md'
BLOCKS = re.findall(r'```python\n(.*?)```', README.read_text(), re.DOTALL)


def test_readme_has_python_blocks():
  """The two quick starts: MARS (one gradient) and SPIDER (paired)."""
  assert len(BLOCKS) >= 2


@pytest.mark.parametrize('index', range(len(BLOCKS)))
def test_readme_block_runs(index):
  exec(compile(BLOCKS[index], f'README.md block {index}', 'exec'), {})


def test_readme_set_up_commands_match_ci():
  """Exactly two set-up commands; CI runs the test one."""
  commands = re.findall(r'```bash\n(.*?)\n```', README.read_text(), re.DOTALL)
  assert len(commands) == 2
  ci = (README.parent / '.ci' / 'run').read_text()
  assert commands[1].strip() in ci
