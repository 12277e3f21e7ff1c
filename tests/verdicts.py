"""The verdict of a call on bad input, for the bad-input tests."""

from collections.abc import Callable
from typing import Any

import jax


def verdict(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> str | None:
  """The message of the error ``fn`` raises when run and read, or None.

  Under ``jax.jit`` a check of a traced value raises when the result is
  read (JAX wraps the ``ValueError``), hence ``block_until_ready``.
  """
  try:
    jax.block_until_ready(fn(*args, **kwargs))
  except Exception as error:  # noqa: BLE001  (JAX wraps the ValueError)
    return str(error)
  return None
