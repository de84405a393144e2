"""Figures from round logs: ``hgo-plot LOG... --out DIR``.

Reads the JSON-lines round log (schema in :mod:`hgo_common.roundlog`) written by the
server and the simulator, plain or gzip-compressed (``hgo-experiment``'s ``*.jsonl.gz``),
and draws, for one or several runs overlaid with labels:

* ``metric_vs_time.png``  — test accuracy (or loss) against wall-clock seconds, the
  paper's Figures 3-4 axis (HGO against SGD in wall time);
* ``metric_vs_round.png`` — the same against the round index k;
* ``block_by_round.png``  — the block size b_v (the v-th largest prefix, Algorithm 1)
  of every round;
* ``prefix_by_profile.png`` — the mean prefix length |V_i| per hardware profile and
  round, which shows how much of the gradient weak / average / powerful workers deliver
  by the deadline tau.

:func:`plot_bands` draws the mean over seeds with a confidence band (Student t, 95% by
default), the way the paper reports repeated experiments; the experiment runner reuses
it. Every plotting function returns the arrays it drew, so callers and tests can check
the data rather than the pixels.

matplotlib is imported lazily and only through its object API (``Figure`` +
``FigureCanvasAgg``), so no global pyplot state or interactive backend is touched.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from hgo_common import roundlog
from hgo_common.errors import HGOError

FloatArray = NDArray[np.float64]
Curve = tuple[FloatArray, FloatArray]

#: Order in which profiles are listed in legends (unknown profiles follow, sorted).
PROFILE_ORDER = ("weak", "average", "powerful", "custom", "byzantine")
METRICS = ("auto", "accuracy", "loss")


@dataclass(frozen=True)
class RunSeries:
    """The arrays of one round log that the figures use.

    Attributes
    ----------
    label : str
        Legend label of the run.
    rounds : ndarray, shape (R,)
        Round index k of every record, in file order.
    t : ndarray, shape (R,)
        Seconds since training started when each round closed.
    block : ndarray, shape (R,)
        b_v of every round (0 for a round without quorum).
    eval_rounds, eval_t : ndarray, shape (E,)
        Round index and time of the evaluation records.
    accuracy, loss : ndarray, shape (E,)
        Test accuracy / loss on the evaluation records (NaN where a record lacks one).
    prefix : dict[str, ndarray of shape (R,)]
        Mean prefix length of the sampled workers of each profile in each round (NaN in a
        round where no worker of that profile was sampled). Byzantine workers are grouped
        under ``"byzantine"`` whatever their declared profile.
    """

    label: str
    rounds: FloatArray
    t: FloatArray
    block: FloatArray
    eval_rounds: FloatArray
    eval_t: FloatArray
    accuracy: FloatArray
    loss: FloatArray
    prefix: dict[str, FloatArray] = field(default_factory=dict)


@dataclass(frozen=True)
class Band:
    """Mean and confidence band of several curves on one x grid.

    Attributes
    ----------
    x, mean, lower, upper : ndarray, shape (G,)
        Grid, mean over curves, and the band ``mean -+ t_{(1+c)/2, n-1} * s / sqrt(n)``.
    n : int
        Number of curves (seeds). With n == 1 the band has zero width.
    """

    x: FloatArray
    mean: FloatArray
    lower: FloatArray
    upper: FloatArray
    n: int


@dataclass
class PlotResult:
    """What :func:`plot_logs` wrote and drew.

    ``files`` maps a figure name (``metric_vs_time`` ...) to its PNG path; ``data`` maps
    the same names to ``{legend label: (x, y)}`` read back from the drawn lines.
    """

    files: dict[str, Path] = field(default_factory=dict)
    data: dict[str, dict[str, Curve]] = field(default_factory=dict)
    metric: str = "accuracy"


def _float(value: Any) -> float:
    # None (a NaN/inf the writer had to null out) and missing keys both become NaN.
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else math.nan


def series_from_records(records: Sequence[Mapping[str, Any]], label: str) -> RunSeries:
    """Extract the plotted arrays from round-log records (see :class:`RunSeries`).

    Raises
    ------
    ValueError
        If ``records`` is empty or a record lacks ``round``, ``t`` or ``block``.
    """
    if not records:
        raise ValueError(f"round log {label!r} holds no records; expected at least one round")
    for i, rec in enumerate(records):
        missing = [k for k in ("round", "t", "block") if k not in rec]
        if missing:
            raise ValueError(f"round log {label!r}, record {i}: missing keys {missing}")
    rounds = np.array([_float(r["round"]) for r in records])
    t = np.array([_float(r["t"]) for r in records])
    block = np.array([_float(r["block"]) for r in records])
    is_eval = np.array([("accuracy" in r) or ("loss" in r) for r in records], dtype=bool)
    accuracy = np.array([_float(r.get("accuracy")) for r in records])[is_eval]
    loss = np.array([_float(r.get("loss")) for r in records])[is_eval]

    # Flatten (record index, profile, prefix) of every sampled worker, then average per
    # profile and round with bincount instead of nested loops.
    idx: list[int] = []
    prof: list[str] = []
    pre: list[float] = []
    for i, rec in enumerate(records):
        for w in rec.get("workers") or ():
            idx.append(i)
            prof.append("byzantine" if w.get("byzantine") else str(w.get("profile", "custom")))
            pre.append(_float(w.get("prefix")))
    prefix: dict[str, FloatArray] = {}
    if idx:
        idx_a = np.asarray(idx, dtype=np.int64)
        pre_a = np.asarray(pre, dtype=np.float64)
        prof_a = np.asarray(prof)
        known = [p for p in PROFILE_ORDER if p in set(prof)]
        others = sorted(set(prof) - set(known))
        for name in (*known, *others):
            sel = (prof_a == name) & np.isfinite(pre_a)
            total = np.bincount(idx_a[sel], weights=pre_a[sel], minlength=len(records))
            count = np.bincount(idx_a[sel], minlength=len(records)).astype(np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                prefix[name] = np.where(count > 0, total / np.maximum(count, 1.0), np.nan)
    return RunSeries(
        label=label,
        rounds=rounds,
        t=t,
        block=block,
        eval_rounds=rounds[is_eval],
        eval_t=t[is_eval],
        accuracy=accuracy,
        loss=loss,
        prefix=prefix,
    )


def load_series(path: str | Path, label: str | None = None) -> RunSeries:
    """Read one round log and extract its arrays; ``label`` defaults to the file's name."""
    p = Path(path)
    try:
        records = roundlog.read(p)
    except OSError as exc:
        raise ValueError(f"cannot read round log {str(p)!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValueError(f"round log {str(p)!r} is not UTF-8 text; expected JSON lines") from None
    except ValueError as exc:
        raise ValueError(str(exc) if str(p) in str(exc) else f"round log {str(p)!r}: {exc}") from None
    if not records:
        raise ValueError(
            f"round log {str(p)!r} holds no records (empty, or no line is a JSON object); "
            "expected the JSON lines written by hgo-server --log"
        )
    return series_from_records(records, label if label is not None else log_stem(p))


def log_stem(path: Path) -> str:
    """A log's name without ``.jsonl`` / ``.jsonl.gz`` (``a_seed0.jsonl.gz`` -> ``a_seed0``)."""
    name = path.name
    for suffix in (".jsonl.gz", ".json.gz", ".gz"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def default_labels(paths: Sequence[Path]) -> list[str]:
    """Legend labels for logs: the file stem, or ``parent/stem`` when stems collide."""
    stems = [log_stem(p) for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    return [f"{p.parent.name}/{s}" for p, s in zip(paths, stems, strict=True)]


def choose_metric(runs: Sequence[RunSeries], metric: str = "auto") -> str:
    """``accuracy`` when any run evaluated accuracy (classification), else ``loss``."""
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {METRICS}")
    if metric != "auto":
        return metric
    has_acc = any(np.isfinite(r.accuracy).any() for r in runs)
    return "accuracy" if has_acc else "loss"


class PlottingUnavailable(HGOError, RuntimeError):
    """matplotlib is not installed (it comes with the ``lab`` extra)."""


def available() -> bool:
    """Whether PNG plots can be drawn here (matplotlib importable)."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def _figure(title: str, xlabel: str, ylabel: str) -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PlottingUnavailable(
            f"PNG plots need matplotlib ({exc}): install the lab extra, pip install 'hgo[lab]'"
        ) from None

    fig = Figure(figsize=(7.0, 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _save(fig: Any, ax: Any, path: Path) -> dict[str, Curve]:
    """Write the figure and return what its lines hold, as ``{label: (x, y)}``."""
    drawn: dict[str, Curve] = {}
    for line in ax.get_lines():
        drawn[str(line.get_label())] = (
            np.asarray(line.get_xdata(), dtype=np.float64),
            np.asarray(line.get_ydata(), dtype=np.float64),
        )
    if drawn:
        # Outside the axes, on the right: inside ("best") it hid a curve of the prefix
        # figure whenever the profiles' lines filled the plot (issue 24.8).
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return drawn


def plot_metric(
    runs: Sequence[RunSeries],
    path: Path,
    *,
    metric: str = "auto",
    against_time: bool = True,
    title: str | None = None,
) -> dict[str, Curve]:
    """One PNG of the test metric (accuracy or loss) against time (s) or round, a line per run."""
    chosen = choose_metric(runs, metric)
    ylabel = "test accuracy" if chosen == "accuracy" else "test loss"
    xlabel = "time (s)" if against_time else "round"
    fig, ax = _figure(title or f"{ylabel} against {xlabel.split()[0]}", xlabel, ylabel)
    for run in runs:
        y = run.accuracy if chosen == "accuracy" else run.loss
        x = run.eval_t if against_time else run.eval_rounds
        keep = np.isfinite(y) & np.isfinite(x)
        ax.plot(x[keep], y[keep], marker=".", label=run.label)
    return _save(fig, ax, path)


def plot_runs(runs: Sequence[RunSeries], out_dir: str | Path, *, metric: str = "auto") -> PlotResult:
    """Draw the four figures for already loaded runs into ``out_dir``.

    Returns
    -------
    PlotResult
        PNG paths and the (x, y) arrays of every drawn line, keyed by figure name.
    """
    if not runs:
        raise ValueError("no runs to plot; expected at least one round log")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        # --out is a directory of four PNGs; never overwrite a file given by mistake.
        raise ValueError(f"--out {str(out)!r} is a file; expected a directory to write the PNGs into")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--out {str(out)!r}: cannot create the directory ({exc.strerror or exc})") from None
    chosen = choose_metric(runs, metric)
    result = PlotResult(metric=chosen)
    for name, use_time in (("metric_vs_time", True), ("metric_vs_round", False)):
        result.files[name] = out / f"{name}.png"
        result.data[name] = plot_metric(runs, result.files[name], metric=chosen, against_time=use_time)

    fig, ax = _figure("block size b_v by round", "round", "b_v (coordinates)")
    for run in runs:
        ax.plot(run.rounds, run.block, drawstyle="steps-post", label=run.label)
    result.files["block_by_round"] = out / "block_by_round.png"
    result.data["block_by_round"] = _save(fig, ax, result.files["block_by_round"])

    fig, ax = _figure("mean prefix length by profile", "round", "prefix |V_i| (coordinates)")
    for run in runs:
        for profile, values in run.prefix.items():
            label = profile if len(runs) == 1 else f"{run.label}: {profile}"
            keep = np.isfinite(values)
            ax.plot(run.rounds[keep], values[keep], marker=".", linestyle="-", label=label)
    result.files["prefix_by_profile"] = out / "prefix_by_profile.png"
    result.data["prefix_by_profile"] = _save(fig, ax, result.files["prefix_by_profile"])
    return result


def plot_logs(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    *,
    labels: Sequence[str] | None = None,
    metric: str = "auto",
) -> PlotResult:
    """Read round logs and draw them overlaid (see the module docstring for the figures)."""
    ps = [Path(p) for p in paths]
    if labels is not None and len(labels) != len(ps):
        raise ValueError(f"got {len(labels)} labels for {len(ps)} logs; expected one label per log")
    names = list(labels) if labels is not None else default_labels(ps)
    return plot_runs([load_series(p, n) for p, n in zip(ps, names, strict=True)], out_dir, metric=metric)


def mean_ci(
    curves: Sequence[tuple[ArrayLike, ArrayLike]],
    *,
    grid: ArrayLike | None = None,
    confidence: float = 0.95,
    points: int = 200,
) -> Band:
    """Mean and Student-t confidence band of curves (e.g. one per seed).

    Parameters
    ----------
    curves : sequence of (x, y), each of shape (L_j,)
        x increasing within each curve. Curves may have different x (wall-clock time).
    grid : array of shape (G,), optional
        x values to evaluate on. Default: the common x when all curves share it, else
        ``points`` evenly spaced values over the range every curve covers.
    confidence : float
        Two-sided level in (0, 1).

    Returns
    -------
    Band
        With n = len(curves); the half-width is ``t_{(1+confidence)/2, n-1} * std(ddof=1)
        / sqrt(n)`` (zero when n == 1).
    """
    if not curves:
        raise ValueError("mean_ci needs at least one curve; got none")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence {confidence!r} is not in (0, 1)")
    xs = [np.asarray(c[0], dtype=np.float64) for c in curves]
    ys = [np.asarray(c[1], dtype=np.float64) for c in curves]
    for j, (x, y) in enumerate(zip(xs, ys, strict=True)):
        if x.ndim != 1 or x.shape != y.shape or x.size == 0:
            raise ValueError(f"curve {j}: x {x.shape} and y {y.shape} must be equal non-empty 1-D shapes")
        if x.size > 1 and np.any(np.diff(x) < 0):
            raise ValueError(f"curve {j}: x must be non-decreasing")
    if grid is not None:
        g = np.asarray(grid, dtype=np.float64)
    elif all(x.shape == xs[0].shape and np.array_equal(x, xs[0]) for x in xs):
        g = xs[0]
    else:
        lo = max(float(x[0]) for x in xs)
        hi = min(float(x[-1]) for x in xs)
        if lo > hi:
            raise ValueError(f"curves do not overlap in x: common range [{lo}, {hi}] is empty")
        g = np.linspace(lo, hi, points)
    stacked = np.stack([np.interp(g, x, y) for x, y in zip(xs, ys, strict=True)])  # (n, G)
    n = stacked.shape[0]
    mean = stacked.mean(axis=0)
    if n > 1:
        # scipy ships with scikit-learn; imported by name so mypy needs no scipy stubs.
        stats = importlib.import_module("scipy.stats")
        tq = float(stats.t.ppf(0.5 + confidence / 2.0, df=n - 1))
        half = tq * stacked.std(axis=0, ddof=1) / math.sqrt(n)
    else:
        half = np.zeros_like(mean)
    return Band(x=g, mean=mean, lower=mean - half, upper=mean + half, n=n)


def plot_bands(
    curves: Mapping[str, Sequence[tuple[ArrayLike, ArrayLike]]],
    out: str | Path,
    *,
    xlabel: str = "round",
    ylabel: str = "test accuracy",
    title: str | None = None,
    confidence: float = 0.95,
    points: int = 200,
    bounds: tuple[float, float] | None = None,
) -> dict[str, Band]:
    """Draw, per label, the mean over its curves (seeds) with a confidence band, into one PNG.

    The band is clipped to ``bounds``, by default [0, 1] when ``ylabel`` names an accuracy
    (a t band over few seeds otherwise reaches 1.3); the returned bands are what was drawn.

    Parameters
    ----------
    curves : mapping label -> sequence of (x, y)
        E.g. ``{"HGO tau=60": [(t_seed0, acc_seed0), (t_seed1, acc_seed1), ...], ...}``.
    out : path
        PNG file to write (parent directories are created).

    Returns
    -------
    dict[str, Band]
        The plotted mean and band of every label.
    """
    if not curves:
        raise ValueError("plot_bands needs at least one label; got none")
    if bounds is None and "accuracy" in ylabel.lower():
        bounds = (0.0, 1.0)
    fig, ax = _figure(title or f"{ylabel} (mean, {confidence:.0%} CI)", xlabel, ylabel)
    bands: dict[str, Band] = {}
    for i, (label, group) in enumerate(curves.items()):
        band = mean_ci(group, confidence=confidence, points=points)
        if bounds is not None:
            lo, hi = bounds
            band = Band(band.x, band.mean, np.clip(band.lower, lo, hi), np.clip(band.upper, lo, hi), band.n)
        # the colour cycle has 10 colours: curves 11-20 are dashed, 21-30 dotted, so none look alike
        style = ("-", "--", ":", "-.")[(i // 10) % 4]
        (line,) = ax.plot(band.x, band.mean, linestyle=style, label=f"{label} (n={band.n})")
        ax.fill_between(band.x, band.lower, band.upper, color=line.get_color(), alpha=0.25, linewidth=0)
        bands[label] = band
    _save(fig, ax, Path(out))
    return bands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hgo-plot",
        description="Plot HGO round logs (JSON lines): accuracy or loss against time and round, "
        "block size by round, prefix length by profile.",
    )
    parser.add_argument(
        "logs", nargs="+", type=Path, metavar="LOG", help="round log files (JSON lines, plain or .jsonl.gz)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("plots"),
        metavar="DIR",
        help="output directory, created if missing; only metric_vs_time.png, metric_vs_round.png, "
        "block_by_round.png and prefix_by_profile.png are (over)written in it (default: plots)",
    )
    parser.add_argument(
        "--label",
        action="append",
        default=None,
        help="legend label, once per LOG in order (default: file name)",
    )
    parser.add_argument("--metric", choices=METRICS, default="auto", help="accuracy, loss or auto (default)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = plot_logs(args.logs, args.out, labels=args.label, metric=args.metric)
    except (OSError, ValueError, PlottingUnavailable) as exc:
        print(f"hgo-plot: error: {exc}", file=sys.stderr)
        return 2
    for path in result.files.values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
