"""``cifar10-synthetic``: a generated, learnable set with CIFAR-10's shapes. It is NOT CIFAR-10.

CIFAR-10 (Krizhevsky 2009; ``hgo_common.datasets.cifar10``) cannot be downloaded on
machines that reach only package registries, yet the large-model path (issue 23, Deliver
4: a >= 1M-parameter CNN over gRPC) needs images of its shape: 3 x 32 x 32, channel-first
rows of 3072 values in [0, 1] quantized to 1/255 (the stored uint8 pixels / 255), labels
0..9. This module generates such a set from a fixed seed, so every process (server,
workers loading their own shard) gets the same arrays without any file.

How an image of class c is made (all draws from ``np.random.default_rng(SEED)``):

1. **Class templates**, drawn once: T_c (3 x 32 x 32) is the sum of ``GRATINGS`` = 3
   oriented sinusoidal gratings ``color_k * sin(2 pi f_k (x cos t_k + y sin t_k) / 32 + phi_k)``
   (frequency f_k uniform in [1, 4] cycles per image, orientation t_k uniform in [0, pi),
   phase uniform, an RGB color vector color_k uniform in [-1, 1]^3) plus one colored
   Gaussian blob (centre uniform in the image, width 3-6 pixels), scaled to max |T_c| = 1.
2. **Per image**: the template is shifted circularly by (dy, dx) uniform in
   [-SHIFT, SHIFT] = [-4, 4] pixels (so the blob moves and the grating phases change:
   position is not a feature), overlaid with a *distractor*, the template of a uniformly
   drawn class (possibly c itself) at ``DISTRACTOR`` = 0.4 of its amplitude with its own
   shift, multiplied by ``AMPLITUDE`` = 0.35 times a contrast uniform in [0.6, 1.0],
   added to 0.5, plus i.i.d. Gaussian pixel noise of standard deviation ``NOISE`` = 0.15,
   clipped to [0, 1] and quantized to uint8 (then / 255).
3. Labels are balanced: image i of a split has class ``i mod 10`` before a seeded
   shuffle. The training set (``N_TRAIN`` = 10,000 images) and the test set (``N_TEST`` =
   2,000) are drawn in that order from the same stream: an official split, as CIFAR-10's.

The noise and the distractor make single pixels nearly uninformative; the class is the
grating pattern's frequency, orientation and colors and the blob's color (shift
invariant, what convolutions find). Measured: docs/models-and-data.md.

``write_batches(out_dir)`` writes the same set in CIFAR-10's python-batch layout
(``cifar-10-batches-py/data_batch_1..5`` and ``test_batch``, pickled dicts with
``b"data"`` (n, 3072) uint8 and ``b"labels"``), which ``--dataset cifar10 --data-dir
out_dir`` reads back through the real reader into identical arrays; and where the real
files are present, ``--dataset cifar10`` is the real thing.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np

from .cifar10 import BATCH_DIR, N_FEATURES, TEST_BATCH, TRAIN_BATCHES

__all__ = [
    "N_TEST",
    "N_TRAIN",
    "SEED",
    "generate",
    "load_cifar10_synthetic",
    "templates",
    "write_batches",
]

SEED = 20_091_010  # fixed: the set is part of the code, not of a run (the run's seed splits shards)
N_CLASSES = 10
SIDE = 32
N_TRAIN = 10_000
N_TEST = 2_000
GRATINGS = 3
SHIFT = 4
NOISE = 0.15
AMPLITUDE = 0.35
DISTRACTOR = 0.4
_BLOCK = 1_000  # images generated at once (bounds the float32 temporaries to ~50 MB)


def templates(rng: np.random.Generator) -> np.ndarray:
    """The class templates, (N_CLASSES, 3, SIDE, SIDE) float32 with max |T_c| = 1."""
    yy, xx = np.meshgrid(np.arange(SIDE), np.arange(SIDE), indexing="ij")
    out = np.empty((N_CLASSES, 3, SIDE, SIDE), dtype=np.float32)
    for c in range(N_CLASSES):  # 10 classes x a few gratings: not a loop over pixels
        t = np.zeros((3, SIDE, SIDE))
        for _ in range(GRATINGS):
            f = rng.uniform(1.0, 4.0)
            theta = rng.uniform(0.0, np.pi)
            phi = rng.uniform(0.0, 2 * np.pi)
            color = rng.uniform(-1.0, 1.0, size=3)
            wave = np.sin(2 * np.pi * f * (xx * np.cos(theta) + yy * np.sin(theta)) / SIDE + phi)
            t += color[:, None, None] * wave[None]
        cy, cx = rng.uniform(0, SIDE, size=2)
        width = rng.uniform(3.0, 6.0)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width**2))
        t += rng.uniform(-1.0, 1.0, size=3)[:, None, None] * 2.0 * blob[None]
        out[c] = t / np.abs(t).max()
    return out


def _bank(T: np.ndarray) -> np.ndarray:
    """Every template at every shift: (N_CLASSES * (2 SHIFT + 1)^2, 3072) float32 (22 MB),
    row ``(c * S + iy) * S + ix`` holding T_c rolled by (iy - SHIFT, ix - SHIFT), S = 2 SHIFT + 1.
    Gathering whole rows from it is a copy per image, not a gather per pixel."""
    shifts = range(-SHIFT, SHIFT + 1)
    rolled = [np.roll(T, (dy, dx), axis=(2, 3)) for dy in shifts for dx in shifts]  # 169 rolls
    return np.ascontiguousarray(np.stack(rolled, axis=1).reshape(-1, N_FEATURES))


def _shifted(bank: np.ndarray, cls: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """T[cls[i]] rolled by a uniform (dy, dx) in [-SHIFT, SHIFT]^2 each: (n, 3072)."""
    s = 2 * SHIFT + 1
    iy, ix = rng.integers(0, s, size=(2, cls.shape[0]))
    out: np.ndarray = bank[(cls * s + iy) * s + ix]
    return out


def generate(n: int, T: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images: data (n, 3072) uint8 channel-first (CIFAR-10's row layout), labels (n,) int64."""
    if int(n) < 1:
        raise ValueError(f"cifar10-synthetic: the number of images must be >= 1, got {n}")
    y = rng.permutation(np.arange(int(n)) % N_CLASSES).astype(np.int64)
    bank = _bank(T)
    data = np.empty((int(n), N_FEATURES), dtype=np.uint8)
    for lo in range(0, int(n), _BLOCK):
        c = y[lo : lo + _BLOCK]
        m = c.shape[0]
        contrast = np.asarray(rng.uniform(0.6, 1.0, size=m), dtype=np.float32)[:, None]
        other = np.asarray(rng.integers(0, N_CLASSES, size=m))
        img = _shifted(bank, c, rng)
        img += np.float32(DISTRACTOR) * _shifted(bank, other, rng)
        img *= np.float32(AMPLITUDE) * contrast
        img += np.float32(0.5)
        img += rng.standard_normal(size=img.shape, dtype=np.float32) * np.float32(NOISE)
        np.clip(img, 0.0, 1.0, out=img)
        img *= np.float32(255.0)
        data[lo : lo + m] = np.rint(img).astype(np.uint8)
    return data, y


