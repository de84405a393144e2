"""FedAvg over every node for ``num-server-rounds`` rounds; writes the time of each round.

``evaluate_fn`` runs before the first round and after each one (centralized test
accuracy, cheap); the times between its calls are the seconds per round. The JSON file
``out`` is rewritten after every round and gets ``"done": true`` at the end.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from hgobench import task

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    hidden, seed, n = int(rc["hidden"]), int(rc["seed"]), int(rc["num-nodes"])
    out = Path(str(rc["out"]))
    ds, model = task.setup(hidden, seed)
    log: dict[str, object] = {"t_start": time.time(), "rounds": [], "done": False}

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        w = arrays.to_numpy_ndarrays()[0].astype(np.float64)
        acc = float(model.evaluate(w, ds.X_test, ds.y_test)["accuracy"])
        log["rounds"].append({"round": server_round, "t": time.time(), "accuracy": acc})  # type: ignore[attr-defined]
        out.write_text(json.dumps(log))
        return MetricRecord({"accuracy": acc})

    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=n, min_available_nodes=n)
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord([task.initial_weights(hidden, seed)]),
        num_rounds=int(rc["num-server-rounds"]),
        train_config=ConfigRecord({"lr": float(rc["lr"])}),
        evaluate_fn=evaluate_fn,
    )
    log["done"] = True
    log["t_end"] = time.time()
    out.write_text(json.dumps(log))
