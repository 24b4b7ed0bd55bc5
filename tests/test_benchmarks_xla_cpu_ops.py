"""``python -m benchmarks.xla_cpu_ops``: the digits CNN's operations timed alone, XLA:CPU against PyTorch.

Without torch (CI never installs it): the reproducers run and time what the committed results time, the
two max-pool gradients agree, the timing takes the median of the calls after the warm-up in milliseconds,
only a full run with both frameworks replaces the committed results, and the docs quote them.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jax
import numpy as np
import pytest

from benchmarks import xla_cpu_ops

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def committed() -> dict[str, Any]:
  return json.loads((ROOT / "benchmarks" / "results" / "xla_cpu_ops" / "xla_cpu_ops.json").read_text())


def test_docs_quote_the_committed_results(committed: dict[str, Any]) -> None:
  assert xla_cpu_ops.table(committed["rows"]) in (ROOT / "docs" / "benchmarks.md").read_text()
  # A full run: every operation has its PyTorch twin.
  assert all(row["torch_ms"] is not None for row in committed["rows"].values())
  assert "| conv | 1.000 | n/a |" in xla_cpu_ops.table({"conv": {"jax_ms": 1.0, "torch_ms": None}})


def test_a_measuring_child_times_the_committed_operations(
  committed: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
  # What the parent process reads back from each child: one JSON line, one entry per operation.
  assert xla_cpu_ops.main(["--measure", "jax", "--calls", "1"]) == 0
  times = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert set(times) == set(committed["rows"]) == set(xla_cpu_ops.jax_cases())


def test_the_pooling_twins_agree() -> None:
  cases = xla_cpu_ops.jax_cases()
  slow, fast = cases["max-pool gradient, nn.max_pool"](), cases["max-pool gradient, max_pool_2x2"]()
  np.testing.assert_array_equal(jax.device_get(slow), jax.device_get(fast))


def test_median_ms_leaves_out_the_warmup_and_reports_milliseconds(monkeypatch: pytest.MonkeyPatch) -> None:
  # A clock that only the calls advance: ten warm-up calls, then three timed ones of 3, 1 and 2 ms.
  clock, durations = [0.0], iter([1.0] * 10 + [0.003, 0.001, 0.002])

  def call() -> None:
    clock[0] += next(durations)

  monkeypatch.setattr(xla_cpu_ops, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
  assert xla_cpu_ops.median_ms(call, calls=3, sync=lambda value: value) == pytest.approx(2.0)
  assert next(durations, None) is None


def test_only_the_default_run_with_torch_writes_the_committed_ops(
  tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
  assert xla_cpu_ops.RESULTS == ROOT / "benchmarks" / "results" / "xla_cpu_ops"
  monkeypatch.setattr(xla_cpu_ops, "RESULTS", tmp_path)
  both = {"rows": {"conv": {"jax_ms": 1.0, "torch_ms": 0.5}}}
  jax_only = {"rows": {"conv": {"jax_ms": 1.0, "torch_ms": None}}}
  for argv, data, where in [
    (["--quick"], both, tmp_path / "quick"),
    (["--rounds", "1"], both, tmp_path / "quick"),
    ([], jax_only, tmp_path / "quick"),
    ([], both, tmp_path),
  ]:
    monkeypatch.setattr(xla_cpu_ops, "run", lambda args, data=data: data)
    assert xla_cpu_ops.main(argv) == 0
    assert (where / "xla_cpu_ops.json").is_file(), argv
    (where / "xla_cpu_ops.json").unlink()


def test_bad_arguments_exit_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
  assert xla_cpu_ops.main(["--calls", "-1"]) == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("xla_cpu_ops: error: ") and "--calls" in lines[0]
