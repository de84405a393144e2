"""Finding dataset files in a user's data_dir, and the error raised for bad ones."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hgo_common.errors import DataError


class DataFileError(DataError):
    """A dataset file is missing, truncated or malformed; the message names the file."""


def find_file(data_dir: Path, names: Sequence[str], subdirs: Sequence[str], dataset: str) -> Path:
    """First existing ``data_dir/[subdir/]name`` for ``name`` in ``names``.

    ``subdirs`` are tried after ``data_dir`` itself, so both ``--data-dir data/mnist``
    and ``--data-dir data`` (holding ``mnist/``) work.

    Raises
    ------
    DataFileError
        Listing the expected names and the folders searched.
    """
    dirs = [data_dir, *(data_dir / s for s in subdirs)]
    for d in dirs:
        for name in names:
            p = d / name
            if p.is_file():
                return p
    raise DataFileError(
        f"{dataset}: no data file found; expected one of {list(names)} in "
        + " or ".join(str(d) for d in dirs)
    )
