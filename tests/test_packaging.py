"""The package a user installs: ``python -m build`` gives a wheel and an sdist that ``twine check`` passes,
and the wheel works in a fresh virtualenv holding nothing but the core dependencies.

pip fetches the build backend and the core dependencies from the package index (or its cache).
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

from tests._markdown import shell_commands

ROOT = Path(__file__).resolve().parent.parent
# What the sdist is built from; copied, so that the build leaves nothing (egg-info, build/) in the repository.
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "MANIFEST.in", "optax_usam")

# Run in the fresh virtualenv, which has no flax.
CHECK_INSTALLED = """
import importlib.metadata, importlib.util, pathlib, sys
import jax.numpy as jnp
import optax_usam

assert importlib.util.find_spec("flax") is None
version = importlib.metadata.version("optax_usam")
assert optax_usam.__version__ == version == sys.argv[1], (optax_usam.__version__, version)
package = pathlib.Path(optax_usam.__file__).parent
assert (package / "py.typed").is_file() and "site-packages" in str(package), package
assert "Apache-2.0" in importlib.metadata.metadata("optax_usam")["License-Expression"]

params = {"w": jnp.ones(3)}
tx = optax_usam.sam(0.1)
grads, _ = tx.update(params, tx.init(params), params, grad_fn=lambda p: p)
assert grads["w"].shape == (3,)
try:
  optax_usam.SAMTrainState
except ImportError as err:
  assert "optax_usam[flax]" in str(err), err
else:
  raise AssertionError("optax_usam.SAMTrainState imported without flax")
print("ok")
"""


def source_version() -> str:
  tree = ast.parse((ROOT / "optax_usam" / "__init__.py").read_text())
  return next(
    node.value.value
    for node in tree.body
    if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__version__" for t in node.targets)
  )


def run(*args: str | Path, cwd: Path | None = None, timeout: float = 240) -> str:
  # Without PYTHONPATH: the installed package must be the one imported, not the working tree.
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  result = subprocess.run(
    [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
  )
  assert result.returncode == 0, f"{args}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
  return result.stdout


def test_version_has_one_place():
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())
  assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
  assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "optax_usam.__version__"}
  assert f"## {source_version()}" in (ROOT / "CHANGELOG.md").read_text()


def test_license_matches_pyproject():
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
  text = (ROOT / "LICENSE").read_text()
  assert "Apache License" in text and "Version 2.0, January 2004" in text
  assert "END OF TERMS AND CONDITIONS" in text


def test_wheel_installs_and_imports_with_the_core_dependencies_only(tmp_path):
  source = tmp_path / "source"
  source.mkdir()
  for name in SOURCES:
    path = ROOT / name
    if path.is_dir():
      shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    else:
      shutil.copy(path, source / name)
  dist = tmp_path / "dist"
  run(sys.executable, "-m", "build", "--outdir", dist, source)
  version = source_version()
  wheel = dist / f"optax_usam-{version}-py3-none-any.whl"
  sdist = dist / f"optax_usam-{version}.tar.gz"
  assert wheel.is_file() and sdist.is_file(), sorted(p.name for p in dist.iterdir())
  run(sys.executable, "-m", "twine", "check", "--strict", wheel, sdist)

  env = tmp_path / "venv"
  venv.create(env, with_pip=True)  # no system site-packages: only what the wheel pulls in
  python = env / "bin" / "python"
  run(python, "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel)
  installed = run(python, "-m", "pip", "list", "--format=freeze").lower()
  assert "flax" not in installed and "optax" in installed, installed
  assert run(python, "-c", CHECK_INSTALLED, version, cwd=tmp_path).strip() == "ok"


# PyTorch's index of CPU wheels. On PyPI, torch==2.13.0 for Linux is the CUDA build (several GB of nvidia
# packages); searched beside PyPI, this index's 2.13.0+cpu wins, as a local version sorts above the plain one.
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
BENCH_INSTALL = f'pip install -e ".[bench]" --extra-index-url {TORCH_CPU_INDEX}'


def test_the_bench_extra_is_installed_with_the_cpu_torch_wherever_it_is_documented():
  """unifiedsam requires torch unpinned: the extra pins the version measured, and every documented install of
  it, and every hint of the benchmarks that lack torch, adds PyTorch's CPU index (pip's own configuration
  must not be what picks the CPU wheel)."""
  bench = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["bench"]
  assert {"torch==2.13.0", "unifiedsam==1.0.0"} <= set(bench), bench
  for page in ("README.md", *(str(p.relative_to(ROOT)) for p in sorted((ROOT / "docs").rglob("*.md")))):
    text = (ROOT / page).read_text()
    installs = [
      words
      for _, words in shell_commands(text)
      if words[:2] == ["pip", "install"] and any(w in (".[bench]", "optax_usam[bench]") for w in words)
    ]
    if page in ("docs/benchmarks.md", "docs/getting_started.md"):
      assert installs, f"{page} does not install the bench extra"
    for words in installs:
      assert words == shlex.split(BENCH_INSTALL), (page, words)
    assert "\npip install torch" not in text and "unifiedsam==1.0.0 --no-deps" not in text, page
  hints = [
    (path.name, hint)
    for path in sorted((ROOT / "benchmarks").rglob("*.py"))
    for hint in re.findall(r"pip install[^`\n]*", path.read_text())
  ]
  assert hints and all(hint.startswith(BENCH_INSTALL) for _, hint in hints), hints
