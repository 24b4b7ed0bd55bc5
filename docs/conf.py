"""Sphinx configuration of the optax_usam documentation (``make docs``)."""

from __future__ import annotations

# The package is installed in editable mode (make venv), so the docs document the working tree.
import optax_usam

project = "optax_usam"
author = "optax_usam authors"
copyright = "the optax_usam authors"
release = optax_usam.__version__
version = release

extensions = [
  "myst_parser",
  "sphinx.ext.autodoc",
  "sphinx.ext.autosummary",
  "sphinx.ext.napoleon",
  "sphinx.ext.mathjax",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]

# Markdown pages: $...$ math, and anchors for the headings the pages link to (page.md#section).
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

# The API pages list their entries by hand (grouped, as optax does); no stub files are generated.
autosummary_generate = False
autodoc_member_order = "bysource"
# Signatures without annotations: the aliases of optax and chex would print as long unions; the Args
# sections say what each argument takes.
autodoc_typehints = "none"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
# Attribute types would come from annotations that are aliases (chex.Array, a module's own Params = Any).
napoleon_attr_annotations = False

# Every reference must resolve, except the types of other libraries: no inventory is downloaded
# (the build runs offline, in the test suite too), so annotations such as optax.Params stay plain text.
nitpicky = True
nitpick_ignore_regex = [
  ("py:.*", r"(optax|chex|jax|jaxlib|flax|numpy|np|jnp|collections|typing)(\..*)?"),
  ("py:class", r"(Any|Callable|Hashable|Sequence|Mapping|Iterable|Iterator|NamedTuple|PyTree|Array)"),
  ("py:class", r"(int|float|str|bool|complex|object|tuple|list|dict|None|type)"),
]

html_theme = "furo"
html_title = f"optax_usam {release}"
