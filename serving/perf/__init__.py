"""Measurement: the load generator (loadgen.py) and the experiments on it: the in-process benchmark
of targets (bench.py, `serving bench`), the served benchmark against LitServe (bench_serve.py and
litserve_peer.py, `serving bench-serve`), protocols (bench_protocols.py), the tuner (tune.py) and the
costliest requests (worst_case.py). Imports serving.run and serving.build below it, and loadtest."""
