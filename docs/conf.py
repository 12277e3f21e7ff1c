r"""Sphinx configuration for the spider-optax documentation.

The front page (index.rst), the user guide (guide/*.md, Markdown read by
MyST; tests/test_docs_pages.py runs each page's ```python blocks), the
development page (development.md, which includes CONTRIBUTING.md) and the
API reference (api/*.rst).

Build as .ci/run does (warnings are errors; the second command runs the
examples of the pages and every ``>>>`` example of the docstrings they
include)::

  sphinx-build -E -W --keep-going -b html -d docs/_build/doctrees \
    docs docs/_build/html
  sphinx-build -W --keep-going -b doctest -d docs/_build/doctrees \
    docs docs/_build/doctest
"""

import doctest
import importlib
import inspect
import pathlib
import sys
import types

from sphinx.util import logging

# Document the source tree beside this file, whatever else is installed.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import spider_optax  # noqa: E402

project = 'spider-optax'
author = 'The spider-optax authors'
copyright = '2025, ' + author
release = spider_optax.__version__
version = release

extensions = [
  'sphinx.ext.autodoc',
  'sphinx.ext.autosummary',
  'sphinx.ext.doctest',
  'sphinx.ext.mathjax',
  'sphinx.ext.napoleon',
  'sphinx.ext.viewcode',
  'myst_parser',
]

source_suffix = {'.rst': 'restructuredtext', '.md': 'markdown'}
exclude_patterns = ['_build']
# Headings get anchors, so that a page can link to another's section
# (`flax.md#checkpoints`), as GitHub renders them.
myst_heading_anchors = 3
html_theme = 'furo'
html_title = f'spider-optax {release}'

# The docstrings are Google style; a NumPy-style parse would misread
# underlined headings.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = False
# Signatures and attributes carry no types: optax's aliases (ScalarOrSchedule,
# ArrayTree) expand to unions of a dozen types. The Args, Attributes and
# Returns sections say what each one is.
autodoc_typehints = 'none'
autodoc_member_order = 'bysource'
autosummary_generate = False
python_maximum_signature_line_length = 80

# The docstrings' examples are tested here and by pytest --doctest-modules:
# pytest's default flags, so that both accept the same output.
doctest_default_flags = doctest.ELLIPSIS
# No intersphinx: the build must work without network access.


# ---------------------------------------------------------------------------
# Every public name is documented
# ---------------------------------------------------------------------------
# The names that must appear on some page: spider_optax.__all__, and for each
# module named there or below, its __all__ if it has one, else the classes and
# functions it defines whose names do not start with an underscore. A name
# counts as documented when the object it names is documented under any path
# (so.prev_params and so.lookup.prev_params are one object).
EXTRA_PUBLIC_MODULES = ('spider_optax.flax',)

logger = logging.getLogger(__name__)


def _public_objects() -> dict[str, object]:
  """Maps each public dotted name to its object."""
  public = {}
  modules = [importlib.import_module(m) for m in EXTRA_PUBLIC_MODULES]
  for name in spider_optax.__all__:
    obj = getattr(spider_optax, name)
    public[f'spider_optax.{name}'] = obj
    if isinstance(obj, types.ModuleType):
      modules.append(obj)
  for module in modules:
    public[module.__name__] = module
    names = getattr(module, '__all__', None)
    if names is None:
      names = [
        n
        for n, v in vars(module).items()
        if not n.startswith('_')
        and (inspect.isclass(v) or inspect.isfunction(v))
        and v.__module__ == module.__name__
      ]
    for name in names:
      public[f'{module.__name__}.{name}'] = getattr(module, name)
  return public


def _resolve(dotted: str) -> object:
  """The object a documented dotted name refers to, or None.

  Attributes win over submodules of the same name, as in autodoc:
  ``spider_optax.diagnostics`` is the function, not the module.
  """
  first, *rest = dotted.split('.')
  try:
    obj = importlib.import_module(first)
  except ImportError:
    return None
  for i, attr in enumerate(rest):
    try:
      obj = getattr(obj, attr)
    except AttributeError:
      try:
        obj = importlib.import_module('.'.join([first, *rest[: i + 1]]))
      except ImportError:
        return None
  return obj


def check_api_coverage(app, env) -> None:
  """Warns (an error under -W) for each public name that no page documents."""
  del app
  domain = env.get_domain('py')
  # Kept alive, so that no id is reused while `documented` is in use.
  objects = [_resolve(name) for name in [*domain.objects, *domain.modules]]
  documented = {id(obj) for obj in objects}
  missing = sorted(
    name for name, obj in _public_objects().items() if id(obj) not in documented
  )
  for name in missing:
    logger.warning(
      'public name %s is not documented: add it to a page in docs/api/',
      name,
      type='spider_optax',
      subtype='api_coverage',
    )


def setup(app):
  app.connect('env-check-consistency', check_api_coverage)
  return {'parallel_read_safe': True}
