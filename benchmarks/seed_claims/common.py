"""What the four claims share: their result record, the verdict rule, slopes, subsampling and plot pieces."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
  from matplotlib.axes import Axes

HOLDS, PARTLY, FAILS = "holds", "partly", "does not hold"
# Points kept per recorded curve in the JSON and the figures.
CURVE_POINTS = 50


class Check(NamedTuple):
  """One test of a claim: what is required, the number measured, and whether it passed."""

  rule: str
  value: float
  passed: bool

  def as_json(self) -> dict[str, Any]:
    return {"rule": self.rule, "value": float(self.value), "passed": bool(self.passed)}


class ClaimResult(NamedTuple):
  """A claim run: the JSON record and what its figure needs.

  Attributes:
    name: the short name, also the figure's ``seed_claims_<name>.png``.
    record: everything the JSON keeps (settings, measured numbers, checks, verdict, curves).
    figure: arrays for the figure only (not written to the JSON).
  """

  name: str
  record: dict[str, Any]
  figure: dict[str, Any]


def verdict(checks: Sequence[Check]) -> str:
  """``holds`` when every check passes, ``does not hold`` when none does, else ``partly``."""
  passed = sum(c.passed for c in checks)
  return HOLDS if passed == len(checks) else FAILS if passed == 0 else PARTLY


def record(
  *,
  claim: str,
  source: str,
  statement: str,
  construction: str,
  settings: dict[str, Any],
  measured: dict[str, Any],
  summary: str,
  checks: Sequence[Check],
  curves: dict[str, Any],
  seconds: float,
) -> dict[str, Any]:
  """The JSON record of one claim; ``summary`` is the "measured" cell of the verdict table."""
  return {
    "claim": claim,
    "source": source,
    "statement": statement,
    "construction": construction,
    "settings": settings,
    "measured": measured,
    "summary": summary,
    "checks": [c.as_json() for c in checks],
    "verdict": verdict(checks),
    "curves": curves,
    "wall_time_s": round(seconds, 2),
  }


def slope(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
  """The least-squares slope of log y against log x."""
  return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])


def log_indices(last: int, points: int = CURVE_POINTS) -> np.ndarray:
  """About ``points`` distinct indices in ``[1, last]``, log-spaced, ``last`` included."""
  return np.unique(np.geomspace(1, last, points).round().astype(int))


def rounded(values: np.ndarray, digits: int = 4) -> list[Any]:
  """``values`` as nested lists of floats with ``digits`` significant digits (a compact JSON)."""
  return np.vectorize(lambda v: float(f"{v:.{digits}g}"), otypes=[float])(np.asarray(values)).tolist()


def fmt(value: float) -> str:
  """A number for the verdict table: three significant digits."""
  return f"{value:.3g}"


def table(records: Sequence[dict[str, Any]]) -> str:
  """The verdict table (markdown): claim | source | measured | verdict; a ``|`` in a cell is escaped."""
  from benchmarks import report

  def cell(text: str) -> str:
    return text.replace("|", "\\|")

  rows = [(cell(r["claim"]), cell(r["source"]), cell(r["summary"]), f"**{r['verdict']}**") for r in records]
  return report.markdown_table(("claim", "source", "measured", "verdict"), rows)


def title(ax: Axes, text: str, width: int = 100) -> None:
  """The claim a panel tests, as its title (each line of ``text`` wrapped at ``width`` characters)."""
  lines = [wrapped for line in text.split("\n") for wrapped in textwrap.wrap(line, width)]
  ax.set_title("\n".join(lines), fontsize=7.5)
  ax.grid(True, which="both", alpha=0.25)
