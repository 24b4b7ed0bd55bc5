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
  # The lazily served submodules (flax_linen, flax_nnx) stay importable without being public names.
  lazy = {name for name, (_, attr) in optax_usam._LAZY.items() if attr is not None}
  assert imported | lazy <= set(optax_usam.__all__)


def test_star_import_gives_all():
  """Every name of __all__ resolves (the lazy Flax ones included), to what the package serves."""
  namespace: dict[str, object] = {}
  exec("from optax_usam import *", namespace)
  assert sorted(k for k in namespace if k != "__builtins__") == sorted(optax_usam.__all__)
  for name in optax_usam.__all__:
    assert namespace[name] is getattr(optax_usam, name), name


def test_at_most_25_names_each_with_an_example():
  """One name per purpose, and the API reference shows each in use (modules: their names have examples)."""
  assert len(optax_usam.__all__) <= 25
  without = [
    name
    for name in optax_usam.__all__
    if not isinstance(getattr(optax_usam, name), types.ModuleType)
    and "Examples:" not in (getattr(optax_usam, name).__doc__ or "")
  ]
  assert not without, f"no Examples: section in the docstring of {without}"
