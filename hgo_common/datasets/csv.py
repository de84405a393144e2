"""Numeric tables: CSV with a header, or whitespace-separated columns; Boston housing.

Boston housing (Harrison & Rubinfeld, J. Environ. Economics & Management 5:81-102, 1978;
StatLib/UCI): 506 rows, 13 features and the target MEDV (median home value, k$), the
paper's linear-regression task. scikit-learn dropped it in 1.2 because the feature B
encodes a racial-composition assumption; it is read here only to reproduce the paper.
Both common layouts are accepted and give identical arrays:

* ``housing.data`` (UCI): 14 whitespace-separated numbers per line, MEDV last;
* ``BostonHousing.csv``: a header line (``"crim","zn",...,"medv"``) then comma-separated
  values, some quoted (``"0"``); the target is the column named ``medv``.

(The module is named after the format; inside this package it never needs the
standard library's ``csv`` module.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._files import DataFileError, find_file

BOSTON_NAMES = ("housing.data", "BostonHousing.csv", "boston.csv", "housing.csv", "Boston.csv")
BOSTON_COLUMNS = 14


def read_table(path: Path) -> tuple[list[str] | None, np.ndarray]:
    """Read a numeric table: comma-separated when the first line holds a comma, else
    whitespace-separated; a first line that is not all numbers is the header.

    Returns
    -------
    header : list of column names (lower-case, unquoted) or None
    data : (n, m) float64

    Raises
    ------
    DataFileError
        ``"<file> line N: ..."`` for a row with the wrong number of columns or a value
        that is not a number; or an empty file.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise DataFileError(f"{path}: cannot read ({exc})") from exc
    numbered = [(i, ln) for i, ln in enumerate(lines, 1) if ln.strip()]
    if not numbered:
        raise DataFileError(f"{path}: empty table")
    comma = "," in numbered[0][1]

    def cells(line: str) -> list[str]:
        parts = line.split(",") if comma else line.split()
        return [c.strip().strip('"').strip("'").strip() for c in parts]

    header: list[str] | None = None
    first = cells(numbered[0][1])
    try:
        [float(c) for c in first]
    except ValueError:
        header = [c.lower() for c in first]
        numbered = numbered[1:]
    width = len(header) if header is not None else len(first)
    rows: list[list[float]] = []
    for lineno, line in numbered:
        row = cells(line)
        if len(row) != width:
            raise DataFileError(f"{path} line {lineno}: {len(row)} columns, expected {width}")
        try:
            rows.append([float(c) for c in row])
        except ValueError:
            bad = next(c for c in row if not _is_number(c))
            raise DataFileError(f"{path} line {lineno}: {bad!r} is not a number") from None
    if not rows:
        raise DataFileError(f"{path}: header but no data rows")
    return header, np.asarray(rows, dtype=np.float64)


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def read_boston(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One Boston file, either layout: X (506, 13) float64, y = MEDV (506,) float64."""
    header, data = read_table(path)
    if data.shape[1] != BOSTON_COLUMNS:
        raise DataFileError(
            f"{path}: {data.shape[1]} columns, expected {BOSTON_COLUMNS} (13 features and MEDV)"
        )
    target = BOSTON_COLUMNS - 1
    if header is not None:
        if "medv" not in header:
            raise DataFileError(f"{path}: no 'medv' column in header {header}")
        target = header.index("medv")
    if not np.all(np.isfinite(data)):
        raise DataFileError(f"{path}: non-finite values in the table")
    return np.delete(data, target, axis=1), data[:, target].copy()


def load_boston(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Boston housing from ``data_dir`` (``housing.data`` preferred, else the CSV)."""
    return read_boston(find_file(Path(data_dir), BOSTON_NAMES, ("boston",), "boston"))
