"""One SGD step on a mini-batch of this node's shard; the new weights go back to FedAvg."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from hgobench import task

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    rc = context.run_config
    hidden, seed, bs, lr = int(rc["hidden"]), int(rc["seed"]), int(rc["batch-size"]), float(rc["lr"])
    index, num = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    X, y = task.shard(hidden, seed, index, num)
    _, model = task.setup(hidden, seed)
    w = msg.content["arrays"].to_numpy_ndarrays()[0].astype(np.float64)
    rnd = int(msg.content["config"].get("server-round", 0))
    rng = np.random.default_rng([seed, index, rnd])
    batch = rng.choice(len(X), size=min(bs, len(X)), replace=False)
    w_new = (w - lr * model.gradient(w, X[batch], y[batch])).astype(np.float32)
    reply = RecordDict({"arrays": ArrayRecord([w_new]), "metrics": MetricRecord({"num-examples": bs})})
    return Message(content=reply, reply_to=msg)
