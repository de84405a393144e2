"""hgo-plot on synthetic round logs, and the mean +- CI bands on known inputs."""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

import numpy as np
import pytest

from hgo_common.roundlog import RoundLog
from hgo_lab import plots
from tests.procs import console

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# t_{0.975, df} from standard tables (two-sided 95%).
T975 = {1: 12.706204736174707, 2: 4.302652729749464}


def _write_log(
    path: Path,
    *,
    n_rounds: int,
    eval_every: int,
    acc0: float,
    slope: float,
    dt: float,
    with_accuracy: bool = True,
) -> list[dict]:
    """A synthetic round log: 3 profiles, one Byzantine worker, known prefixes per round."""
    records = []
    with RoundLog(path) as log:
        for k in range(n_rounds):
            workers = [
                {"id": 0, "profile": "weak", "prefix": 10 + k, "byzantine": False},
                {"id": 1, "profile": "weak", "prefix": 20 + k, "byzantine": False},
                {"id": 2, "profile": "average", "prefix": 50 + 2 * k, "byzantine": False},
                {"id": 3, "profile": "powerful", "prefix": 100, "byzantine": False},
                {"id": 4, "profile": "average", "prefix": 7, "byzantine": True},
            ]
            if k % 3 == 2:  # the powerful worker is not sampled every third round
                workers = workers[:3] + workers[4:]
            rec = {
                "round": k,
                "t": dt * (k + 1),
                "tau_ms": 100.0,
                "algorithm": "hgo",
                "sampled": len(workers),
                "responded": len(workers),
                "block": 20 + k,
                "quorum": True,
                "step_size": 0.1,
                "round_ms": dt * 1000,
                "workers": workers,
            }
            if k % eval_every == 0:
                if with_accuracy:
                    rec["accuracy"] = acc0 + slope * k
                rec["loss"] = 2.0 - 0.01 * k
            log.write(rec)
            records.append(rec)
    return records


def _assert_png(path: Path) -> None:
    assert path.is_file(), path
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 2000  # a real rendered figure, not an empty file


def test_plot_single_log_values(tmp_path: Path) -> None:
    log = tmp_path / "hgo.jsonl"
    _write_log(log, n_rounds=12, eval_every=4, acc0=0.5, slope=0.02, dt=0.25)
    result = plots.plot_logs([log], tmp_path / "out")

    assert set(result.files) == {"metric_vs_time", "metric_vs_round", "block_by_round", "prefix_by_profile"}
    for path in result.files.values():
        _assert_png(path)
    assert result.metric == "accuracy"

    x, y = result.data["metric_vs_round"]["hgo"]
    np.testing.assert_array_equal(x, [0, 4, 8])
    np.testing.assert_allclose(y, [0.5, 0.58, 0.66])
    x, y = result.data["metric_vs_time"]["hgo"]
    np.testing.assert_allclose(x, [0.25, 1.25, 2.25])
    np.testing.assert_allclose(y, [0.5, 0.58, 0.66])

    x, y = result.data["block_by_round"]["hgo"]
    np.testing.assert_array_equal(x, np.arange(12))
    np.testing.assert_array_equal(y, 20 + np.arange(12))

    prefix = result.data["prefix_by_profile"]
    assert list(prefix) == ["weak", "average", "powerful", "byzantine"]
    k = np.arange(12)
    # mean of the two weak workers: (10 + k + 20 + k) / 2
    np.testing.assert_allclose(prefix["weak"][1], 15 + k)
    # the Byzantine "average" worker is kept out of the honest average profile
    np.testing.assert_allclose(prefix["average"][1], 50 + 2 * k)
    np.testing.assert_allclose(prefix["byzantine"][1], np.full(12, 7.0))
    # the powerful worker was sampled in rounds k % 3 != 2 only
    present = k[k % 3 != 2]
    np.testing.assert_array_equal(prefix["powerful"][0], present)
    np.testing.assert_allclose(prefix["powerful"][1], np.full(present.size, 100.0))


def test_plot_overlays_logs_with_labels_and_loss(tmp_path: Path) -> None:
    a = tmp_path / "a" / "rounds.jsonl"
    b = tmp_path / "b" / "rounds.jsonl"
    _write_log(a, n_rounds=6, eval_every=1, acc0=0.1, slope=0.1, dt=0.5, with_accuracy=False)
    _write_log(b, n_rounds=9, eval_every=3, acc0=0.1, slope=0.1, dt=0.1, with_accuracy=False)
    assert plots.default_labels([a, b]) == ["a/rounds", "b/rounds"]

    result = plots.plot_logs([a, b], tmp_path / "out", labels=["HGO", "SGD"])
    assert result.metric == "loss"  # no accuracy in any log: regression-style fallback
    data = result.data["metric_vs_round"]
    assert set(data) == {"HGO", "SGD"}
    np.testing.assert_allclose(data["HGO"][1], 2.0 - 0.01 * np.arange(6))
    np.testing.assert_array_equal(data["SGD"][0], [0, 3, 6])
    assert "SGD: weak" in result.data["prefix_by_profile"]
    assert "HGO: powerful" in result.data["prefix_by_profile"]


