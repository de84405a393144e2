"""Per-seed details of a run: time to accuracy, heterogeneity of the rounds (block |B_k| and
prefix lengths per profile, the paper's §4 b_i = min(λ_i τ / s_i, d)) and per-class accuracy."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from hgo_lab import simulator


def time_to(recs: list[dict[str, Any]], metric: str, level: float) -> tuple[float, int] | None:
    """(virtual time in s, round) of the first evaluation with ``metric >= level``, or None."""
    for r in recs:
        v = r.get(metric)
        if v is not None and not math.isnan(float(v)) and float(v) >= level:
            return float(r["t"]), int(r["round"])
    return None


def heterogeneity(recs: list[dict[str, Any]], d: int) -> dict[str, Any]:
    """What the rounds of one run looked like.

    ``block_pct``: mean |B_k| / d in % over rounds that updated; ``partial_block``: the
    share of those rounds with |B_k| < d; ``prefix_pct[profile]``: mean prefix / d in %
    of the honest deliveries of that profile; ``partial[profile]``: the share of them
    with prefix < d; ``rounds_updated``: rounds with quorum.
    """
    blocks = [int(r["block"]) for r in recs if r.get("quorum")]
    by_prof: dict[str, list[int]] = {}
    for r in recs:
        for w in r.get("workers", []):
            if not w.get("byzantine"):
                by_prof.setdefault(str(w["profile"]), []).append(int(w["prefix"]))
    return {
        "d": d,
        "rounds_updated": len(blocks),
        "block_pct": 100.0 * float(np.mean(blocks)) / d if blocks else 0.0,
        "partial_block": float(np.mean([b < d for b in blocks])) if blocks else 0.0,
        "prefix_pct": {p: 100.0 * float(np.mean(v)) / d for p, v in sorted(by_prof.items())},
        "partial": {p: float(np.mean([x < d for x in v])) for p, v in sorted(by_prof.items())},
    }


def class_accuracy(cfg: simulator.SimConfig, weights: np.ndarray) -> dict[str, float]:
    """Test accuracy per class of the model ``weights`` (classification datasets only)."""
    from hgo_common.spec import build_model

    ds, _ = simulator.load_dataset(
        cfg.dataset, cfg.data_dir, seed=cfg.split_seed, max_train=cfg.max_train,
        test_fraction=cfg.test_fraction, warn=lambda m: None,
    )  # fmt: skip
    if ds.task != "classification":
        return {}
    model, _ = build_model(cfg, ds)
    with np.errstate(all="ignore"):
        pred = np.asarray(model.predict(weights, ds.X_test))
    y = np.asarray(ds.y_test).astype(np.int64)
    return {str(c): float(np.mean(pred[y == c] == c)) for c in np.unique(y)}


def seed_details(
    recs: list[dict[str, Any]], d: int, metric: str, thresholds: Sequence[float]
) -> dict[str, Any]:
    """Final value, time to 95 % of it and to each fixed threshold, and :func:`heterogeneity`."""
    evals = [r for r in recs if r.get(metric) is not None]
    final = float(evals[-1][metric]) if evals else math.nan
    out: dict[str, Any] = {"final": final, "t_end": float(recs[-1]["t"]) if recs else 0.0}
    hit = time_to(evals, metric, 0.95 * final) if evals and final > 0 else None
    out["t95"], out["round95"] = hit if hit else (None, None)
    out["thresholds"] = {f"{x:g}": (time_to(evals, metric, x) or (None, None))[0] for x in thresholds}
    out.update(heterogeneity(recs, d))
    return out
