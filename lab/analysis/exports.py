"""Output files: owner-only opening, and the per-trigger table as CSV or Parquet."""
from __future__ import annotations

import os

import numpy as np

from lab.errors import LabError


class ExportError(LabError):
    """An export that cannot be written as asked."""


def open_private(path, binary: bool = False):
    """Open an output file for writing, created (or truncated) owner-only (0o600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)   # an existing file keeps its mode under O_CREAT
    return os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"newline": ""}))


def require_pyarrow(path) -> None:
    """Parquet is written with pyarrow, an optional dependency: say so clearly when it is missing."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ExportError(f"--parquet {path}: writing Parquet needs pyarrow (pip install pyarrow), "
                          f"or use --csv") from None


class TableWriter:
    """Per-trigger rows written as they come, part by part: CSV, or Parquet (needs pyarrow).
    The file is created owner-only when the writer is made; close() finishes it."""

    def __init__(self, path, columns: tuple[str, ...], parquet: bool = False):
        self.path, self.columns, self.parquet = path, columns, parquet
        if parquet:
            require_pyarrow(path)
        self._out = open_private(path, binary=parquet)
        self._parquet_writer = None

    def write(self, columns: dict[str, np.ndarray]) -> None:
        import pandas as pd
        frame = pd.DataFrame({name: columns[name] for name in self.columns})
        if self.parquet:
            import pyarrow as pa
            import pyarrow.parquet as pq
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self._parquet_writer is None:
                self._parquet_writer = pq.ParquetWriter(self._out, table.schema)
            self._parquet_writer.write_table(table)
        else:
            frame.to_csv(self._out, index=False, header=self._out.tell() == 0)

    def close(self) -> None:
        if self._parquet_writer is None and self._out.tell() == 0:     # no part came: an empty table
            self.write({name: np.zeros(0, np.int64) for name in self.columns})
        if self._parquet_writer is not None:
            self._parquet_writer.close()
        self._out.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_table(path, columns: dict[str, np.ndarray], parquet: bool = False) -> None:
    """Per-trigger rows as CSV, or as Parquet (needs pyarrow), in one go."""
    with TableWriter(path, tuple(columns), parquet) as writer:
        writer.write(columns)
