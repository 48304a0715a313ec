"""Progress bars for long CLI runs: tqdm on stderr, only when stderr is a terminal."""
from __future__ import annotations

import sys


class ProgressBar:
    """`with ProgressBar(total, unit, desc) as update:` gives update(position), or None when
    stderr is not a terminal (pipes and CI stay quiet)."""

    def __init__(self, total: int | None, unit: str, desc: str, unit_scale: bool = False):
        self.bar = None
        if total is not None and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit=unit, unit_scale=unit_scale, desc=desc, file=sys.stderr, leave=False)

    def __enter__(self):
        if self.bar is None:
            return None
        return lambda position: self.bar.update(position - self.bar.n)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()
