"""Round overhead of hgo-server on loopback: q in-process clients answer every task at once.

Every client sends its full d-vector (chunks of --max-chunk-values) as soon as it gets a
RoundTask, so with early close a round lasts broadcast + upload + aggregation + update:
the server's own cost per round. Clients run in the same process and event loop as the
server, so the figures are an upper bound (the machine's 2 cores are shared).

    .venv/bin/python bench/bench_server_round.py --q 20 --hidden 300 --rule median
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import grpc.aio
import numpy as np

from hgo_common import roundlog, wire
from hgo_common.net.proto import hgo_pb2, hgo_pb2_grpc
from hgo_common.net.protocol import DEFAULT_MAX_CHUNK_VALUES
from hgo_server import config
from hgo_server.servicer import start_server


async def client(port: int, seed: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        call = hgo_pb2_grpc.HGOStub(ch).Session()
        await call.write(
            hgo_pb2.WorkerMessage(join=hgo_pb2.Join(protocol_version=1, profile="powerful", batch_size=1))
        )
        welcome = (await call.read()).welcome
        d, m, sid = welcome.spec.dim, welcome.spec.max_chunk_values, welcome.session_id
        payload = wire.encode(np.random.default_rng(seed).normal(size=d))
        while True:
            msg = await call.read()
            if msg is grpc.aio.EOF or msg.WhichOneof("kind") == "stop":
                return
            if msg.WhichOneof("kind") != "task":
                continue
            k = msg.task.round
            for lo in range(0, d, m):
                hi = min(d, lo + m)
                chunk = hgo_pb2.GradientChunk(
                    round=k, offset=lo, values=payload[4 * lo : 4 * hi], session_id=sid
                )
                await call.write(hgo_pb2.WorkerMessage(chunk=chunk))


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        log = f"{tmp}/rounds.jsonl"
        cfg = config.from_mapping(
            {"port": 0, "q": args.q, "min_workers": args.q, "dataset": "digits", "model": "mlp",
             "hidden": [args.hidden], "rule": args.rule, "tau": "5s", "rounds": args.rounds, "eval_every": 0,
             "log": log, "max_chunk_values": args.max_chunk_values}
        )  # fmt: skip
        running, port = await start_server(cfg)
        clients = [asyncio.create_task(client(port, i)) for i in range(args.q)]
        t0 = time.perf_counter()
        await running.run()
        wall = time.perf_counter() - t0
        await running.stop()
        await asyncio.gather(*clients, return_exceptions=True)
        recs = roundlog.read(log)[2:]  # skip warm-up rounds
        agg = running.core.metrics.registry.get_sample_value("hgo_aggregation_seconds_sum") or 0.0
        print(
            f"q={args.q} d={running.core.d} rule={args.rule} chunk={args.max_chunk_values}: "
            f"round_ms p50={np.median([r['round_ms'] for r in recs]):.1f} "
            f"p90={np.percentile([r['round_ms'] for r in recs], 90):.1f} "
            f"close_ms p50={np.median([r['close_ms'] for r in recs]):.1f} "
            f"aggregation mean={1000 * agg / args.rounds:.1f} ms; wall {wall:.1f} s for {args.rounds} rounds"
        )


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--q", type=int, default=20)
    p.add_argument("--hidden", type=int, default=300)
    p.add_argument("--rule", default="average")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--max-chunk-values", type=int, default=DEFAULT_MAX_CHUNK_VALUES)
    import uvloop

    uvloop.run(main(p.parse_args()))