def _raw(
    n_train: int = N_TRAIN, n_test: int = N_TEST
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED)
    T = templates(rng)
    tr, y_tr = generate(n_train, T, rng)
    te, y_te = generate(n_test, T, rng)
    return tr, y_tr, te, y_te


def load_cifar10_synthetic(_: Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The official split: X_train (10000, 3072) float32 in [0, 1] (uint8 / 255), y_train
    (10000,) int64, X_test (2000, 3072), y_test (2000,); identical on every call."""
    tr, y_tr, te, y_te = _raw()
    X_tr = tr.astype(np.float32)
    X_tr /= np.float32(255.0)
    X_te = te.astype(np.float32)
    X_te /= np.float32(255.0)
    return X_tr, y_tr, X_te, y_te


def write_batches(out_dir: str | Path, n_train: int = N_TRAIN, n_test: int = N_TEST) -> Path:
    """Write the set as ``out_dir/cifar-10-batches-py/`` in CIFAR-10's python-batch format
    (the training images split over the five ``data_batch_*`` files); returns that folder.

    With the defaults, ``datasets.load("cifar10", data_dir=out_dir)`` equals
    ``datasets.load("cifar10-synthetic")`` array for array.
    """
    if int(n_train) < len(TRAIN_BATCHES):
        raise ValueError(f"n_train must be >= {len(TRAIN_BATCHES)} (one image per batch file), got {n_train}")
    tr, y_tr, te, y_te = _raw(int(n_train), int(n_test))
    d = Path(out_dir) / BATCH_DIR
    d.mkdir(parents=True, exist_ok=True)
    cuts = np.array_split(np.arange(tr.shape[0]), len(TRAIN_BATCHES))
    for name, idx in zip(TRAIN_BATCHES, cuts, strict=True):
        _dump(d / name, tr[idx], y_tr[idx])
    _dump(d / TEST_BATCH, te, y_te)
    return d


def _dump(path: Path, data: np.ndarray, labels: np.ndarray) -> None:
    with path.open("wb") as fh:  # protocol 2, like the official files (Python 2 pickles)
        pickle.dump(
            {b"data": np.ascontiguousarray(data), b"labels": [int(v) for v in labels]}, fh, protocol=2
        )


def main(argv: list[str] | None = None) -> int:
    """``python -m hgo_common.datasets.cifar10_synthetic --out DIR``: write the batches."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="folder to create cifar-10-batches-py/ in")
    ap.add_argument("--n-train", type=int, default=N_TRAIN)
    ap.add_argument("--n-test", type=int, default=N_TEST)
    args = ap.parse_args(argv)
    d = write_batches(args.out, args.n_train, args.n_test)
    print(f"wrote {args.n_train} training and {args.n_test} test images (generated, not CIFAR-10) to {d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
