"""HGO's MLP on digits with FedAvg through Flower (bench/bench_flower.py)."""
