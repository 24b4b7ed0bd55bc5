"""The progress display of the main job: a bar on a terminal, plain lines elsewhere."""

from __future__ import annotations

import sys


class Progress:
  """A tqdm bar on a terminal; in a file or a pipe (CI logs, nohup) plain lines instead.

  A bar drawn into a file is one carriage-return redraw per update, about 135 KB for the default job, so it
  is drawn only when stderr is a TTY.
  """

  def __init__(self, total: int, desc: str, disable: bool) -> None:
    from tqdm.auto import tqdm

    self.quiet = disable
    self.interactive = not disable and getattr(sys.stderr, "isatty", lambda: False)()
    self.bar = tqdm(total=total, desc=desc, disable=not self.interactive, dynamic_ncols=True, file=sys.stderr)

  def update(self, n: int = 1, status: str | None = None) -> None:
    if status is not None and self.interactive:
      self.bar.set_postfix_str(status, refresh=False)
    self.bar.update(n)

  def write(self, line: str) -> None:
    """A log line, always printed (above the bar on a terminal)."""
    if self.interactive:
      self.bar.write(line, file=sys.stderr)
    else:
      print(line, file=sys.stderr, flush=True)

  def milestone(self, line: str) -> None:
    """A line that stands in for the bar where there is none: printed only without a TTY and --no-progress."""
    if not self.interactive and not self.quiet:
      print(line, file=sys.stderr, flush=True)

  def close(self) -> None:
    self.bar.close()
