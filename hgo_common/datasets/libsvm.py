"""LIBSVM / svmlight text format, and the LIBSVM "phishing" dataset (the paper's SVM task).

Format (Chang & Lin, "LIBSVM: a library for support vector machines", ACM TIST 2011):
one example per line, ``LABEL INDEX:VALUE INDEX:VALUE ...`` with 1-based increasing
feature indices; absent features are 0; ``#`` starts a comment; blank lines are
skipped. We parse it ourselves (rather than with ``sklearn.datasets.load_svmlight_file``)
so that a bad line is reported with its file and line number.

phishing: UCI Phishing Websites (Mohammad, Thabtah & McCluskey 2012) as preprocessed for
LIBSVM, 11055 x 68, labels 0/1 (4898 / 6157). It has no official split, so
``datasets.load`` makes a seeded stratified one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._files import DataFileError, find_file

PHISHING_NAMES = ("phishing.libsvm", "phishing", "phishing.txt", "phishing.svm")


def read_libsvm(path: Path, n_features: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a LIBSVM text file into dense arrays.

    Parameters
    ----------
    path : Path
    n_features : int, optional
        Width of X; default the largest feature index present.

    Returns
    -------
    X : (n, n_features) float64
    y : (n,) float64 raw labels as written

    Raises
    ------
    DataFileError
        ``"<file> line N: ..."`` for a bad label, a token that is not INDEX:VALUE, an
        index < 1 or beyond ``n_features``, or a non-finite value; or an empty file.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="ascii", errors="replace").splitlines()
    except OSError as exc:
        raise DataFileError(f"{path}: cannot read ({exc})") from exc
    bodies = [(n, b) for n, b in enumerate((ln.split("#", 1)[0].split() for ln in lines), 1) if b]
    if not bodies:
        raise DataFileError(f"{path}: no examples (empty LIBSVM file)")
    try:
        labels, rows, cols, vals = _parse_fast(bodies)
    except ValueError:
        # The vectorized parse only says *that* something is wrong; find the line.
        _raise_first_error(path, bodies)
        raise
    width = (int(cols.max()) + 1 if cols.size else 0) if n_features is None else int(n_features)
    if cols.size and int(cols.max()) >= width:
        raise DataFileError(f"{path}: feature index {int(cols.max()) + 1} exceeds n_features={width}")
    X = np.zeros((labels.size, width))
    X[rows, cols] = vals
    return X, labels


def _parse_fast(
    bodies: list[tuple[int, list[str]]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All tokens of the file converted at once by numpy; ValueError on anything odd."""
    labels = np.array([b[0] for _, b in bodies], dtype=np.float64)
    counts = np.array([len(b) - 1 for _, b in bodies], dtype=np.intp)
    feats = [t for _, b in bodies for t in b[1:]]
    joined = " ".join(feats)
    if joined.count(":") != len(feats) or "qid" in joined:
        raise ValueError("token without exactly one ':' (or a qid)")
    pairs = np.array(joined.replace(":", " ").split(), dtype=np.float64).reshape(-1, 2)
    idx, vals = pairs[:, 0], pairs[:, 1]
    if pairs.shape[0] != len(feats) or np.any(idx < 1) or np.any(idx != np.floor(idx)):
        raise ValueError("bad feature index")
    if not (np.all(np.isfinite(vals)) and np.all(np.isfinite(labels))):
        raise ValueError("non-finite value")
    rows = np.repeat(np.arange(len(bodies), dtype=np.intp), counts)
    return labels, rows, idx.astype(np.intp) - 1, vals


def _raise_first_error(path: Path, bodies: list[tuple[int, list[str]]]) -> None:
    """Re-check line by line and raise DataFileError naming the first bad line."""
    for lineno, body in bodies:
        try:
            ok = np.isfinite(float(body[0]))
        except ValueError:
            ok = False
        if not ok:
            raise DataFileError(f"{path} line {lineno}: bad label {body[0]!r} (expected a finite number)")
        for tok in body[1:]:
            idx, sep, val = tok.partition(":")
            if idx == "qid":
                raise DataFileError(f"{path} line {lineno}: qid tokens (ranking data) are not supported")
            try:
                i, v = int(idx), float(val)
            except ValueError:
                i, v = -1, 0.0
            if not sep or i < 1 or not np.isfinite(v):
                raise DataFileError(
                    f"{path} line {lineno}: bad feature {tok!r} "
                    "(expected INDEX:VALUE with an integer INDEX >= 1 and a finite VALUE)"
                )


def binary_labels(y: np.ndarray, path: Path | str) -> np.ndarray:
    """Map two-valued labels to {0, 1}: {0, 1} stay, {-1, +1} (and {1, 2}) map low -> 0."""
    values = np.unique(y)
    if values.size > 2:
        raise DataFileError(f"{path}: expected two label values, got {values.size}: {values[:5]} ...")
    return (y == values[-1]).astype(np.int64) if values.size == 2 else (y > 0).astype(np.int64)


def load_phishing(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """phishing: X (11055, 68) float64, y (11055,) int64 in {0, 1}."""
    path = find_file(Path(data_dir), PHISHING_NAMES, ("phishing",), "phishing")
    X, y = read_libsvm(path)
    return X, binary_labels(y, path)
