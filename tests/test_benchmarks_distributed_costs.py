"""benchmarks/distributed_costs.py: the sharded step's memory and collectives, as the docs quote them.

The module compiles (never runs) the step on the 8 virtual CPU devices of tests/conftest.py; the table of
docs/distributed.md and the figures of README.md must be what it computes today, and its figures must agree
with what the bytes of float32 parameters predict.
"""

from __future__ import annotations

from pathlib import Path

import jax
import pytest

from benchmarks import distributed_costs

ROOT = Path(__file__).resolve().parent.parent
MIB = 2**20
D, HIDDEN, OUT = 1024, 4096, 1024
# The 1024-4096-1024 MLP, counted by hand: two weight matrices and two biases of float32.
PARAM_COUNT = D * HIDDEN + HIDDEN + HIDDEN * OUT + OUT
PARAM_BYTES = 4 * PARAM_COUNT


def _text(name: str) -> str:
  """The page with its line breaks as spaces: a quote may wrap."""
  return " ".join((ROOT / name).read_text().split())


@pytest.fixture(scope="module")
def rows() -> list[dict]:
  assert jax.device_count() == 8
  return distributed_costs.rows()


def test_the_model_is_the_one_the_docs_name() -> None:
  assert (distributed_costs.D, distributed_costs.HIDDEN, distributed_costs.OUT) == (D, HIDDEN, OUT)
  assert f"{PARAM_COUNT / 1e6:.1f}M-parameter MLP, {PARAM_BYTES / MIB:.0f} MiB of float32" in _text(
    "docs/distributed.md"
  )


def test_docs_table_is_what_the_module_computes(rows: list[dict]) -> None:
  assert distributed_costs.table(rows) in (ROOT / "docs" / "distributed.md").read_text()


def test_readme_quotes_the_per_device_memory(rows: list[dict]) -> None:
  # With per-device perturbation, and on the 1 x 8 mesh the one program there is (a single data shard).
  per_device = {r["num_model"]: r["bytes"] for r in rows if r["per_device"] or r["num_data"] == 1}
  figures = ", ".join(f"{per_device[m] / MIB:.1f}" for m in (1, 2, 4, 8))
  quote = (
    f"(with per-device perturbation: {figures} MiB for 1, 2, 4, 8-way parameter sharding of an "
    f"{PARAM_COUNT / 1e6:.1f}M-parameter MLP, `python benchmarks/distributed_costs.py`)"
  )
  assert quote in _text("README.md")


def test_the_figures_follow_from_the_parameter_bytes(rows: list[dict]) -> None:
  """What docs/distributed.md says of the table, in bytes: the global form holds one parameter-sized buffer
  more per device; each device all-reduces two gradients (global) or one (per-device) of its parameter
  shard when there are several data shards, plus scalars and small activations; no parameter is gathered."""
  by_mesh = {(r["num_model"], r["per_device"]): r for r in rows}
  for (num_model, per_device), row in by_mesh.items():
    shard = PARAM_BYTES / num_model
    if not per_device and (num_model, True) in by_mesh:
      assert row["bytes"] - by_mesh[num_model, True]["bytes"] == pytest.approx(shard, rel=0.01)
    gradients = 0 if row["num_data"] == 1 else 1 if per_device else 2
    assert 0 <= row["all_reduce_bytes"] - gradients * shard < MIB
    # The smallest weight-matrix shard is 2 MiB (16 MiB / 8): every all-gather is smaller.
    assert row["all_gather_bytes"] < 4 * min(D * HIDDEN, HIDDEN * OUT) / 8
