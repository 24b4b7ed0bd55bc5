"""The public API of ``optax_usam``: ``__all__``, ``dir()`` and what star-import gives agree."""

from __future__ import annotations

import types

import optax_usam


def _isort_key(name: str) -> tuple[int, str]:
  """Ruff's RUF022 order: CONSTANTS, then CamelCase classes, then the rest, each alphabetical."""
  return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)


def test_all_is_sorted_and_is_what_dir_lists():
  assert optax_usam.__all__ == sorted(optax_usam.__all__, key=_isort_key)
  assert sorted(optax_usam.__all__) == [name for name in dir(optax_usam) if not name.startswith("_")]


def test_every_imported_name_and_every_lazy_name_is_in_all():
  """A function or class imported into the package, or lazily served by it, is public."""
  imported = {
    name
    for name, value in vars(optax_usam).items()
    if not name.startswith("_") and not isinstance(value, types.ModuleType)
  }
  assert imported | set(optax_usam._LAZY) <= set(optax_usam.__all__)


def test_every_public_name_resolves():
  for name in optax_usam.__all__:
    assert getattr(optax_usam, name) is not None, name


def test_star_import_gives_all():
  namespace: dict[str, object] = {}
  exec("from optax_usam import *", namespace)
  assert sorted(k for k in namespace if k != "__builtins__") == sorted(optax_usam.__all__)
  assert namespace["LAMBDA_STRINGS"] == ("1/t", "1-1/t")
  assert namespace["ASCENT_SOURCES"] == ("gradient", "previous_sam_gradient", "grad_fn")
  assert namespace["distributed"] is optax_usam.distributed