def test_plot_rejects_bad_input(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="no records"):
        plots.plot_logs([empty], tmp_path / "out")
    log = tmp_path / "x.jsonl"
    _write_log(log, n_rounds=2, eval_every=1, acc0=0.5, slope=0.0, dt=1.0)
    with pytest.raises(ValueError, match="2 labels for 1 logs"):
        plots.plot_logs([log], tmp_path / "out", labels=["a", "b"])
    with pytest.raises(ValueError, match="'f1'"):
        plots.plot_logs([log], tmp_path / "out", metric="f1")


def test_hgo_plot_cli(tmp_path: Path) -> None:
    log = tmp_path / "run.jsonl"
    _write_log(log, n_rounds=5, eval_every=2, acc0=0.3, slope=0.05, dt=0.2)
    out = tmp_path / "figs"
    done = subprocess.run(
        [*console("hgo-plot"), str(log), "--out", str(out), "--label", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    written = {Path(line).name for line in done.stdout.split()}
    assert written == {
        "metric_vs_time.png",
        "metric_vs_round.png",
        "block_by_round.png",
        "prefix_by_profile.png",
    }
    for name in written:
        _assert_png(out / name)

    bad = subprocess.run(
        [*console("hgo-plot"), str(tmp_path / "missing.jsonl"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 2
    assert "missing.jsonl" in bad.stderr


def test_mean_ci_known_values() -> None:
    x = np.arange(3.0)
    band = plots.mean_ci([(x, [1.0, 2.0, 3.0]), (x, [3.0, 4.0, 5.0])])
    assert band.n == 2
    np.testing.assert_array_equal(band.x, x)
    np.testing.assert_allclose(band.mean, [2.0, 3.0, 4.0])
    # std(ddof=1) = sqrt(2) at every x, so half-width = t * sqrt(2) / sqrt(2) = t
    np.testing.assert_allclose(band.upper - band.mean, np.full(3, T975[1]), rtol=1e-9)
    np.testing.assert_allclose(band.mean - band.lower, np.full(3, T975[1]), rtol=1e-9)

    three = plots.mean_ci([(x, [0.0, 0.0, 0.0]), (x, [1.0, 2.0, 3.0]), (x, [2.0, 4.0, 6.0])])
    np.testing.assert_allclose(three.mean, [1.0, 2.0, 3.0])
    sd = np.array([1.0, 2.0, 3.0])  # sample std of (0, a, 2a) is a
    np.testing.assert_allclose(three.upper - three.mean, T975[2] * sd / np.sqrt(3), rtol=1e-9)

    single = plots.mean_ci([(x, [5.0, 6.0, 7.0])])
    np.testing.assert_array_equal(single.lower, single.upper)


def test_mean_ci_interpolates_on_common_range() -> None:
    # y = x sampled on different grids; the overlap is [0.5, 2.0]
    band = plots.mean_ci([([0.0, 1.0, 2.0], [0.0, 1.0, 2.0]), ([0.5, 2.5], [0.5, 2.5])], points=4)
    np.testing.assert_allclose(band.x, [0.5, 1.0, 1.5, 2.0])
    np.testing.assert_allclose(band.mean, band.x)
    np.testing.assert_allclose(band.upper, band.lower)  # both curves agree exactly

    on_grid = plots.mean_ci([([0.0, 2.0], [0.0, 2.0]), ([0.0, 2.0], [2.0, 4.0])], grid=[1.0])
    np.testing.assert_allclose(on_grid.mean, [2.0])

    with pytest.raises(ValueError, match="do not overlap"):
        plots.mean_ci([([0.0, 1.0], [0.0, 1.0]), ([2.0, 3.0], [0.0, 1.0])])
    with pytest.raises(ValueError, match="confidence"):
        plots.mean_ci([([0.0], [0.0])], confidence=1.5)
    with pytest.raises(ValueError, match="at least one curve"):
        plots.mean_ci([])


def test_plot_bands_writes_png_and_returns_bands(tmp_path: Path) -> None:
    rounds = np.arange(10.0)
    curves = {
        "HGO": [(rounds, c + 0.04 * rounds) for c in (0.5, 0.52, 0.48)],
        "SGD": [(rounds, 0.4 + 0.03 * rounds), (rounds, 0.42 + 0.03 * rounds)],
    }
    out = tmp_path / "bands" / "acc.png"
    bands = plots.plot_bands(curves, out, xlabel="round", ylabel="accuracy")
    _assert_png(out)
    assert bands["HGO"].n == 3
    assert bands["SGD"].n == 2
    np.testing.assert_allclose(bands["HGO"].mean, 0.5 + 0.04 * rounds)
    # sample std of (0.5, 0.52, 0.48) + c is 0.02 everywhere
    np.testing.assert_allclose(bands["HGO"].upper - bands["HGO"].mean, T975[2] * 0.02 / np.sqrt(3), rtol=1e-9)


def test_compressed_logs_read_like_plain_ones(tmp_path: Path) -> None:
    """hgo-experiment keeps gzip JSON lines (issue 23.2): the same lines, read by roundlog and
    hgo-plot as the plain form; the file is reproducible and several times smaller."""
    from hgo_common import roundlog

    plain = tmp_path / "run.jsonl"
    records = _write_log(plain, n_rounds=200, eval_every=10, acc0=0.3, slope=0.002, dt=0.2)
    gz = roundlog.write(tmp_path / "run.jsonl.gz", records)
    assert gz.read_bytes()[:2] == roundlog.GZIP_MAGIC
    assert gzip.decompress(gz.read_bytes()) == plain.read_bytes()  # byte for byte RoundLog's lines
    assert roundlog.read(gz) == roundlog.read(plain) == records
    assert gz.stat().st_size * 5 < plain.stat().st_size, (gz.stat().st_size, plain.stat().st_size)
    again = roundlog.write(tmp_path / "again.jsonl.gz", records)
    assert again.read_bytes() == gz.read_bytes()  # no timestamp in the gzip header
    # compressing a plain log in place
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(plain.read_bytes())
    moved = roundlog.compress_file(copy)
    assert moved.name == "copy.jsonl.gz" and not copy.exists() and roundlog.read(moved) == records
    # gzip is recognised by its bytes, not its name
    odd = tmp_path / "odd.jsonl"
    odd.write_bytes(gz.read_bytes())
    assert roundlog.read(odd) == records
    # the plots of both forms are the same, and the legend label drops .jsonl.gz
    a = plots.plot_logs([gz], tmp_path / "a")
    b = plots.plot_logs([plain], tmp_path / "b")
    assert list(a.data["metric_vs_round"]) == ["run"]
    for fig in ("metric_vs_round", "metric_vs_time", "block_by_round", "prefix_by_profile"):
        for label, (x, y) in b.data[fig].items():
            np.testing.assert_array_equal(a.data[fig][label][0], x)
            np.testing.assert_array_equal(a.data[fig][label][1], y)
    # a damaged file is named, not a traceback
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(gz.read_bytes()[: gz.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"broken\.jsonl\.gz.*damaged gzip"):
        plots.plot_logs([broken], tmp_path / "c")
    with pytest.raises(ValueError, match="lacks required keys"):
        roundlog.write(tmp_path / "x.jsonl.gz", [{"round": 0}])


def test_hgo_plot_cli_reads_a_compressed_log(tmp_path: Path) -> None:
    from hgo_common import roundlog

    records = _write_log(tmp_path / "p.jsonl", n_rounds=5, eval_every=2, acc0=0.3, slope=0.05, dt=0.2)
    log = roundlog.write(tmp_path / "run.jsonl.gz", records)
    done = subprocess.run([*console("hgo-plot"), str(log), "--out", str(tmp_path / "figs")],
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.split()) == 4
    for line in done.stdout.split():
        _assert_png(Path(line))


def test_accuracy_bands_are_clipped_to_0_1(tmp_path: Path) -> None:
    """Three seeds that disagree near 1 give a t band beyond 1; an accuracy cannot be > 1."""
    rounds = np.arange(5.0)
    curves = {"HGO": [(rounds, np.full(5, a)) for a in (0.99, 0.9, 0.6)]}
    raw = plots.mean_ci(curves["HGO"])
    assert raw.upper.max() > 1.0 and raw.lower.min() < 0.9  # the unclipped band, for the record
    bands = plots.plot_bands(curves, tmp_path / "acc.png", ylabel="test accuracy")
    np.testing.assert_allclose(bands["HGO"].upper, np.minimum(raw.upper, 1.0))
    np.testing.assert_allclose(bands["HGO"].lower, np.maximum(raw.lower, 0.0))
    np.testing.assert_allclose(bands["HGO"].mean, raw.mean)
    loss = plots.plot_bands(curves, tmp_path / "loss.png", ylabel="test loss")
    np.testing.assert_allclose(loss["HGO"].upper, raw.upper)  # a loss is not bounded by 1


def test_legend_hides_no_curve(tmp_path: Path) -> None:
    """The legend sits outside the axes, so it covers no drawn point (issue 24.8: the
    prefix-by-profile legend hid a curve)."""
    log = tmp_path / "hgo.jsonl"
    _write_log(log, n_rounds=12, eval_every=4, acc0=0.5, slope=0.02, dt=0.25)
    series = plots.load_series(log)
    fig, ax = plots._figure("prefix", "round", "prefix")
    for profile, values in series.prefix.items():
        ax.plot(series.rounds, values, marker=".", label=profile)
    plots._save(fig, ax, tmp_path / "p.png")
    renderer = fig.canvas.get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    axes = ax.get_window_extent(renderer)
    assert legend.x0 >= axes.x1, (legend, axes)  # entirely to the right of the plotting area
    assert legend.x1 <= fig.bbox.x1 + 1  # and inside the figure
