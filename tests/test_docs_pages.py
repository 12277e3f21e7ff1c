"""The user guide's Python code blocks run as printed.

Every ```python block of docs/**/*.md and CONTRIBUTING.md runs in a namespace
of its own, as tests/test_readme.py runs the README's. A block that is also
in README.md verbatim (the quick starts of the getting-started page) runs
there, once. A block that must not run (output, pseudo-code, commands) says
so with its fence's language: ```text, ```console, ```bash, ```sh, ```diff.
The docs' reST pages run their examples in the Sphinx doctest build.
"""

import difflib
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / 'README.md'
PAGES = sorted(
  p for p in (ROOT / 'docs').rglob('*.md') if '_build' not in p.parts
) + [ROOT / 'CONTRIBUTING.md']
NOT_RUN = {'text', 'console', 'bash', 'sh', 'diff'}


def fenced_blocks(path: pathlib.Path) -> list[tuple[str, int, str]]:
  """(language, line of the first code line, code) of each fenced block."""
  blocks, open_at, language, lines = [], None, '', []
  for number, line in enumerate(path.read_text().splitlines(), start=1):
    if open_at is None and line.startswith('```'):
      open_at, language, lines = number, line[3:].strip(), []
    elif open_at is not None and line.strip() == '```':
      blocks.append((language, open_at + 1, ''.join(lines)))
      open_at = None
    elif open_at is not None:
      lines.append(line + '\n')
  assert open_at is None, f'{path}:{open_at}: the block is not closed'
  return blocks


README_CODE = {c for lang, _, c in fenced_blocks(README) if lang == 'python'}
BLOCKS = [
  (f'{page.relative_to(ROOT)}:{line}', line, code)
  for page in PAGES
  for language, line, code in fenced_blocks(page)
  if language == 'python' and code not in README_CODE
]


def test_pages_have_python_blocks():
  assert len(BLOCKS) >= 15
  pages = {name.split(':')[0] for name, _, _ in BLOCKS}
  for page in ('paired', 'flax', 'checkpoints', 'scaling', 'theory'):
    assert f'docs/guide/{page}.md' in pages


@pytest.mark.parametrize(
  'name, line, code', BLOCKS, ids=[name for name, _, _ in BLOCKS]
)
def test_page_block_runs(name, line, code):
  # Padded so that a traceback names the page's own line numbers.
  path = name.rsplit(':', 1)[0]
  exec(compile('\n' * (line - 1) + code, path, 'exec'), {})


@pytest.mark.parametrize(
  'path', [README, *PAGES], ids=lambda p: str(p.relative_to(ROOT))
)
def test_fences_name_their_language(path):
  """A block either runs (python) or says why not; MyST directives pass."""
  for language, line, _ in fenced_blocks(path):
    assert language in NOT_RUN | {'python'} or language.startswith('{'), (
      f'{path.name}:{line - 1}: fence language {language!r}'
    )


@pytest.mark.parametrize(
  'path', [README, *PAGES], ids=lambda p: str(p.relative_to(ROOT))
)
def test_relative_links_lead_to_files(path):
  """Every relative link (and image) names a file or folder that exists."""
  text = re.sub(r'```.*?```', '', path.read_text(), flags=re.DOTALL)
  for target in re.findall(r'\]\(([^)\s]+)\)', text):
    if re.match(r'[a-z]+:', target) or target.startswith('#'):
      continue
    assert (path.parent / target.split('#')[0]).exists(), (
      f'{path.name}: {target}'
    )


def test_flax_diff_is_the_real_change_and_small():
  """The Flax page's diff is the difference of its two Flax loops, and small."""
  text = (ROOT / 'docs' / 'guide' / 'flax.md').read_text()
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
