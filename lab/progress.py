"""Progress bars for long CLI runs: tqdm on stderr, only when stderr is a terminal."""
from __future__ import annotations

import sys


class ProgressBar:
    """`with ProgressBar(total, unit, desc) as update:` gives update(position, packets=None), or None
    when stderr is not a terminal (pipes and CI stay quiet). tqdm shows the rate and the ETA."""

    def __init__(self, total: int | None, unit: str, desc: str, unit_scale: bool = False):
        self.bar = None
        if total is not None and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit=unit, unit_scale=unit_scale, desc=desc, file=sys.stderr, leave=False)

    def __enter__(self):
        if self.bar is None:
            return None
        return self._update

    def _update(self, position: int, packets: int | None = None) -> None:
        """Move the bar to `position`; `packets`, when given, shows beside it."""
        if packets is not None:
            self.bar.set_postfix_str(f"{packets:,} packets", refresh=False)
        self.bar.update(position - self.bar.n)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
