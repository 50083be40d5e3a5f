"""Measurement. One core (measure.py: a server under test, one load point, the client ladder, the
best point within a p99, the percentile, in-process timing) and the load generator it drives
(loadgen.py); the experiments on them: the in-process benchmark of targets (bench.py,
`serving bench`), the served benchmark against LitServe (bench_serve.py and litserve_peer.py,
`serving bench-serve`), protocols (bench_protocols.py), the tuner (tune.py) and the costliest
requests (worst_case.py). Imports serving.run and serving.build below it, and loadtest."""
